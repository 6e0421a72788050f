package nodeagent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes the agent owns ("proto 246" in `ip
// route`); the gateway's are 245.
const RouteProtocol netlink.RouteProtocol = 246

// The VXLAN overlay between nodes that share no link.
const (
	VXLANDevice = "strait.vx"
	VXLANID     = 1
	VXLANPort   = 4789
	// vxlanOverhead is what VXLAN over IPv4 adds to a packet.
	vxlanOverhead = 50
)

// dataplane is the node's routing, in the namespace the agent runs in.
type dataplane struct{}

// ensureVXLAN makes the VXLAN device if it is missing, with vtep as its
// address and underlay as the source of its packets, and returns its MAC.
func (dataplane) ensureVXLAN(underlay, vtep netip.Addr) (net.HardwareAddr, error) {
	l, err := netlink.LinkByName(VXLANDevice)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			return nil, err
		}
		mtu, err := underlayMTU(underlay)
		if err != nil {
			return nil, err
		}
		v := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: VXLANDevice, MTU: mtu - vxlanOverhead},
			VxlanId: VXLANID, SrcAddr: underlay.AsSlice(), Port: VXLANPort, Learning: false}
		if err := netlink.LinkAdd(v); err != nil {
			return nil, fmt.Errorf("VXLAN device %s: %w", VXLANDevice, err)
		}
		if l, err = netlink.LinkByName(VXLANDevice); err != nil {
			return nil, err
		}
	} else if v, ok := l.(*netlink.Vxlan); !ok || v.VxlanId != VXLANID || !v.SrcAddr.Equal(underlay.AsSlice()) {
		// Someone else's device by that name, or one from another
		// address: made anew.
		if err := netlink.LinkDel(l); err != nil {
			return nil, err
		}
		return dataplane{}.ensureVXLAN(underlay, vtep)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: vtep.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return nil, fmt.Errorf("VXLAN address %s: %w", vtep, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, err
	}
	return l.Attrs().HardwareAddr, nil
}

// underlayMTU is the MTU of the link that holds addr.
func underlayMTU(addr netip.Addr) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, err
	}
	for _, l := range links {
		as, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			if x, ok := netip.AddrFromSlice(a.IP); ok && x.Unmap() == addr {
				return l.Attrs().MTU, nil
			}
		}
	}
	return 0, fmt.Errorf("no link holds the node's address %s", addr)
}

// localPrefixes are the prefixes of the node's links: other nodes inside
// them are reached directly.
func (dataplane) localPrefixes() ([]netip.Prefix, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, l := range links {
		if l.Attrs().Name == VXLANDevice || l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return nil, err
		}
		for _, a := range as {
			if p, ok := prefixOf(a.IPNet); ok && p.Bits() < 32 {
				out = append(out, p.Masked())
			}
		}
	}
	return out, nil
}

// apply brings the agent's routes, VXLAN neighbours and forwarding
// entries to d, touching only what differs.
func (dataplane) apply(d Desired) error {
	var errs []error
	vx, vxErr := netlink.LinkByName(VXLANDevice)
	want := map[netip.Prefix]netlink.Route{}
	for _, r := range d.Routes {
		nr := netlink.Route{Dst: ipNet(r.Dst), Gw: r.Via.AsSlice(), Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
		if r.Kind == VXLAN {
			if vxErr != nil {
				errs = append(errs, fmt.Errorf("route to %s over VXLAN: %w", r.Dst, vxErr))
				continue
			}
			nr.LinkIndex, nr.Flags = vx.Attrs().Index, int(netlink.FLAG_ONLINK)
		}
		want[r.Dst] = nr
	}
	have, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	for _, h := range have {
		p, ok := prefixOf(h.Dst)
		w, wanted := want[p]
		if ok && wanted && sameRoute(h, w) {
			delete(want, p)
			continue
		}
		if !ok || !wanted {
			if err := netlink.RouteDel(&h); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("removing route to %v: %w", h.Dst, err))
			}
		}
	}
	for p, w := range want {
		if err := netlink.RouteReplace(&w); err != nil {
			errs = append(errs, fmt.Errorf("route to %s via %s: %w", p, net.IP(w.Gw), err))
		}
	}
	if vxErr == nil {
		errs = append(errs, applyVTEPs(vx, d.VTEPs))
	}
	return errors.Join(errs...)
}

func sameRoute(a, b netlink.Route) bool {
	return a.Gw.Equal(b.Gw) && (b.LinkIndex == 0 || a.LinkIndex == b.LinkIndex)
}

// applyVTEPs keeps one neighbour (VTEP address to MAC) and one forwarding
// entry (MAC to the node's address) per remote node on the VXLAN device.
func applyVTEPs(vx netlink.Link, vteps []VTEP) error {
	var errs []error
	idx := vx.Attrs().Index
	for _, v := range vteps {
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
			IP: v.Addr.AsSlice(), HardwareAddr: v.MAC}); err != nil {
			errs = append(errs, fmt.Errorf("VXLAN neighbour %s of %s: %w", v.Addr, v.Node, err))
		}
		if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, State: netlink.NUD_PERMANENT,
			IP: v.Underlay.AsSlice(), HardwareAddr: v.MAC}); err != nil {
			errs = append(errs, fmt.Errorf("VXLAN forwarding entry of %s: %w", v.Node, err))
		}
	}
	// Entries of nodes that went.
	neighs, err := netlink.NeighList(idx, netlink.FAMILY_V4)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, n := range neighs {
		a, _ := netip.AddrFromSlice(n.IP)
		if !slices.ContainsFunc(vteps, func(v VTEP) bool { return v.Addr == a.Unmap() }) {
			netlink.NeighDel(&n)
		}
	}
	fdb, err := netlink.NeighList(idx, unix.AF_BRIDGE)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, n := range fdb {
		if n.IP == nil {
			continue
		}
		if !slices.ContainsFunc(vteps, func(v VTEP) bool { return v.MAC.String() == n.HardwareAddr.String() }) {
			netlink.NeighDel(&n)
		}
	}
	return errors.Join(errs...)
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}
