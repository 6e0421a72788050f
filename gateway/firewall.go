package gateway

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/firewall"
	"github.com/straitnet/strait/gateway/fwtable"
	"github.com/straitnet/strait/gateway/internal/nflog"
	"github.com/straitnet/strait/gateway/ratelog"
	"github.com/straitnet/strait/natpool"
)

// fwTable is what the gateway needs of the firewall's table.
type fwTable interface {
	Sync(tunnel string, p firewall.Program) (fwtable.SyncStats, error)
	Verify() (bool, error)
	Counters() (map[string]fwtable.Counter, error)
	Remove() error
	Close() error
}

var _ fwTable = (*fwtable.Table)(nil)

// fwState is the gateway's mesh firewall. The reconcile loop owns it.
type fwState struct {
	tab     fwTable
	applied bool
	// cleared says a table left from before this process is gone (or
	// replaced); lastInput is what prog was compiled from, as text.
	cleared   bool
	lastInput string
	prog      firewall.Program
	// rules names the program's rules by index, for the deny logs.
	rules []firewall.RuleInfo
}

// FirewallStatus is the mesh firewall as this gateway enforces it.
type FirewallStatus struct {
	DefaultAction meshpolicy.Action `json:"defaultAction"`
	Rules         []FirewallRule    `json:"rules"`
	// Default counts the new connections no rule decided.
	Default  uint64   `json:"default"`
	Problems []string `json:"problems,omitempty"`
}

// FirewallRule is a rule and the connections it matched.
type FirewallRule struct {
	Name    string            `json:"name"`
	Action  meshpolicy.Action `json:"action"`
	DryRun  bool              `json:"dryRun,omitempty"`
	Matched uint64            `json:"matched"`
}

// openFirewall opens the firewall's table; it is written by the first
// pass that has a policy or a default of deny.
func openFirewall() (*fwState, error) {
	tab, err := fwtable.New()
	if err != nil {
		return nil, err
	}
	return &fwState{tab: tab}, nil
}

func (f *fwState) close() error { return f.tab.Close() }

// firewallInput is what the firewall compiles from: the merged policies,
// every other cluster as this site sees it, and this site's services.
func firewallInput(want desired, snap catalog.Snapshot, set meshpolicy.Set, self string) firewall.Input {
	in := firewall.Input{Self: self, Default: meshpolicy.Allow, Policies: set.Policies, Clusters: map[string]firewall.Cluster{}}
	if want.fw != nil {
		in.Default = want.fw.DefaultAction
	}
	me := want.self.Plan()
	if want.mesh != nil {
		for _, s := range want.mesh.Sites {
			if s.Name == self {
				continue
			}
			c := firewall.Cluster{Block: s.Block, CIDRs: s.CIDRs, RealPath: natpool.RealPath(s.Plan(), me)}
			for _, e := range snap.Clusters[s.Name].Egress {
				c.Egress = append(c.Egress, firewall.Egress{Addr: e.Addr, Namespace: e.Namespace, Labels: e.Labels})
			}
			in.Clusters[s.Name] = c
		}
	}
	for _, s := range want.services {
		fs := firewall.Service{Namespace: s.Namespace, Name: s.Name, Backend: s.Backend}
		for _, p := range s.Ports {
			fs.Ports = append(fs.Ports, firewall.ServicePort{Proto: p.Protocol, Port: p.Port, TargetPort: p.TargetPort})
		}
		in.Services = append(in.Services, fs)
	}
	// A hub balances other sites' clients over other sites' instances:
	// their connections pass it on the way, and it is the last to see
	// where they come from (it masquerades them). So it enforces the
	// policies on them, as if the instances were its own.
	if lb := want.lb; lb != nil && lb.Hub == self {
		global := map[string]bool{}
		for _, g := range set.Services {
			global[g.Key()] = true
		}
		for _, cs := range snap.Services {
			if !global[cs.Namespace+"/"+cs.Name] || cs.Cluster == self || cs.Headless || !snap.Alive[cs.Cluster] {
				continue
			}
			fs := firewall.Service{Namespace: cs.Namespace, Name: cs.Name, Cluster: cs.Cluster, Backend: cs.Addr}
			for _, p := range cs.Ports {
				if pr := protoNumber(p.Protocol); pr != 0 {
					fs.Ports = append(fs.Ports, firewall.ServicePort{Proto: pr, Port: p.Port, TargetPort: p.Port})
				}
			}
			in.Services = append(in.Services, fs)
		}
	}
	return in
}

// syncFirewall compiles and programs the mesh firewall. With no policy and
// a default of allow there is nothing to enforce, and no table: one left
// from before a restart is removed too. The policies' problems (conflicts
// between clusters' declarations included) are in the status whatever
// happens.
func (g *Gateway) syncFirewall(want desired, snap catalog.Snapshot, set meshpolicy.Set) (*FirewallStatus, error) {
	f := g.fw
	if f == nil {
		return nil, nil
	}
	in := firewallInput(want, snap, set, g.opts.Site)
	var setProblems []string
	for _, p := range set.Problems {
		if strings.HasPrefix(p, "policy ") {
			setProblems = append(setProblems, p)
		}
	}
	if len(in.Policies) == 0 && in.Default == meshpolicy.Allow {
		if f.applied || !f.cleared {
			if err := f.tab.Remove(); err != nil {
				return nil, err
			}
			if f.applied {
				g.log.Info("mesh firewall removed: no policy, default allow", "table", fwtable.TableName)
			}
			f.applied, f.cleared, f.lastInput = false, true, ""
		}
		if len(setProblems) > 0 {
			return &FirewallStatus{DefaultAction: in.Default, Problems: setProblems}, nil
		}
		return nil, nil
	}
	// Compiling 10,000 rules is not free, and most passes change
	// nothing the firewall reads.
	key := fmt.Sprint(in, g.opts.Interface)
	drifted := false
	if f.applied {
		ok, err := f.tab.Verify()
		if err != nil {
			return nil, err
		}
		if drifted = !ok; drifted {
			g.log.Warn("firewall table drifted from what was programmed; rewriting it", "table", fwtable.TableName)
		}
	}
	if !f.applied || drifted || key != f.lastInput {
		prog := firewall.Compile(in)
		if prog.Failed {
			// Keep enforcing the last program that compiled.
			return &FirewallStatus{DefaultAction: in.Default, Problems: slices.Concat(setProblems, prog.Problems,
				[]string{"the firewall did not compile; the previous program stays in force"})}, nil
		}
		st, err := f.tab.Sync(g.opts.Interface, prog)
		if err != nil {
			return nil, err
		}
		if st.Full {
			g.log.Info("mesh firewall programmed", "table", fwtable.TableName, "rules", len(prog.Rules), "default", in.Default)
		}
		f.applied, f.cleared, f.prog, f.lastInput = true, true, prog, key
		g.mu.Lock()
		f.rules = prog.Rules
		g.mu.Unlock()
	}
	status := &FirewallStatus{DefaultAction: in.Default, Problems: slices.Concat(setProblems, f.prog.Problems)}
	counts, err := f.tab.Counters()
	if err != nil {
		return nil, err
	}
	for _, r := range f.prog.Rules {
		status.Rules = append(status.Rules, FirewallRule{Name: r.Name, Action: r.Action, DryRun: r.DryRun, Matched: counts[r.Name].Packets})
	}
	status.Default = counts[fwtable.DefaultCounter].Packets
	return status, nil
}

// logDenies reads the firewall's sampled deny logs until ctx ends and
// logs each, rate-limited, with the rule that denied.
func (g *Gateway) logDenies(ctx context.Context) {
	r, err := nflog.Open(fwtable.LogGroup, nflog.Options{})
	if err != nil {
		g.log.Warn("cannot read the firewall's deny logs", "err", err)
		return
	}
	// The kernel samples (a rate limit per rule); this bounds the lines
	// per rule again, saying how many it left out.
	rl := ratelog.New(time.Second, 5, g.opts.Now)
	log := g.log.With("component", "firewall")
	err = nflog.Run(ctx, r, func(p nflog.Packet) {
		rule := g.ruleName(p.Prefix)
		ok, suppressed := rl.Allow(rule)
		if !ok {
			return
		}
		log.Info("connection denied", "rule", rule, "src", p.Src, "dst", p.Dst, "proto", p.Proto,
			"srcPort", p.SrcPort, "dstPort", p.DstPort, "suppressed", suppressed)
	})
	if err != nil && ctx.Err() == nil {
		g.log.Warn("firewall deny logs stopped", "err", err)
	}
}

// ruleName turns a log prefix ("strait-deny 12 ") into the rule's name.
func (g *Gateway) ruleName(prefix string) string {
	i, ok := fwtable.ParseLogPrefix(prefix)
	switch {
	case !ok:
		return prefix
	case i < 0:
		return fwtable.DefaultCounter
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fw == nil || i >= len(g.fw.rules) {
		return fmt.Sprintf("rule %d", i)
	}
	return g.fw.rules[i].Name
}
