package bench

import (
	"fmt"
	"slices"
	"testing"
)

func TestCNIInterleave(t *testing.T) {
	a, b := &cniSide{name: "a"}, &cniSide{name: "b"}
	var got []string
	err := cniInterleave(25, []*cniSide{a, b}, func(s *cniSide, i int) error {
		got = append(got, fmt.Sprintf("%s%d", s.name, i))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	block := func(side string, from, to int) {
		for i := from; i < to; i++ {
			want = append(want, fmt.Sprintf("%s%d", side, i))
		}
	}
	// Blocks of 10, the side going first alternating, the last block short.
	block("a", 0, 10)
	block("b", 0, 10)
	block("b", 10, 20)
	block("a", 10, 20)
	block("a", 20, 25)
	block("b", 20, 25)
	if !slices.Equal(got, want) {
		t.Errorf("order\n got %v\nwant %v", got, want)
	}
	// The first error stops it.
	n := 0
	err = cniInterleave(25, []*cniSide{a, b}, func(s *cniSide, i int) error {
		n++
		if n == 3 {
			return fmt.Errorf("boom")
		}
		return nil
	})
	if err == nil || n != 3 {
		t.Errorf("after an error: %v, %d calls", err, n)
	}
}
