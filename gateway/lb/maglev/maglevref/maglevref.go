// Package maglevref builds Maglev lookup tables the slow, literal way:
// Pseudocode 1 of the paper (Eisenbud et al., NSDI 2016, section 3.4),
// with every backend's permutation written out in full. It is the
// obviously correct reference that maglev.Build is checked against, in
// maglev's tests and in `strait bench lb`; nothing in the data path uses
// it (it needs len(names)*m integers of memory).
package maglevref

import "github.com/straitnet/strait/gateway/lb/maglev"

// Table returns the paper's lookup table for backends of equal weight, in
// the order given (the paper's loop visits them in that order): for each
// of m entries, the index into names of its backend, or -1 for every
// entry when names is empty. m must be prime and larger than len(names);
// the permutations are maglev.Permutation's.
func Table(names []string, m int) []int32 {
	entry := make([]int32, m)
	for j := range entry {
		entry[j] = -1
	}
	n := len(names)
	if n == 0 {
		return entry
	}
	permutation := make([][]int32, n)
	for i, name := range names {
		offset, skip := maglev.Permutation(name, m)
		permutation[i] = make([]int32, m)
		for j := range m {
			permutation[i][j] = int32((offset + j*skip) % m)
		}
	}
	next := make([]int, n)
	filled := 0
	for {
		for i := range n {
			c := permutation[i][next[i]]
			for entry[c] >= 0 {
				next[i]++
				c = permutation[i][next[i]]
			}
			entry[c] = int32(i)
			next[i]++
			filled++
			if filled == m {
				return entry
			}
		}
	}
}
