package firewall

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// rule is what the compiler needs of a rule, by rule index.
type rule struct {
	policy   int32 // index into Input.Policies
	priority int32
	dryRun   bool
	deny     bool
	// ok is false for a rule whose action is neither allow nor deny: it
	// matches nothing.
	ok    bool
	toAny bool // no destinations: every destination class
}

// compiler holds one compilation's state.
type compiler struct {
	in       Input
	dflt     meshpolicy.Action
	problems problems
	rules    []rule
	infos    []RuleInfo
	words    int   // length of a rule bitset
	offset   []int // index of each policy's first rule

	clusterNames []string
	clusters     map[string]Cluster // the valid parts of in.Clusters
}

// ruleBits is a set of rule indexes.
type ruleBits []uint64

func (c *compiler) newBits() ruleBits { return make(ruleBits, c.words) }

func (b ruleBits) set(i int) { b[i>>6] |= 1 << (i & 63) }

func (b ruleBits) or(o ruleBits) {
	for i := range o {
		b[i] |= o[i]
	}
}

// appendKey appends the bitset's bytes: a map key for interning.
func (b ruleBits) appendKey(buf []byte) []byte {
	for _, w := range b {
		buf = binary.LittleEndian.AppendUint64(buf, w)
	}
	return buf
}

// Compile compiles the policies for one gateway. It never fails: what
// cannot be compiled as written is left out and said in Problems.
func Compile(in Input) Program {
	c := &compiler{in: in, dflt: in.Default}
	if c.dflt != meshpolicy.Allow && c.dflt != meshpolicy.Deny {
		c.problems.add("", fmt.Sprintf("the default action %q is not allow or deny: deny applies", in.Default))
		c.dflt = meshpolicy.Deny
	}
	c.checkClusters()
	c.flattenRules()
	srcs := c.resolveSources()
	dsts := c.resolveDests()
	p := Program{Default: c.dflt, Rules: c.infos, Dests: map[DestKey]uint32{}, Verdicts: map[[2]uint32]uint32{}}
	sc := c.sourceClasses(srcs, &p)
	dc := c.destClasses(dsts, &p)
	if !c.pairs(sc, dc, &p) {
		p = Program{Default: c.dflt, Rules: c.infos, Dests: map[DestKey]uint32{}, Verdicts: map[[2]uint32]uint32{}, Failed: true,
			Sources: []SourceRange{{First: addrOf(0), Last: addrOf(^uint32(0)), Class: 1}}}
	}
	p.Problems = c.problems.list()
	return p
}

// problems collects problems; those of one cause gather the rules that
// share it in one message.
type problems struct {
	order []string
	rules map[string][]string
}

func (ps *problems) add(rule, msg string) {
	if ps.rules == nil {
		ps.rules = map[string][]string{}
	}
	rs, seen := ps.rules[msg]
	if !seen {
		ps.order = append(ps.order, msg)
	}
	if rule != "" && (len(rs) == 0 || rs[len(rs)-1] != rule) {
		rs = append(rs, rule)
	}
	ps.rules[msg] = rs
}

func (ps *problems) list() []string {
	var out []string
	for _, msg := range ps.order {
		rs := ps.rules[msg]
		switch {
		case len(rs) == 0:
			out = append(out, msg)
		case len(rs) == 1:
			out = append(out, "rule "+rs[0]+": "+msg)
		case len(rs) <= 4:
			out = append(out, "rules "+strings.Join(rs, ", ")+": "+msg)
		default:
			out = append(out, fmt.Sprintf("rules %s and %d more: %s", strings.Join(rs[:3], ", "), len(rs)-3, msg))
		}
	}
	return out
}

// checkClusters keeps the IPv4 parts of every cluster and reports the
// rest, and address space that two clusters claim (rules cannot tell
// their connections apart there).
func (c *compiler) checkClusters() {
	c.clusters = map[string]Cluster{}
	type claim struct {
		span
		cluster string
		what    netip.Prefix
	}
	var claims []claim
	for _, name := range slices.Sorted(maps.Keys(c.in.Clusters)) {
		if name == c.in.Self {
			continue
		}
		cl := c.in.Clusters[name]
		keep := Cluster{RealPath: cl.RealPath}
		if cl.Block.IsValid() && cl.Block.Addr().Is4() {
			keep.Block = cl.Block.Masked()
			claims = append(claims, claim{prefixSpan(keep.Block), name, keep.Block})
		} else {
			c.problems.add("", fmt.Sprintf("cluster %s has no IPv4 block (%v): its translated connections match no source", name, cl.Block))
		}
		for _, p := range cl.CIDRs {
			if !p.IsValid() || !p.Addr().Is4() {
				c.problems.add("", fmt.Sprintf("cluster %s: CIDR %v is not IPv4: left out", name, p))
				continue
			}
			keep.CIDRs = append(keep.CIDRs, p.Masked())
			if cl.RealPath {
				claims = append(claims, claim{prefixSpan(p.Masked()), name, p.Masked()})
			}
		}
		for _, e := range cl.Egress {
			if !e.Addr.Is4() {
				c.problems.add("", fmt.Sprintf("cluster %s: egress address %v is not IPv4: left out", name, e.Addr))
				continue
			}
			keep.Egress = append(keep.Egress, e)
		}
		c.clusters[name] = keep
		c.clusterNames = append(c.clusterNames, name)
	}
	slices.SortFunc(claims, func(a, b claim) int { return cmp.Compare(a.first, b.first) })
	// Each claim against the claims that start inside it.
	reported := map[[2]string]bool{}
	for i, a := range claims {
		for _, b := range claims[i+1:] {
			if b.first > a.last {
				break
			}
			pair := [2]string{min(a.cluster, b.cluster), max(a.cluster, b.cluster)}
			if a.cluster == b.cluster || reported[pair] {
				continue
			}
			reported[pair] = true
			c.problems.add("", fmt.Sprintf("clusters %s (%s) and %s (%s) overlap as sources here: rules cannot tell their connections apart in the overlap", a.cluster, a.what, b.cluster, b.what))
		}
	}
}

// flattenRules numbers every rule of every policy.
func (c *compiler) flattenRules() {
	for pi, pol := range c.in.Policies {
		c.offset = append(c.offset, len(c.rules))
		for i, r := range pol.Rules {
			ok := r.Action == meshpolicy.Allow || r.Action == meshpolicy.Deny
			name := pol.RuleName(i)
			if !ok {
				c.problems.add(name, fmt.Sprintf("action %q is not allow or deny: the rule matches nothing", r.Action))
			}
			c.rules = append(c.rules, rule{policy: int32(pi), priority: pol.Priority, dryRun: pol.DryRun,
				deny: r.Action == meshpolicy.Deny, ok: ok, toAny: len(r.To) == 0})
			c.infos = append(c.infos, RuleInfo{Name: name, Policy: pol.Name, Action: r.Action, DryRun: pol.DryRun})
		}
	}
	c.words = (len(c.rules) + 63) / 64
}

// span is an interval of IPv4 addresses as integers, both ends included.
type span struct{ first, last uint32 }

func prefixSpan(p netip.Prefix) span {
	first := addr32(p.Masked().Addr())
	return span{first, first | uint32(uint64(1)<<(32-p.Bits())-1)}
}

func addr32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addrOf(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// normalize sorts spans and merges those that overlap or touch.
func normalize(ss []span) []span {
	slices.SortFunc(ss, func(a, b span) int { return cmp.Or(cmp.Compare(a.first, b.first), cmp.Compare(a.last, b.last)) })
	out := ss[:0]
	for _, s := range ss {
		if n := len(out); n > 0 && uint64(s.first) <= uint64(out[n-1].last)+1 {
			out[n-1].last = max(out[n-1].last, s.last)
			continue
		}
		out = append(out, s)
	}
	return out
}

// srcSet is the addresses of one distinct source (a cluster, a namespace
// of a cluster...) and the rules that name it.
type srcSet struct {
	spans []span
	rules ruleBits
}

// sources is every rule's sources, resolved.
type sources struct {
	sets []srcSet
	any  ruleBits // rules without sources: every address
}

// resolveSources resolves every rule's sources into address sets, one set
// per distinct source.
func (c *compiler) resolveSources() sources {
	out := sources{any: c.newBits()}
	ids := map[string]int{}
	for pi, pol := range c.in.Policies {
		for i, r := range pol.Rules {
			ri := c.ruleIndex(pi, i)
			if !c.rules[ri].ok {
				continue
			}
			if len(r.From) == 0 {
				out.any.set(ri)
				continue
			}
			for _, s := range r.From {
				key := sourceKey(s)
				id, seen := ids[key]
				if !seen {
					id = len(out.sets)
					ids[key] = id
					out.sets = append(out.sets, srcSet{rules: c.newBits()})
				}
				// Resolving again per rule costs little and
				// names each rule in the problems it has.
				out.sets[id].spans = c.resolveSource(pol.RuleName(i), s, out.sets[id].spans, !seen)
				out.sets[id].rules.set(ri)
			}
		}
	}
	for i := range out.sets {
		out.sets[i].spans = normalize(out.sets[i].spans)
	}
	return out
}

// ruleIndex is the index of rule i of policy pi.
func (c *compiler) ruleIndex(pi, i int) int { return c.offset[pi] + i }

func sourceKey(s meshpolicy.Source) string {
	var b strings.Builder
	b.WriteString(s.Cluster)
	b.WriteByte(0)
	b.WriteString(s.Namespace)
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		b.WriteByte(0)
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(s.Labels[k])
	}
	return b.String()
}

// resolveSource appends the addresses of one source to ss (if first, the
// source's first use: else its addresses are there already) and reports
// its problems for the rule.
func (c *compiler) resolveSource(ruleName string, s meshpolicy.Source, ss []span, first bool) []span {
	var names []string
	switch {
	case s.Cluster == "":
		names = c.clusterNames
	case s.Cluster == c.in.Self:
		return ss // its connections do not come from the mesh
	default:
		if _, ok := c.clusters[s.Cluster]; !ok {
			c.problems.add(ruleName, fmt.Sprintf("source cluster %s is not in the mesh: the source matches nothing", s.Cluster))
			return ss
		}
		names = []string{s.Cluster}
	}
	for _, name := range names {
		cl := c.clusters[name]
		if s.Namespace == "" && len(s.Labels) == 0 {
			if first {
				if cl.Block.IsValid() {
					ss = append(ss, prefixSpan(cl.Block))
				}
				if cl.RealPath {
					for _, p := range cl.CIDRs {
						ss = append(ss, prefixSpan(p))
					}
				}
			}
			continue
		}
		var found []netip.Addr
		for _, e := range cl.Egress {
			if selectsOnly(e, s) {
				found = append(found, e.Addr)
			}
		}
		what := describeSelector(s)
		switch {
		case cl.RealPath:
			c.problems.add(ruleName, fmt.Sprintf("cannot tell %s of %s from the rest of %s: %s reaches this gateway on a real path, with its pods' own addresses; the source matches only %s",
				what, name, name, name, describeAddrs(found)))
		case len(found) == 0:
			c.problems.add(ruleName, fmt.Sprintf("cannot tell %s of %s from the rest of %s: no egress rule of %s gives only these pods an address of their own; the source matches nothing from %s",
				what, name, name, name, name))
		}
		if first {
			for _, a := range found {
				u := addr32(a)
				ss = append(ss, span{u, u})
			}
		}
	}
	return ss
}

// selectsOnly reports whether every pod that egress e stands for is one
// that source s selects.
func selectsOnly(e Egress, s meshpolicy.Source) bool {
	if s.Namespace != "" && e.Namespace != s.Namespace {
		return false
	}
	for k, v := range s.Labels {
		if got, ok := e.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func describeSelector(s meshpolicy.Source) string {
	var sel []string
	for _, k := range slices.Sorted(maps.Keys(s.Labels)) {
		sel = append(sel, k+"="+s.Labels[k])
	}
	switch {
	case len(sel) == 0:
		return "namespace " + s.Namespace
	case s.Namespace == "":
		return "pods " + strings.Join(sel, ",")
	default:
		return "pods " + strings.Join(sel, ",") + " of namespace " + s.Namespace
	}
}

func describeAddrs(as []netip.Addr) string {
	if len(as) == 0 {
		return "nothing"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}

// dests is every rule's destinations, resolved: the rules matching each
// destination key.
type dests struct {
	keys map[DestKey]ruleBits
}

// resolveDests resolves every rule's destinations into destination keys.
func (c *compiler) resolveDests() dests {
	out := dests{keys: map[DestKey]ruleBits{}}
	byName := map[string][]int{}
	owner := map[DestKey]string{}
	for si, sv := range c.in.Services {
		name := sv.Namespace + "/" + sv.Name
		if !sv.Backend.Is4() {
			c.problems.add("", fmt.Sprintf("service %s: backend %v is not IPv4: no rule matches it", name, sv.Backend))
			continue
		}
		byName[name] = append(byName[name], si)
		for _, pt := range sv.Ports {
			k := serviceKey(sv, pt)
			if o, dup := owner[k]; dup && o != name {
				c.problems.add("", fmt.Sprintf("services %s and %s both lead to %s: rules cannot tell them apart", o, name, describeKey(k)))
				continue
			}
			owner[k] = name
		}
	}
	for pi, pol := range c.in.Policies {
		for i, r := range pol.Rules {
			ri := c.ruleIndex(pi, i)
			if !c.rules[ri].ok || len(r.To) == 0 {
				continue
			}
			for _, d := range r.To {
				for _, k := range c.resolveDest(pol.RuleName(i), d, byName) {
					b, ok := out.keys[k]
					if !ok {
						b = c.newBits()
						out.keys[k] = b
					}
					b.set(ri)
				}
			}
		}
	}
	return out
}

func serviceKey(sv Service, pt ServicePort) DestKey {
	port := pt.TargetPort
	if port == 0 {
		port = pt.Port
	}
	return DestKey{Addr: sv.Backend, Proto: pt.Proto, Port: port}
}

// clusterOf is the cluster a service is an instance of.
func (c *compiler) clusterOf(sv Service) string {
	if sv.Cluster != "" {
		return sv.Cluster
	}
	return c.in.Self
}

// resolveDest returns the keys of one destination of a rule.
func (c *compiler) resolveDest(ruleName string, d meshpolicy.Destination, byName map[string][]int) []DestKey {
	name := d.Namespace + "/" + d.Service
	var svcs []int
	for _, si := range byName[name] {
		if d.Cluster == "" || d.Cluster == c.clusterOf(c.in.Services[si]) {
			svcs = append(svcs, si)
		}
	}
	if len(svcs) == 0 {
		if d.Cluster == c.in.Self {
			c.problems.add(ruleName, fmt.Sprintf("destination %s of cluster %s: %s has no such service", name, d.Cluster, d.Cluster))
		}
		return nil // elsewhere: enforced by d.Cluster's gateway
	}
	var out []DestKey
	for _, si := range svcs {
		sv := c.in.Services[si]
		if len(d.Ports) == 0 {
			for _, pt := range sv.Ports {
				out = append(out, serviceKey(sv, pt))
			}
			continue
		}
		for _, want := range d.Ports {
			var proto uint8
			switch want.Proto() {
			case "TCP":
				proto = ProtoTCP
			case "UDP":
				proto = ProtoUDP
			default:
				c.problems.add(ruleName, fmt.Sprintf("destination %s: protocol %q is not TCP or UDP: the port matches nothing", name, want.Protocol))
				continue
			}
			i := slices.IndexFunc(sv.Ports, func(pt ServicePort) bool { return pt.Proto == proto && pt.Port == want.Port })
			if i < 0 {
				c.problems.add(ruleName, fmt.Sprintf("service %s has no port %s/%d (it has %s): the port matches nothing", name, want.Proto(), want.Port, describePorts(sv.Ports)))
				continue
			}
			out = append(out, serviceKey(sv, sv.Ports[i]))
		}
	}
	return out
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	}
	return fmt.Sprintf("proto %d", p)
}

func describePorts(ps []ServicePort) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%s/%d", protoName(p.Proto), p.Port)
	}
	return strings.Join(s, ", ")
}

func describeKey(k DestKey) string {
	return fmt.Sprintf("%s %s/%d", k.Addr, protoName(k.Proto), k.Port)
}

// classes are the source or destination classes: each class's rules (by
// class ID) and an example of what belongs to it, for messages.
type classes struct {
	rules   []ruleBits
	example []string
}

// sourceClasses cuts the address space where the sources' sets begin and
// end, gives each interval the rules whose sources cover it, and numbers
// the distinct rule sets from 1.
func (c *compiler) sourceClasses(srcs sources, p *Program) classes {
	type event struct {
		pos   uint64
		set   int
		start bool
	}
	var evs []event
	for id, s := range srcs.sets {
		for _, sp := range s.spans {
			evs = append(evs, event{uint64(sp.first), id, true})
			if sp.last != ^uint32(0) {
				evs = append(evs, event{uint64(sp.last) + 1, id, false})
			}
		}
	}
	slices.SortFunc(evs, func(a, b event) int { return cmp.Compare(a.pos, b.pos) })
	cl := classes{rules: []ruleBits{nil}, example: []string{""}} // class 0 unused
	members := make(ruleBits, (len(srcs.sets)+63)/64)            // a bitset of source sets
	byMembers := map[string]uint32{}
	byRules := map[string]uint32{}
	var buf []byte
	const end = uint64(1) << 32
	for i, pos := 0, uint64(0); pos < end; {
		for ; i < len(evs) && evs[i].pos == pos; i++ {
			if evs[i].start {
				members.set(evs[i].set)
			} else {
				members[evs[i].set>>6] &^= 1 << (evs[i].set & 63)
			}
		}
		next := end
		if i < len(evs) {
			next = evs[i].pos
		}
		buf = members.appendKey(buf[:0])
		class, ok := byMembers[string(buf)]
		if !ok {
			rs := slices.Clone(srcs.any)
			for w, word := range members {
				for ; word != 0; word &= word - 1 {
					rs.or(srcs.sets[w*64+bits.TrailingZeros64(word)].rules)
				}
			}
			rk := string(rs.appendKey(nil))
			if class, ok = byRules[rk]; !ok {
				class = uint32(len(cl.rules))
				byRules[rk] = class
				cl.rules = append(cl.rules, rs)
				cl.example = append(cl.example, addrOf(uint32(pos)).String())
			}
			byMembers[string(buf)] = class
		}
		first, last := addrOf(uint32(pos)), addrOf(uint32(next-1))
		if n := len(p.Sources); n > 0 && p.Sources[n-1].Class == class {
			p.Sources[n-1].Last = last
		} else {
			p.Sources = append(p.Sources, SourceRange{First: first, Last: last, Class: class})
		}
		pos = next
	}
	return cl
}

// destClasses numbers the distinct rule sets of the destination keys from
// 1 (class 0 is the keys no rule names) and fills Dests.
func (c *compiler) destClasses(ds dests, p *Program) classes {
	cl := classes{rules: []ruleBits{c.newBits()}, example: []string{"any destination"}}
	byRules := map[string]uint32{}
	keys := slices.SortedFunc(maps.Keys(ds.keys), func(a, b DestKey) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
	})
	for _, k := range keys {
		rs := ds.keys[k]
		rk := string(rs.appendKey(nil))
		class, ok := byRules[rk]
		if !ok {
			class = uint32(len(cl.rules))
			byRules[rk] = class
			cl.rules = append(cl.rules, rs)
			cl.example = append(cl.example, describeKey(k))
		}
		p.Dests[k] = class
	}
	return cl
}
