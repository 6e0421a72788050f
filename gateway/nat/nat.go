// Package nat programs the gateway's address translation into nftables:
// one table, "ip strait", whose per-packet cost does not grow with the
// number of services or pods.
//
//   - Ingress: one rule DNATs what arrives through the tunnel by a map
//     keyed by (global address, protocol, port) to (backend, port); a
//     second sends ICMP echo requests to a service address to its
//     backend, so that the address answers ping.
//   - Egress: two rules SNAT what leaves through the tunnel toward
//     destinations that need translation, by a map keyed by pod address
//     (egress rules) and then by an interval map keyed by source prefix
//     (the site's default).
//   - TCP SYNs into the tunnel get their MSS clamped to the route's MTU.
//
// conntrack keeps replies, and ICMP errors about a flow, on the same
// translation. A change of services or pods is a change of map elements,
// applied as a difference in one transaction; the rules are rewritten only
// when they change (another tunnel name, an upgrade). Verify tells drift
// (someone flushed the table, edited a rule or an element) from the
// programmed state.
package nat

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/gateway/internal/nftx"
)

// TableName is the nftables table strait owns (family ip).
const TableName = "strait"

// Names of the table's maps and sets, as `nft list table ip strait` shows them.
const (
	mapServices   = "services"
	mapEcho       = "service_echo"
	mapEgressPods = "egress_by_pod"
	mapEgressNets = "egress_by_cidr"
	setTranslated = "translated_destinations"
)

// Service is one ingress mapping: (Addr, Proto, Port) to (Backend, BackendPort).
type Service struct {
	Addr        netip.Addr
	Proto       uint8
	Port        uint16
	Backend     netip.Addr
	BackendPort uint16
}

// serviceKey packs (address, protocol, port) into one word: maps of 10,000
// services hash and compare it several times faster than a struct holding
// a netip.Addr, which keeps a one-element change cheap.
type serviceKey uint64

func newServiceKey(a netip.Addr, proto uint8, port uint16) serviceKey {
	return serviceKey(uint64(addr32(a))<<24 | uint64(proto)<<16 | uint64(port))
}

func (k serviceKey) addr() netip.Addr { return addrOf(uint32(k >> 24)) }
func (k serviceKey) proto() uint8     { return uint8(k >> 16) }
func (k serviceKey) port() uint16     { return uint16(k) }

// serviceVal packs (backend, port) the same way.
type serviceVal uint64

func newServiceVal(a netip.Addr, port uint16) serviceVal {
	return serviceVal(uint64(addr32(a))<<16 | uint64(port))
}

func (v serviceVal) addr() netip.Addr { return addrOf(uint32(v >> 16)) }
func (v serviceVal) port() uint16     { return uint16(v) }

func addr32(a netip.Addr) uint32 { return binary.BigEndian.Uint32(a.AsSlice()) }

func addrOf(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// EgressNet maps a source prefix to the address its traffic leaves as.
type EgressNet struct {
	Source netip.Prefix
	As     netip.Addr
}

// Program is the translation a gateway applies.
type Program struct {
	// Tunnel is the WireGuard device: translation applies only to what
	// enters or leaves the mesh through it.
	Tunnel string
	// Services are the ingress mappings.
	Services []Service
	// EgressPods maps single pods to the address they leave as.
	EgressPods map[netip.Addr]netip.Addr
	// EgressNets maps source prefixes (the site's real CIDRs) to the
	// address the rest leaves as. They must not overlap.
	EgressNets []EgressNet
	// Translated are the destinations toward which sources are
	// translated; toward the rest they keep their real addresses.
	Translated []netip.Prefix
}

// state is a Program indexed for diffing.
type state struct {
	tunnel     string
	services   map[serviceKey]serviceVal
	echo       map[uint32]uint32 // service address to backend
	egressPods map[netip.Addr]netip.Addr
	egressNets map[netip.Prefix]netip.Addr
	translated map[netip.Prefix]bool
}

func index(p Program) (state, error) {
	s := state{
		tunnel:     p.Tunnel,
		services:   make(map[serviceKey]serviceVal, len(p.Services)),
		echo:       make(map[uint32]uint32, len(p.Services)),
		egressPods: maps.Clone(p.EgressPods),
		egressNets: map[netip.Prefix]netip.Addr{},
		translated: map[netip.Prefix]bool{},
	}
	if s.egressPods == nil {
		s.egressPods = map[netip.Addr]netip.Addr{}
	}
	for _, sv := range p.Services {
		if !sv.Addr.Is4() || !sv.Backend.Is4() {
			return state{}, fmt.Errorf("nat: service %s -> %s: only IPv4 so far", sv.Addr, sv.Backend)
		}
		k, v := newServiceKey(sv.Addr, sv.Proto, sv.Port), newServiceVal(sv.Backend, sv.BackendPort)
		if old, dup := s.services[k]; dup && old != v {
			return state{}, fmt.Errorf("nat: %s %d/%d maps to both %s:%d and %s:%d", sv.Addr, sv.Port, sv.Proto, old.addr(), old.port(), sv.Backend, sv.BackendPort)
		}
		s.services[k] = v
		// An address whose ports lead to several backends answers no
		// ping: which backend would be a guess (0 marks that).
		sa, ba := addr32(sv.Addr), addr32(sv.Backend)
		if b, seen := s.echo[sa]; !seen {
			s.echo[sa] = ba
		} else if b != ba {
			s.echo[sa] = 0
		}
	}
	maps.DeleteFunc(s.echo, func(_, b uint32) bool { return b == 0 })
	for _, e := range p.EgressNets {
		for q := range s.egressNets {
			if q.Overlaps(e.Source) {
				return state{}, fmt.Errorf("nat: egress sources %s and %s overlap", q, e.Source)
			}
		}
		s.egressNets[e.Source.Masked()] = e.As
	}
	for _, d := range p.Translated {
		s.translated[d.Masked()] = true
	}
	return s, nil
}

// Table programs the table in one network namespace.
type Table struct {
	conn *nftables.Conn
	// applied is what the kernel holds as far as this Table knows; nil
	// until the first Sync, and after a failure or detected drift, which
	// makes the next Sync rewrite the table whole.
	applied *state
	// written is the table's rules as the kernel returned them right
	// after they were written, by chain: comment and a digest of the
	// expressions read back. Verify compares later reads with it.
	written map[string][]string
}

// New returns a Table for the namespace the options name (the current one
// by default; nftables.WithNetNSFd for another).
func New(opts ...nftables.ConnOption) (*Table, error) {
	c, err := nftx.Conn(opts...)
	if err != nil {
		return nil, fmt.Errorf("nat: nftables: %w", err)
	}
	return &Table{conn: c}, nil
}

// Close releases the netlink socket; the table stays in the kernel.
func (t *Table) Close() error { return t.conn.CloseLasting() }

// Forget makes the next Sync rewrite the table whole.
func (t *Table) Forget() { t.applied = nil }

// SyncStats says what a Sync did.
type SyncStats struct {
	Full             bool // the table was rewritten whole
	Added, Removed   int  // elements, when not
	ServiceElements  int  // services in the map afterwards
	EgressPodEntries int
}

// Sync brings the kernel to p: the whole table in one transaction on the
// first call or after Forget, else only the elements that differ, also in
// one transaction. Packets see the old state or the new, never a mix;
// established flows keep their translation, which lives in conntrack.
func (t *Table) Sync(p Program) (SyncStats, error) {
	want, err := index(p)
	if err != nil {
		return SyncStats{}, err
	}
	st := SyncStats{ServiceElements: len(want.services), EgressPodEntries: len(want.egressPods)}
	if t.applied == nil || t.applied.tunnel != want.tunnel {
		st.Full = true
		t.applied = nil
		if err := t.full(want); err != nil {
			return st, err
		}
		if t.written, err = nftx.ReadRules(t.conn, table, chainSpecs, programVersion); err != nil {
			return st, err
		}
	} else {
		st.Added, st.Removed, err = t.diff(*t.applied, want)
		if err != nil {
			t.applied = nil
			return st, err
		}
	}
	t.applied = &want
	return st, nil
}

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

// The table's sets, by name.
func sets() map[string]*nftables.Set {
	return map[string]*nftables.Set{
		mapServices: {Table: table, Name: mapServices, IsMap: true, Concatenation: true,
			KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
			DataType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)},
		mapEcho:       {Table: table, Name: mapEcho, IsMap: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeIPAddr},
		mapEgressPods: {Table: table, Name: mapEgressPods, IsMap: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeIPAddr},
		mapEgressNets: {Table: table, Name: mapEgressNets, IsMap: true, Interval: true, KeyType: nftables.TypeIPAddr, DataType: nftables.TypeIPAddr},
		setTranslated: {Table: table, Name: setTranslated, Interval: true, KeyType: nftables.TypeIPAddr},
	}
}

// setNames are the table's sets in the order they are listed.
var setNames = []string{mapServices, mapEcho, mapEgressPods, mapEgressNets, setTranslated}

// full rewrites the table in one transaction.
func (t *Table) full(s state) error {
	c := t.conn
	// Adding before deleting makes the delete succeed whether or not the
	// table exists; the whole batch commits as one transaction.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	ss := sets()
	for _, name := range setNames {
		if err := c.AddSet(ss[name], nil); err != nil {
			return fmt.Errorf("nat: set %s: %w", name, err)
		}
	}
	if err := t.addElements(ss, elementsOf(s)); err != nil {
		return err
	}
	chains := map[string]*nftables.Chain{}
	for _, sp := range chainSpecs {
		chains[sp.Name] = c.AddChain(&nftables.Chain{Name: sp.Name, Table: table, Type: sp.Type, Hooknum: sp.Hook, Priority: sp.Priority})
	}
	nftx.AddRules(c, table, chains, rules(s.tunnel, ss))
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nat: write table %s: %w", TableName, err)
	}
	return nil
}

// elements is the content of the sets, by set name.
type elements map[string][]nftables.SetElement

func elementsOf(s state) elements {
	e := elements{}
	for _, k := range slices.Sorted(maps.Keys(s.services)) {
		e[mapServices] = append(e[mapServices], serviceElement(k, s.services[k]))
	}
	for _, a := range slices.Sorted(maps.Keys(s.echo)) {
		e[mapEcho] = append(e[mapEcho], echoElement(a, s.echo[a]))
	}
	for _, a := range slices.SortedFunc(maps.Keys(s.egressPods), netip.Addr.Compare) {
		e[mapEgressPods] = append(e[mapEgressPods], nftables.SetElement{Key: a.AsSlice(), Val: s.egressPods[a].AsSlice()})
	}
	for _, p := range slices.SortedFunc(maps.Keys(s.egressNets), netip.Prefix.Compare) {
		e[mapEgressNets] = append(e[mapEgressNets], nftx.Interval(p, s.egressNets[p].AsSlice())...)
	}
	for _, p := range slices.SortedFunc(maps.Keys(s.translated), netip.Prefix.Compare) {
		e[setTranslated] = append(e[setTranslated], nftx.Interval(p, nil)...)
	}
	return e
}

// serviceElement encodes a concatenation the way nft does: every part
// padded to a 4-byte register, ports in network order.
func serviceElement(k serviceKey, v serviceVal) nftables.SetElement {
	key := make([]byte, 12)
	binary.BigEndian.PutUint32(key, uint32(k>>24))
	key[4] = k.proto()
	binary.BigEndian.PutUint16(key[8:], k.port())
	val := make([]byte, 8)
	binary.BigEndian.PutUint32(val, uint32(v>>16))
	binary.BigEndian.PutUint16(val[4:], v.port())
	return nftables.SetElement{Key: key, Val: val}
}

func echoElement(addr, backend uint32) nftables.SetElement {
	k, v := make([]byte, 4), make([]byte, 4)
	binary.BigEndian.PutUint32(k, addr)
	binary.BigEndian.PutUint32(v, backend)
	return nftables.SetElement{Key: k, Val: v}
}

func (t *Table) addElements(ss map[string]*nftables.Set, e elements) error {
	for _, name := range slices.Sorted(maps.Keys(e)) {
		if err := nftx.AddElements(t.conn, ss[name], e[name]); err != nil {
			return fmt.Errorf("nat: %w", err)
		}
	}
	return nil
}

// diff applies the elements that differ between two states in one
// transaction and returns how many it added and removed.
func (t *Table) diff(old, want state) (added, removed int, err error) {
	add, del := elements{}, elements{}
	for k, v := range want.services {
		if ov, ok := old.services[k]; !ok || ov != v {
			if ok {
				del[mapServices] = append(del[mapServices], serviceElement(k, ov))
			}
			add[mapServices] = append(add[mapServices], serviceElement(k, v))
		}
	}
	for k, v := range old.services {
		if _, ok := want.services[k]; !ok {
			del[mapServices] = append(del[mapServices], serviceElement(k, v))
		}
	}
	for a, v := range want.echo {
		if ov, ok := old.echo[a]; !ok || ov != v {
			if ok {
				del[mapEcho] = append(del[mapEcho], echoElement(a, ov))
			}
			add[mapEcho] = append(add[mapEcho], echoElement(a, v))
		}
	}
	for a, v := range old.echo {
		if _, ok := want.echo[a]; !ok {
			del[mapEcho] = append(del[mapEcho], echoElement(a, v))
		}
	}
	diffAddrs(mapEgressPods, old.egressPods, want.egressPods, add, del)
	// Intervals: a changed one is removed whole and added whole.
	for p, v := range want.egressNets {
		if ov, ok := old.egressNets[p]; !ok || ov != v {
			if ok {
				del[mapEgressNets] = append(del[mapEgressNets], nftx.Interval(p, ov.AsSlice())...)
			}
			add[mapEgressNets] = append(add[mapEgressNets], nftx.Interval(p, v.AsSlice())...)
		}
	}
	for p, v := range old.egressNets {
		if _, ok := want.egressNets[p]; !ok {
			del[mapEgressNets] = append(del[mapEgressNets], nftx.Interval(p, v.AsSlice())...)
		}
	}
	for p := range want.translated {
		if !old.translated[p] {
			add[setTranslated] = append(add[setTranslated], nftx.Interval(p, nil)...)
		}
	}
	for p := range old.translated {
		if !want.translated[p] {
			del[setTranslated] = append(del[setTranslated], nftx.Interval(p, nil)...)
		}
	}
	for _, els := range add {
		added += len(els)
	}
	for _, els := range del {
		removed += len(els)
	}
	if added+removed == 0 {
		return 0, 0, nil
	}
	ss := sets()
	for _, name := range slices.Sorted(maps.Keys(del)) {
		if err := nftx.DeleteElements(t.conn, ss[name], del[name]); err != nil {
			return 0, 0, fmt.Errorf("nat: %w", err)
		}
	}
	if err := t.addElements(ss, add); err != nil {
		return 0, 0, err
	}
	if err := t.conn.Flush(); err != nil {
		return 0, 0, fmt.Errorf("nat: update table %s: %w", TableName, err)
	}
	return added, removed, nil
}

// diffAddrs adds to add and del what turns map old into map want, for a
// map of addresses to addresses.
func diffAddrs(name string, old, want map[netip.Addr]netip.Addr, add, del elements) {
	for a, v := range want {
		if ov, ok := old[a]; !ok || ov != v {
			if ok {
				del[name] = append(del[name], nftables.SetElement{Key: a.AsSlice(), Val: ov.AsSlice()})
			}
			add[name] = append(add[name], nftables.SetElement{Key: a.AsSlice(), Val: v.AsSlice()})
		}
	}
	for a, v := range old {
		if _, ok := want[a]; !ok {
			del[name] = append(del[name], nftables.SetElement{Key: a.AsSlice(), Val: v.AsSlice()})
		}
	}
}

var chainSpecs = []nftx.ChainSpec{
	{Name: "prerouting", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
	{Name: "postrouting", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
	{Name: "forward", Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle},
}

// programVersion changes whenever rules compiles to different rules, so
// that a gateway upgraded in place rewrites the table an older one left.
const programVersion = 3

// rules are the table's rules. Each rule's comment says what it does and
// ends with a digest of the whole rule, by which Verify recognises it.
func rules(tunnel string, ss map[string]*nftables.Set) []nftx.Rule {
	out := []nftx.Rule{
		{Chain: "prerouting", Comment: "services: global address, protocol, port to backend",
			Exprs: slices.Concat(
				nftx.MatchIfname(expr.MetaKeyIIFNAME, tunnel),
				[]expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: nftx.OffDaddr, Len: 4},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
					&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapServices},
					&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 9, RegProtoMax: 9, Specified: true},
				})},
		{Chain: "prerouting", Comment: "ping: a service address answers from its backend",
			Exprs: slices.Concat(
				nftx.MatchIfname(expr.MetaKeyIIFNAME, tunnel),
				[]expr.Any{
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
					&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}}, // echo request
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: nftx.OffDaddr, Len: 4},
					&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: mapEcho},
					&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1},
				})},
	}
	for _, m := range []struct{ set, what string }{{mapEgressPods, "pods"}, {mapEgressNets, "sources"}} {
		out = append(out, nftx.Rule{Chain: "postrouting", Comment: "egress: " + m.what + " to the address they leave as",
			Exprs: slices.Concat(
				nftx.MatchIfname(expr.MetaKeyOIFNAME, tunnel),
				[]expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: nftx.OffDaddr, Len: 4},
					&expr.Lookup{SourceRegister: 1, SetName: setTranslated},
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: nftx.OffSaddr, Len: 4},
					&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: m.set},
					&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1},
				})})
	}
	out = append(out, nftx.Rule{Chain: "forward", Comment: "clamp TCP MSS to the tunnel MTU",
		Exprs: append(nftx.MatchIfname(expr.MetaKeyOIFNAME, tunnel), clampMSS()...)})
	nftx.Finish(out, ss, programVersion)
	return out
}

// Verify reports whether the kernel still holds what the last Sync wrote:
// the table, not switched off (dormant); the base chains (type, hook,
// priority, policy); the rules in order, each with its comment and, as far
// as the nftables library decodes them, its expressions (rt and byteorder
// it does not); and every element of every map and set. If not, it forgets
// the applied state, so that the next Sync rewrites the table whole.
// Without a Sync yet it reports false.
func (t *Table) Verify() (bool, error) {
	if t.applied == nil {
		return false, nil
	}
	ok, err := t.verify(*t.applied)
	if err != nil || !ok {
		t.applied = nil
	}
	return ok, err
}

func (t *Table) verify(s state) (bool, error) {
	if !nftx.Live(t.conn, table) {
		return false, nil // gone or switched off
	}
	got, err := nftx.ReadRules(t.conn, table, chainSpecs, programVersion)
	if err != nil {
		return false, nil
	}
	for _, sp := range chainSpecs {
		if !slices.Equal(got[sp.Name], t.written[sp.Name]) {
			return false, nil
		}
	}
	if len(got) != len(chainSpecs) {
		return false, nil // a chain more
	}
	ss := sets()
	// Elements: compare as sets of encoded (key, value, end) triples.
	want := elementsOf(s)
	for _, name := range setNames {
		els, err := t.conn.GetSetElements(ss[name])
		if err != nil {
			return false, nil // the set is gone
		}
		if !nftx.SameElements(els, want[name]) {
			return false, nil
		}
	}
	return true, nil
}

// Remove deletes the table, if it exists.
func (t *Table) Remove() error {
	t.applied = nil
	if err := nftx.RemoveTable(t.conn, table); err != nil {
		return fmt.Errorf("nat: %w", err)
	}
	return nil
}

// clampMSS is "tcp flags syn / syn,rst tcp option maxseg size set rt mtu".
func clampMSS() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02 | 0x04}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}
