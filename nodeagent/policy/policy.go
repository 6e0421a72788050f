// Package policy compiles Kubernetes NetworkPolicies into the contents of
// the eBPF maps that strait's TC program on each pod's host-side veth uses
// to allow or drop packets.
//
// For a packet of local pod P in direction D (Ingress: traffic to P, the
// peer is the source; Egress: traffic from P, the peer is the destination)
// the eBPF side does:
//
//  1. if (P, D) is not in Program.Enforced: allow;
//  2. else the longest-prefix match of (P, D, peer IP) among
//     Program.Entries; no match: drop;
//  3. allow if the packet's (protocol, destination port) is in the entry's
//     PortSet, else drop.
//
// Program.Allowed implements exactly those steps in Go, for tests.
//
// Because the lookup returns only the longest matching entry, each entry
// holds the union of everything allowed to its prefix: for an entry prefix
// E, the union of the ports of every rule peer (of every policy selecting P
// for D) that contains E, an ipBlock containing E when its cidr contains E
// and none of its excepts does. Every peer prefix and every except is a
// candidate entry, which makes the lookup of any address return the union
// for that address. Candidates that would not change any lookup (the same
// PortSet as their nearest less specific candidate, or empty with none)
// are left out; an empty entry that shadows an allowed less specific one
// stays, with an empty PortSet (deny).
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Direction is the direction of traffic relative to a local pod.
type Direction uint8

const (
	Ingress Direction = 0 // to the pod; the peer is the source
	Egress  Direction = 1 // from the pod; the peer is the destination
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// IP protocol numbers used in PortRange.Proto.
const (
	ProtoAny  uint8 = 0
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// MaxRanges is how many ranges a PortSet may hold (the eBPF map value's
// array). Compile never produces more: when the union for an entry has more
// ranges it keeps the first MaxRanges (in PortSet order), denies the rest
// (fail closed) and reports a problem naming the policies involved.
const MaxRanges = 16

// PortRange is destination ports Lo..Hi (inclusive) of protocol Proto.
// Proto 0 matches every protocol (including the port-less ones such as
// ICMP, whose port is 0); Lo 0, Hi 65535 is every port.
type PortRange struct {
	Proto  uint8
	Lo, Hi uint16
}

func (r PortRange) String() string {
	p := protoName(r.Proto)
	if r.Lo == 0 && r.Hi == 65535 {
		return p + "/*"
	}
	if r.Lo == r.Hi {
		return fmt.Sprintf("%s/%d", p, r.Lo)
	}
	return fmt.Sprintf("%s/%d-%d", p, r.Lo, r.Hi)
}

func protoName(p uint8) string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoSCTP:
		return "sctp"
	}
	return fmt.Sprintf("proto%d", p)
}

// PortSet is what an entry allows. Any: every protocol and port (ICMP
// too). Otherwise Ranges, sorted by (Proto, Lo), with overlapping and
// adjacent ranges of a protocol merged, at most MaxRanges of them. The zero
// PortSet allows nothing.
type PortSet struct {
	Any    bool
	Ranges []PortRange
}

// Contains says whether a packet of protocol proto to destination port
// port is allowed, the way the eBPF program decides it: Any, or a range of
// that protocol or of protocol 0 whose ports hold port. Port-less
// protocols (ICMP; on the eBPF side everything but TCP and UDP) come with
// port 0.
func (s PortSet) Contains(proto uint8, port uint16) bool {
	if s.Any {
		return true
	}
	for _, r := range s.Ranges {
		if (r.Proto == 0 || r.Proto == proto) && port >= r.Lo && port <= r.Hi {
			return true
		}
	}
	return false
}

// Empty says whether s allows nothing.
func (s PortSet) Empty() bool { return !s.Any && len(s.Ranges) == 0 }

// Equal says whether s and o are the same (both normalized).
func (s PortSet) Equal(o PortSet) bool {
	return s.Any == o.Any && slices.Equal(s.Ranges, o.Ranges)
}

func (s PortSet) String() string {
	if s.Any {
		return "any"
	}
	if len(s.Ranges) == 0 {
		return "none"
	}
	parts := make([]string, len(s.Ranges))
	for i, r := range s.Ranges {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// normalize makes a PortSet of any and rs (which it may reorder): sorted,
// merged, deduplicated. It does not apply MaxRanges.
func normalize(any bool, rs []PortRange) PortSet {
	if any {
		return PortSet{Any: true}
	}
	if len(rs) == 0 {
		return PortSet{}
	}
	slices.SortFunc(rs, func(a, b PortRange) int {
		if a.Proto != b.Proto {
			return int(a.Proto) - int(b.Proto)
		}
		if a.Lo != b.Lo {
			return int(a.Lo) - int(b.Lo)
		}
		return int(a.Hi) - int(b.Hi)
	})
	out := make([]PortRange, 0, len(rs))
	for _, r := range rs {
		if r.Lo > r.Hi {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Proto == r.Proto && int(r.Lo) <= int(out[n-1].Hi)+1 {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	for _, r := range out {
		if r.Proto == 0 && r.Lo == 0 && r.Hi == 65535 {
			return PortSet{Any: true}
		}
	}
	return PortSet{Ranges: out}
}

// PodDir is a local pod (by IP) and a direction.
type PodDir struct {
	Pod netip.Addr
	Dir Direction
}

// Entry is the key of an entry of the LPM trie: local pod, direction and
// peer prefix (masked).
type Entry struct {
	Pod  netip.Addr
	Dir  Direction
	Peer netip.Prefix
}

// Program is the contents of the eBPF maps.
type Program struct {
	// Enforced holds the (pod, direction)s some policy selects; traffic of
	// the others is allowed.
	Enforced map[PodDir]bool
	// Entries is the LPM trie.
	Entries map[Entry]PortSet
}

// Lookup returns the longest entry of (pod, d) whose prefix contains peer.
func (p Program) Lookup(pod netip.Addr, d Direction, peer netip.Addr) (netip.Prefix, PortSet, bool) {
	pod, peer = pod.Unmap(), peer.Unmap()
	if !peer.IsValid() {
		return netip.Prefix{}, PortSet{}, false
	}
	for bits := peer.BitLen(); bits >= 0; bits-- {
		pfx, _ := peer.Prefix(bits)
		if s, ok := p.Entries[Entry{Pod: pod, Dir: d, Peer: pfx}]; ok {
			return pfx, s, true
		}
	}
	return netip.Prefix{}, PortSet{}, false
}

// Allowed says whether the eBPF program lets a packet of local pod pod in
// direction d with peer peer, protocol proto and destination port port
// through (ignoring its connection tracking): allowed when (pod, d) is not
// enforced, else when the longest entry for peer exists and its PortSet
// contains (proto, port).
func (p Program) Allowed(pod netip.Addr, d Direction, peer netip.Addr, proto uint8, port uint16) bool {
	if !p.Enforced[PodDir{Pod: pod.Unmap(), Dir: d}] {
		return true
	}
	_, s, ok := p.Lookup(pod, d, peer)
	return ok && s.Contains(proto, port)
}
