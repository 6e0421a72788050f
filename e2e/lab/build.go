package lab

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/lab/wanemu"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/natpool"
)

// builder holds a netlink handle per namespace while the lab is built.
type builder struct {
	handles map[string]*netlink.Handle
}

func (b *builder) h(ns string) (*netlink.Handle, error) {
	if h := b.handles[ns]; h != nil {
		return h, nil
	}
	h, err := netns.NS{Name: ns}.Handle()
	if err != nil {
		return nil, err
	}
	b.handles[ns] = h
	return h, nil
}

func (b *builder) close() {
	for _, h := range b.handles {
		h.Close()
	}
}

// build makes the namespaces and wires them: the WAN router with a link to
// every site's edge, each site's LAN switch with its gateway and nodes, each
// pod on its node. Then it starts the WAN emulator.
func (l *Lab) build() error {
	b := &builder{handles: map[string]*netlink.Handle{}}
	defer b.close()
	for _, h := range l.Hosts {
		ns, err := netns.Add(h.NS)
		if err != nil {
			return err
		}
		// Quiet: no IPv6 autoconfiguration chatter on lab links.
		if err := ns.Sysctl("net/ipv6/conf/all/disable_ipv6", "1"); err != nil {
			return err
		}
		if err := ns.Sysctl("net/ipv6/conf/default/disable_ipv6", "1"); err != nil {
			return err
		}
		switch h.Role {
		case RoleWAN, RoleGateway, RoleNode, RolePlain, RoleRouter:
			for _, kv := range [][2]string{
				{"net/ipv4/ip_forward", "1"},
				{"net/ipv4/conf/all/rp_filter", "0"},
				{"net/ipv4/conf/default/rp_filter", "0"},
			} {
				if err := ns.Sysctl(kv[0], kv[1]); err != nil {
					return err
				}
			}
		}
	}
	wan, _ := l.Host("wan")
	for i, s := range l.Topology.Sites {
		if err := l.buildSite(b, i, s, wan); err != nil {
			return fmt.Errorf("lab: site %s: %w", s.Name, err)
		}
	}
	return l.startWAN(wan)
}

func (l *Lab) buildSite(b *builder, i int, s Site, wan Host) error {
	edge := l.edge(s.Name)
	// WAN link: "wan0" at the site's edge, an interface named after the
	// site on the WAN router; the edge's default route points there.
	if err := b.veth(edge.NS, "wan0", wan.NS, s.Name); err != nil {
		return err
	}
	if err := b.addr(wan.NS, s.Name, wanAddr(i, 1), wanBits); err != nil {
		return err
	}
	if err := b.addr(edge.NS, "wan0", edge.WAN, wanBits); err != nil {
		return err
	}
	if err := b.route(edge.NS, netip.Prefix{}, wanAddr(i, 1), ""); err != nil {
		return err
	}
	if edge.Role == RolePlain {
		return nil
	}

	lan, _ := l.Host(s.Name + "-lan")
	if err := b.bridge(lan.NS); err != nil {
		return err
	}
	if err := b.veth(edge.NS, "lan0", lan.NS, "gw"); err != nil {
		return err
	}
	if err := b.port(lan.NS, "gw"); err != nil {
		return err
	}
	if err := b.addr(edge.NS, "lan0", edge.Addr, lanNet.Bits()); err != nil {
		return err
	}
	var nodes []Host
	for _, h := range l.Hosts {
		if h.Site == s.Name && h.Role == RoleNode {
			nodes = append(nodes, h)
		}
	}
	for _, n := range nodes {
		port := fmt.Sprintf("node%d", n.Index)
		if err := b.veth(n.NS, "eth0", lan.NS, port); err != nil {
			return err
		}
		if err := b.port(lan.NS, port); err != nil {
			return err
		}
		if err := b.addr(n.NS, "eth0", n.Addr, lanNet.Bits()); err != nil {
			return err
		}
		// The gateway reaches the node's pods through the node.
		if err := b.route(edge.NS, n.PodCIDR, n.Addr, ""); err != nil {
			return err
		}
		// The node sends the mesh's addresses, and the real CIDRs of
		// sites the mesh routes as they are, to the gateway, and other
		// nodes' pods to those nodes (the node agent's job, later).
		if err := b.route(n.NS, l.Topology.GlobalCIDR, edge.Addr, ""); err != nil {
			return err
		}
		for _, p := range l.Topology.Sites {
			if p.Name == s.Name {
				continue
			}
			for _, c := range natpool.RoutedTo(s.PlanSite(), p.PlanSite())[1:] {
				if err := b.route(n.NS, c, edge.Addr, ""); err != nil {
					return err
				}
			}
		}
		for _, o := range nodes {
			if o.Name != n.Name {
				if err := b.route(n.NS, o.PodCIDR, o.Addr, ""); err != nil {
					return err
				}
			}
		}
	}
	if s.Router != nil {
		if err := l.buildRouter(b, s, lan); err != nil {
			return fmt.Errorf("router: %w", err)
		}
	}
	for _, p := range l.Hosts {
		if p.Site != s.Name || p.Role != RolePod {
			continue
		}
		node, _ := l.Host(p.Node)
		if err := l.wirePod(b, node, p); err != nil {
			return fmt.Errorf("pod %s: %w", p.Name, err)
		}
	}
	return nil
}

// wirePod gives a pod what a CNI plugin gives it: a veth to its node, a
// /32, a default route through a link-local gateway, and a /32 route to it
// on the node.
func (l *Lab) wirePod(b *builder, node, pod Host) error {
	hostSide := fmt.Sprintf("pod%d", pod.Index)
	if err := b.veth(node.NS, hostSide, pod.NS, "eth0"); err != nil {
		return err
	}
	if err := b.addr(pod.NS, "eth0", pod.Addr, 32); err != nil {
		return err
	}
	nh, err := b.h(node.NS)
	if err != nil {
		return err
	}
	hl, err := nh.LinkByName(hostSide)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", node.NS, hostSide, err)
	}
	if err := nh.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: prefixNet(netip.PrefixFrom(pod.Addr, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to pod: %w", err)
	}
	ph, err := b.h(pod.NS)
	if err != nil {
		return err
	}
	pl, err := ph.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("%s: eth0: %w", pod.NS, err)
	}
	// The link-local gateway is the node's end of the veth: a permanent
	// neighbour entry saves the ARP round and the proxy ARP on the node.
	if err := ph.NeighAdd(&netlink.Neigh{LinkIndex: pl.Attrs().Index, State: netlink.NUD_PERMANENT,
		IP: podGW.AsSlice(), HardwareAddr: hl.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("gateway neighbour: %w", err)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Dst: prefixNet(netip.PrefixFrom(podGW, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to the gateway: %w", err)
	}
	if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: podGW.AsSlice()}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

// veth makes a veth pair with one end in each namespace: both ends are born
// where they belong, so no name ever appears in the root namespace.
func (b *builder) veth(nsA, nameA, nsB, nameB string) error {
	ha, err := b.h(nsA)
	if err != nil {
		return err
	}
	fd, err := netns.NS{Name: nsB}.Open()
	if err != nil {
		return err
	}
	defer fd.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA, MTU: 1500}, PeerName: nameB, PeerNamespace: netlink.NsFd(int(fd))}
	if err := ha.LinkAdd(v); err != nil {
		return fmt.Errorf("veth %s/%s - %s/%s: %w", nsA, nameA, nsB, nameB, err)
	}
	for _, end := range [][2]string{{nsA, nameA}, {nsB, nameB}} {
		h, err := b.h(end[0])
		if err != nil {
			return err
		}
		link, err := h.LinkByName(end[1])
		if err != nil {
			return fmt.Errorf("%s/%s: %w", end[0], end[1], err)
		}
		if err := h.LinkSetUp(link); err != nil {
			return fmt.Errorf("%s/%s up: %w", end[0], end[1], err)
		}
	}
	return nil
}

func (b *builder) bridge(ns string) error {
	h, err := b.h(ns)
	if err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("%s: add bridge br0: %w", ns, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("%s: bridge br0 up: %w", ns, err)
	}
	return nil
}

func (b *builder) port(ns, name string) error {
	h, err := b.h(ns)
	if err != nil {
		return err
	}
	br, err := h.LinkByName("br0")
	if err != nil {
		return fmt.Errorf("%s: bridge br0: %w", ns, err)
	}
	link, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ns, name, err)
	}
	if err := h.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("%s: %s into bridge br0: %w", ns, name, err)
	}
	return nil
}

func (b *builder) addr(ns, dev string, a netip.Addr, bits int) error {
	h, err := b.h(ns)
	if err != nil {
		return err
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ns, dev, err)
	}
	if err := h.AddrAdd(link, addrNet(a, bits)); err != nil {
		return fmt.Errorf("%s: address %s/%d on %s: %w", ns, a, bits, dev, err)
	}
	return nil
}

func (b *builder) route(ns string, dst netip.Prefix, via netip.Addr, dev string) error {
	h, err := b.h(ns)
	if err != nil {
		return err
	}
	r := &netlink.Route{Gw: via.AsSlice()}
	if dst.IsValid() {
		r.Dst = prefixNet(dst)
	}
	if dev != "" {
		link, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", ns, dev, err)
		}
		r.LinkIndex = link.Attrs().Index
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("%s: route %s via %s: %w", ns, dst, via, err)
	}
	return nil
}

// edge is a site's host on the WAN: its gateway, or its plain host.
func (l *Lab) edge(site string) Host {
	for _, h := range l.Hosts {
		if h.Site == site && (h.Role == RoleGateway || h.Role == RolePlain) {
			return h
		}
	}
	return Host{}
}

func (l *Lab) wanFile() string { return filepath.Join(l.Dir, "wan.json") }

// wanConfig is the emulator's configuration for the topology's WAN links.
func (l *Lab) wanConfig() wanemu.Config {
	var c wanemu.Config
	for i, s := range l.Topology.Sites {
		c.Links = append(c.Links, wanemu.Link{
			Site: s.Name, Iface: s.Name, Queue: uint16(2 * i),
			Latency: time.Duration(s.WAN.Latency), Jitter: time.Duration(s.WAN.Jitter), Loss: s.WAN.Loss,
		})
	}
	return c
}

// startWAN starts the WAN emulator in the router and waits until it runs.
func (l *Lab) startWAN(wan Host) error {
	l.WANGeneration = 1
	if err := l.writeWAN(); err != nil {
		return err
	}
	if err := l.spawn(wan, "wan-emulator", filepath.Join(l.Dir, "wan.log"), l.Bins.Strait, "lab", "wan-emulator", "--config", l.wanFile()); err != nil {
		return err
	}
	return l.waitWAN()
}

func (l *Lab) writeWAN() error {
	data, err := json.MarshalIndent(wanemu.File{Generation: l.WANGeneration, Config: l.wanConfig()}, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(l.wanFile(), data, 0o644)
}

// waitWAN waits until the emulator applied the current generation.
func (l *Lab) waitWAN() error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, err := wanemu.Applied(l.wanFile())
		if err == nil && g == l.WANGeneration {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: WAN emulator did not apply generation %d (at %d, %v)\n%s", l.WANGeneration, g, err, l.tail(filepath.Join(l.Dir, "wan.log")))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// SetWAN changes a site's WAN link (latency, jitter, loss) and returns once
// the emulator applies it. Loss 100 cuts the site off.
func (l *Lab) SetWAN(site string, w WAN) error {
	found := false
	for i := range l.Topology.Sites {
		if l.Topology.Sites[i].Name == site {
			l.Topology.Sites[i].WAN = w
			found = true
		}
	}
	if !found {
		return fmt.Errorf("lab: no site %q", site)
	}
	if err := l.wanConfig().Validate(); err != nil {
		return err
	}
	l.WANGeneration++
	if err := l.writeWAN(); err != nil {
		return err
	}
	if err := l.waitWAN(); err != nil {
		return err
	}
	return l.save()
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// RoleOutsider is a host on the WAN that belongs to no site, such as an
// impostor in a test.
const RoleOutsider = "outsider"

// AttachWAN adds a host on the WAN outside every site: its own link to the
// WAN router (198.19.k.0/24, the router .1, the host .2) and a default
// route. Tests use it for hosts that try to get into the mesh.
func (l *Lab) AttachWAN(name string) (_ Host, err error) {
	if !siteRE.MatchString(name) {
		return Host{}, fmt.Errorf("lab: host %q: want 1 to 15 lowercase letters, digits or '-'", name)
	}
	if _, ok := l.Host(name); ok {
		return Host{}, fmt.Errorf("lab: host %q exists", name)
	}
	k := 0
	for _, h := range l.Hosts {
		if h.Role == RoleOutsider {
			k++
		}
	}
	router := netip.AddrFrom4([4]byte{198, 19, byte(k), 1})
	h := Host{Name: name, Role: RoleOutsider, NS: fmt.Sprintf("strait-%s-%s", l.Run, name),
		WAN: netip.AddrFrom4([4]byte{198, 19, byte(k), 2}), Index: k}
	if _, err := netns.Add(h.NS); err != nil {
		return Host{}, err
	}
	defer func() {
		if err != nil {
			netns.Delete(h.NS)
		}
	}()
	if err := h.Namespace().Sysctl("net/ipv6/conf/all/disable_ipv6", "1"); err != nil {
		return Host{}, err
	}
	b := &builder{handles: map[string]*netlink.Handle{}}
	defer b.close()
	wan, _ := l.Host("wan")
	if err := b.veth(h.NS, "wan0", wan.NS, name); err != nil {
		return Host{}, err
	}
	if err := b.addr(wan.NS, name, router, wanBits); err != nil {
		return Host{}, err
	}
	if err := b.addr(h.NS, "wan0", h.WAN, wanBits); err != nil {
		return Host{}, err
	}
	if err := b.route(h.NS, netip.Prefix{}, router, ""); err != nil {
		return Host{}, err
	}
	l.Hosts = append(l.Hosts, h)
	return h, l.save()
}
