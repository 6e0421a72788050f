// Package maglev computes the lookup table of strait's central load
// balancer: Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
// Reliable Software Network Load Balancer", NSDI 2016, section 3.4).
//
// The kernel data path hashes a connection's 5-tuple to an index below the
// table size and reads the backend at that index; this package decides
// what every index holds. It is pure computation: no OS, no clock, no
// randomness. The same set of backends gives the same table in every
// process on every architecture, so gateways that restart, or that build
// the table independently, send a flow to the same backend.
//
// Weights are not described by the paper ("the implementation details are
// not described"): here a backend of weight w takes a turn every
// maxWeight/w rounds, so its share of the table is w over the sum of the
// weights, and equal weights reduce to the paper's round robin exactly.
package maglev

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
	"slices"
	"strings"
)

// DefaultSize is the table size: a prime far above the backend count (the paper's 65537).
const DefaultSize = 65537

// MaxSize bounds the table size: beyond it a table is a mistake (gigabytes
// in the kernel), not a configuration; it also keeps every index an int32
// and the weight arithmetic below 2^64.
const MaxSize = 1 << 24

// Backend is one candidate for a VIP's connections.
type Backend struct {
	Name   string // identifies the backend; its permutation derives from the name alone
	Weight uint32 // relative; 0 = takes no entries
}

// Permutation returns backend name's preference list over a table of m
// entries: it prefers entry offset first, then offset+skip, offset+2*skip
// ... (mod m). With m prime and 0 < skip < m the list visits every entry.
//
// The two values come from independent halves of the name's SHA-256,
// which is the same everywhere; changing this function moves flows
// between backends on upgrade, so it is pinned by a test.
func Permutation(name string, m int) (offset, skip int) {
	if m < 2 {
		return 0, 1
	}
	sum := sha256.Sum256([]byte(name))
	h1 := binary.BigEndian.Uint64(sum[0:8])
	h2 := binary.BigEndian.Uint64(sum[8:16])
	return int(h1 % uint64(m)), int(h2%uint64(m-1)) + 1
}

// IsPrime reports whether n is prime. It is exact for every int
// (math/big's test is exact below 2^64).
func IsPrime(n int) bool {
	if n < 2 {
		return false
	}
	return big.NewInt(int64(n)).ProbablyPrime(0)
}

// Build returns the lookup table: for each of m entries, the index into backends of the backend it maps to;
// every entry is -1 when no backend has weight > 0. m must be prime and larger than the number of backends
// (error otherwise, naming the problem). Duplicate names are an error.
//
// The table depends only on the set of (name, weight), not on the order of
// backends: they take their turns in the order of their names. Every
// backend of positive weight gets at least one entry, and a backend's
// count is within 2 + N*w/W of its weight's share m*w/W (N backends of
// positive weight, W the sum of their weights).
func Build(backends []Backend, m int) ([]int32, error) {
	byName, err := check(backends, m)
	if err != nil {
		return nil, err
	}
	table := make([]int32, m)
	for i := range table {
		table[i] = -1
	}

	// The backends that take turns, in name order: rank breaks ties
	// within a round, as the paper's loop over backends does.
	var wmax uint64
	turns := make([]turner, 0, len(byName))
	for _, i := range byName {
		b := backends[i]
		if b.Weight == 0 {
			continue
		}
		offset, skip := Permutation(b.Name, m)
		turns = append(turns, turner{
			round: 1, rank: int32(len(turns)), idx: i,
			pos: int32(offset), skip: int32(skip), weight: uint64(b.Weight),
		})
		wmax = max(wmax, uint64(b.Weight))
	}
	if len(turns) == 0 {
		return table, nil
	}

	// Every backend starts in round 1, in rank order: the slice is
	// already a valid heap.
	h := turnHeap(turns)
	m32 := int32(m)
	for filled := 0; filled < m; filled++ {
		t := &h[0]
		// The backend's most preferred entry still empty. One exists:
		// the preference list visits every entry and filled < m.
		pos, skip := t.pos, t.skip
		for table[pos] >= 0 {
			pos += skip
			if pos >= m32 {
				pos -= m32
			}
		}
		table[pos] = t.idx
		pos += skip
		if pos >= m32 {
			pos -= m32
		}
		t.pos = pos
		t.taken++
		// The (k+1)-th turn of a backend of weight w comes in round
		// 1 + floor(k*wmax/w): each round, the heaviest backends take
		// one turn and a backend of weight w takes w/wmax of one.
		// k <= m and wmax < 2^32 keep this below 2^56.
		t.round = 1 + t.taken*wmax/t.weight
		h.down()
	}
	return table, nil
}

// check validates Build's arguments and returns the indices of backends
// sorted by name.
func check(backends []Backend, m int) ([]int32, error) {
	switch {
	case m > MaxSize:
		return nil, fmt.Errorf("maglev: table size %d is above the maximum %d", m, MaxSize)
	case !IsPrime(m):
		return nil, fmt.Errorf("maglev: table size %d is not prime", m)
	case m <= len(backends):
		return nil, fmt.Errorf("maglev: table size %d is not larger than the number of backends (%d)", m, len(backends))
	}
	byName := make([]int32, len(backends))
	for i, b := range backends {
		if b.Name == "" {
			return nil, fmt.Errorf("maglev: backend %d has an empty name", i)
		}
		byName[i] = int32(i)
	}
	slices.SortFunc(byName, func(a, b int32) int { return strings.Compare(backends[a].Name, backends[b].Name) })
	for k := 1; k < len(byName); k++ {
		a, b := byName[k-1], byName[k]
		if backends[a].Name == backends[b].Name {
			return nil, fmt.Errorf("maglev: backends %d and %d are both named %q", min(a, b), max(a, b), backends[a].Name)
		}
	}
	return byName, nil
}

// Counts returns how many entries of table each of n backends holds.
// Entries of -1 count for none; every other entry must be below n.
func Counts(table []int32, n int) []int {
	c := make([]int, n)
	for _, b := range table {
		if b >= 0 {
			c[b]++
		}
	}
	return c
}

// turner is one backend's place in the turn order and in its preference
// list.
type turner struct {
	round  uint64 // the round of its next turn
	taken  uint64 // turns taken
	weight uint64
	rank   int32 // position in name order: who goes first within a round
	idx    int32 // index into the caller's backends
	pos    int32 // next entry of its preference list to try
	skip   int32
}

// turnHeap is a binary min-heap by (round, rank) whose top is the next
// backend to take a turn. Only the top ever changes, and its key only
// grows, so down is the one operation needed.
type turnHeap []turner

func (h turnHeap) less(i, j int) bool {
	if h[i].round != h[j].round {
		return h[i].round < h[j].round
	}
	return h[i].rank < h[j].rank
}

func (h turnHeap) down() {
	i, n := 0, len(h)
	for {
		l := 2*i + 1
		if l >= n {
			return
		}
		c := l
		if r := l + 1; r < n && h.less(r, l) {
			c = r
		}
		if !h.less(c, i) {
			return
		}
		h[i], h[c] = h[c], h[i]
		i = c
	}
}
