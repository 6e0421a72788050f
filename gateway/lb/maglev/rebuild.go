package maglev

import (
	"cmp"
	"fmt"
	"slices"
)

// Rebuild returns a table for backends that moves as few entries as it can
// from prev, the table the backends named prevNames had (prev's entries
// index prevNames). Build's tables are a function of the backends alone,
// which is what several balancers need to agree on a flow without talking;
// but when one of N backends leaves, Build moves about 1.6/N of the
// entries at 100 backends and m = 65537, not 1/N: the turns of the ones that
// stay shift. A balancer that keeps its previous table can do better:
//
//   - every backend gets its exact quota of entries, m apportioned by
//     weight (largest remainders; ties in name order);
//   - an entry keeps its backend if the backend stays and is within its
//     quota; a backend over its new quota (a backend joined, or weights
//     changed) gives up its highest entries;
//   - the entries left over are filled the Maglev way: backends short of
//     their quota take turns, each its next preferred free entry.
//
// So when a backend leaves, only its entries move; when one joins, only the
// entries it takes. The result depends on prev: a balancer that restarts
// builds afresh (Build), and conntrack keeps the connections it had. With
// prev nil or of another size, Rebuild is Build.
func Rebuild(prev []int32, prevNames []string, backends []Backend, m int) ([]int32, error) {
	if len(prev) != m {
		return Build(backends, m)
	}
	byName, err := check(backends, m)
	if err != nil {
		return nil, err
	}
	index := make(map[string]int32, len(backends))
	var live []int32 // name order, weight > 0
	for _, i := range byName {
		if backends[i].Weight > 0 {
			index[backends[i].Name] = i
			live = append(live, i)
		}
	}
	table := make([]int32, m)
	for i := range table {
		table[i] = -1
	}
	if len(live) == 0 {
		return table, nil
	}
	quota := quotas(backends, live, m)
	count := make([]int, len(backends))
	for i, p := range prev {
		if p < 0 || int(p) >= len(prevNames) {
			continue
		}
		if j, ok := index[prevNames[p]]; ok {
			table[i] = j
			count[j]++
		}
	}
	// Over quota: give up the highest entries.
	for i := m - 1; i >= 0; i-- {
		if j := table[i]; j >= 0 && count[j] > quota[j] {
			table[i] = -1
			count[j]--
		}
	}
	// The rest, in turns, by preference.
	type walker struct {
		idx              int32
		pos, skip, steps int
	}
	var short []walker
	for _, j := range live {
		if count[j] < quota[j] {
			offset, skip := Permutation(backends[j].Name, m)
			short = append(short, walker{idx: j, pos: offset, skip: skip})
		}
	}
	for len(short) > 0 {
		next := short[:0]
		for _, w := range short {
			for table[w.pos] >= 0 {
				w.pos += w.skip
				if w.pos >= m {
					w.pos -= m
				}
				// A walk visits every entry within m steps: past
				// that, the quotas were wrong, and a loop would hang
				// the gateway.
				if w.steps++; w.steps > m {
					return nil, fmt.Errorf("maglev: rebuild: %s found no free entry (quotas over the table size)", backends[w.idx].Name)
				}
			}
			table[w.pos] = w.idx
			count[w.idx]++
			if count[w.idx] < quota[w.idx] {
				next = append(next, w)
			}
		}
		short = next
	}
	return table, nil
}

// quotas apportions m entries to the live backends by weight: each gets
// the floor of its share, and the entries left go to the largest
// remainders, ties in name order (live's order).
func quotas(backends []Backend, live []int32, m int) []int {
	var total uint64
	for _, j := range live {
		total += uint64(backends[j].Weight)
	}
	q := make([]int, len(backends))
	rem := make([]uint64, len(backends))
	given := 0
	for _, j := range live {
		share := uint64(m) * uint64(backends[j].Weight)
		q[j], rem[j] = int(share/total), share%total
		given += q[j]
	}
	order := slices.Clone(live)
	slices.SortStableFunc(order, func(a, b int32) int { return cmp.Compare(rem[b], rem[a]) })
	for k := 0; given < m; k++ {
		q[order[k%len(order)]]++
		given++
	}
	return q
}
