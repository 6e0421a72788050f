package bgp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the kernel routes the gateway installs for learned
// prefixes (the rtnetlink protocol field), so that it finds its own after
// a restart and touches no one else's.
const RouteProtocol = 242

// RouteTable is what the gateway needs of the kernel's routing table.
type RouteTable interface {
	// List returns the routes marked RouteProtocol.
	List() ([]Route, error)
	Replace(Route) error
	Delete(Route) error
	// Connected returns the host's own addresses with the length of
	// their networks (192.0.2.1/24).
	Connected() ([]netip.Prefix, error)
	// Foreign returns the destinations of the main table's other routes
	// (not the gateway's, not connected, not default).
	Foreign() ([]netip.Prefix, error)
}

// SyncStats counts what a sync changed; Failed are the routes the kernel
// refused, and why.
type SyncStats struct {
	Added, Removed int
	Failed         map[netip.Prefix]error
}

// SyncRoutes makes the table's marked routes those of want: it adds or
// replaces what is missing or different and, when prune is set, removes
// the marked routes no longer wanted. Without prune (while the routes
// learned are still incomplete after a restart) it only adds.
func SyncRoutes(t RouteTable, want []Route, prune bool) (SyncStats, error) {
	have, err := t.List()
	if err != nil {
		return SyncStats{}, err
	}
	cur := map[netip.Prefix]netip.Addr{}
	for _, r := range have {
		cur[r.Prefix] = r.NextHop
	}
	var st SyncStats
	var errs []error
	wanted := map[netip.Prefix]bool{}
	for _, r := range want {
		wanted[r.Prefix] = true
		if nh, ok := cur[r.Prefix]; ok && nh == r.NextHop {
			continue
		}
		if err := t.Replace(r); err != nil {
			errs = append(errs, err)
			if st.Failed == nil {
				st.Failed = map[netip.Prefix]error{}
			}
			st.Failed[r.Prefix] = err
			continue
		}
		st.Added++
	}
	if prune {
		for _, r := range have {
			if wanted[r.Prefix] {
				continue
			}
			if err := t.Delete(r); err != nil {
				errs = append(errs, err)
				continue
			}
			st.Removed++
		}
	}
	return st, errors.Join(errs...)
}

// KernelRoutes is the main routing table of the current network
// namespace, through netlink.
type KernelRoutes struct{ h *netlink.Handle }

// NewKernelRoutes opens a netlink handle in the current namespace.
func NewKernelRoutes() (*KernelRoutes, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("bgp: netlink: %w", err)
	}
	return &KernelRoutes{h: h}, nil
}

// Close releases the handle.
func (k *KernelRoutes) Close() { k.h.Close() }

// List returns the IPv4 routes of the main table marked RouteProtocol.
func (k *KernelRoutes) List() ([]Route, error) {
	rs, err := k.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: RouteProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("bgp: list routes: %w", err)
	}
	var out []Route
	for _, r := range rs {
		if r.Dst == nil {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		nh, _ := netip.AddrFromSlice(r.Gw.To4())
		out = append(out, Route{Prefix: p, NextHop: nh})
	}
	return out, nil
}

// Replace installs r, through its next hop, marked RouteProtocol.
func (k *KernelRoutes) Replace(r Route) error {
	if err := k.h.RouteReplace(k.route(r)); err != nil {
		return fmt.Errorf("bgp: route %s via %s: %w", r.Prefix, r.NextHop, err)
	}
	return nil
}

// Delete removes r.
func (k *KernelRoutes) Delete(r Route) error {
	if err := k.h.RouteDel(k.route(r)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("bgp: remove route %s: %w", r.Prefix, err)
	}
	return nil
}

func (k *KernelRoutes) route(r Route) *netlink.Route {
	return &netlink.Route{
		Dst:      &net.IPNet{IP: r.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(r.Prefix.Bits(), 32)},
		Gw:       r.NextHop.AsSlice(),
		Protocol: RouteProtocol,
		Table:    unix.RT_TABLE_MAIN,
	}
}

// Connected returns the namespace's IPv4 addresses, but loopback's, with
// the length of their networks.
func (k *KernelRoutes) Connected() ([]netip.Prefix, error) {
	as, err := k.h.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("bgp: list addresses: %w", err)
	}
	var out []netip.Prefix
	for _, a := range as {
		ip, ok := netip.AddrFromSlice(a.IP.To4())
		ones, bits := a.Mask.Size()
		if !ok || bits != 32 || ip.IsLoopback() {
			continue
		}
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out, nil
}

// Foreign returns the destinations of the main table's IPv4 routes that
// are neither the gateway's nor the kernel's own nor default.
func (k *KernelRoutes) Foreign() ([]netip.Prefix, error) {
	rs, err := k.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("bgp: list routes: %w", err)
	}
	var out []netip.Prefix
	for _, r := range rs {
		if r.Dst == nil || r.Protocol == RouteProtocol || r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok && p.Bits() > 0 {
			out = append(out, p)
		}
	}
	return out, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP.To4())
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits != 32 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}
