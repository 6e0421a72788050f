package bgp

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// Route is a prefix a peer announces, through NextHop.
type Route struct {
	Prefix  netip.Prefix `json:"prefix"`
	NextHop netip.Addr   `json:"nextHop"`
	// Peer is the name of the peer that announced it.
	Peer string `json:"peer"`
	// Stale marks a route kept from a peer that is restarting.
	Stale bool `json:"stale,omitempty"`
}

// Reserved is a range the site's routers may not claim: the mesh's global
// CIDR and VIP range, other sites' blocks and CIDRs, the gateway's own
// networks.
type Reserved struct {
	Prefix netip.Prefix
	// What names it for the refusal: "cloud-a's block".
	What string
	// Exact reserves the prefix itself only (another's route to it,
	// which a learned one would replace), not what overlaps it.
	Exact bool
}

// Refused is a learned route the gateway does not use, and why.
type Refused struct {
	Route
	Reason string `json:"reason"`
}

// Screen splits the routes the import filter let through into those the
// gateway uses and those it refuses: a route that overlaps a reserved
// range would take addresses the mesh or the gateway already routes
// elsewhere, and a route whose next hop lies inside it cannot be
// resolved. Of several routes to one prefix the first (by peer name, then
// next hop) is used. Both results are sorted by prefix.
//
// local, when given, are the host's own addresses with the length of their
// networks: a next hop must be on one of those networks (the kernel
// installs a route through a neighbour only) and not the host itself.
func Screen(routes []Route, reserved []Reserved, local []netip.Prefix) (accepted []Route, refused []Refused) {
	routes = slices.Clone(routes)
	slices.SortFunc(routes, func(a, b Route) int {
		return cmp.Or(comparePrefix(a.Prefix, b.Prefix), cmp.Compare(a.Peer, b.Peer), a.NextHop.Compare(b.NextHop))
	})
	for i, r := range routes {
		if i > 0 && routes[i-1].Prefix == r.Prefix {
			continue // the same prefix through another peer: one route is kept
		}
		why := screenOne(r, reserved)
		if why == "" && local != nil {
			why = nextHopOf(r, local)
		}
		if why != "" {
			refused = append(refused, Refused{Route: r, Reason: why})
			continue
		}
		accepted = append(accepted, r)
	}
	return accepted, refused
}

func screenOne(r Route, reserved []Reserved) string {
	if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() || r.Prefix.Masked() != r.Prefix {
		return fmt.Sprintf("%s is not a masked IPv4 prefix", r.Prefix)
	}
	if r.Prefix.Bits() == 0 {
		return "a default route would send everything the gateway does not know to the site"
	}
	if !r.NextHop.Is4() {
		return fmt.Sprintf("next hop %s is not an IPv4 address", r.NextHop)
	}
	if r.Prefix.Contains(r.NextHop) {
		return fmt.Sprintf("its next hop %s is inside it", r.NextHop)
	}
	for _, rs := range reserved {
		if rs.Exact {
			if rs.Prefix == r.Prefix {
				return fmt.Sprintf("%s has a route to it already", rs.What)
			}
			continue
		}
		if rs.Prefix.Overlaps(r.Prefix) {
			return fmt.Sprintf("overlaps %s %s", rs.What, rs.Prefix)
		}
	}
	return ""
}

// nextHopOf says why r's next hop cannot carry it, or "".
func nextHopOf(r Route, local []netip.Prefix) string {
	for _, l := range local {
		if l.Addr() == r.NextHop {
			return fmt.Sprintf("its next hop %s is the gateway itself", r.NextHop)
		}
	}
	for _, l := range local {
		if l.Masked().Contains(r.NextHop) {
			return ""
		}
	}
	return fmt.Sprintf("its next hop %s is on none of the gateway's networks", r.NextHop)
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// Prefixes returns the routes' prefixes.
func Prefixes(routes []Route) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(routes))
	for _, r := range routes {
		out = append(out, r.Prefix)
	}
	return out
}
