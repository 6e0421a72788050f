package meshpolicy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
)

// DeclaredService is a global service as one cluster declared it.
type DeclaredService struct {
	Owner string
	GlobalService
}

// DeclaredPolicy is a policy as one cluster declared it.
type DeclaredPolicy struct {
	Owner string
	Policy
}

// Set is the mesh's global services and policies after Merge.
type Set struct {
	// Services by namespace and name; each has a VIP.
	Services []DeclaredService
	// Policies in the order they apply: by priority, then name.
	Policies []DeclaredPolicy
	// Problems say what was left out and why, and which declarations
	// disagree.
	Problems []string
}

// Merge takes what every cluster declared and returns what the mesh
// applies, the same on every gateway whatever the order of arrival:
//   - declarations of one name that say the same are one;
//   - declarations that differ are a conflict: the one of the cluster
//     whose name sorts first applies, and the conflict is reported;
//   - a global service without a VIP (its owner could not allocate one),
//     or whose VIP another service holds (the one whose namespace/name
//     sorts first keeps it), is left out and reported.
func Merge(services []DeclaredService, policies []DeclaredPolicy) Set {
	var s Set
	byOwner := func(a, b string) int { return cmp.Compare(a, b) }
	slices.SortStableFunc(services, func(a, b DeclaredService) int {
		return cmp.Or(cmp.Compare(a.Key(), b.Key()), byOwner(a.Owner, b.Owner))
	})
	for i := 0; i < len(services); {
		j := i + 1
		for j < len(services) && services[j].Key() == services[i].Key() {
			j++
		}
		win := services[i]
		for _, o := range services[i+1 : j] {
			if !o.Equal(win.GlobalService) {
				s.Problems = append(s.Problems, fmt.Sprintf("global service %s is declared differently by %s and %s: %s's applies (the first cluster name)",
					win.Key(), win.Owner, o.Owner, win.Owner))
			}
		}
		s.Services = append(s.Services, win)
		i = j
	}
	// A VIP two services claim goes to a written one before an
	// allocated one (its owner moves an allocated VIP that clashes),
	// then to the first name.
	holder := map[netip.Addr]string{}
	drop := map[string]bool{}
	for _, written := range []bool{true, false} {
		for _, g := range s.Services {
			if g.Allocated == written {
				continue
			}
			if !g.VIP.IsValid() {
				s.Problems = append(s.Problems, fmt.Sprintf("global service %s (declared by %s) has no VIP yet: %s's gateway has not allocated one", g.Key(), g.Owner, g.Owner))
				drop[g.Key()] = true
				continue
			}
			if h, taken := holder[g.VIP]; taken {
				s.Problems = append(s.Problems, fmt.Sprintf("global service %s (declared by %s) has VIP %s, which %s already has: left out; give it another vip", g.Key(), g.Owner, g.VIP, h))
				drop[g.Key()] = true
				continue
			}
			holder[g.VIP] = g.Key()
		}
	}
	s.Services = slices.DeleteFunc(s.Services, func(g DeclaredService) bool { return drop[g.Key()] })
	slices.SortStableFunc(policies, func(a, b DeclaredPolicy) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), byOwner(a.Owner, b.Owner))
	})
	for i := 0; i < len(policies); {
		j := i + 1
		for j < len(policies) && policies[j].Name == policies[i].Name {
			j++
		}
		win := policies[i]
		for _, o := range policies[i+1 : j] {
			if !o.Equal(win.Policy) {
				s.Problems = append(s.Problems, fmt.Sprintf("policy %s is declared differently by %s and %s: %s's applies (the first cluster name)",
					win.Name, win.Owner, o.Owner, win.Owner))
			}
		}
		s.Policies = append(s.Policies, win)
		i = j
	}
	slices.SortStableFunc(s.Policies, func(a, b DeclaredPolicy) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), cmp.Compare(a.Name, b.Name))
	})
	return s
}

// Service returns the global service of a namespace and name.
func (s Set) Service(namespace, name string) (DeclaredService, bool) {
	i, ok := slices.BinarySearchFunc(s.Services, namespace+"/"+name, func(g DeclaredService, k string) int { return cmp.Compare(g.Key(), k) })
	if !ok {
		return DeclaredService{}, false
	}
	return s.Services[i], true
}
