package firewall

import (
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

var seedFlag = flag.Uint64("firewall.seed", 0, "seed of the randomized tests (default: the time)")

func testSeed(t testing.TB) uint64 {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -firewall.seed=%d)", seed, seed)
	return seed
}

// decide is the reference: it walks the policies as written, rule by
// rule, and returns the rules that count the connection, the action, and
// whether a rule decided it.
func decide(in Input, src netip.Addr, dst DestKey) (count []int, action meshpolicy.Action, decided bool) {
	idx := 0
	for _, pol := range in.Policies {
		for _, r := range pol.Rules {
			i := idx
			idx++
			if r.Action != meshpolicy.Allow && r.Action != meshpolicy.Deny {
				continue
			}
			if !refFrom(in, r.From, src) || !refTo(in, r.To, dst) {
				continue
			}
			count = append(count, i)
			if !pol.DryRun {
				return count, r.Action, true
			}
		}
	}
	action = in.Default
	if action != meshpolicy.Allow {
		action = meshpolicy.Deny
	}
	return count, action, false
}

func refFrom(in Input, from []meshpolicy.Source, src netip.Addr) bool {
	if len(from) == 0 {
		return true
	}
	for _, s := range from {
		var names []string
		if s.Cluster == "" {
			for name := range in.Clusters {
				names = append(names, name)
			}
		} else {
			names = []string{s.Cluster}
		}
		for _, name := range names {
			cl, ok := in.Clusters[name]
			if !ok || name == in.Self {
				continue
			}
			if s.Namespace == "" && len(s.Labels) == 0 {
				if cl.Block.Addr().Is4() && cl.Block.Contains(src) {
					return true
				}
				for _, p := range cl.CIDRs {
					if cl.RealPath && p.Addr().Is4() && p.Contains(src) {
						return true
					}
				}
				continue
			}
			for _, e := range cl.Egress {
				if e.Addr != src || (s.Namespace != "" && e.Namespace != s.Namespace) {
					continue
				}
				all := true
				for k, v := range s.Labels {
					if e.Labels[k] != v || !hasKey(e.Labels, k) {
						all = false
					}
				}
				if all {
					return true
				}
			}
		}
	}
	return false
}

func hasKey(m map[string]string, k string) bool { _, ok := m[k]; return ok }

func refTo(in Input, to []meshpolicy.Destination, dst DestKey) bool {
	if len(to) == 0 {
		return true
	}
	for _, d := range to {
		if d.Cluster != "" && d.Cluster != in.Self {
			continue
		}
		for _, sv := range in.Services {
			if sv.Namespace != d.Namespace || sv.Name != d.Service || !sv.Backend.Is4() || sv.Backend != dst.Addr {
				continue
			}
			for _, sp := range sv.Ports {
				target := sp.TargetPort
				if target == 0 {
					target = sp.Port
				}
				if sp.Proto != dst.Proto || target != dst.Port {
					continue
				}
				if len(d.Ports) == 0 {
					return true
				}
				for _, pt := range d.Ports {
					proto := map[string]uint8{"TCP": 6, "UDP": 17}[pt.Proto()]
					if proto == sp.Proto && pt.Port == sp.Port {
						return true
					}
				}
			}
		}
	}
	return false
}

// refConflicts is the reference for conflicts: for a connection that a
// rule decides, each later policy of the same priority whose own first
// matching rule acts otherwise, as "decider|other".
func refConflicts(in Input, src netip.Addr, dst DestKey, out map[string]bool) {
	count, _, decided := decide(in, src, dst)
	if !decided {
		return
	}
	dec := count[len(count)-1]
	idx := 0
	var decPol, decRule = -1, meshpolicy.Rule{}
	for pi, pol := range in.Policies {
		for i, r := range pol.Rules {
			if idx == dec {
				decPol, decRule = pi, r
				_ = i
			}
			idx++
		}
	}
	for _, pol := range in.Policies[decPol+1:] {
		if pol.Priority != in.Policies[decPol].Priority {
			break
		}
		if pol.DryRun {
			continue
		}
		for i, r := range pol.Rules {
			if (r.Action != meshpolicy.Allow && r.Action != meshpolicy.Deny) || !refFrom(in, r.From, src) || !refTo(in, r.To, dst) {
				continue
			}
			if r.Action != decRule.Action {
				out[in.Policies[decPol].RuleName(dec-ruleOffset(in, decPol))+"|"+pol.RuleName(i)] = true
			}
			break
		}
	}
}

func ruleOffset(in Input, pi int) int {
	n := 0
	for _, pol := range in.Policies[:pi] {
		n += len(pol.Rules)
	}
	return n
}

var conflictRE = regexp.MustCompile(`^rules (\S+) \((?:allow|deny)\) and (\S+) \((?:allow|deny)\) are in policies of the same priority`)

// compiledConflicts reads the conflicts out of the problems.
func compiledConflicts(p Program) map[string]bool {
	out := map[string]bool{}
	for _, pr := range p.Problems {
		if m := conflictRE.FindStringSubmatch(pr); m != nil {
			out[m[1]+"|"+m[2]] = true
		}
	}
	return out
}

// randomInput makes a small mesh whose pieces collide often: overlapping
// CIDRs, shared backends, selectors that nest.
func randomInput(r *rand.Rand) Input {
	pick := func(ss ...string) string { return ss[r.IntN(len(ss))] }
	in := Input{Self: "self", Default: meshpolicy.Allow, Clusters: map[string]Cluster{}}
	if r.IntN(2) == 0 {
		in.Default = meshpolicy.Deny
	}
	nc := 1 + r.IntN(5)
	var names []string
	for i := range nc {
		name := fmt.Sprintf("c%d", i)
		names = append(names, name)
		bits := 16
		if r.IntN(4) == 0 {
			bits = 24
		}
		blk := netip.PrefixFrom(netip.AddrFrom4([4]byte{242, byte(i), 0, 0}), bits)
		if r.IntN(8) == 0 { // claims someone else's block
			blk = netip.PrefixFrom(netip.AddrFrom4([4]byte{242, byte(r.IntN(nc)), 0, 0}), 24)
		}
		cl := Cluster{Block: blk, RealPath: r.IntN(2) == 0}
		for range r.IntN(3) {
			cl.CIDRs = append(cl.CIDRs, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(3)), byte(r.IntN(2)), 0}), 16+8*r.IntN(2)).Masked())
		}
		for k := range r.IntN(5) {
			e := Egress{Addr: netip.AddrFrom4([4]byte{242, byte(i), 0, byte(1 + k)}), Namespace: pick("", "a", "b")}
			if r.IntN(2) == 0 {
				e.Labels = map[string]string{"app": pick("x", "y")}
				if r.IntN(2) == 0 {
					e.Labels["tier"] = "f"
				}
			}
			cl.Egress = append(cl.Egress, e)
		}
		in.Clusters[name] = cl
	}
	if r.IntN(4) == 0 {
		in.Clusters["self"] = Cluster{Block: netip.MustParsePrefix("242.200.0.0/16")}
	}
	for range r.IntN(6) {
		sv := Service{Namespace: pick("a", "b"), Name: pick("s1", "s2", "s3"),
			Backend: netip.AddrFrom4([4]byte{10, 96, 0, byte(1 + r.IntN(4))})}
		for range 1 + r.IntN(3) {
			sp := []ServicePort{{6, 80, 8080}, {17, 53, 5353}, {6, 443, 0}, {6, 8080, 8080}}[r.IntN(4)]
			if !slices.ContainsFunc(sv.Ports, func(o ServicePort) bool { return o.Proto == sp.Proto && o.Port == sp.Port }) {
				sv.Ports = append(sv.Ports, sp)
			}
		}
		in.Services = append(in.Services, sv)
	}
	for i := range r.IntN(7) {
		pol := meshpolicy.Policy{Name: fmt.Sprintf("p%d", i), Priority: int32(r.IntN(3)), DryRun: r.IntN(5) == 0}
		for j := range 1 + r.IntN(5) {
			ru := meshpolicy.Rule{Action: meshpolicy.Allow}
			if r.IntN(2) == 0 {
				ru.Action = meshpolicy.Deny
			}
			if r.IntN(30) == 0 {
				ru.Action = "maybe"
			}
			if r.IntN(2) == 0 {
				ru.Name = fmt.Sprintf("r%d", j)
			}
			for range r.IntN(3) {
				s := meshpolicy.Source{Cluster: pick(append(names, "", "", "self", "nowhere")...)}
				if r.IntN(2) == 0 {
					s.Namespace = pick("", "a", "b")
				}
				if r.IntN(3) == 0 {
					s.Labels = map[string]string{"app": pick("x", "y")}
				}
				ru.From = append(ru.From, s)
			}
			for range r.IntN(3) {
				d := meshpolicy.Destination{Namespace: pick("a", "b"), Service: pick("s1", "s2", "s3", "none"), Cluster: pick("", "", "self", "c0")}
				for range r.IntN(3) {
					d.Ports = append(d.Ports, []meshpolicy.Port{{Port: 80}, {Protocol: "UDP", Port: 53}, {Protocol: "TCP", Port: 443}, {Port: 9999}, {Port: 8080}}[r.IntN(5)])
				}
				ru.To = append(ru.To, d)
			}
			pol.Rules = append(pol.Rules, ru)
		}
		in.Policies = append(in.Policies, meshpolicy.DeclaredPolicy{Owner: "c0", Policy: pol})
	}
	set := meshpolicy.Merge(nil, in.Policies)
	in.Policies = set.Policies
	return in
}

// probes are the addresses where classes change, and around them.
func probes(r *rand.Rand, in Input) []netip.Addr {
	out := []netip.Addr{netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255")}
	around := func(a netip.Addr) {
		out = append(out, a)
		if p := a.Prev(); p.IsValid() {
			out = append(out, p)
		}
		if n := a.Next(); n.IsValid() {
			out = append(out, n)
		}
	}
	edges := func(p netip.Prefix) {
		s := prefixSpan(p)
		around(addrOf(s.first))
		around(addrOf(s.last))
	}
	for _, cl := range in.Clusters {
		edges(cl.Block)
		for _, p := range cl.CIDRs {
			edges(p)
		}
		for _, e := range cl.Egress {
			around(e.Addr)
		}
	}
	for range 20 {
		out = append(out, addrOf(r.Uint32()))
		out = append(out, netip.AddrFrom4([4]byte{242, byte(r.IntN(6)), 0, byte(r.IntN(8))}))
	}
	return out
}

func destProbes(r *rand.Rand, in Input) []DestKey {
	out := []DestKey{{Addr: netip.MustParseAddr("10.96.0.1"), Proto: 1}}
	for _, sv := range in.Services {
		for _, sp := range sv.Ports {
			out = append(out, serviceKey(sv, sp))
			out = append(out, DestKey{Addr: sv.Backend, Proto: 23 - sp.Proto, Port: sp.Port}) // the other protocol
		}
	}
	for range 5 {
		out = append(out, DestKey{Addr: netip.AddrFrom4([4]byte{10, 96, 0, byte(r.IntN(6))}), Proto: []uint8{6, 17}[r.IntN(2)], Port: []uint16{80, 53, 443, 5353, 8080, 22}[r.IntN(6)]})
	}
	return out
}

// checkShape checks what the kernel table relies on.
func checkShape(t *testing.T, p Program) {
	t.Helper()
	if len(p.Sources) == 0 || p.Sources[0].First != addrOf(0) || p.Sources[len(p.Sources)-1].Last != addrOf(^uint32(0)) {
		t.Fatalf("sources do not cover the space: %v", p.Sources)
	}
	for i, s := range p.Sources {
		if s.Class == 0 || s.Last.Less(s.First) {
			t.Fatalf("source range %d: %+v", i, s)
		}
		if i > 0 {
			prev := p.Sources[i-1]
			if prev.Last.Next() != s.First {
				t.Fatalf("source ranges %d and %d are not contiguous: %+v %+v", i-1, i, prev, s)
			}
			if prev.Class == s.Class {
				t.Fatalf("source ranges %d and %d have one class and are not merged", i-1, i)
			}
		}
	}
	for k, d := range p.Dests {
		if d == 0 {
			t.Fatalf("dest %v has class 0", k)
		}
	}
	for pair, id := range p.Verdicts {
		if int(id) >= len(p.Chains) || pair[0] == 0 {
			t.Fatalf("verdict %v -> %d of %d chains", pair, id, len(p.Chains))
		}
	}
	seen := map[string]bool{}
	for i, ch := range p.Chains {
		k := fmt.Sprint(ch)
		if seen[k] {
			t.Fatalf("chain %d repeats another: %v", i, ch)
		}
		seen[k] = true
		for _, r := range ch.Count {
			if r < 0 || r >= len(p.Rules) {
				t.Fatalf("chain %d counts rule %d of %d", i, r, len(p.Rules))
			}
		}
	}
}

func TestCompileMatchesReference(t *testing.T) {
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 0))
	n := 1000
	if testing.Short() {
		n = 200
	}
	for iter := range n {
		in := randomInput(r)
		p := Compile(in)
		if p.Failed {
			t.Fatalf("iteration %d: failed: %v", iter, p.Problems)
		}
		checkShape(t, p)
		for _, src := range probes(r, in) {
			for _, dst := range destProbes(r, in) {
				count, action, decided := decide(in, src, dst)
				got := p.Decide(src, dst)
				if !slices.Equal(got.Count, count) || got.Verdict != action || got.Decided != decided {
					t.Fatalf("seed %d iteration %d: %s -> %v: program says %+v, the policies %v %s decided=%v\ninput %+v\nprogram %+v",
						seed, iter, src, dst, got, count, action, decided, in, p)
				}
			}
		}
		// One connection of every pair of classes finds every conflict.
		want := map[string]bool{}
		dsts := append(destProbes(r, in), DestKey{Addr: netip.MustParseAddr("192.0.2.1"), Proto: 6, Port: 1})
		for _, sr := range p.Sources {
			for _, dst := range dsts {
				refConflicts(in, sr.First, dst, want)
			}
		}
		if got := compiledConflicts(p); !maps.Equal(got, want) {
			t.Fatalf("seed %d iteration %d: conflicts %v, want %v\nproblems %q\ninput %+v", seed, iter, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)), p.Problems, in)
		}
	}
}
