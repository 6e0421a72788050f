package natpool

import (
	"fmt"
	"net/netip"
)

// Kind says what a pool's addresses are for.
type Kind string

const (
	// Ingress pools give each exported service the global address other
	// sites reach it at (DNAT).
	Ingress Kind = "ingress"
	// Egress pools give the addresses a site's traffic leaves as (SNAT).
	Egress Kind = "egress"
	// VIP pools give global services their virtual addresses, from the
	// mesh's VIP range.
	VIP Kind = "vip"
)

// Default pool names: what services and egress rules use when they name none.
const (
	DefaultIngressPool = "ingress"
	DefaultEgressPool  = "egress"
)

// Pool is a named range of a site's block.
type Pool struct {
	Name string
	Kind Kind
	CIDR netip.Prefix
}

// MaxBlockBits is the longest block prefix: 16 addresses, room for the
// reserved range and both default pools.
const MaxBlockBits = 28

// DefaultPools cuts a block (at most /28) the way a site gets it when it
// configures no pools: the first 1/256 (a /24 of a /16; at least a /30)
// stays reserved for the gateway's own addresses, the next as large
// becomes the egress pool, the upper half the ingress pool.
func DefaultPools(block netip.Prefix) []Pool {
	sub := min(block.Bits()+8, 30)
	reserved := netip.PrefixFrom(block.Masked().Addr(), sub)
	egress := netip.PrefixFrom(LastAddr(reserved).Next(), sub)
	upper := netip.PrefixFrom(block.Masked().Addr(), block.Bits()+1)
	ingress := netip.PrefixFrom(LastAddr(upper).Next(), block.Bits()+1)
	return []Pool{
		{Name: DefaultEgressPool, Kind: Egress, CIDR: egress},
		{Name: DefaultIngressPool, Kind: Ingress, CIDR: ingress},
	}
}

// CheckPools validates a site's pools: a known kind and a unique name each,
// inside the site's block, clear of the site's real CIDRs, of each other,
// and of the addresses the gateway keeps for itself. Errors name the pools.
func CheckPools(block netip.Prefix, cidrs []netip.Prefix, keep []netip.Addr, pools []Pool) []error {
	var errs []error
	for i, p := range pools {
		if p.Kind != Ingress && p.Kind != Egress {
			errs = append(errs, fmt.Errorf("pool %q: kind %q is neither %s nor %s", p.Name, p.Kind, Ingress, Egress))
		}
		if !Contains(block, p.CIDR) {
			errs = append(errs, fmt.Errorf("pool %q: %s is outside the site's block %s", p.Name, p.CIDR, block))
		}
		for _, c := range cidrs {
			if p.CIDR.Overlaps(c) {
				errs = append(errs, fmt.Errorf("pool %q: %s overlaps the site's real CIDR %s", p.Name, p.CIDR, c))
			}
		}
		for _, k := range keep {
			if p.CIDR.Contains(k) {
				errs = append(errs, fmt.Errorf("pool %q: %s holds the gateway's own address %s", p.Name, p.CIDR, k))
			}
		}
		for _, q := range pools[:i] {
			if q.Name == p.Name {
				errs = append(errs, fmt.Errorf("pool %q is defined twice", p.Name))
			} else if p.CIDR.Overlaps(q.CIDR) {
				errs = append(errs, fmt.Errorf("pool %q: %s overlaps pool %q (%s)", p.Name, p.CIDR, q.Name, q.CIDR))
			}
		}
	}
	return errs
}

// usable reports whether an address of a pool is handed out: every address
// but those ending in .0 and .255, which some clients still treat as
// network or broadcast addresses whatever the prefix.
func usable(a netip.Addr) bool {
	b := a.As4()
	return b[3] != 0 && b[3] != 255
}

// size is how many usable addresses a pool has.
func (p Pool) size() int {
	bits := p.CIDR.Bits()
	if bits <= 24 {
		// Every /24 inside loses its .0 and .255.
		return (1 << (32 - bits)) - 2*(1<<(24-bits))
	}
	n := 0
	for a := p.CIDR.Masked().Addr(); p.CIDR.Contains(a); a = a.Next() {
		if usable(a) {
			n++
		}
	}
	return n
}
