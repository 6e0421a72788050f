// Package lbtable programs a gateway's load balancer into nftables: one
// table, "ip strait-lb", whose per-connection cost does not grow with the
// number of global services or backends.
//
//   - prerouting: a new connection to a VIP port finds its Maglev table by
//     (VIP, port, protocol), hashes its 5-tuple (jhash) to an entry of
//     that table, the entry to a backend slot, and the slot and port to
//     the backend's address and port, and is DNATed there. conntrack keeps
//     every later packet of the connection on that backend, whatever the
//     tables become.
//   - postrouting: connections balanced to a backend of this site (not
//     through the tunnel) are masqueraded, so that the backend's replies
//     come back through the gateway.
//   - forward: what is still addressed to the VIP range was not balanced:
//     a VIP port whose service has no serving backend, or no service at
//     all. It is refused, TCP with a reset and the rest with ICMP port
//     unreachable, and counted: no black hole.
//
// A change of backends or health is a change of map elements applied as
// one transaction; Flush removes the conntrack entries of backends that
// stopped serving, so that their clients start over elsewhere.
package lbtable

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/straitnet/strait/gateway/lb"
)

// Program is what the table holds.
type Program struct {
	// Tunnel is the WireGuard device: balanced connections that leave
	// through anything else are masqueraded.
	Tunnel string
	// VIPRange is the mesh's VIP range.
	VIPRange netip.Prefix
	// TableSize is the size of every Maglev table (prime).
	TableSize int
	// Ports map a VIP port to its Maglev table's ID.
	Ports map[VIPPort]uint32
	// Tables map a table ID to where each of its entries leads.
	Tables map[uint32][]netip.AddrPort
	// Refused are VIP ports whose service has no serving backend.
	Refused []VIPPort
}

// VIPPort is a port of a VIP.
type VIPPort struct {
	VIP   netip.Addr
	Proto uint8
	Port  uint16
}

// maxTables bounds table IDs: each table's entries are keyed from
// ID*TableSize, which must fit 32 bits.
const maxTables = 1 << 15

// IDs keeps table IDs stable while their VIP port stays, so that a
// health change rewrites only the entries that move. The zero value is
// ready.
type IDs struct {
	ids  map[VIPPort]uint32
	size int // the table size the IDs were given for
}

// Compile turns the plan into the table's program. ids keeps table IDs
// from one program to the next.
func Compile(tunnel string, vipRange netip.Prefix, size int, svcs []lb.Service, ids *IDs) (Program, error) {
	p := Program{Tunnel: tunnel, VIPRange: vipRange, TableSize: size,
		Ports: map[VIPPort]uint32{}, Tables: map[uint32][]netip.AddrPort{}}
	if ids.ids == nil || ids.size != size {
		// Another size is a whole new table: IDs start over, and
		// each one's entries (ID*size on) must fit 32 bits.
		ids.ids, ids.size = map[VIPPort]uint32{}, size
	}
	type port struct {
		vp VIPPort
		g  lb.Group
		pk lb.PortKey
	}
	var ports []port
	for _, s := range svcs {
		for _, g := range s.Groups {
			for _, pk := range g.Ports {
				vp := VIPPort{s.VIP, pk.Proto, pk.Port}
				if g.Table == nil {
					p.Refused = append(p.Refused, vp)
					continue
				}
				if len(g.Table) != size {
					return Program{}, fmt.Errorf("lbtable: %s: a table of %d entries; want %d", s.Key, len(g.Table), size)
				}
				ports = append(ports, port{vp, g, pk})
			}
		}
	}
	keep := map[VIPPort]bool{}
	used := map[uint32]bool{}
	for _, pt := range ports {
		keep[pt.vp] = true
		if id, ok := ids.ids[pt.vp]; ok {
			used[id] = true
		}
	}
	maps.DeleteFunc(ids.ids, func(vp VIPPort, _ uint32) bool { return !keep[vp] })
	next := uint32(0)
	for _, pt := range ports {
		id, ok := ids.ids[pt.vp]
		if !ok {
			for next++; used[next]; next++ {
			}
			if next >= maxTables || uint64(next+1)*uint64(size) > 1<<32 {
				return Program{}, fmt.Errorf("lbtable: %d VIP ports of %d-entry tables do not fit: fewer ports, or a smaller loadBalancer.tableSize", len(ports), size)
			}
			id, used[next] = next, true
			ids.ids[pt.vp] = id
		}
		p.Ports[pt.vp] = id
		targets := make([]netip.AddrPort, size)
		for i, b := range pt.g.Table {
			be := pt.g.Backends[b]
			targets[i] = netip.AddrPortFrom(be.Addr, be.Ports[pt.pk])
		}
		p.Tables[id] = targets
	}
	slices.SortFunc(p.Refused, func(a, b VIPPort) int {
		return cmp.Or(a.VIP.Compare(b.VIP), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	return p, nil
}
