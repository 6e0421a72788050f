package maglev_test

import (
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/straitnet/strait/gateway/lb/maglev"
	"github.com/straitnet/strait/gateway/lb/maglev/maglevref"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the random tests (0: a new one, logged)")

func rng(t testing.TB) *rand.Rand {
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -args -seed=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, 0x6d61676c6576))
}

// equal makes n backends of weight 1.
func equal(n int) []maglev.Backend {
	bs := make([]maglev.Backend, n)
	for i := range bs {
		bs[i] = maglev.Backend{Name: fmt.Sprintf("cluster-%03d/shop/web", i), Weight: 1}
	}
	return bs
}

// randomBackends makes n backends with distinct random names and weights
// from 1 to maxWeight.
func randomBackends(r *rand.Rand, n int, maxWeight uint32) []maglev.Backend {
	seen := map[string]bool{}
	var bs []maglev.Backend
	for len(bs) < n {
		b := make([]byte, 1+r.IntN(12))
		for i := range b {
			b[i] = "abcdefghijklmnopqrstuvwxyz0123456789-./"[r.IntN(39)]
		}
		if seen[string(b)] {
			continue
		}
		seen[string(b)] = true
		bs = append(bs, maglev.Backend{Name: string(b), Weight: 1 + r.Uint32N(maxWeight)})
	}
	return bs
}

// byName renders a table as backend names, so that tables built from
// different orders (or by the reference) compare.
func byName(table []int32, names func(int32) string) []string {
	s := make([]string, len(table))
	for i, b := range table {
		if b < 0 {
			s[i] = "-"
		} else {
			s[i] = names(b)
		}
	}
	return s
}

func of(bs []maglev.Backend) func(int32) string {
	return func(i int32) string { return bs[i].Name }
}

// primes below n, by a sieve.
func primes(n int) []int {
	composite := make([]bool, n)
	var ps []int
	for i := 2; i < n; i++ {
		if composite[i] {
			continue
		}
		ps = append(ps, i)
		for j := i * i; j < n; j += i {
			composite[j] = true
		}
	}
	return ps
}

func TestIsPrime(t *testing.T) {
	const n = 200000
	ps := primes(n)
	want := make([]bool, n)
	for _, p := range ps {
		want[p] = true
	}
	for i := -3; i < n; i++ {
		if got := maglev.IsPrime(i); got != (i >= 0 && want[i]) {
			t.Fatalf("IsPrime(%d) = %v", i, got)
		}
	}
	for _, tt := range []struct {
		n    int
		want bool
	}{
		{65537, true}, {655373, true}, {2147483647, true}, {1<<61 - 1, true},
		{65535, false}, {4294967297, false} /* 641 * 6700417 */, {maglev.MaxSize, false}, {1<<62 + 1, false},
	} {
		if got := maglev.IsPrime(tt.n); got != tt.want {
			t.Errorf("IsPrime(%d) = %v, want %v", tt.n, got, tt.want)
		}
	}
}

// TestPermutationPinned pins the name hashing: a change moves flows
// between backends when gateways upgrade, so it must be deliberate.
func TestPermutationPinned(t *testing.T) {
	for _, tt := range []struct {
		name         string
		offset, skip int
	}{
		{"a", 43563, 56398},
		{"cluster-1", 1013, 19889},
		{"eu-west/shop/web", 41659, 18175},
	} {
		o, s := maglev.Permutation(tt.name, maglev.DefaultSize)
		if o != tt.offset || s != tt.skip {
			t.Errorf("Permutation(%q) = %d, %d; want %d, %d", tt.name, o, s, tt.offset, tt.skip)
		}
	}
	// A whole weighted table, pinned by its digest.
	table, err := maglev.Build([]maglev.Backend{{"eu-west", 1}, {"us-east", 2}, {"ap-south", 3}, {"on-prem", 0}}, maglev.DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 0, 4*len(table))
	for _, e := range table {
		b = binary.LittleEndian.AppendUint32(b, uint32(e))
	}
	if got, want := fmt.Sprintf("%x", sha256.Sum256(b)), "7cd9be339f843325136fa47e8f7c044913bd2c2cf0ee49fd6ece26601b8cccbb"; got != want {
		t.Errorf("table digest %s, want %s", got, want)
	}
}

func TestPermutationRange(t *testing.T) {
	r := rng(t)
	ps := primes(5000)
	for range 2000 {
		m := ps[r.IntN(len(ps))]
		name := fmt.Sprint(r.Uint64())
		o, s := maglev.Permutation(name, m)
		if o < 0 || o >= m || s < 1 || s >= m {
			t.Fatalf("Permutation(%q, %d) = %d, %d: out of range", name, m, o, s)
		}
	}
}

// TestBuildMatchesReference checks Build with equal weights against the
// paper's pseudocode, on random sets in random orders, some with
// backends of weight 0 (which must be as if absent).
func TestBuildMatchesReference(t *testing.T) {
	r := rng(t)
	ps := primes(20000)
	for round := range 300 {
		n := r.IntN(60)
		var m int
		switch {
		case round%50 == 0:
			n = 1 + r.IntN(200)
			m = maglev.DefaultSize
		default:
			// Small tables, down to barely above n: the walks to a
			// free entry are long and the last round is partial.
			lo, _ := slices.BinarySearch(ps, n+1)
			m = ps[lo+r.IntN(min(40, len(ps)-lo))]
		}
		bs := randomBackends(r, n, 1)
		for i := range bs {
			if r.IntN(8) == 0 {
				bs[i].Weight = 0
			}
		}
		table, err := maglev.Build(bs, m)
		if err != nil {
			t.Fatalf("n=%d m=%d: %v", n, m, err)
		}
		var live []string
		for _, b := range bs {
			if b.Weight > 0 {
				live = append(live, b.Name)
			}
		}
		slices.Sort(live)
		ref := maglevref.Table(live, m)
		got, want := byName(table, of(bs)), byName(ref, func(i int32) string { return live[i] })
		if i := firstDiff(got, want); i >= 0 {
			t.Fatalf("n=%d m=%d: entry %d is %s, the paper's algorithm says %s", n, m, i, got[i], want[i])
		}
	}
}

func firstDiff(a, b []string) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// TestEvenness: with equal weights every backend takes one entry per
// round, so counts differ by at most one. The paper's near-perfect
// balance, asserted.
func TestEvenness(t *testing.T) {
	bs := equal(100)
	table, err := maglev.Build(bs, maglev.DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	c := maglev.Counts(table, len(bs))
	lo, hi := slices.Min(c), slices.Max(c)
	ratio := float64(hi) / float64(lo)
	t.Logf("100 backends, M=%d: entries %d..%d, max/min %.4f", maglev.DefaultSize, lo, hi, ratio)
	if ratio > 1.05 {
		t.Errorf("max/min share %.4f > 1.05", ratio)
	}
	if hi-lo > 1 {
		t.Errorf("entries per backend range %d..%d: equal weights must differ by at most 1", lo, hi)
	}
}

// checkShares asserts Build's documented bound: a backend's count is
// within 2 + N*w/W of m*w/W. It returns the largest relative error
// among backends expected to hold at least minExpected entries.
func checkShares(t *testing.T, bs []maglev.Backend, table []int32, minExpected float64) float64 {
	t.Helper()
	var W float64
	n := 0
	for _, b := range bs {
		if b.Weight > 0 {
			W += float64(b.Weight)
			n++
		}
	}
	m := float64(len(table))
	worst := 0.0
	for i, got := range maglev.Counts(table, len(bs)) {
		w := float64(bs[i].Weight)
		want := m * w / W
		if d := math.Abs(float64(got) - want); d > 2+float64(n)*w/W+1e-9 {
			t.Errorf("backend %q (weight %d of %g): %d entries, want %.1f", bs[i].Name, bs[i].Weight, W, got, want)
		}
		if bs[i].Weight > 0 && got == 0 {
			t.Errorf("backend %q (weight %d) has no entry", bs[i].Name, bs[i].Weight)
		}
		if want >= minExpected {
			worst = max(worst, math.Abs(float64(got)-want)/want)
		}
	}
	return worst
}

func TestWeights(t *testing.T) {
	for _, tt := range []struct {
		name    string
		weights []uint32
	}{
		{"twice", []uint32{1, 2}},
		{"one heavy", []uint32{1, 1, 1, 3}},
		{"scale free", []uint32{1000, 2000, 3000}},
		{"one to ten", []uint32{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"huge", []uint32{math.MaxUint32, math.MaxUint32 / 2, 1 << 20}},
		{"zero", []uint32{0, 5, 0, 5}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var bs []maglev.Backend
			for i, w := range tt.weights {
				bs = append(bs, maglev.Backend{Name: fmt.Sprintf("b%d", i), Weight: w})
			}
			table, err := maglev.Build(bs, maglev.DefaultSize)
			if err != nil {
				t.Fatal(err)
			}
			if worst := checkShares(t, bs, table, 1000); worst > 0.005 {
				t.Errorf("largest relative error %.4f: shares %v for weights %v", worst, maglev.Counts(table, len(bs)), tt.weights)
			}
		})
	}
	// Scaling every weight changes nothing.
	a, _ := maglev.Build([]maglev.Backend{{"x", 1}, {"y", 2}, {"z", 3}}, 997)
	b, _ := maglev.Build([]maglev.Backend{{"x", 7}, {"y", 14}, {"z", 21}}, 997)
	if !slices.Equal(a, b) {
		t.Error("weights 1:2:3 and 7:14:21 give different tables")
	}
}

func TestWeightedSharesRandom(t *testing.T) {
	r := rng(t)
	for range 40 {
		bs := randomBackends(r, 2+r.IntN(60), 100)
		table, err := maglev.Build(bs, maglev.DefaultSize)
		if err != nil {
			t.Fatal(err)
		}
		// Within a few percent for every backend that holds a few
		// hundred entries; smaller ones are held to the absolute
		// bound of checkShares alone.
		if worst := checkShares(t, bs, table, 300); worst > 0.03 {
			t.Errorf("%d backends: largest relative error %.4f", len(bs), worst)
		}
	}
}

// TestDisruption removes one of N equal backends and counts the entries
// whose backend changed. Maglev is not minimally disruptive: besides the
// removed backend's own 1/N, some entries of the others move too, more
// as N/M grows.
func TestDisruption(t *testing.T) {
	for _, tt := range []struct {
		n, m     int
		removals int
		max      float64 // moved entries, times N, averaged over removals
	}{
		{10, maglev.DefaultSize, 5, 1.2},
		// At M=65537 and 100 backends the paper's algorithm moves
		// about 1.55/N (measured: about 0.55% of the table beyond the
		// removed backend's own); 1.2/N needs a larger table.
		{100, maglev.DefaultSize, 5, 1.7},
		{100, 655373, 2, 1.2},
	} {
		t.Run(fmt.Sprintf("N=%d,M=%d", tt.n, tt.m), func(t *testing.T) {
			if tt.m > maglev.DefaultSize && testing.Short() {
				t.Skip("large table in -short mode")
			}
			r := rng(t)
			bs := equal(tt.n)
			full, err := maglev.Build(bs, tt.m)
			if err != nil {
				t.Fatal(err)
			}
			removals := tt.removals
			var sum float64
			for _, k := range r.Perm(tt.n)[:removals] {
				rest := slices.Delete(slices.Clone(bs), k, k+1)
				after, err := maglev.Build(rest, tt.m)
				if err != nil {
					t.Fatal(err)
				}
				moved, stayed := 0, 0
				for j := range full {
					was, is := bs[full[j]].Name, rest[after[j]].Name
					if was == is {
						continue
					}
					moved++
					if was != bs[k].Name {
						stayed++
					}
				}
				share := float64(moved) / float64(tt.m)
				own := float64(maglev.Counts(full, tt.n)[k]) / float64(tt.m)
				if share < own {
					t.Fatalf("removing %s moved %.4f of the table, less than its own %.4f", bs[k].Name, share, own)
				}
				t.Logf("removing %s: moved %.4f of the table (x N = %.3f), %.4f beyond its own", bs[k].Name, share, share*float64(tt.n), float64(stayed)/float64(tt.m))
				sum += share * float64(tt.n)
			}
			if mean := sum / float64(removals); mean > tt.max {
				t.Errorf("moved x N = %.3f on average, want <= %.2f", mean, tt.max)
			}
		})
	}
}

func TestOrderIndependence(t *testing.T) {
	r := rng(t)
	for range 30 {
		bs := randomBackends(r, 1+r.IntN(50), 5)
		m := 1009
		want, err := maglev.Build(bs, m)
		if err != nil {
			t.Fatal(err)
		}
		wantNames := byName(want, of(bs))
		for range 5 {
			shuffled := slices.Clone(bs)
			r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			got, err := maglev.Build(shuffled, m)
			if err != nil {
				t.Fatal(err)
			}
			if i := firstDiff(byName(got, of(shuffled)), wantNames); i >= 0 {
				t.Fatalf("another order of the same %d backends gives another table at entry %d", len(bs), i)
			}
		}
	}
}

func TestNoLiveBackends(t *testing.T) {
	for _, bs := range [][]maglev.Backend{nil, {{"a", 0}}, {{"a", 0}, {"b", 0}}} {
		table, err := maglev.Build(bs, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(table) != 7 || slices.ContainsFunc(table, func(e int32) bool { return e != -1 }) {
			t.Errorf("%v: table %v, want 7 entries of -1", bs, table)
		}
	}
	// One live backend takes everything.
	table, err := maglev.Build([]maglev.Backend{{"a", 0}, {"b", 3}}, 3)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(table, []int32{1, 1, 1}) {
		t.Errorf("table %v, want [1 1 1]", table)
	}
}

func TestBuildErrors(t *testing.T) {
	for _, tt := range []struct {
		name     string
		backends []maglev.Backend
		m        int
		want     string
	}{
		{"not prime", equal(3), 65536, "table size 65536 is not prime"},
		{"one", nil, 1, "table size 1 is not prime"},
		{"zero", nil, 0, "table size 0 is not prime"},
		{"negative", nil, -7, "table size -7 is not prime"},
		{"equal to backends", equal(5), 5, "table size 5 is not larger than the number of backends (5)"},
		{"below backends", equal(12), 11, "table size 11 is not larger than the number of backends (12)"},
		{"zero weights count", []maglev.Backend{{"a", 0}, {"b", 0}, {"c", 1}}, 3, "not larger than the number of backends (3)"},
		{"too big", equal(1), 16777259, "table size 16777259 is above the maximum 16777216"},
		{"duplicate", []maglev.Backend{{"a", 1}, {"b", 1}, {"a", 2}}, 7, `backends 0 and 2 are both named "a"`},
		{"duplicate weight 0", []maglev.Backend{{"b", 0}, {"b", 0}}, 7, `backends 0 and 1 are both named "b"`},
		{"empty name", []maglev.Backend{{"a", 1}, {"", 1}}, 7, "backend 1 has an empty name"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			table, err := maglev.Build(tt.backends, tt.m)
			if err == nil {
				t.Fatalf("no error; table of %d entries", len(table))
			}
			if !strings.HasPrefix(err.Error(), "maglev: ") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want one saying %q", err, tt.want)
			}
		})
	}
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			bs := equal(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := maglev.Build(bs, maglev.DefaultSize); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("1000 weighted", func(b *testing.B) {
		bs := equal(1000)
		bs[0].Weight = 1000 // the rest take a turn every 1000 rounds
		for b.Loop() {
			if _, err := maglev.Build(bs, maglev.DefaultSize); err != nil {
				b.Fatal(err)
			}
		}
	})
}
