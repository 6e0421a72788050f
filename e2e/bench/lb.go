package bench

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/straitnet/strait/gateway/lb/maglev"
	"github.com/straitnet/strait/gateway/lb/maglev/maglevref"
)

func init() {
	register(Bench{
		Name: "lb",
		Doc: "evenness of the central load balancer's Maglev table (largest backend share over the smallest) with " +
			"100 equal backends and 65,537 entries, against the paper's pseudocode on the same backends; also the " +
			"shares of 1,000,000 random 5-tuples hashed as the kernel does (jhash, reciprocal scale), the flows that " +
			"move when one of 10 or 100 backends goes, weighted shares, build times, and a ring consistent hash " +
			"(Karger, 100 virtual nodes per backend) for comparison. Pure computation; every table is checked",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Size, "flows", 0, fmt.Sprintf("random 5-tuples hashed to the tables (default %d, with -quick %d)", lbFlows, lbQuickFlows))
			fs.IntVar(&c.Rounds, "rounds", 5, "builds timed at each size; the median counts")
			fs.BoolVar(&c.Quick, "quick", false, fmt.Sprintf("%d flows, %d removals per size, and no %d-entry table", lbQuickFlows, lbQuickRemovals, lbBigSize))
		},
		Run: runLB,
	})
}

const (
	lbFlows         = 1_000_000
	lbQuickFlows    = 100_000
	lbRemovals      = 5 // backends removed in turn, at each size; the mean counts
	lbQuickRemovals = 3
	lbVnodes        = 100    // a ring's virtual nodes per backend
	lbBigSize       = 655373 // the paper's larger table
)

func runLB(ctx context.Context, c Config) (Result, error) {
	nflows := cmp.Or(c.Size, lbFlows)
	removals := lbRemovals
	if c.Quick {
		nflows = cmp.Or(c.Size, lbQuickFlows)
		removals = lbQuickRemovals
	}
	if nflows < 1000 {
		return Result{}, fmt.Errorf("bench lb: %d flows; want at least 1000", nflows)
	}
	rounds := max(c.Rounds, 1)
	seed := uint64(time.Now().UnixNano())
	c.logf("lb: %d flows, seed %d", nflows, seed)
	r := rand.New(rand.NewPCG(seed, 0x6c62))
	flows := lbFlowHashes(r, nflows)
	const m = maglev.DefaultSize
	extra := map[string]any{"table_size": m, "backends": 100, "flows": nflows, "seed": seed}
	missed := []string{} // targets missed, for the line

	// Evenness: strait's table, and the paper's, for 100 equal backends.
	bs := lbEqual(100)
	table, err := maglev.Build(bs, m)
	if err != nil {
		return Result{}, fmt.Errorf("bench lb: %w", err)
	}
	if err := lbCheck(bs, table); err != nil {
		return Result{}, err
	}
	names := lbNames(bs) // sorted, as Build orders its turns
	start := time.Now()
	ref := maglevref.Table(names, m)
	extra["baseline_build_ms_100"] = round(ms(time.Since(start)))
	for j := range table {
		if bs[table[j]].Name != names[ref[j]] {
			return Result{}, fmt.Errorf("bench lb: entry %d is %s, the paper's algorithm says %s", j, bs[table[j]].Name, names[ref[j]])
		}
	}
	counts := maglev.Counts(table, len(bs))
	if lo, hi := slices.Min(counts), slices.Max(counts); hi-lo > 1 {
		return Result{}, fmt.Errorf("bench lb: equal backends hold %d to %d entries; Maglev keeps them within one", lo, hi)
	}
	value := maxOverMin(counts)
	baseline := maxOverMin(maglev.Counts(ref, len(names)))
	extra["flow_max_min"] = round(maxOverMin(lbFlowCounts(table, flows, len(bs))))
	if value > 1.05 {
		missed = append(missed, "max/min share at most 1.05")
	}

	// Disruption: one backend of N goes.
	for _, n := range []int{10, 100} {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		// strait's balancer rebuilds from the table it had
		// (maglev.Rebuild); the paper's Build, a function of the
		// backends alone, for comparison.
		d, err := lbMoved(r, n, m, flows, removals, true)
		if err != nil {
			return Result{}, err
		}
		sd, err := lbMoved(r, n, m, flows, removals, false)
		if err != nil {
			return Result{}, err
		}
		extra[fmt.Sprintf("stateless_moved_x_n_n%d", n)] = round(sd.moved * float64(n))
		extra[fmt.Sprintf("stateless_moved_stayed_n%d", n)] = round(sd.stayed)
		extra[fmt.Sprintf("moved_n%d", n)] = round(d.moved)
		extra[fmt.Sprintf("moved_x_n_n%d", n)] = round(d.moved * float64(n))
		extra[fmt.Sprintf("moved_stayed_n%d", n)] = round(d.stayed)
		extra[fmt.Sprintf("moved_entries_x_n_n%d", n)] = round(d.entries * float64(n))
		if d.moved*float64(n) > 1.2 {
			missed = append(missed, fmt.Sprintf("moved x N at most 1.2 at N=%d", n))
		}
		rd := lbRingMoved(r, n, flows, removals)
		extra[fmt.Sprintf("ring_moved_x_n_n%d", n)] = round(rd * float64(n))
	}
	if !c.Quick {
		d, err := lbMoved(r, 100, lbBigSize, flows, removals, false)
		if err != nil {
			return Result{}, err
		}
		extra[fmt.Sprintf("stateless_moved_x_n_n100_m%d", lbBigSize)] = round(d.moved * 100)
		extra[fmt.Sprintf("stateless_moved_stayed_n100_m%d", lbBigSize)] = round(d.stayed)
	}

	// The ring, for comparison.
	ring := newLBRing(bs, lbVnodes)
	extra["ring_max_min"] = round(maxOverMin(ring.counts(flows, len(bs))))
	extra["ring_space_max_min"] = round(maxOverMin(ring.space(len(bs))))

	// Weights 1 to 10.
	ws := lbEqual(10)
	for i := range ws {
		ws[i].Weight = uint32(i + 1)
	}
	wt, err := maglev.Build(ws, m)
	if err != nil {
		return Result{}, fmt.Errorf("bench lb: %w", err)
	}
	if err := lbCheck(ws, wt); err != nil {
		return Result{}, err
	}
	extra["weighted_max_rel_err"] = round(lbWeightErr(ws, maglev.Counts(wt, len(ws))))
	extra["weighted_flow_max_rel_err"] = round(lbWeightErr(ws, lbFlowCounts(wt, flows, len(ws))))

	// Build times.
	for _, n := range []int{100, 1000} {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		bs := lbEqual(n)
		var t []float64
		for range rounds {
			start := time.Now()
			if _, err := maglev.Build(bs, m); err != nil {
				return Result{}, fmt.Errorf("bench lb: %w", err)
			}
			t = append(t, ms(time.Since(start)))
		}
		extra[fmt.Sprintf("build_ms_%d", n)] = round(median(t))
	}

	extra["targets"] = "max/min share at most 1.05; moved x N at most 1.2 at N=10 and 100 (M=65537, strait rebuilding from its previous table; stateless_* is the paper's Build from scratch); build of 1000 backends well under 100 ms"
	extra["missed"] = missed
	extra["paper_table_size"] = "M prime and above 100*N keeps backends' shares of the hash space within 1% of each other " +
		"(section 3.4, as quoted by blog.acolyer.org, 2016-03-21)"
	extra["paper_evaluation"] = "the paper's evaluation compares Maglev hashing with Karger's ring and Rendezvous " +
		"hashing at table sizes 65537 and 655373: Maglev's balance is near perfect at both where the others are " +
		"uneven, and Maglev moves more entries than the minimum when backends fail, fewer with the larger table " +
		"(described from memory: no copy of the paper's text with its figures was found to quote numbers from)"
	return Result{
		Bench: "lb", Value: value, Unit: "max/min share",
		Baseline:      "the paper's pseudocode (maglevref), same 100 backends and table size, max/min share",
		BaselineValue: baseline,
		Extra:         extra,
	}, nil
}

// lbEqual makes n backends of weight 1, named like a service's exports.
func lbEqual(n int) []maglev.Backend {
	bs := make([]maglev.Backend, n)
	for i := range bs {
		bs[i] = maglev.Backend{Name: fmt.Sprintf("cluster-%03d/shop/web", i), Weight: 1}
	}
	return bs
}

func lbNames(bs []maglev.Backend) []string {
	n := make([]string, len(bs))
	for i, b := range bs {
		n[i] = b.Name
	}
	slices.Sort(n)
	return n
}

// lbCheck holds a table to what the data path needs: every entry a
// backend of positive weight, every such backend some entries.
func lbCheck(bs []maglev.Backend, table []int32) error {
	for j, e := range table {
		if e < 0 || int(e) >= len(bs) {
			return fmt.Errorf("bench lb: entry %d is %d with %d backends", j, e, len(bs))
		}
		if bs[e].Weight == 0 {
			return fmt.Errorf("bench lb: entry %d is %s, of weight 0", j, bs[e].Name)
		}
	}
	for i, c := range maglev.Counts(table, len(bs)) {
		if c == 0 && bs[i].Weight > 0 {
			return fmt.Errorf("bench lb: %s (weight %d) has no entry", bs[i].Name, bs[i].Weight)
		}
	}
	return nil
}

func maxOverMin(counts []int) float64 {
	lo := slices.Min(counts)
	if lo == 0 {
		return math.Inf(1)
	}
	return float64(slices.Max(counts)) / float64(lo)
}

// lbFlowHashes makes n random TCP 5-tuples toward one VIP and hashes each
// to 32 bits as the kernel's jhash does; the table index follows by
// lbIndex.
func lbFlowHashes(r *rand.Rand, n int) []uint32 {
	vip := uint32(242)<<24 | 1<<16 | 10 // 242.1.0.10
	hashSeed := r.Uint32()
	h := make([]uint32, n)
	for i := range h {
		saddr := r.Uint32()
		sport := 1024 + r.Uint32N(65536-1024)
		h[i] = jhash2([]uint32{saddr, vip, sport<<16 | 443, 6}, hashSeed)
	}
	return h
}

// lbIndex maps a 32-bit hash to an index below m as nftables' "jhash ...
// mod m" does: reciprocal_scale, (h*m)>>32, not h%m.
func lbIndex(h uint32, m int) int {
	return int(uint64(h) * uint64(m) >> 32)
}

func lbFlowCounts(table []int32, flows []uint32, n int) []int {
	c := make([]int, n)
	for _, h := range flows {
		c[table[lbIndex(h, len(table))]]++
	}
	return c
}

// lbWeightErr is the largest |share/expected - 1| over backends.
func lbWeightErr(bs []maglev.Backend, counts []int) float64 {
	var w, total float64
	for i, b := range bs {
		w += float64(b.Weight)
		total += float64(counts[i])
	}
	worst := 0.0
	for i, b := range bs {
		want := float64(b.Weight) / w
		worst = max(worst, math.Abs(float64(counts[i])/total/want-1))
	}
	return worst
}

type lbDisruption struct {
	moved   float64 // share of flows whose backend changed
	stayed  float64 // share of flows that changed although their backend stayed
	entries float64 // share of table entries that changed
}

// lbMoved removes, in turn, `removals` random backends of n and averages
// what moved: with the table rebuilt from the previous one (strait's
// balancer), or built afresh (the paper's).
func lbMoved(r *rand.Rand, n, m int, flows []uint32, removals int, rebuild bool) (lbDisruption, error) {
	bs := lbEqual(n)
	full, err := maglev.Build(bs, m)
	if err != nil {
		return lbDisruption{}, fmt.Errorf("bench lb: %w", err)
	}
	var sum lbDisruption
	k := min(removals, n)
	for _, gone := range r.Perm(n)[:k] {
		rest := slices.Delete(slices.Clone(bs), gone, gone+1)
		after, err := maglev.Build(rest, m)
		if rebuild {
			after, err = maglev.Rebuild(full, lbNames(bs), rest, m)
		}
		if err != nil {
			return lbDisruption{}, fmt.Errorf("bench lb: %w", err)
		}
		if err := lbCheck(rest, after); err != nil {
			return lbDisruption{}, err
		}
		var moved, stayed, entries int
		for j := range full {
			if bs[full[j]].Name != rest[after[j]].Name {
				entries++
			}
		}
		for _, h := range flows {
			j := lbIndex(h, m)
			was, is := bs[full[j]].Name, rest[after[j]].Name
			if was == is {
				continue
			}
			moved++
			if full[j] != int32(gone) {
				stayed++
			}
		}
		f := float64(len(flows))
		sum.moved += float64(moved) / f
		sum.stayed += float64(stayed) / f
		sum.entries += float64(entries) / float64(m)
	}
	return lbDisruption{moved: sum.moved / float64(k), stayed: sum.stayed / float64(k), entries: sum.entries / float64(k)}, nil
}

// lbRing is a consistent-hash ring (Karger et al.) with virtual nodes: a
// flow goes to the first point at or after its hash.
type lbRing struct {
	points []uint32
	owner  []int32
}

func newLBRing(bs []maglev.Backend, vnodes int) lbRing {
	type pt struct {
		h uint32
		b int32
	}
	var ps []pt
	for i, b := range bs {
		for v := range vnodes {
			sum := sha256.Sum256(fmt.Appendf(nil, "%s#%d", b.Name, v))
			ps = append(ps, pt{binary.BigEndian.Uint32(sum[:4]), int32(i)})
		}
	}
	slices.SortFunc(ps, func(a, b pt) int { return cmp.Or(cmp.Compare(a.h, b.h), cmp.Compare(a.b, b.b)) })
	var r lbRing
	for _, p := range ps {
		r.points = append(r.points, p.h)
		r.owner = append(r.owner, p.b)
	}
	return r
}

func (r lbRing) lookup(h uint32) int32 {
	i, _ := slices.BinarySearch(r.points, h)
	if i == len(r.points) {
		i = 0
	}
	return r.owner[i]
}

func (r lbRing) counts(flows []uint32, n int) []int {
	c := make([]int, n)
	for _, h := range flows {
		c[r.lookup(h)]++
	}
	return c
}

// space is each backend's share of the hash space, in hashes.
func (r lbRing) space(n int) []int {
	c := make([]int, n)
	prev := uint64(r.points[len(r.points)-1]) // the arc to points[0] wraps
	for i, p := range r.points {
		c[r.owner[i]] += int((uint64(p) - prev) & math.MaxUint32)
		prev = uint64(p)
	}
	return c
}

// lbRingMoved is lbMoved for the ring: the share of flows that change
// backend, averaged over random removals.
func lbRingMoved(r *rand.Rand, n int, flows []uint32, removals int) float64 {
	bs := lbEqual(n)
	full := newLBRing(bs, lbVnodes)
	k := min(removals, n)
	var sum float64
	for _, gone := range r.Perm(n)[:k] {
		rest := slices.Delete(slices.Clone(bs), gone, gone+1)
		after := newLBRing(rest, lbVnodes)
		moved := 0
		for _, h := range flows {
			if bs[full.lookup(h)].Name != rest[after.lookup(h)].Name {
				moved++
			}
		}
		sum += float64(moved) / float64(len(flows))
	}
	return sum / float64(k)
}

// jhash2 is Bob Jenkins' lookup3 hash of 32-bit words as the Linux
// kernel's jhash2 computes it (include/linux/jhash.h), which nftables'
// jhash expression uses on its registers.
func jhash2(k []uint32, initval uint32) uint32 {
	a := 0xdeadbeef + uint32(len(k))<<2 + initval
	b, c := a, a
	for len(k) > 3 {
		a += k[0]
		b += k[1]
		c += k[2]
		// __jhash_mix
		a -= c
		a ^= bits.RotateLeft32(c, 4)
		c += b
		b -= a
		b ^= bits.RotateLeft32(a, 6)
		a += c
		c -= b
		c ^= bits.RotateLeft32(b, 8)
		b += a
		a -= c
		a ^= bits.RotateLeft32(c, 16)
		c += b
		b -= a
		b ^= bits.RotateLeft32(a, 19)
		a += c
		c -= b
		c ^= bits.RotateLeft32(b, 4)
		b += a
		k = k[3:]
	}
	switch len(k) {
	case 3:
		c += k[2]
		fallthrough
	case 2:
		b += k[1]
		fallthrough
	case 1:
		a += k[0]
		// __jhash_final
		c ^= b
		c -= bits.RotateLeft32(b, 14)
		a ^= c
		a -= bits.RotateLeft32(c, 11)
		b ^= a
		b -= bits.RotateLeft32(a, 25)
		c ^= b
		c -= bits.RotateLeft32(b, 16)
		a ^= c
		a -= bits.RotateLeft32(c, 4)
		b ^= a
		b -= bits.RotateLeft32(a, 14)
		c ^= b
		c -= bits.RotateLeft32(b, 24)
	}
	return c
}
