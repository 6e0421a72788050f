package natpool

import (
	"fmt"
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

// PrefixMap translates one prefix onto another of the same length, address
// by address: the host part is kept, the network part replaced. It is the
// netmap of iptables and the "snat/dnat ip prefix to" of nftables.
type PrefixMap struct {
	Real   netip.Prefix // addresses inside the cluster, such as 10.0.0.0/16
	Global netip.Prefix // the cluster's block in the global CIDR, such as 242.0.0.0/16
}

// NewPrefixMap checks that realCIDR and block are masked IPv4 prefixes of the same length.
func NewPrefixMap(realCIDR, block netip.Prefix) (PrefixMap, error) {
	for _, p := range []netip.Prefix{realCIDR, block} {
		if !p.IsValid() || !p.Addr().Is4() {
			return PrefixMap{}, fmt.Errorf("natpool: prefix map needs IPv4 prefixes, got %s", p)
		}
		if p.Masked() != p {
			return PrefixMap{}, fmt.Errorf("natpool: prefix %s has host bits set (did you mean %s?)", p, p.Masked())
		}
	}
	if realCIDR.Bits() != block.Bits() {
		return PrefixMap{}, fmt.Errorf("natpool: cannot map %s one-to-one onto %s: prefix lengths differ (/%d and /%d)",
			realCIDR, block, realCIDR.Bits(), block.Bits())
	}
	return PrefixMap{Real: realCIDR, Global: block}, nil
}

// ToGlobal returns the global address of a real address inside m.Real.
func (m PrefixMap) ToGlobal(a netip.Addr) (netip.Addr, bool) {
	return translate(a, m.Real, m.Global)
}

// ToReal returns the real address of a global address inside m.Global.
func (m PrefixMap) ToReal(a netip.Addr) (netip.Addr, bool) {
	return translate(a, m.Global, m.Real)
}

func translate(a netip.Addr, from, to netip.Prefix) (netip.Addr, bool) {
	if !from.Contains(a) || !a.Is4() {
		return netip.Addr{}, false
	}
	src, dst := a.As4(), to.Addr().As4()
	bits := from.Bits()
	var out [4]byte
	for i := range 4 {
		// Bits of this byte that belong to the network part.
		nb := min(max(bits-8*i, 0), 8)
		mask := byte(0xff << (8 - nb))
		out[i] = dst[i]&mask | src[i]&^mask
	}
	return netip.AddrFrom4(out), true
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
