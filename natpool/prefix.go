package natpool

import (
	"net/netip"
)

// DefaultGlobalCIDR is the mesh's global CIDR unless configured otherwise.
//
// 242.0.0.0/8 lies in 240.0.0.0/4, the range IANA reserves for future use
// (class E). No public network and no enterprise or cloud network assigns
// it, so it cannot collide with anyone's pod, service or site CIDR, which is
// the one property the global space must have. Linux routes it like any
// unicast range; it never leaves the tunnels, so middleboxes that drop class E
// on the internet never see it. Submariner's Globalnet chose the same range.
const DefaultGlobalCIDR = "242.0.0.0/8"

// Contains reports whether inner lies entirely inside outer.
func Contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// LastAddr returns the highest address of p (its broadcast address for IPv4).
func LastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := range b {
		nb := min(max(p.Bits()-8*i, 0), 8)
		b[i] |= ^byte(0xff << (8 - nb))
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}
