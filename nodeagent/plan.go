package nodeagent

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Node is what the agent needs of a Node: its name, its address on the
// nodes' network, its pod CIDRs, and the MAC of its VXLAN device (which
// its own agent publishes in an annotation).
type Node struct {
	Name       string
	InternalIP netip.Addr
	PodCIDRs   []netip.Prefix
	VTEPMAC    net.HardwareAddr
}

// Route is a route the agent owns. Direct routes go via another node's
// address on a shared link; VXLAN routes via the other node's VTEP address
// on the VXLAN device; gateway routes via the cluster's gateway.
type Route struct {
	Dst   netip.Prefix
	Via   netip.Addr
	Kind  RouteKind
	Owner string // the node or "gateway", for messages and status
}

// RouteKind says how a route leaves the node.
type RouteKind string

const (
	Direct  RouteKind = "direct"
	VXLAN   RouteKind = "vxlan"
	Gateway RouteKind = "gateway"
)

// VTEP is another node's end of the VXLAN overlay.
type VTEP struct {
	Node     string
	Addr     netip.Addr // its VTEP address (the first of its IPv4 pod CIDR)
	MAC      net.HardwareAddr
	Underlay netip.Addr // where its VXLAN packets go: its InternalIP
}

// Desired is the node's routing, as the agent brings it about.
type Desired struct {
	Routes []Route
	VTEPs  []VTEP
}

// VTEPAddr is a node's address on the VXLAN device: the first address of
// its IPv4 pod CIDR, which no pod gets (the network address).
func VTEPAddr(n Node) (netip.Addr, bool) {
	for _, p := range n.PodCIDRs {
		if p.Addr().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// Plan computes the routes of node self. local are the prefixes of the
// node's own links: a node whose InternalIP lies in one of them is reached
// directly, any other over VXLAN. Mesh destinations (the global CIDR,
// remote routable CIDRs) go to gateway, when there is one. What cannot be
// routed is said in problems, never guessed: a node without an address or
// a VXLAN MAC, pod CIDRs that overlap this node's or each other's.
func Plan(self Node, others []Node, local []netip.Prefix, gateway netip.Addr, mesh []netip.Prefix) (Desired, []string) {
	var d Desired
	var problems []string
	others = slices.Clone(others)
	slices.SortFunc(others, func(a, b Node) int { return cmp.Compare(a.Name, b.Name) })
	taken := map[netip.Prefix]string{}
	for _, p := range self.PodCIDRs {
		taken[p] = self.Name
	}
	overlaps := func(p netip.Prefix) string {
		for q, owner := range taken {
			if q.Overlaps(p) {
				return fmt.Sprintf("%s of %s", q, owner)
			}
		}
		return ""
	}
	for _, n := range others {
		if n.Name == self.Name || len(n.PodCIDRs) == 0 {
			continue
		}
		if !n.InternalIP.IsValid() {
			problems = append(problems, fmt.Sprintf("node %s has no InternalIP: its pods %v are not routed", n.Name, n.PodCIDRs))
			continue
		}
		direct := slices.ContainsFunc(local, func(p netip.Prefix) bool { return p.Contains(n.InternalIP) })
		var vtep netip.Addr
		if !direct {
			var ok bool
			vtep, ok = VTEPAddr(n)
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("node %s shares no link with this node and has no IPv4 pod CIDR for a VXLAN address", n.Name))
				continue
			case len(n.VTEPMAC) == 0:
				problems = append(problems, fmt.Sprintf("node %s shares no link with this node and has not published its VXLAN MAC yet (is strait-agent running there?)", n.Name))
				continue
			}
			d.VTEPs = append(d.VTEPs, VTEP{Node: n.Name, Addr: vtep, MAC: n.VTEPMAC, Underlay: n.InternalIP})
		}
		for _, p := range n.PodCIDRs {
			if o := overlaps(p); o != "" {
				problems = append(problems, fmt.Sprintf("node %s's pod CIDR %s overlaps %s: not routed", n.Name, p, o))
				continue
			}
			if p.Addr().Is4() != n.InternalIP.Is4() {
				// IPv6 pod CIDRs of an IPv4 node (and the reverse) need
				// a next hop of their family; that is for later.
				problems = append(problems, fmt.Sprintf("node %s's pod CIDR %s is not of its InternalIP's family: not routed", n.Name, p))
				continue
			}
			taken[p] = n.Name
			r := Route{Dst: p, Via: n.InternalIP, Kind: Direct, Owner: n.Name}
			if !direct {
				r.Via, r.Kind = vtep, VXLAN
			}
			d.Routes = append(d.Routes, r)
		}
	}
	if gateway.IsValid() && !slices.ContainsFunc(local, func(p netip.Prefix) bool { return p.Contains(gateway) }) {
		problems = append(problems, fmt.Sprintf("the gateway %s is on none of this node's links: mesh destinations follow the default route, and the network must route them to the gateway", gateway))
		gateway = netip.Addr{}
	}
	if gateway.IsValid() {
		for _, m := range mesh {
			if o := overlaps(m); o != "" {
				problems = append(problems, fmt.Sprintf("mesh destination %s overlaps the pod CIDR %s: not routed to the gateway", m, o))
				continue
			}
			d.Routes = append(d.Routes, Route{Dst: m, Via: gateway, Kind: Gateway, Owner: "gateway"})
		}
	}
	return d, problems
}
