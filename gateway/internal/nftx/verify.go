package nftx

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// Live reports whether a table exists and is not switched off (dormant).
func Live(c *nftables.Conn, t *nftables.Table) bool {
	tab, err := c.ListTableOfFamily(t.Name, t.Family)
	if err != nil {
		return false
	}
	// NFTA_TABLE_FLAGS is big-endian, and google/nftables v0.3.0 decodes
	// it in host order: look for the dormant bit either way.
	return tab.Flags&unix.NFT_TABLE_F_DORMANT == 0 && bits.ReverseBytes32(tab.Flags)&unix.NFT_TABLE_F_DORMANT == 0
}

// realElements drops the zero end marker nft puts in front of interval
// sets; strait never writes one, but a repair by `nft -f` may.
func realElements(els []nftables.SetElement) []nftables.SetElement {
	return slices.DeleteFunc(slices.Clone(els), func(e nftables.SetElement) bool {
		return e.IntervalEnd && binary.BigEndian.Uint32(append(make([]byte, 0, 4), e.Key...)) == 0
	})
}

// SameElements compares a set's elements as read back with those written,
// as sets of (key, value, end) triples.
func SameElements(got, want []nftables.SetElement) bool {
	got = realElements(got)
	if len(want) == 0 {
		return len(got) == 0
	}
	if len(got) != len(want) {
		return false
	}
	key := func(e nftables.SetElement) string {
		return fmt.Sprintf("%x/%x/%v", e.Key, e.Val, e.IntervalEnd)
	}
	seen := make(map[string]int, len(want))
	for _, e := range want {
		seen[key(e)]++
	}
	for _, e := range got {
		k := key(e)
		if seen[k] == 0 {
			return false
		}
		seen[k]--
	}
	return true
}
