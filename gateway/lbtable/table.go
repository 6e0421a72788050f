package lbtable

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/gateway/internal/nftx"
	"github.com/straitnet/strait/gateway/lb"
)

// TableName is the nftables table of the load balancer (family ip).
const TableName = "strait-lb"

// Names of the table's maps, sets and counters.
const (
	mapPorts    = "vip_ports" // (vip . port . proto) → goto the port's chain
	mapMaglev   = "maglev"    // table ID * size + entry → (address . port)
	setRefused  = "refused"   // (vip . port . proto) without a serving backend
	setVIPs     = "vip_range" // the VIP range
	ctrBalanced = "balanced"  // new connections DNATed
	ctrRefused  = "refused"   // connections to a VIP refused
	hashSeed    = 0x5157a17   // the same on every gateway
	version     = 4           // changes whenever rules compiles to different rules
	objCounter  = 1           // NFT_OBJECT_COUNTER
	regHashIn   = 8           // saddr, sport, daddr, dport: 32-bit registers 8..11
	regNATAddr  = 1           // the 16-byte register 1: address, then port in 32-bit register 9
	regNATPort  = 9
	tcpProto    = unix.IPPROTO_TCP
)

// Mark is the packet mark bit the balancing rule sets on a connection's
// first packet, for postrouting to tell balanced connections from others
// (kube-proxy's, the ingress translation's); postrouting clears it again.
// Nothing else on a gateway may use the bit between the two hooks.
const Mark = 0x00100000

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

var (
	tAddr  = nftables.TypeIPAddr
	tPort  = nftables.TypeInetService
	tProto = nftables.TypeInetProto
)

func sets() map[string]*nftables.Set {
	return map[string]*nftables.Set{
		mapPorts: {Table: table, Name: mapPorts, IsMap: true, Concatenation: true,
			KeyType: nftables.MustConcatSetType(tAddr, tPort, tProto), DataType: nftables.TypeVerdict},
		// The key is the hash's result, which nft shows as a mark (4
		// bytes in host order).
		mapMaglev: {Table: table, Name: mapMaglev, IsMap: true,
			KeyType: nftables.TypeMark, DataType: nftables.MustConcatSetType(tAddr, tPort)},
		setRefused: {Table: table, Name: setRefused, Concatenation: true, KeyType: nftables.MustConcatSetType(tAddr, tPort, tProto)},
		setVIPs:    {Table: table, Name: setVIPs, Interval: true, KeyType: tAddr},
	}
}

var setNames = []string{mapPorts, mapMaglev, setRefused, setVIPs}

// portChain is the chain that balances one VIP port.
func portChain(id uint32) string { return fmt.Sprintf("port%d", id) }

var chainSpecs = []nftx.ChainSpec{
	// One below the NAT table's DNAT, so that a VIP is balanced first.
	{Name: "prerouting", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 1)},
	{Name: "postrouting", Type: nftables.ChainTypeNAT, Hook: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource},
	{Name: "forward", Type: nftables.ChainTypeFilter, Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter},
}

// Options for New.
type Options struct {
	// NetNS is the network namespace (a file descriptor); 0: the current.
	NetNS int
}

// Table programs the load balancer in one network namespace.
type Table struct {
	conn *nftables.Conn
	ct   *netlink.Handle
	// applied is what the kernel holds as far as this Table knows; nil
	// until the first Sync and after a failure or drift.
	applied *state
	written map[string][]string
	// maglevChecked is when Verify last compared the Maglev tables, the
	// bulk of the table, element by element.
	maglevChecked time.Time
}

// maglevCheckEvery is how often Verify reads the Maglev tables back
// (65,537 entries per VIP port); the rest it reads every time.
const maglevCheckEvery = 30 * time.Second

// New opens the table's connections; nothing is written until Sync.
func New(o Options) (*Table, error) {
	var opts []nftables.ConnOption
	var h *netlink.Handle
	var err error
	if o.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(o.NetNS))
		h, err = netlink.NewHandleAt(netns.NsHandle(o.NetNS), unix.NETLINK_NETFILTER)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	if err != nil {
		return nil, fmt.Errorf("lbtable: conntrack: %w", err)
	}
	c, err := nftx.Conn(opts...)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("lbtable: nftables: %w", err)
	}
	return &Table{conn: c, ct: h}, nil
}

// Close releases the sockets; the table stays in the kernel, and with it
// the balancing of established connections.
func (t *Table) Close() error {
	t.ct.Close()
	return t.conn.CloseLasting()
}

// state is a Program as elements, by set name, keyed for diffing.
type state struct {
	tunnel string
	size   int
	ids    []uint32 // the tables, each with its chain
	// els are the elements of the sets but the Maglev map, which is
	// tables: kept as they are, 65,537 entries each, and compared entry
	// by entry.
	els    map[string]map[string]nftables.SetElement
	tables map[uint32][]netip.AddrPort
}

// maglevElement is entry i of table id, of a table of size entries.
func maglevElement(id uint32, size, i int, to netip.AddrPort) nftables.SetElement {
	// The hash writes its register in host order.
	key := binary.NativeEndian.AppendUint32(make([]byte, 0, 4), id*uint32(size)+uint32(i))
	return nftables.SetElement{Key: key, Val: append(to.Addr().AsSlice(), port4(to.Port())...)}
}

// maglevElements are the elements of every table.
func (s state) maglevElements() []nftables.SetElement {
	var out []nftables.SetElement
	for _, id := range s.ids {
		for i, to := range s.tables[id] {
			out = append(out, maglevElement(id, s.size, i, to))
		}
	}
	return out
}

func (t *Table) index(p Program) (state, error) {
	if !p.VIPRange.IsValid() || !p.VIPRange.Addr().Is4() {
		return state{}, fmt.Errorf("lbtable: VIP range %s is not an IPv4 prefix", p.VIPRange)
	}
	s := state{tunnel: p.Tunnel, size: p.TableSize, els: map[string]map[string]nftables.SetElement{}}
	for _, n := range setNames {
		s.els[n] = map[string]nftables.SetElement{}
	}
	add := func(set string, e nftables.SetElement) {
		s.els[set][elementKey(e)] = e
	}
	for vp, id := range p.Ports {
		if !p.VIPRange.Contains(vp.VIP) {
			return state{}, fmt.Errorf("lbtable: VIP %s is outside the VIP range %s", vp.VIP, p.VIPRange)
		}
		add(mapPorts, nftables.SetElement{Key: vipPortKey(vp), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: portChain(id)}})
	}
	s.tables = p.Tables
	for id, targets := range p.Tables {
		if len(targets) != p.TableSize {
			return state{}, fmt.Errorf("lbtable: table %d has %d entries; want %d", id, len(targets), p.TableSize)
		}
		s.ids = append(s.ids, id)
		for _, to := range targets {
			if !to.Addr().Is4() {
				return state{}, fmt.Errorf("lbtable: backend %s is not IPv4", to)
			}
		}
	}
	slices.Sort(s.ids)
	for _, vp := range p.Refused {
		add(setRefused, nftables.SetElement{Key: vipPortKey(vp)})
	}
	for _, e := range nftx.Interval(p.VIPRange, nil) {
		add(setVIPs, e)
	}
	return s, nil
}

// elementKey identifies an element within its set.
func elementKey(e nftables.SetElement) string {
	if e.IntervalEnd {
		return string(e.Key) + "/end"
	}
	return string(e.Key)
}

// port4 is a port in a 4-byte register: big-endian, zero-padded.
func port4(p uint16) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint16(b, p)
	return b
}

// portProto is (port . proto) as a concatenation holds them.
func portProto(proto uint8, port uint16) []byte {
	return append(port4(port), proto, 0, 0, 0)
}

func vipPortKey(vp VIPPort) []byte {
	return append(vp.VIP.AsSlice(), portProto(vp.Proto, vp.Port)...)
}

// SyncStats says what a Sync did.
type SyncStats struct {
	Full           bool
	Added, Removed int
}

// Sync brings the kernel to p: the whole table in one transaction on the
// first call, after Forget or drift, or when the tunnel or table size
// changes; else only the elements that differ, in one transaction.
func (t *Table) Sync(p Program) (SyncStats, error) {
	want, err := t.index(p)
	if err != nil {
		return SyncStats{}, err
	}
	var st SyncStats
	if t.applied == nil || t.applied.tunnel != want.tunnel || t.applied.size != want.size {
		st.Full = true
		t.applied = nil
		if err := t.full(want); err != nil {
			return st, err
		}
		if t.written, err = nftx.ReadRules(t.conn, table, chainSpecs, version); err != nil {
			return st, fmt.Errorf("lbtable: %w", err)
		}
	} else if st.Added, st.Removed, err = t.diff(*t.applied, want); err != nil {
		t.applied = nil
		return st, err
	}
	t.applied = &want
	return st, nil
}

// Forget makes the next Sync rewrite the table whole.
func (t *Table) Forget() { t.applied = nil }

func (t *Table) full(s state) error {
	c := t.conn
	// Counters carry over a rewrite.
	counts, _ := t.Counters()
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	// Chains first: the verdict map's elements name them.
	chains := map[string]*nftables.Chain{}
	for _, sp := range chainSpecs {
		chains[sp.Name] = c.AddChain(&nftables.Chain{Name: sp.Name, Table: table, Type: sp.Type, Hooknum: sp.Hook, Priority: sp.Priority})
	}
	for _, id := range s.ids {
		chains[portChain(id)] = c.AddChain(&nftables.Chain{Name: portChain(id), Table: table})
	}
	ss := sets()
	for _, name := range setNames {
		if err := c.AddSet(ss[name], nil); err != nil {
			return fmt.Errorf("lbtable: set %s: %w", name, err)
		}
		els := slices.Collect(maps.Values(s.els[name]))
		if name == mapMaglev {
			els = s.maglevElements()
		}
		if err := nftx.AddElements(c, ss[name], els); err != nil {
			return fmt.Errorf("lbtable: %w", err)
		}
	}
	for _, name := range []string{ctrBalanced, ctrRefused} {
		c.AddObj(&nftables.CounterObj{Table: table, Name: name, Packets: counts[name].Packets, Bytes: counts[name].Bytes})
	}
	nftx.AddRules(c, table, chains, rules(s.tunnel, s.size, s.ids, ss))
	if err := c.Flush(); err != nil {
		return fmt.Errorf("lbtable: write table %s: %w", TableName, err)
	}
	return nil
}

func (t *Table) diff(old, want state) (added, removed int, err error) {
	ss := sets()
	// New VIP ports' chains first: the verdict map's new elements name
	// them. Old ones go last, once nothing names them.
	var fresh []uint32
	for _, id := range want.ids {
		if !slices.Contains(old.ids, id) {
			fresh = append(fresh, id)
		}
	}
	if len(fresh) > 0 {
		chains := map[string]*nftables.Chain{}
		var rs []nftx.Rule
		for _, id := range fresh {
			chains[portChain(id)] = t.conn.AddChain(&nftables.Chain{Name: portChain(id), Table: table})
			rs = append(rs, portRule(id, want.size))
		}
		nftx.Finish(rs, ss, version)
		nftx.AddRules(t.conn, table, chains, rs)
	}
	for _, name := range setNames {
		var add, del []nftables.SetElement
		for k, e := range want.els[name] {
			if o, ok := old.els[name][k]; !ok || string(o.Val) != string(e.Val) || fmt.Sprint(o.VerdictData) != fmt.Sprint(e.VerdictData) {
				if ok {
					del = append(del, o)
				}
				add = append(add, e)
			}
		}
		for k, o := range old.els[name] {
			if _, ok := want.els[name][k]; !ok {
				del = append(del, o)
			}
		}
		if name == mapMaglev {
			add, del = diffTables(old, want)
		}
		if err := nftx.DeleteElements(t.conn, ss[name], del); err != nil {
			return 0, 0, fmt.Errorf("lbtable: %w", err)
		}
		if err := nftx.AddElements(t.conn, ss[name], add); err != nil {
			return 0, 0, fmt.Errorf("lbtable: %w", err)
		}
		added, removed = added+len(add), removed+len(del)
	}
	chainsChanged := len(fresh) > 0
	for _, id := range old.ids {
		if !slices.Contains(want.ids, id) {
			ch := &nftables.Chain{Name: portChain(id), Table: table}
			t.conn.FlushChain(ch)
			t.conn.DelChain(ch)
			chainsChanged = true
		}
	}
	if added+removed == 0 && !chainsChanged {
		return 0, 0, nil
	}
	if err := t.conn.Flush(); err != nil {
		return 0, 0, fmt.Errorf("lbtable: update table %s: %w", TableName, err)
	}
	if chainsChanged {
		if t.written, err = nftx.ReadRules(t.conn, table, chainSpecs, version); err != nil {
			return 0, 0, fmt.Errorf("lbtable: %w", err)
		}
	}
	return added, removed, nil
}

// diffTables are the Maglev entries to add and to delete to turn old's
// tables into want's: only the entries that changed.
func diffTables(old, want state) (add, del []nftables.SetElement) {
	for id, ts := range want.tables {
		prev := old.tables[id]
		for i, to := range ts {
			if prev != nil && prev[i] == to {
				continue
			}
			if prev != nil {
				del = append(del, maglevElement(id, old.size, i, prev[i]))
			}
			add = append(add, maglevElement(id, want.size, i, to))
		}
	}
	for id, prev := range old.tables {
		if _, ok := want.tables[id]; ok {
			continue
		}
		for i, to := range prev {
			del = append(del, maglevElement(id, old.size, i, to))
		}
	}
	return add, del
}

func rules(tunnel string, size int, ids []uint32, ss map[string]*nftables.Set) []nftx.Rule {
	payload := func(reg, off, n uint32, base expr.PayloadBase) *expr.Payload {
		return &expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: n}
	}
	net, th := expr.PayloadBaseNetworkHeader, expr.PayloadBaseTransportHeader
	counter := func(name string) *expr.Objref { return &expr.Objref{Type: objCounter, Name: name} }
	vip := []expr.Any{
		payload(1, nftx.OffDaddr, 4, net),
		&expr.Lookup{SourceRegister: 1, SetName: setVIPs},
	}
	out := []nftx.Rule{
		{Chain: "prerouting", Comment: "a VIP port: to its Maglev table",
			Exprs: []expr.Any{
				payload(regHashIn, nftx.OffDaddr, 4, net),
				payload(regHashIn+1, 2, 2, th),
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regHashIn + 2},
				&expr.Lookup{SourceRegister: regHashIn, DestRegister: 0, IsDestRegSet: true, SetName: mapPorts},
			}},
		{Chain: "postrouting", Comment: "balanced for another site (a hub): clear the mark, masquerade, so that replies come back",
			Exprs: slices.Concat(
				nftx.MatchIfname(expr.MetaKeyIIFNAME, tunnel),
				takeMark(),
				[]expr.Any{&expr.Masq{}},
			)},
		{Chain: "postrouting", Comment: "balanced: clear the mark; to a backend of this site, masquerade, so that replies come back",
			Exprs: slices.Concat(
				takeMark(),
				nftx.NotIfname(expr.MetaKeyOIFNAME, tunnel),
				[]expr.Any{&expr.Masq{}},
			)},
		{Chain: "forward", Comment: "refuse TCP to a VIP not balanced: reset",
			Exprs: slices.Concat(vip, []expr.Any{
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpProto}},
				counter(ctrRefused),
				&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
			})},
		{Chain: "forward", Comment: "refuse the rest to a VIP not balanced: ICMP port unreachable",
			Exprs: slices.Concat(vip, []expr.Any{
				counter(ctrRefused),
				&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3},
			})},
	}
	for _, id := range ids {
		out = append(out, portRule(id, size))
	}
	nftx.Finish(out, ss, version)
	return out
}

// takeMark matches a packet that carries Mark, and clears it.
func takeMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 2, Len: 4, Mask: nftx.U32(Mark), Xor: nftx.U32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 2, Data: nftx.U32(Mark)},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nftx.U32(^uint32(Mark)), Xor: nftx.U32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// portRule balances one VIP port over its Maglev table: it marks the
// packet for postrouting, hashes the 5-tuple to one of the table's
// entries and DNATs to the entry's backend.
func portRule(id uint32, size int) nftx.Rule {
	net, th := expr.PayloadBaseNetworkHeader, expr.PayloadBaseTransportHeader
	payload := func(reg, off, n uint32, base expr.PayloadBase) *expr.Payload {
		return &expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: n}
	}
	return nftx.Rule{Chain: portChain(id), Comment: fmt.Sprintf("Maglev table %d: the 5-tuple's entry to its backend", id),
		Exprs: []expr.Any{
			&expr.Objref{Type: objCounter, Name: ctrBalanced},
			// Only a connection's first packet passes the NAT chains.
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: nftx.U32(^uint32(Mark)), Xor: nftx.U32(Mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			payload(regHashIn, nftx.OffSaddr, 4, net),
			payload(regHashIn+1, 0, 2, th),
			payload(regHashIn+2, nftx.OffDaddr, 4, net),
			payload(regHashIn+3, 2, 2, th),
			&expr.Hash{SourceRegister: regHashIn, DestRegister: 1, Length: 16, Modulus: uint32(size), Seed: hashSeed,
				Offset: id * uint32(size), Type: expr.HashTypeJenkins},
			&expr.Lookup{SourceRegister: 1, DestRegister: regNATAddr, IsDestRegSet: true, SetName: mapMaglev},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: regNATAddr, RegAddrMax: regNATAddr,
				RegProtoMin: regNATPort, RegProtoMax: regNATPort, Specified: true},
		}}
}

// Counter is a named counter's value.
type Counter struct{ Packets, Bytes uint64 }

// Counters reads the table's counters: "balanced" (connections DNATed to
// a backend) and "refused" (connections to a VIP refused).
func (t *Table) Counters() (map[string]Counter, error) {
	objs, err := nftx.Counters(t.conn, table)
	if err != nil {
		return nil, fmt.Errorf("lbtable: %w", err)
	}
	out := map[string]Counter{}
	for name, c := range objs {
		out[name] = Counter{Packets: c.Packets, Bytes: c.Bytes}
	}
	return out, nil
}

// Verify reports whether the kernel still holds what the last Sync wrote:
// the table, live; its chains and rules; the elements of every map, the
// Maglev tables' at most every maglevCheckEvery. If not, the next Sync
// rewrites the table whole.
func (t *Table) Verify() (bool, error) {
	if t.applied == nil {
		return false, nil
	}
	ok := t.verify(*t.applied)
	if !ok {
		t.applied = nil
	}
	return ok, nil
}

func (t *Table) verify(s state) bool {
	if !nftx.Live(t.conn, table) {
		return false
	}
	got, err := nftx.ReadRules(t.conn, table, chainSpecs, version)
	if err != nil || len(got) != len(t.written) {
		return false
	}
	for name, lines := range t.written {
		if !slices.Equal(got[name], lines) {
			return false
		}
	}
	ss := sets()
	if time.Since(t.maglevChecked) > maglevCheckEvery {
		els, err := t.conn.GetSetElements(ss[mapMaglev])
		if err != nil || !nftx.SameElements(els, s.maglevElements()) {
			return false
		}
		t.maglevChecked = time.Now()
	}
	for _, name := range setNames {
		if name == mapMaglev {
			continue
		}
		els, err := t.conn.GetSetElements(ss[name])
		if err != nil {
			return false
		}
		switch name {
		case mapMaglev:
			continue // below, now and then
		case mapPorts:
			if !nftx.SameVerdicts(els, slices.Collect(maps.Values(s.els[name]))) {
				return false
			}
			continue
		}
		if !nftx.SameElements(els, slices.Collect(maps.Values(s.els[name]))) {
			return false
		}
	}
	return true
}

// Remove deletes the table, if it exists.
func (t *Table) Remove() error {
	t.applied = nil
	if err := nftx.RemoveTable(t.conn, table); err != nil {
		return fmt.Errorf("lbtable: %w", err)
	}
	return nil
}

// Flush deletes the conntrack entries of connections to each VIP that were
// balanced to the backend: the backend no longer serves, and the clients'
// next packets should find one that does (TCP through a reset from the
// new backend, UDP at once). It returns how many entries it deleted.
func (t *Table) Flush(gone []lb.VIPBackend) (int, error) {
	if len(gone) == 0 {
		return 0, nil
	}
	var filters []netlink.CustomConntrackFilter
	for _, g := range gone {
		f := &netlink.ConntrackFilter{}
		if err := errors.Join(
			f.AddIP(netlink.ConntrackOrigDstIP, net.IP(g.VIP.AsSlice())),
			f.AddIP(netlink.ConntrackReplySrcIP, net.IP(g.Backend.AsSlice())),
		); err != nil {
			return 0, fmt.Errorf("lbtable: conntrack filter: %w", err)
		}
		filters = append(filters, f)
	}
	n, err := t.ct.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.FAMILY_V4, filters...)
	if err != nil {
		return int(n), fmt.Errorf("lbtable: flushing conntrack: %w", err)
	}
	return int(n), nil
}
