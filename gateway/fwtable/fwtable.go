// Package fwtable writes the mesh firewall (a firewall.Program) into
// nftables: one table, "ip strait-fw", whose cost per packet does not grow
// with the number of rules.
//
// Only new connections that enter from the mesh (iifname is the tunnel,
// ct state new) are looked at; established ones, replies, and what does
// not come from the tunnel pass untouched. For those, the base chain
// "forward" looks the source address up in the interval map "sources"
// and jumps to the chain s<class> of its source class, which
//
//  1. looks "daddr . l4proto . th dport" up in the map d<class> (the
//     destinations of the class's pairs) and jumps to the chain of that
//     (source class, destination class) pair, if any;
//  2. else jumps to the chain of (source class, 0), the rules without
//     destinations, if any;
//  3. else returns, and "forward" applies the default: counter "default",
//     and for deny a sampled log and a reject.
//
// Each program chain is a regular chain v<N> that counts the connection in
// the named counter of each rule it lists (r<index>), then accepts, or
// logs a sample (NFLOG group LogGroup, prefix LogPrefix(index)) and
// rejects: a TCP reset for TCP, ICMP administratively prohibited for the
// rest. The set "rule_names" names the counters: rule indexes, each with
// the rule's name as its comment, so that a gateway that restarts carries
// the counters over by name.
//
// Why not one map of addresses to source classes, one of destinations to
// destination classes, and one verdict map keyed by both classes, loaded
// side by side in registers: nft has no syntax for a concatenation of map
// lookups, and nft 1.0.6 aborts listing one (an assertion in
// netlink_parse_concat_expr), which would break `nft list ruleset` on
// every gateway. Why a map of destinations per source class rather than
// one keyed by "destination . class": the kernel validates a table by
// walking, for every chain that reaches a verdict map, all of the map's
// elements; a thousand source chains sharing one map of 30,000 elements
// made a commit take seconds. A destination class's keys are each an
// element of every map whose class pairs with it.
//
// Policies change rarely: Sync rewrites the whole table in one transaction
// whenever the program or the tunnel changes, and creates the new counters
// with the packets and bytes of the old ones of the same rule name
// (connections counted between the read and the commit are lost). Verify
// tells drift (someone flushed the table, edited a rule, deleted an
// element) from the programmed state, so that the next Sync rewrites it.
package fwtable

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/firewall"
	"github.com/straitnet/strait/gateway/internal/nftx"
)

// TableName is the nftables table of the mesh firewall (family ip).
const TableName = "strait-fw"

// LogGroup is the NFLOG group of the sampled deny logs.
const LogGroup = 7100

// Sampling of the deny logs, per rule: LogRate packets a second, LogBurst
// at once.
const (
	LogRate  = 10
	LogBurst = 20
)

// DefaultCounter is the counter (and Counters key) of the connections no
// rule decides.
const DefaultCounter = "default"

// LogPrefixFormat is the prefix of a rule's deny logs; the number is the
// rule's index in Program.Rules. DefaultLogPrefix is that of the default.
const (
	LogPrefixFormat  = "strait-deny %d "
	DefaultLogPrefix = "strait-deny default "
)

// LogPrefix is the prefix of the deny logs of rule i.
func LogPrefix(i int) string { return fmt.Sprintf(LogPrefixFormat, i) }

// ParseLogPrefix reads a deny log's prefix: the index of the rule in
// Program.Rules, or -1 for the default.
func ParseLogPrefix(prefix string) (rule int, ok bool) {
	rest, found := strings.CutPrefix(prefix, "strait-deny ")
	if !found {
		return 0, false
	}
	rest = strings.TrimSpace(rest)
	if rest == "default" {
		return -1, true
	}
	i, err := strconv.Atoi(rest)
	if err != nil || i < 0 {
		return 0, false
	}
	return i, true
}

// Counter is what a rule counted: the new connections it matched (their
// first packets) and their bytes.
type Counter struct {
	Packets, Bytes uint64
}

// SyncStats says what a Sync did.
type SyncStats struct {
	// Full says the table was written whole; false, it was up to date.
	Full bool
	// What the table holds: rules (counters), chains (one per program
	// chain, one per source class), maps of destinations (one per source
	// class that has some), and elements.
	Rules, Chains, SourceChains, DestMaps, SourceElements, DestElements int
	// Carried counts the counters carried over from the table before.
	Carried int
}

// Names of the table's maps and chains, as `nft list table ip strait-fw`
// shows them.
const (
	mapSources   = "sources"
	chainForward = "forward"
	setNames     = "rule_names"
)

// version changes whenever the same program compiles to other rules, so
// that a gateway upgraded in place rewrites the table an older one left.
const version = 1

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

var specs = []nftx.ChainSpec{{Name: chainForward, Type: nftables.ChainTypeFilter,
	Hook: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter}}

// Table programs the firewall table in one network namespace. It is not
// safe for concurrent use.
type Table struct {
	conn *nftables.Conn
	// applied is what the kernel holds as far as this Table knows; nil
	// until the first Sync, and after a failure or detected drift, which
	// makes the next Sync rewrite the table.
	applied *state
	// written is the table's rules as the kernel returned them right
	// after they were written, by chain (see nftx.ReadRules).
	written map[string][]string
	// checked is the ruleset generation at which the kernel last held
	// the applied state (see nftx.Generation); zero if unknown.
	checked uint32
}

// state is a program as written.
type state struct {
	digest [32]byte
	names  []string // rule names by index
	layout layout
	stats  SyncStats // what the Sync that wrote it said, but Full
}

// New returns a Table for the namespace the options name (the current one
// by default; nftables.WithNetNSFd for another).
func New(opts ...nftables.ConnOption) (*Table, error) {
	c, err := nftx.Conn(opts...)
	if err != nil {
		return nil, fmt.Errorf("fwtable: nftables: %w", err)
	}
	return &Table{conn: c}, nil
}

// Close releases the netlink socket; the table stays in the kernel.
func (t *Table) Close() error { return t.conn.CloseLasting() }

// Sync brings the kernel to program p for connections from tunnel: if
// either changed since the last Sync, or the table drifted, it rewrites
// the table whole in one transaction, carrying the counters over by rule
// name. Packets see the old table or the new, never a mix; established
// connections are not looked at again.
func (t *Table) Sync(tunnel string, p firewall.Program) (SyncStats, error) {
	if err := validate(tunnel, p); err != nil {
		return SyncStats{}, err
	}
	d := digest(tunnel, p)
	if t.applied != nil && t.applied.digest == d {
		return t.applied.stats, nil
	}
	l := layoutOf(p)
	st := SyncStats{Rules: len(p.Rules), Chains: len(p.Chains), SourceChains: len(l.classes),
		SourceElements: len(l.elements[mapSources]), DestMaps: len(l.maps) - 1}
	for _, name := range l.maps[1:] {
		st.DestElements += len(l.elements[name])
	}
	// Counters that cannot be read start over: enforcing the program
	// matters more.
	dflt, counts, carried, _ := t.carry(p.Rules)
	t.applied, t.checked = nil, 0
	if err := t.write(tunnel, p, l, dflt, counts); err != nil {
		return st, err
	}
	// The generation before the read: a change after it is drift.
	gen, _ := nftx.Generation(t.conn)
	var err error
	if t.written, err = nftx.ReadRules(t.conn, table, specs, version); err != nil {
		return st, fmt.Errorf("fwtable: read back: %w", err)
	}
	t.applied = &state{digest: d, names: ruleNames(p.Rules), layout: l, stats: st}
	t.checked = gen
	st.Full, st.Carried = true, carried
	return st, nil
}

func ruleNames(rs []firewall.RuleInfo) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.Name
	}
	return out
}

// validate checks what the table relies on; Compile's programs pass.
func validate(tunnel string, p firewall.Program) error {
	if tunnel == "" || len(tunnel) >= unix.IFNAMSIZ {
		return fmt.Errorf("fwtable: tunnel %q is not an interface name (1 to %d bytes)", tunnel, unix.IFNAMSIZ-1)
	}
	if p.Default != meshpolicy.Allow && p.Default != meshpolicy.Deny {
		return fmt.Errorf("fwtable: default action %q is not allow or deny", p.Default)
	}
	for i, s := range p.Sources {
		if !s.First.Is4() || !s.Last.Is4() || s.Last.Less(s.First) || s.Class == 0 {
			return fmt.Errorf("fwtable: source range %d (%s-%s class %d) is not an IPv4 interval of a class above 0", i, s.First, s.Last, s.Class)
		}
		if i > 0 && !p.Sources[i-1].Last.Less(s.First) {
			return fmt.Errorf("fwtable: source ranges %d and %d overlap or are out of order", i-1, i)
		}
	}
	for k, c := range p.Dests {
		if !k.Addr.Is4() || c == 0 {
			return fmt.Errorf("fwtable: destination %s %d/%d class %d: want an IPv4 address and a class above 0", k.Addr, k.Proto, k.Port, c)
		}
	}
	for pair, id := range p.Verdicts {
		if int(id) >= len(p.Chains) {
			return fmt.Errorf("fwtable: verdict %d.%d leads to chain %d, but the program has %d chains", pair[0], pair[1], id, len(p.Chains))
		}
	}
	for id, ch := range p.Chains {
		if ch.Verdict != meshpolicy.Allow && ch.Verdict != meshpolicy.Deny {
			return fmt.Errorf("fwtable: chain %d: verdict %q is not allow or deny", id, ch.Verdict)
		}
		if ch.Decided && len(ch.Count) == 0 {
			return fmt.Errorf("fwtable: chain %d is decided by no rule", id)
		}
		for _, i := range ch.Count {
			if i < 0 || i >= len(p.Rules) {
				return fmt.Errorf("fwtable: chain %d counts rule %d, but the program has %d rules", id, i, len(p.Rules))
			}
		}
	}
	return nil
}

// digest identifies a program and tunnel, to tell whether Sync has
// anything to do.
func digest(tunnel string, p firewall.Program) [32]byte {
	h := sha256.New()
	var b []byte
	flush := func() {
		if len(b) > 1<<16 {
			h.Write(b)
			b = b[:0]
		}
	}
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	addr := func(a netip.Addr) { b = append(b, a.AsSlice()...) }
	b = binary.AppendUvarint(b, version)
	str(tunnel)
	str(string(p.Default))
	for _, s := range p.Sources {
		addr(s.First)
		addr(s.Last)
		b = binary.BigEndian.AppendUint32(b, s.Class)
		flush()
	}
	b = binary.AppendUvarint(b, uint64(len(p.Dests)))
	for _, k := range slices.SortedFunc(maps.Keys(p.Dests), compareDests) {
		addr(k.Addr)
		b = append(b, k.Proto)
		b = binary.BigEndian.AppendUint16(b, k.Port)
		b = binary.BigEndian.AppendUint32(b, p.Dests[k])
		flush()
	}
	b = binary.AppendUvarint(b, uint64(len(p.Verdicts)))
	for _, k := range slices.SortedFunc(maps.Keys(p.Verdicts), comparePairs) {
		b = binary.BigEndian.AppendUint32(b, k[0])
		b = binary.BigEndian.AppendUint32(b, k[1])
		b = binary.BigEndian.AppendUint32(b, p.Verdicts[k])
		flush()
	}
	b = binary.AppendUvarint(b, uint64(len(p.Chains)))
	for _, ch := range p.Chains {
		str(string(ch.Verdict))
		if ch.Decided {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
		b = binary.AppendUvarint(b, uint64(len(ch.Count)))
		for _, i := range ch.Count {
			b = binary.AppendUvarint(b, uint64(i))
		}
		flush()
	}
	b = binary.AppendUvarint(b, uint64(len(p.Rules)))
	for _, r := range p.Rules {
		str(r.Name)
		flush()
	}
	h.Write(b)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func compareDests(a, b firewall.DestKey) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if a.Proto != b.Proto {
		return int(a.Proto) - int(b.Proto)
	}
	return int(a.Port) - int(b.Port)
}

func comparePairs(a, b [2]uint32) int {
	switch {
	case a[0] != b[0]:
		return cmpU32(a[0], b[0])
	default:
		return cmpU32(a[1], b[1])
	}
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// counterName is the named counter of rule i.
func counterName(i int) string { return "r" + strconv.Itoa(i) }

func parseCounterName(s string) (int, bool) {
	rest, ok := strings.CutPrefix(s, "r")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil && i >= 0
}

// carry reads the counters of the table in the kernel and returns the
// values the new counters start from: the default's, and each rule's by
// index (the first rule of each name takes what the old rules of that name
// counted), and how many rule counters it carried.
func (t *Table) carry(rules []firewall.RuleInfo) (dflt Counter, counts []Counter, carried int, err error) {
	old, err := nftx.Counters(t.conn, table)
	if err != nil {
		return Counter{}, nil, 0, fmt.Errorf("fwtable: %w", err)
	}
	if len(old) == 0 {
		return Counter{}, nil, 0, nil
	}
	byName := t.byName(old)
	counts = make([]Counter, len(rules))
	for i, r := range rules {
		if c, ok := byName[r.Name]; ok {
			counts[i] = c
			delete(byName, r.Name)
			carried++
		}
	}
	return byName[DefaultCounter], counts, carried, nil
}

// byName sums counters by rule name, naming them by the applied program,
// or else by the set rule_names of the kernel's table. Counters whose
// name is lost start over.
func (t *Table) byName(objs map[string]*nftables.CounterObj) map[string]Counter {
	var names []string
	if t.applied != nil {
		names = t.applied.names
	} else {
		names = t.kernelNames()
	}
	out := map[string]Counter{}
	for obj, co := range objs {
		name := DefaultCounter
		if obj != DefaultCounter {
			i, ok := parseCounterName(obj)
			if !ok || i >= len(names) || names[i] == "" {
				continue
			}
			name = names[i]
		}
		c := out[name]
		c.Packets += co.Packets
		c.Bytes += co.Bytes
		out[name] = c
	}
	return out
}

// kernelNames reads the rule names of the table in the kernel from its
// set rule_names; none if it cannot.
func (t *Table) kernelNames() []string {
	els, err := t.conn.GetSetElements(namesSet())
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range els {
		if len(e.Key) != 4 {
			continue
		}
		i := int(binary.BigEndian.Uint32(e.Key))
		if i >= 1<<20 {
			continue
		}
		if i >= len(names) {
			names = append(names, make([]string, i+1-len(names))...)
		}
		names[i] = e.Comment
	}
	return names
}

// Counters returns what every rule counted, by rule name, and the
// default's under DefaultCounter. Rules of one name add up.
func (t *Table) Counters() (map[string]Counter, error) {
	objs, err := nftx.Counters(t.conn, table)
	if err != nil {
		return nil, fmt.Errorf("fwtable: %w", err)
	}
	return t.byName(objs), nil
}

// Verify reports whether the kernel still holds what the last Sync wrote:
// the table, not switched off; its chains and their rules; every element
// of its maps and sets; every counter. If not, it forgets the applied
// state, so that the next Sync rewrites the table whole. Without a Sync
// yet it reports false. While no transaction has committed in the
// namespace since the last check (the ruleset generation is the same), it
// reads nothing back.
func (t *Table) Verify() (bool, error) {
	if t.applied == nil {
		return false, nil
	}
	gen, err := nftx.Generation(t.conn)
	if err == nil && gen != 0 && gen == t.checked {
		return true, nil
	}
	if !t.verify(*t.applied) {
		t.applied, t.checked = nil, 0
		return false, nil
	}
	if err == nil {
		t.checked = gen
	}
	return true, nil
}

func (t *Table) verify(s state) bool {
	if !nftx.Live(t.conn, table) {
		return false
	}
	got, err := nftx.ReadRules(t.conn, table, specs, version)
	if err != nil || !maps.EqualFunc(got, t.written, slices.Equal) {
		return false
	}
	ss := sets(s.layout)
	if els, err := t.conn.GetSetElements(ss[setNames]); err != nil || !nftx.SameComments(els, nameElements(s.names)) {
		return false
	}
	for _, name := range s.layout.maps {
		els, err := t.conn.GetSetElements(ss[name])
		if err != nil {
			return false
		}
		if !nftx.SameVerdicts(els, s.layout.elements[name]) {
			return false
		}
	}
	objs, err := nftx.Counters(t.conn, table)
	if err != nil || len(objs) != len(s.names)+1 || objs[DefaultCounter] == nil {
		return false
	}
	return true
}

// Remove deletes the table, if it exists.
func (t *Table) Remove() error {
	t.applied, t.checked = nil, 0
	if err := nftx.RemoveTable(t.conn, table); err != nil {
		return fmt.Errorf("fwtable: %w", err)
	}
	return nil
}
