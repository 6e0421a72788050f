package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// wire makes the veth, host side in this namespace and pod side in the
// one at netnsPath, and configures both.
func wire(netnsPath, host, ifName, hostAlias string, mtu int, addrs []netip.Addr) (*current.Result, error) {
	target, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", netnsPath, err)
	}
	defer target.Close()
	ph, err := netlink.NewHandleAt(target)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", netnsPath, err)
	}
	defer ph.Close()
	if _, err := ph.LinkByName(ifName); err == nil {
		return nil, fmt.Errorf("the pod already has an interface %s", ifName)
	}
	for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := ph.RouteList(nil, family)
		if err != nil {
			return nil, fmt.Errorf("routes in %s: %w", netnsPath, err)
		}
		for _, r := range rs {
			if p, ok := prefixOf(r.Dst); r.Dst == nil || (ok && p.Bits() == 0) {
				return nil, fmt.Errorf("the pod already has a default route (another network's interface?): strait-cni must be the pod's primary network")
			}
		}
	}
	// A host side left by an ADD whose DEL never came belongs to this
	// very attachment (the name is its hash): it goes first.
	if err := deleteLink(host); err != nil {
		return nil, err
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MTU: mtu}, PeerName: ifName, PeerNamespace: netlink.NsFd(int(target))}
	if err := netlink.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("veth %s - %s: %w", host, ifName, err)
	}
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return nil, err
	}
	if err := netlink.LinkSetAlias(hl, hostAlias); err != nil {
		return nil, fmt.Errorf("alias of %s: %w", host, err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return nil, fmt.Errorf("%s up: %w", host, err)
	}
	pl, err := ph.LinkByName(ifName)
	if err != nil {
		return nil, err
	}
	if err := ph.LinkSetUp(pl); err != nil {
		return nil, fmt.Errorf("%s up: %w", ifName, err)
	}
	for _, a := range addrs {
		gw, bits, family := Gateway4, 32, netlink.FAMILY_V4
		if a.Is6() {
			gw, bits, family = Gateway6, 128, netlink.FAMILY_V6
		}
		// IPv6 addresses would wait for duplicate detection: the /128 is
		// the pod's alone.
		addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, bits))}
		if a.Is6() {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := ph.AddrAdd(pl, addr); err != nil {
			return nil, fmt.Errorf("address %s: %w", a, err)
		}
		// The gateway is the host's end: a permanent neighbour entry, so
		// the host needs no proxy ARP or NDP.
		if err := ph.NeighAdd(&netlink.Neigh{LinkIndex: pl.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: hl.Attrs().HardwareAddr}); err != nil {
			return nil, fmt.Errorf("gateway neighbour %s: %w", gw, err)
		}
		if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Dst: ipNet(netip.PrefixFrom(gw, bits)), Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("route to the gateway %s: %w", gw, err)
		}
		if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw.AsSlice()}); err != nil {
			return nil, fmt.Errorf("default route via %s: %w", gw, err)
		}
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: ipNet(netip.PrefixFrom(a, bits)), Scope: netlink.SCOPE_LINK}); err != nil {
			return nil, fmt.Errorf("host route to %s: %w", a, err)
		}
	}
	return result(ifaceOf(hl), ifaceOf(pl), netnsPath, addrs), nil
}

// verify checks what wire made, naming the first thing that differs.
func verify(netnsPath, host, ifName string, addrs []netip.Addr) error {
	hl, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", host, err)
	}
	if hl.Attrs().OperState == netlink.OperDown {
		return fmt.Errorf("host veth %s is down", host)
	}
	routes, err := netlink.RouteList(hl, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	target, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return fmt.Errorf("open %s: %w", netnsPath, err)
	}
	defer target.Close()
	ph, err := netlink.NewHandleAt(target)
	if err != nil {
		return err
	}
	defer ph.Close()
	pl, err := ph.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("pod interface %s: %w", ifName, err)
	}
	podRoutes, err := ph.RouteList(pl, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	podAddrs, err := ph.AddrList(pl, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		gw, bits := Gateway4, 32
		if a.Is6() {
			gw, bits = Gateway6, 128
		}
		want := netip.PrefixFrom(a, bits)
		if !hasRoute(routes, want, netip.Addr{}) {
			return fmt.Errorf("the host has no route to %s through %s", want, host)
		}
		found := false
		for _, pa := range podAddrs {
			if p, ok := prefixOf(pa.IPNet); ok && p == want {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("the pod's %s lacks its address %s", ifName, want)
		}
		def := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if a.Is6() {
			def = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if !hasRoute(podRoutes, def, gw) {
			return fmt.Errorf("the pod has no default route via %s on %s", gw, ifName)
		}
	}
	return nil
}

func hasRoute(rs []netlink.Route, dst netip.Prefix, gw netip.Addr) bool {
	for _, r := range rs {
		d := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if dst.Addr().Is6() {
			d = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if r.Dst != nil {
			var ok bool
			if d, ok = prefixOf(r.Dst); !ok {
				continue
			}
		}
		if d != dst {
			continue
		}
		if !gw.IsValid() {
			return true
		}
		if g, ok := netip.AddrFromSlice(r.Gw); ok && g.Unmap() == gw {
			return true
		}
	}
	return false
}

// linkExists says whether this namespace has a link called name.
func linkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// deleteLink removes a host veth (and with it the pod's end); one that is
// not there is fine.
func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// deleteLinksExcept removes the host veths strait-cni made whose
// attachment is not in valid (by alias).
func deleteLinksExcept(valid map[string]bool) error {
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var errs []error
	for _, l := range links {
		a := l.Attrs()
		if !strings.HasPrefix(a.Name, HostPrefix) || l.Type() != "veth" {
			continue
		}
		if _, ok := attachmentOf(a.Alias); !ok || valid[a.Alias] {
			continue
		}
		errs = append(errs, deleteLink(a.Name))
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

func ifaceOf(l netlink.Link) net.Interface {
	return net.Interface{Name: l.Attrs().Name, HardwareAddr: l.Attrs().HardwareAddr}
}
