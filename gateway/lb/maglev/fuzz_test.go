package maglev_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/straitnet/strait/gateway/lb/maglev"
	"github.com/straitnet/strait/gateway/lb/maglev/maglevref"
)

// FuzzBuild builds tables from arbitrary backends (names split on ",",
// one byte of weights per backend) and table sizes, and checks that
// Build refuses exactly the invalid inputs and that every table it
// returns holds its invariants.
func FuzzBuild(f *testing.F) {
	f.Add("a,b,c", []byte{1, 1, 1}, uint16(7))
	f.Add("eu-west,us-east,ap-south,on-prem", []byte{1, 2, 3, 0}, uint16(997))
	f.Add("x,y", []byte{0xff, 0x01}, uint16(4999))
	f.Add("a,a", []byte{1, 1}, uint16(11))
	f.Add("a,,b", []byte{}, uint16(11))
	f.Add("", []byte{}, uint16(2))
	f.Add("one", []byte{0}, uint16(3))
	f.Add("p,q,r,s", []byte{5, 5, 5}, uint16(4))
	f.Fuzz(func(t *testing.T, names string, weights []byte, msel uint16) {
		m := int(msel) % 5000
		var bs []maglev.Backend
		if names != "" {
			for i, name := range strings.SplitN(names, ",", 64) {
				// Weights from 0 to 63<<24: zero, small and huge,
				// so that the turn arithmetic meets extreme ratios.
				w := uint32(1)
				if i < len(weights) {
					b := weights[i]
					w = uint32(b&0x3f) << (8 * (b >> 6))
				}
				bs = append(bs, maglev.Backend{Name: name, Weight: w})
			}
		}
		table, err := maglev.Build(bs, m)
		if why := invalid(bs, m); why != "" {
			if err == nil {
				t.Fatalf("%d backends, m=%d: no error, but %s", len(bs), m, why)
			}
			return
		}
		if err != nil {
			t.Fatalf("%d backends, m=%d: %v", len(bs), m, err)
		}
		if len(table) != m {
			t.Fatalf("%d entries, want %d", len(table), m)
		}
		live := 0
		sameWeight := true
		var w0 uint32
		for _, b := range bs {
			if b.Weight > 0 {
				if live > 0 && b.Weight != w0 {
					sameWeight = false
				}
				live++
				w0 = b.Weight
			}
		}
		for j, e := range table {
			switch {
			case live == 0 && e != -1:
				t.Fatalf("entry %d is %d without live backends", j, e)
			case live > 0 && (e < 0 || int(e) >= len(bs)):
				t.Fatalf("entry %d is %d: not a backend", j, e)
			case live > 0 && bs[e].Weight == 0:
				t.Fatalf("entry %d is %q, of weight 0", j, bs[e].Name)
			}
		}
		if live > 0 {
			checkShares(t, bs, table, 1e18)
		}

		rev := slices.Clone(bs)
		slices.Reverse(rev)
		again, err := maglev.Build(rev, m)
		if err != nil {
			t.Fatal(err)
		}
		if i := firstDiff(byName(again, of(rev)), byName(table, of(bs))); i >= 0 {
			t.Fatalf("reversed order differs at entry %d", i)
		}

		if live > 0 && sameWeight {
			var ls []string
			for _, b := range bs {
				if b.Weight > 0 {
					ls = append(ls, b.Name)
				}
			}
			slices.Sort(ls)
			ref := maglevref.Table(ls, m)
			if i := firstDiff(byName(table, of(bs)), byName(ref, func(i int32) string { return ls[i] })); i >= 0 {
				t.Fatalf("equal weights: entry %d differs from the paper's algorithm", i)
			}
		}
	})
}

// invalid says why Build must refuse its arguments, or "".
func invalid(bs []maglev.Backend, m int) string {
	prime := m >= 2
	for d := 2; d*d <= m && prime; d++ {
		prime = m%d != 0
	}
	switch {
	case !prime:
		return "m is not prime"
	case m <= len(bs):
		return "m is not above the number of backends"
	}
	seen := map[string]bool{}
	for _, b := range bs {
		if b.Name == "" {
			return "a name is empty"
		}
		if seen[b.Name] {
			return "a name repeats"
		}
		seen[b.Name] = true
	}
	return ""
}
