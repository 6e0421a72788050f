package maglev

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// minimalMoves is the fewest entries that must change from prev to a table
// with exact quotas: those of backends gone, and those above a staying
// backend's new quota.
func minimalMoves(prev []int32, prevNames []string, backends []Backend, m int) int {
	live := map[string]int32{}
	var order []int32
	for i, b := range backends {
		if b.Weight > 0 {
			live[b.Name] = int32(i)
		}
	}
	for _, i := range mustSorted(backends) {
		if backends[i].Weight > 0 {
			order = append(order, i)
		}
	}
	q := quotas(backends, order, m)
	had := map[int32]int{}
	moves := 0
	for _, p := range prev {
		j, ok := live[prevNames[p]]
		if !ok {
			moves++
			continue
		}
		had[j]++
	}
	for j, n := range had {
		moves += max(0, n-q[j])
	}
	return moves
}

func mustSorted(backends []Backend) []int32 {
	idx := make([]int32, len(backends))
	for i := range idx {
		idx[i] = int32(i)
	}
	slices.SortFunc(idx, func(a, b int32) int {
		if backends[a].Name < backends[b].Name {
			return -1
		}
		return 1
	})
	return idx
}

func names(bs []Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Name
	}
	return out
}

// TestRebuildMovesTheMinimum walks random histories of backends joining,
// leaving and changing weight: every table is complete, every backend
// holds exactly its quota, and no more entries move than must.
func TestRebuildMovesTheMinimum(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	for _, m := range []int{251, 4099, 65537} {
		var bs []Backend
		for i := range 5 + r.IntN(20) {
			bs = append(bs, Backend{Name: fmt.Sprintf("b%d", i), Weight: uint32(1 + r.IntN(5))})
		}
		table, err := Build(bs, m)
		if err != nil {
			t.Fatal(err)
		}
		next := len(bs)
		for step := range 30 {
			prevNames, prev := names(bs), table
			nb := slices.Clone(bs)
			switch r.IntN(3) {
			case 0: // one leaves
				if len(nb) > 1 {
					k := r.IntN(len(nb))
					nb = append(nb[:k], nb[k+1:]...)
				}
			case 1: // one joins
				nb = append(nb, Backend{Name: fmt.Sprintf("b%d", next), Weight: uint32(1 + r.IntN(5))})
				next++
			case 2: // a weight changes, or drains
				nb[r.IntN(len(nb))].Weight = uint32(r.IntN(6))
			}
			r.Shuffle(len(nb), func(i, j int) { nb[i], nb[j] = nb[j], nb[i] })
			got, err := Rebuild(prev, prevNames, nb, m)
			if err != nil {
				t.Fatal(err)
			}
			var live []int32
			for _, i := range mustSorted(nb) {
				if nb[i].Weight > 0 {
					live = append(live, i)
				}
			}
			if len(live) == 0 {
				continue
			}
			want := quotas(nb, live, m)
			counts := Counts(got, len(nb))
			for i := range nb {
				if counts[i] != want[i] {
					t.Fatalf("m=%d step %d: %s holds %d entries, its quota is %d", m, step, nb[i].Name, counts[i], want[i])
				}
			}
			moved := 0
			for i := range got {
				if got[i] < 0 {
					t.Fatalf("m=%d step %d: entry %d empty", m, step, i)
				}
				if prevNames[prev[i]] != nb[got[i]].Name {
					moved++
				}
			}
			if min := minimalMoves(prev, prevNames, nb, m); moved != min {
				t.Fatalf("m=%d step %d: %d entries moved, %d had to", m, step, moved, min)
			}
			bs, table = nb, got
		}
	}
}

func TestRebuildOneOfHundredLeaves(t *testing.T) {
	var bs []Backend
	for i := range 100 {
		bs = append(bs, Backend{Name: fmt.Sprintf("backend-%d", i), Weight: 1})
	}
	table, err := Build(bs, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	rest := slices.Delete(slices.Clone(bs), 37, 38)
	got, err := Rebuild(table, names(bs), rest, DefaultSize)
	if err != nil {
		t.Fatal(err)
	}
	moved := 0
	for i := range got {
		if bs[table[i]].Name != rest[got[i]].Name {
			moved++
		}
	}
	share := float64(moved) / float64(DefaultSize)
	t.Logf("one of 100 leaves: %.4f of the entries move (%.3f/N)", share, share*100)
	if share*100 > 1.01 {
		t.Fatalf("%.4f of the entries moved; only the leaving backend's 1/100 should", share)
	}
	c := Counts(got, len(rest))
	if mx, mn := slices.Max(c), slices.Min(c); float64(mx)/float64(mn) > 1.05 {
		t.Fatalf("after the rebuild, max/min %d/%d", mx, mn)
	}
}

func TestRebuildWithoutPrevIsBuild(t *testing.T) {
	bs := []Backend{{Name: "a", Weight: 1}, {Name: "b", Weight: 2}}
	want, _ := Build(bs, 251)
	got, err := Rebuild(nil, nil, bs, 251)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Rebuild without a previous table differs from Build (%v)", err)
	}
}
