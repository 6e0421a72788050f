package firewall

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"math/bits"
	"slices"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// maxConflictProblems bounds the conflicts reported one by one.
const maxConflictProblems = 100

// walk is the outcome of the rules that match one pair of classes.
type walk struct {
	count   []int // dry-run rules, then the decider if any
	decider int
	decided bool
}

func (w walk) same(o walk) bool { return w.decided == o.decided && slices.Equal(w.count, o.count) }

// pairer holds the state of pairs.
type pairer struct {
	*compiler
	toAny    ruleBits
	groupEnd []int32 // the last rule of the same priority as each rule
	// conflicts are pairs of rules (decider, other) and an example pair
	// of classes where they disagree.
	conflicts map[[2]int32][2]uint32
	// seenBy and seenIn are, for each rule, the decider and source class
	// of the conflict last recorded with it: the same conflict recurs for
	// every destination class of a source class, cheaper to skip here
	// than in the map.
	seenBy []int32
	seenIn []uint32
	// firstAny and firstAnyIn are, by policy, the first deciding rule
	// without destinations that the last walk of (s, 0) met past its
	// decider, and that s.
	firstAny   []int32
	firstAnyIn []uint32
}

// sparse is a bitset of rules as its nonzero words only, in order.
type sparse []word

type word struct {
	w int32 // index of the word
	m uint64
}

func (b ruleBits) sparse(out sparse) sparse {
	out = out[:0]
	for w, m := range b {
		if m != 0 {
			out = append(out, word{int32(w), m})
		}
	}
	return out
}

// pairs fills Verdicts and Chains. For each source class s it walks the
// rules without destinations, the chain of (s, 0), and then only the
// destination classes that a rule with destinations of s could set apart
// from it: those of the rules of s up to the end of the priority of the
// (s, 0) decider (later ones are shadowed, but may conflict with it). It
// reports false if Verdicts would exceed MaxVerdicts.
func (c *compiler) pairs(sc, dc classes, p *Program) bool {
	n := len(c.rules)
	pr := pairer{compiler: c, toAny: c.newBits(), groupEnd: make([]int32, n), conflicts: map[[2]int32][2]uint32{},
		seenBy: make([]int32, n), seenIn: make([]uint32, n),
		firstAny: make([]int32, len(c.in.Policies)), firstAnyIn: make([]uint32, len(c.in.Policies))}
	for i, r := range c.rules {
		if r.ok && r.toAny {
			pr.toAny.set(i)
		}
	}
	for i := n - 1; i >= 0; i-- {
		pr.groupEnd[i] = int32(i)
		if i+1 < n && c.rules[i+1].priority == c.rules[i].priority {
			pr.groupEnd[i] = pr.groupEnd[i+1]
		}
	}
	dOf := make([][]uint32, n)              // each rule's destination classes
	dRules := make([]sparse, len(dc.rules)) // each destination class's rules
	for d := 1; d < len(dc.rules); d++ {
		dRules[d] = dc.rules[d].sparse(nil)
		for _, wd := range dRules[d] {
			for m := wd.m; m != 0; m &= m - 1 {
				r := int(wd.w)*64 + bits.TrailingZeros64(m)
				dOf[r] = append(dOf[r], uint32(d))
			}
		}
	}
	chains := map[string]uint32{}
	var key []byte
	intern := func(w walk) uint32 {
		key = key[:0]
		if w.decided {
			key = append(key, 1)
		} else {
			key = append(key, 0)
		}
		for _, r := range w.count {
			key = binary.LittleEndian.AppendUint32(key, uint32(r))
		}
		if id, ok := chains[string(key)]; ok {
			return id
		}
		id := uint32(len(p.Chains))
		chains[string(key)] = id
		ch := Chain{Count: slices.Clone(w.count), Verdict: c.dflt, Decided: w.decided}
		if w.decided {
			ch.Verdict = meshpolicy.Allow
			if c.rules[w.decider].deny {
				ch.Verdict = meshpolicy.Deny
			}
		}
		p.Chains = append(p.Chains, ch)
		return id
	}
	stamp := make([]uint32, len(dc.rules)) // the source class that last made a candidate of each
	var cand []uint32
	var anyS sparse // the rules without destinations that match s
	var baseBuf, buf []int
	for s := uint32(1); s < uint32(len(sc.rules)); s++ {
		bs := sc.rules[s]
		anyS = anyS[:0]
		for w, m := range bs {
			if m &= pr.toAny[w]; m != 0 {
				anyS = append(anyS, word{int32(w), m})
			}
		}
		base := pr.scan(bs, anyS, nil, baseBuf, s, 0)
		baseBuf = base.count
		if len(base.count) > 0 {
			p.Verdicts[[2]uint32{s, 0}] = intern(base)
		}
		limit := n - 1
		if base.decided {
			limit = int(pr.groupEnd[base.decider])
		}
		cand = cand[:0]
	candidates:
		for w, m := range bs {
			for m &^= pr.toAny[w]; m != 0; m &= m - 1 {
				r := w*64 + bits.TrailingZeros64(m)
				if r > limit {
					break candidates
				}
				for _, d := range dOf[r] {
					if stamp[d] != s {
						stamp[d] = s
						cand = append(cand, d)
					}
				}
			}
		}
		slices.Sort(cand)
		for _, d := range cand {
			if base.decided && pr.firstMatch(bs, dRules[d]) > base.decider {
				// The rules of d come after the decider of (s, 0):
				// (s, d) is (s, 0), with maybe conflicts of its own.
				pr.shadowed(bs, dRules[d], base.decider, s, d)
				continue
			}
			wk := pr.scan(bs, anyS, dRules[d], buf, s, d)
			buf = wk.count
			if wk.same(base) {
				continue
			}
			p.Verdicts[[2]uint32{s, d}] = intern(wk)
			if len(p.Verdicts) > verdictLimit {
				c.problems.add("", fmt.Sprintf("the policies need more than %d verdict entries on this gateway (source classes %d, destination classes %d): not compiled; simplify the policies or give sources and destinations fewer distinct combinations",
					verdictLimit, len(sc.rules)-1, len(dc.rules)-1))
				return false
			}
		}
	}
	pr.reportConflicts(sc, dc)
	return true
}

// scan walks the rules that match source class s (bits bs) and
// destination class d: those without destinations that match s (anyS),
// and those of d (dl, nil for class 0) that match s; into count (reused).
// Past the decider, it goes on through the decider's priority for
// conflicts: the first deciding rule of each other policy there that acts
// otherwise.
func (pr *pairer) scan(bs ruleBits, anyS, dl sparse, count []int, s, d uint32) walk {
	wk := walk{count: count[:0], decider: -1}
	end, lastPolicy := -1, int32(-1)
	for i, j := 0, 0; i < len(anyS) || j < len(dl); {
		var w int32
		var m uint64
		switch {
		case j == len(dl) || (i < len(anyS) && anyS[i].w < dl[j].w):
			w, m = anyS[i].w, anyS[i].m
			i++
		case i == len(anyS) || dl[j].w < anyS[i].w:
			w, m = dl[j].w, dl[j].m&bs[dl[j].w]
			j++
		default:
			w, m = anyS[i].w, anyS[i].m|dl[j].m&bs[dl[j].w]
			i, j = i+1, j+1
		}
		for ; m != 0; m &= m - 1 {
			r := int(w)*64 + bits.TrailingZeros64(m)
			ru := pr.rules[r]
			if !wk.decided {
				wk.count = append(wk.count, r)
				if !ru.dryRun {
					wk.decided, wk.decider = true, r
					end, lastPolicy = int(pr.groupEnd[r]), ru.policy
				}
				continue
			}
			if r > end {
				return wk
			}
			if ru.dryRun || ru.policy == lastPolicy {
				continue
			}
			lastPolicy = ru.policy
			if dl == nil {
				pr.firstAny[ru.policy], pr.firstAnyIn[ru.policy] = int32(r), s
			}
			pr.conflict(wk.decider, r, s, d)
		}
	}
	return wk
}

// conflict records that rule r, the first of its policy to match (s, d)
// and decide, comes after decider in the same priority; a conflict if
// they act otherwise.
func (pr *pairer) conflict(decider, r int, s, d uint32) {
	if pr.rules[r].deny == pr.rules[decider].deny || (pr.seenIn[r] == s && pr.seenBy[r] == int32(decider)) {
		return
	}
	pr.seenIn[r], pr.seenBy[r] = s, int32(decider)
	k := [2]int32{int32(decider), int32(r)}
	if _, seen := pr.conflicts[k]; !seen {
		pr.conflicts[k] = [2]uint32{s, d}
	}
}

// firstMatch is the first rule of both bs and dl, or the number of rules.
func (pr *pairer) firstMatch(bs ruleBits, dl sparse) int {
	for _, wd := range dl {
		if m := bs[wd.w] & wd.m; m != 0 {
			return int(wd.w)*64 + bits.TrailingZeros64(m)
		}
	}
	return len(pr.rules)
}

// shadowed finds the conflicts of (s, d) when its decider is that of
// (s, 0): rules of d, within the decider's priority, that are the first
// of their policy to match and decide; a rule without destinations of
// the same policy before them (met by the walk of (s, 0)) decides that
// policy instead.
func (pr *pairer) shadowed(bs ruleBits, dl sparse, decider int, s, d uint32) {
	end, lastPolicy := int(pr.groupEnd[decider]), pr.rules[decider].policy
	for _, wd := range dl {
		if int(wd.w)*64+63 <= decider {
			continue
		}
		for m := bs[wd.w] & wd.m; m != 0; m &= m - 1 {
			r := int(wd.w)*64 + bits.TrailingZeros64(m)
			if r <= decider {
				continue
			}
			if r > end {
				return
			}
			ru := pr.rules[r]
			if ru.dryRun || ru.policy == lastPolicy {
				continue
			}
			lastPolicy = ru.policy
			if pr.firstAnyIn[ru.policy] == s && int(pr.firstAny[ru.policy]) < r {
				continue
			}
			pr.conflict(decider, r, s, d)
		}
	}
}

// reportConflicts says, for each pair of rules of policies of the same
// priority that disagree on some connections, which one decides them.
func (pr *pairer) reportConflicts(sc, dc classes) {
	keys := slices.SortedFunc(maps.Keys(pr.conflicts), func(a, b [2]int32) int {
		return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1]))
	})
	for i, k := range keys {
		if i == maxConflictProblems {
			pr.problems.add("", fmt.Sprintf("%d more conflicts between policies of the same priority", len(keys)-i))
			break
		}
		win, lose := pr.infos[k[0]], pr.infos[k[1]]
		ex := pr.conflicts[k]
		pr.problems.add("", fmt.Sprintf("rules %s (%s) and %s (%s) are in policies of the same priority %d and disagree on connections such as from %s to %s: %s decides, as %s comes before %s by name",
			win.Name, win.Action, lose.Name, lose.Action, pr.rules[k[0]].priority, sc.example[ex[0]], dc.example[ex[1]], win.Name, win.Policy, lose.Policy))
	}
}
