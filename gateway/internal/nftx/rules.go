package nftx

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// ChainSpec describes a base chain of a table.
type ChainSpec struct {
	Name     string
	Type     nftables.ChainType
	Hook     *nftables.ChainHook
	Priority *nftables.ChainPriority
}

// Matches reports whether a chain read from the kernel is this spec.
func (s ChainSpec) Matches(ch *nftables.Chain) bool {
	return ch.Type == s.Type &&
		ch.Hooknum != nil && *ch.Hooknum == *s.Hook &&
		ch.Priority != nil && *ch.Priority == *s.Priority &&
		(ch.Policy == nil || *ch.Policy == nftables.ChainPolicyAccept)
}

// Rule is a rule of a table with the comment that names it.
type Rule struct {
	Chain   string
	Comment string
	Exprs   []expr.Any
}

// Finish fills in the set IDs of lookups from the sets they name, and
// appends to each comment a digest of the whole rule (see Digest), by
// which ReadRules recognises it. version changes whenever the program
// compiles to different rules.
func Finish(rules []Rule, sets map[string]*nftables.Set, version int) {
	for i := range rules {
		for _, e := range rules[i].Exprs {
			switch l := e.(type) {
			case *expr.Lookup:
				if s, ok := sets[l.SetName]; ok {
					l.SetID = s.ID
				}
			case *expr.Dynset:
				if s, ok := sets[l.SetName]; ok {
					l.SetID = s.ID
				}
			}
		}
		rules[i].Comment += " #" + Digest(rules[i], version)
	}
}

// Digest identifies a compiled rule: its chain and every expression.
func Digest(ru Rule, version int) string {
	h := sha256.New()
	fmt.Fprintf(h, "v%d %s", version, ru.Chain)
	for _, e := range ru.Exprs {
		if l, ok := e.(*expr.Lookup); ok {
			c := *l
			c.SetID = 0 // differs from run to run
			e = &c
		}
		fmt.Fprintf(h, " %T%+v", e, e)
	}
	return hex.EncodeToString(h.Sum(nil))[:8]
}

// AddRules queues the rules, each in its chain, with its comment.
func AddRules(c *nftables.Conn, t *nftables.Table, chains map[string]*nftables.Chain, rules []Rule) {
	for _, ru := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[ru.Chain], Exprs: ru.Exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, ru.Comment)})
	}
}

// ReadRules reads a table's chains and rules: for each chain, a line per
// rule of its comment and a digest of its expressions as the kernel
// returns them. A base chain whose type, hook, priority or policy is not
// its spec's reads as "wrong chain"; regular chains (no spec) are read as
// they are.
func ReadRules(c *nftables.Conn, t *nftables.Table, specs []ChainSpec, version int) (map[string][]string, error) {
	chains, err := c.ListChainsOfTableFamily(t.Family)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	out := map[string][]string{}
	for _, ch := range chains {
		if ch.Table.Name != t.Name {
			continue
		}
		i := slices.IndexFunc(specs, func(sp ChainSpec) bool { return sp.Name == ch.Name })
		if (i < 0 && ch.Hooknum != nil) || (i >= 0 && !specs[i].Matches(ch)) {
			out[ch.Name] = []string{"wrong chain"}
			continue
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of %s: %w", ch.Name, err)
		}
		lines := []string{}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			lines = append(lines, comment+" | "+Digest(Rule{Chain: ch.Name, Exprs: r.Exprs}, version))
		}
		out[ch.Name] = lines
	}
	return out, nil
}
