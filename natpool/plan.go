package natpool

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"strings"
)

// DefaultBlockBits is the prefix length of a site's block unless configured:
// a /16 of the /8 global CIDR, 65,536 addresses a site, 256 sites.
const DefaultBlockBits = 16

// Site is one site of the address plan.
type Site struct {
	Name string
	// Block is the site's share of the global CIDR.
	Block netip.Prefix
	// CIDRs are the site's real CIDRs: pods, services, hosts.
	CIDRs []netip.Prefix
	// Routable says the site's real CIDRs may be routed as they are to
	// every site they do not collide with.
	Routable bool
}

// DeriveBlock is the block a site gets from its name when none is assigned:
// a hash of the name picks one of the global CIDR's blocks of length bits.
// It depends on the name alone, so it never changes as sites come and go;
// two names that land on the same block are a conflict to resolve by
// assigning one of them explicitly.
func DeriveBlock(global netip.Prefix, bits int, name string) (netip.Prefix, error) {
	if !global.Addr().Is4() || bits < global.Bits() || bits > 32 {
		return netip.Prefix{}, fmt.Errorf("natpool: cannot cut /%d blocks from %s", bits, global)
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	n := uint64(1) << (bits - global.Bits()) // how many blocks
	idx := uint32(h.Sum64() % n)
	base := binary.BigEndian.Uint32(global.Masked().Addr().AsSlice())
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], base|idx<<(32-bits))
	return netip.PrefixFrom(netip.AddrFrom4(b), bits), nil
}

// Collisions returns the pairs of real prefixes that overlap between two
// sites: the reason their traffic must be translated.
func Collisions(a, b Site) [][2]netip.Prefix {
	var out [][2]netip.Prefix
	for _, p := range a.CIDRs {
		for _, q := range b.CIDRs {
			if p.Overlaps(q) {
				out = append(out, [2]netip.Prefix{p, q})
			}
		}
	}
	return out
}

// RealPath reports whether traffic from a to b keeps a's real source
// addresses: a is routable and nothing of a collides with b. Otherwise a's
// gateway translates the source into a's egress addresses.
func RealPath(from, to Site) bool {
	return from.Routable && len(Collisions(from, to)) == 0
}

// RoutedTo is what a viewer routes to a peer (the peer's AllowedIPs at the
// viewer): the peer's block, and its real CIDRs if the peer is routable and
// none of them collides with the viewer's own.
func RoutedTo(viewer, peer Site) []netip.Prefix {
	out := []netip.Prefix{peer.Block}
	if peer.Routable && len(Collisions(viewer, peer)) == 0 {
		out = append(out, peer.CIDRs...)
	}
	return out
}

// Pair is how traffic flows between two sites, each way.
type Pair struct {
	A string `json:"a"`
	B string `json:"b"`
	// AB and BA say how traffic from A to B and from B to A is addressed:
	// "real" (sources kept) or "translated".
	AB string `json:"ab"`
	BA string `json:"ba"`
	// Why explains the translation: the colliding prefixes, or which side
	// is not routable.
	Why string `json:"why,omitempty"`
}

// Matrix describes every pair of sites.
func Matrix(sites []Site) []Pair {
	var out []Pair
	for i, a := range sites {
		for _, b := range sites[i+1:] {
			p := Pair{A: a.Name, B: b.Name, AB: mode(RealPath(a, b)), BA: mode(RealPath(b, a))}
			var why []string
			for _, c := range Collisions(a, b) {
				why = append(why, fmt.Sprintf("%s %s collides with %s %s", a.Name, c[0], b.Name, c[1]))
			}
			if len(why) == 0 {
				for _, s := range []Site{a, b} {
					if !s.Routable {
						why = append(why, s.Name+" is not routable")
					}
				}
			}
			p.Why = strings.Join(why, "; ")
			out = append(out, p)
		}
	}
	return out
}

func mode(real bool) string {
	if real {
		return "real"
	}
	return "translated"
}

// TranslatedDestinations are the prefixes whose traffic from site self gets
// its source translated: everything self's gateway routes to peers, less
// what it reaches on a real path.
func TranslatedDestinations(self Site, peers []Site) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range peers {
		if !RealPath(self, p) {
			out = append(out, RoutedTo(self, p)...)
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return out
}
