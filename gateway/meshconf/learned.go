package meshconf

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/straitnet/strait/natpool"
)

// WithLearned returns the mesh with sites learned from the catalog added
// to those of the file, and why any learned site was left out. The file
// wins: a learned site that the file names too is left out (silently when
// both agree on the key, with a problem when they do not), and so is a
// learned site that conflicts with one already in (a key used twice, a
// block that overlaps another or lies outside the global CIDR, routable
// CIDRs that collide with another routable site's, CIDRs inside the global
// CIDR). Learned sites are taken in name order, so every gateway that
// learned the same sites makes the same choice.
func (m *Mesh) WithLearned(learned []Site) (*Mesh, []string) {
	out := *m
	out.Sites = slices.Clone(m.Sites)
	fromFile := len(out.Sites)
	learned = slices.Clone(learned)
	slices.SortFunc(learned, func(a, b Site) int { return cmp.Compare(a.Name, b.Name) })
	var problems []string
	for _, s := range learned {
		if why := out.conflict(s, fromFile); why != "" {
			problems = append(problems, fmt.Sprintf("cluster %s, learned through gossip, is left out: %s", s.Name, why))
			continue
		}
		if _, ok := out.Site(s.Name); ok {
			continue // the file's entry, with the same key
		}
		out.Sites = append(out.Sites, s)
	}
	return &out, problems
}

// conflict says why s cannot join the sites so far ("" if it can). The
// first fromFile sites are the file's.
func (m *Mesh) conflict(s Site, fromFile int) string {
	origin := func(i int) string {
		if i < fromFile {
			return fmt.Sprintf("%s (mesh file, line %d)", m.Sites[i].Name, m.Sites[i].Line)
		}
		return m.Sites[i].Name + " (learned)"
	}
	if !natpool.Contains(m.GlobalCIDR, s.Block) {
		return fmt.Sprintf("its block %s is outside the global CIDR %s", s.Block, m.GlobalCIDR)
	}
	if why := m.vipConflict(s); why != "" {
		return why
	}
	for _, c := range s.CIDRs {
		if c.Overlaps(m.GlobalCIDR) {
			return fmt.Sprintf("its CIDR %s overlaps the global CIDR %s", c, m.GlobalCIDR)
		}
	}
	for i := range m.Sites {
		o := &m.Sites[i]
		if o.Name == s.Name {
			if o.PublicKey != s.PublicKey {
				return fmt.Sprintf("it publishes WireGuard key %s, but %s says %s", s.PublicKey, origin(i), o.PublicKey)
			}
			if o.Block != s.Block {
				return fmt.Sprintf("its certified block is %s, but %s says %s", s.Block, origin(i), o.Block)
			}
			continue
		}
		if o.PublicKey == s.PublicKey {
			return fmt.Sprintf("its WireGuard key %s is %s's too", s.PublicKey, origin(i))
		}
		if o.Block.Overlaps(s.Block) {
			return fmt.Sprintf("its block %s overlaps %s of %s", s.Block, o.Block, origin(i))
		}
		if s.Routable && o.Routable {
			if c := natpool.Collisions(s.Plan(), o.Plan()); len(c) > 0 {
				return fmt.Sprintf("its routable %s collides with %s of %s, which is routable too", c[0][0], c[0][1], origin(i))
			}
		}
	}
	return ""
}
