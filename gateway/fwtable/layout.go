package fwtable

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/firewall"
	"github.com/straitnet/strait/gateway/internal/nftx"
)

// sets are the table's sets and maps, by name: the rule names, the
// sources, and the destinations of each source class that has some.
func sets(l layout) map[string]*nftables.Set {
	out := map[string]*nftables.Set{mapSources: {Table: table, Name: mapSources, IsMap: true, Interval: true,
		KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict}}
	out[setNames] = namesSet()
	for _, name := range l.maps[1:] {
		out[name] = &nftables.Set{Table: table, Name: name, IsMap: true, Concatenation: true,
			KeyType:  nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
			DataType: nftables.TypeVerdict}
	}
	return out
}

// chainName is the regular chain of program chain id.
func chainName(id int) string { return "v" + strconv.Itoa(id) }

// sourceChain is the regular chain of source class c, and destMap its map
// of destinations.
func sourceChain(c uint32) string { return "s" + strconv.FormatUint(uint64(c), 10) }
func destMap(c uint32) string     { return "d" + strconv.FormatUint(uint64(c), 10) }

// namesSet holds rule indexes, each commented with the rule's name. They
// are marks, big-endian: nft shows them so without byte-order userdata.
func namesSet() *nftables.Set {
	return &nftables.Set{Table: table, Name: setNames, KeyType: nftables.TypeMark}
}

func nameElements(names []string) []nftables.SetElement {
	out := make([]nftables.SetElement, len(names))
	for i, name := range names {
		out[i] = nftables.SetElement{Key: nftx.U32(uint32(i)), Comment: name}
	}
	return out
}

func jump(chain string) *expr.Verdict { return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain} }

// layout is a program in the table's terms.
type layout struct {
	// classes are the source classes with a chain of their own: those
	// where some rule matches; ranges of the others are not in the map.
	classes []uint32
	// toDests says which classes have pairs with destination classes
	// (and so a map of destinations).
	toDests map[uint32]bool
	// any is the chain of (source class, 0), by class.
	any map[uint32]uint32
	// maps are the names of the maps: sources first.
	maps     []string
	elements map[string][]nftables.SetElement
}

// layoutOf lays a program out in the table's maps:
//   - sources: the ranges of every source class with a pair, to jump to
//     its chain s<class>;
//   - d<class>: for each pair (class, d) with d above 0, each destination
//     key of d, to the pair's chain.
func layoutOf(p firewall.Program) layout {
	l := layout{toDests: map[uint32]bool{}, any: map[uint32]uint32{}, maps: []string{mapSources}, elements: map[string][]nftables.SetElement{}}
	keys := map[uint32][]firewall.DestKey{} // by destination class
	for _, k := range slices.SortedFunc(maps.Keys(p.Dests), compareDests) {
		keys[p.Dests[k]] = append(keys[p.Dests[k]], k)
	}
	used := map[uint32]bool{}
	for _, pair := range slices.SortedFunc(maps.Keys(p.Verdicts), comparePairs) {
		s, d, id := pair[0], pair[1], p.Verdicts[pair]
		used[s] = true
		if d == 0 {
			l.any[s] = id
			continue
		}
		if !l.toDests[s] {
			l.toDests[s] = true
			l.maps = append(l.maps, destMap(s))
		}
		for _, k := range keys[d] {
			l.elements[destMap(s)] = append(l.elements[destMap(s)], nftables.SetElement{Key: destKey(k), VerdictData: jump(chainName(int(id)))})
		}
	}
	l.classes = slices.Sorted(maps.Keys(used))
	for _, r := range p.Sources {
		if !used[r.Class] {
			continue
		}
		els := nftx.Range(r.First, r.Last, nil)
		els[0].VerdictData = jump(sourceChain(r.Class))
		l.elements[mapSources] = append(l.elements[mapSources], els...)
	}
	return l
}

// destKey encodes (address . protocol . port) the way nft does: every
// part padded to a 4-byte register, the port in network order.
func destKey(k firewall.DestKey) []byte {
	key := make([]byte, 12)
	copy(key, k.Addr.AsSlice())
	key[4] = k.Proto
	binary.BigEndian.PutUint16(key[8:], k.Port)
	return key
}

// write rewrites the table in one transaction: counters (starting from
// the values given), maps, chains, rules and elements.
func (t *Table) write(tunnel string, p firewall.Program, l layout, dflt Counter, counts []Counter) error {
	c := t.conn
	// Adding before deleting makes the delete succeed whether or not the
	// table exists; the batch commits as one transaction.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	c.AddObj(&nftables.CounterObj{Table: table, Name: DefaultCounter, Packets: dflt.Packets, Bytes: dflt.Bytes})
	for i := range p.Rules {
		var v Counter
		if i < len(counts) {
			v = counts[i]
		}
		c.AddObj(&nftables.CounterObj{Table: table, Name: counterName(i), Packets: v.Packets, Bytes: v.Bytes})
	}
	ss := sets(l)
	for _, name := range append([]string{setNames}, l.maps...) {
		if err := c.AddSet(ss[name], nil); err != nil {
			return fmt.Errorf("fwtable: set %s: %w", name, err)
		}
	}
	if err := nftx.AddElements(c, ss[setNames], nameElements(ruleNames(p.Rules))); err != nil {
		return fmt.Errorf("fwtable: %w", err)
	}
	chains := map[string]*nftables.Chain{}
	sp := specs[0]
	chains[sp.Name] = c.AddChain(&nftables.Chain{Name: sp.Name, Table: table, Type: sp.Type, Hooknum: sp.Hook, Priority: sp.Priority})
	for _, name := range regularChains(p, l) {
		chains[name] = c.AddChain(&nftables.Chain{Name: name, Table: table})
	}
	rules := rulesOf(tunnel, p, l)
	nftx.Finish(rules, ss, version)
	nftx.AddRules(c, table, chains, rules)
	// Elements last: they jump to the chains above.
	for _, name := range l.maps {
		if err := nftx.AddElements(c, ss[name], l.elements[name]); err != nil {
			return fmt.Errorf("fwtable: %w", err)
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("fwtable: write table %s: %w", TableName, err)
	}
	return nil
}

// regularChains are the table's chains besides forward.
func regularChains(p firewall.Program, l layout) []string {
	var out []string
	for _, c := range l.classes {
		out = append(out, sourceChain(c))
	}
	for id := range p.Chains {
		out = append(out, chainName(id))
	}
	return out
}

// rulesOf are the table's rules.
func rulesOf(tunnel string, p firewall.Program, l layout) []nftx.Rule {
	fromMesh := func() []expr.Any {
		return slices.Concat(nftx.MatchIfname(expr.MetaKeyIIFNAME, tunnel), nftx.MatchCtNew())
	}
	out := []nftx.Rule{{Chain: chainForward, Comment: "new from the mesh: to the chain of the source class",
		Exprs: slices.Concat(fromMesh(), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: nftx.OffSaddr, Len: 4},
			&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: mapSources},
		})}}
	// A source chain that decides nothing returns here: the default.
	out = append(out, verdict(chainForward, fromMesh, DefaultCounter, "no rule decides: the default", p.Default, DefaultLogPrefix)...)
	for _, c := range l.classes {
		name := sourceChain(c)
		if l.toDests[c] {
			// The key is loaded into the 32-bit registers 8 to 10
			// (register 1 is 8 to 11), the protocol and the port
			// zero-padded by the kernel to 4 bytes each.
			out = append(out, nftx.Rule{Chain: name, Comment: "to the chain of the destination class",
				Exprs: []expr.Any{
					&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: nftx.OffDaddr, Len: 4},
					&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
					&expr.Payload{DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
					&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: destMap(c)},
				}})
		}
		if id, ok := l.any[c]; ok {
			out = append(out, nftx.Rule{Chain: name, Comment: "any destination", Exprs: []expr.Any{jump(chainName(int(id)))}})
		}
	}
	for id, ch := range p.Chains {
		name := chainName(id)
		for j, i := range ch.Count {
			if ch.Decided && j == len(ch.Count)-1 {
				out = append(out, verdict(name, nil, counterName(i), p.Rules[i].Name, ch.Verdict, LogPrefix(i))...)
				break
			}
			out = append(out, nftx.Rule{Chain: name, Comment: p.Rules[i].Name + " (dry run)", Exprs: []expr.Any{nftx.CountIn(counterName(i))}})
		}
		if !ch.Decided {
			out = append(out, verdict(name, nil, DefaultCounter, "no rule decides: the default", p.Default, DefaultLogPrefix)...)
		}
	}
	return out
}

// verdict counts a connection in counter and accepts it, or logs a sample
// and rejects it (the sampled log in one rule: the packets over the rate
// stop there and go on to the rejects). match, if not nil, starts every
// rule.
func verdict(chain string, match func() []expr.Any, counter, comment string, action meshpolicy.Action, prefix string) []nftx.Rule {
	pre := func() []expr.Any {
		if match == nil {
			return nil
		}
		return match()
	}
	if action == meshpolicy.Allow {
		return []nftx.Rule{{Chain: chain, Comment: comment,
			Exprs: slices.Concat(pre(), []expr.Any{nftx.CountIn(counter), &expr.Verdict{Kind: expr.VerdictAccept}})}}
	}
	return []nftx.Rule{
		{Chain: chain, Comment: comment, Exprs: slices.Concat(pre(), []expr.Any{nftx.CountIn(counter)}, nftx.SampledLog(LogRate, LogBurst, LogGroup, prefix))},
		{Chain: chain, Comment: "deny TCP: reset", Exprs: slices.Concat(pre(), nftx.MatchL4Proto(unix.IPPROTO_TCP), []expr.Any{nftx.RejectTCPReset()})},
		{Chain: chain, Comment: "deny the rest: ICMP admin-prohibited", Exprs: slices.Concat(pre(), []expr.Any{nftx.RejectAdminProhibited()})},
	}
}
