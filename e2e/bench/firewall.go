package bench

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/gateway/firewall"
	"github.com/straitnet/strait/gateway/fwtable"
)

func init() {
	register(Bench{
		Name: "firewall",
		Doc: "TCP connect latency through a gateway enforcing 10,000 mesh firewall rules (the connection decided by the " +
			"last), against the same gateway with 10; also the same 10,000 rules as a linear nftables chain",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Size, "rules", 10000, "rules in the large firewall")
			fs.IntVar(&c.Rounds, "rounds", 10, "rounds of 400 connections per setup")
		},
		Run: runFirewall,
	})
}

// benchTunnel is the gateway's interface toward the client: it plays the
// tunnel, the interface the firewall guards.
const benchTunnel = "tun0"

// firewallInput is a mesh of clusters and policies with n rules, none of
// which matches the benchmark's connection but the last: the worst case
// for a firewall that walks its rules. The client (10.9.0.2) is cluster
// "client" on a real path; the server (10.0.1.10:8080) is service
// bench/target of this gateway. The other rules allow and deny between
// other clusters' namespaces and other services, dry runs among them.
func firewallInput(n int) firewall.Input {
	in := firewall.Input{Self: "gw", Default: meshpolicy.Deny, Clusters: map[string]firewall.Cluster{}}
	in.Clusters["client"] = firewall.Cluster{Block: netip.MustParsePrefix("242.250.0.0/16"),
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}, RealPath: true}
	const clusters, services = 100, 1000
	for c := range clusters {
		cl := firewall.Cluster{Block: netip.PrefixFrom(netip.AddrFrom4([4]byte{242, byte(c), 0, 0}), 16)}
		for ns := range 10 {
			cl.Egress = append(cl.Egress, firewall.Egress{Addr: netip.AddrFrom4([4]byte{242, byte(c), 1, byte(ns + 1)}), Namespace: fmt.Sprintf("ns%d", ns)})
		}
		in.Clusters[fmt.Sprintf("c%d", c)] = cl
	}
	in.Services = append(in.Services, firewall.Service{Namespace: "bench", Name: "target", Backend: netip.MustParseAddr("10.0.1.10"),
		Ports: []firewall.ServicePort{{Proto: firewall.ProtoTCP, Port: 80, TargetPort: 8080}}})
	for s := range services {
		in.Services = append(in.Services, firewall.Service{Namespace: "bench", Name: fmt.Sprintf("svc%d", s),
			Backend: netip.AddrFrom4([4]byte{10, 0, byte(2 + s/250), byte(1 + s%250)}),
			Ports:   []firewall.ServicePort{{Proto: firewall.ProtoTCP, Port: 80, TargetPort: 8080}}})
	}
	var rules []meshpolicy.Rule
	for i := range n - 1 {
		action := meshpolicy.Allow
		if i%3 == 0 {
			action = meshpolicy.Deny
		}
		rules = append(rules, meshpolicy.Rule{Action: action,
			From: []meshpolicy.Source{{Cluster: fmt.Sprintf("c%d", i%clusters), Namespace: fmt.Sprintf("ns%d", (i/clusters)%10)}},
			// Every rule a (source, service) pair of its own: 10,000
			// distinct decisions, not a few repeated.
			To: []meshpolicy.Destination{{Namespace: "bench", Service: fmt.Sprintf("svc%d", (i*7+i/1000)%services)}}})
	}
	rules = append(rules, meshpolicy.Rule{Name: "client-to-target", Action: meshpolicy.Allow,
		From: []meshpolicy.Source{{Cluster: "client"}}, To: []meshpolicy.Destination{{Namespace: "bench", Service: "target"}}})
	for p := 0; len(rules) > 0; p++ {
		k := min(len(rules), meshpolicy.MaxRules)
		pol := meshpolicy.Policy{Name: fmt.Sprintf("p%05d", p), Priority: int32(p), DryRun: p%10 == 5, Rules: rules[:k]}
		if pol.DryRun && len(rules) == k {
			pol.DryRun = false // the deciding rule's policy enforces
		}
		in.Policies = append(in.Policies, meshpolicy.DeclaredPolicy{Owner: "c0", Policy: pol})
		rules = rules[k:]
	}
	return in
}

type fwSetup struct {
	name   string
	client netns.NS
	stop   func()
	lat    []float64
	rules  int
}

var fwTarget = netip.MustParseAddrPort("10.0.1.10:8080")

func runFirewall(ctx context.Context, c Config) (Result, error) {
	n := c.Size
	if n == 0 {
		n = 10000
	}
	if n < 10 {
		return Result{}, fmt.Errorf("bench firewall: %d rules; want at least 10", n)
	}
	run := runID("bf")
	var setups []*fwSetup
	defer func() {
		for _, s := range setups {
			s.stop()
		}
	}()
	extra := map[string]any{}
	for i, sp := range []struct {
		name   string
		rules  int
		linear bool
	}{{"rules-10", 10, false}, {fmt.Sprintf("rules-%d", n), n, false}, {fmt.Sprintf("linear-%d", n), n, true}} {
		s, err := newFirewallSetup(run, i, sp.name, sp.rules, sp.linear, extra)
		if err != nil {
			return Result{}, fmt.Errorf("bench firewall: %s: %w", sp.name, err)
		}
		setups = append(setups, s)
		c.logf("%s: ready", sp.name)
	}
	rounds := max(c.Rounds, 1)
	const perRound = 400
	for r := range rounds {
		for k := range setups {
			s := setups[(k+r)%len(setups)]
			lat, err := connectLatencies(ctx, s.client, fwTarget, perRound)
			if err != nil {
				return Result{}, fmt.Errorf("bench firewall: %s: %w", s.name, err)
			}
			s.lat = append(s.lat, lat...)
			c.logf("round %d: %-14s median %.1f µs", r+1, s.name, median(lat))
		}
	}
	small, big, linear := setups[0], setups[1], setups[2]
	extra["rules"] = n
	extra["p99_us"] = round(percentile(big.lat, 0.99))
	extra["baseline_p99_us"] = round(percentile(small.lat, 0.99))
	extra["linear_chain_us"] = round(median(linear.lat))
	extra["linear_vs_maps"] = round(median(linear.lat) / median(big.lat))
	extra["connections_per_setup"] = len(big.lat)
	extra["target_ratio_at_most"] = 1.1
	extra["decided_by"] = "the last rule in order (an allow), every other rule matching something else"
	return Result{
		Bench: "firewall", Value: median(big.lat), Unit: "µs",
		Baseline:      "TCP connect through the same gateway enforcing 10 rules (median µs)",
		BaselineValue: median(small.lat),
		Extra:         extra,
	}, nil
}

// newFirewallSetup builds client — gateway — server with the gateway's
// firewall enforcing rules rules, compiled and programmed the way a
// gateway does, or as a linear chain.
func newFirewallSetup(run string, i int, name string, rules int, linear bool, extra map[string]any) (_ *fwSetup, err error) {
	t, err := newTriple(run, i)
	if err != nil {
		return nil, err
	}
	s := &fwSetup{name: name, client: t.client, stop: t.stop, rules: rules}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	in := firewallInput(rules)
	start := time.Now()
	prog := firewall.Compile(in)
	compiled := time.Since(start)
	if prog.Failed || len(prog.Rules) != rules {
		return nil, fmt.Errorf("compiled %d rules of %d: %v", len(prog.Rules), rules, prog.Problems)
	}
	if linear {
		if err := linearFirewall(t.gw, in); err != nil {
			return nil, err
		}
	} else {
		fd, err := t.gw.Open()
		if err != nil {
			return nil, err
		}
		tab, err := fwtable.New(nftables.WithNetNSFd(int(fd)))
		fd.Close()
		if err != nil {
			return nil, err
		}
		start = time.Now()
		_, err = tab.Sync(benchTunnel, prog)
		synced := time.Since(start)
		tab.Close()
		if err != nil {
			return nil, err
		}
		if rules > 10 {
			extra["compile_ms"] = round(ms(compiled))
			extra["sync_ms"] = round(ms(synced))
			extra["verdict_pairs"] = len(prog.Verdicts)
			extra["source_ranges"] = len(prog.Sources)
			extra["chains"] = len(prog.Chains)
		}
	}
	stopServer, err := acceptAndClose(t.server, fwTarget.String())
	if err != nil {
		return nil, err
	}
	s.stop = func() { stopServer(); t.stop() }
	// The connection must pass: the last rule allows it, the default
	// denies.
	if _, err := connectLatencies(context.Background(), t.client, fwTarget, 1); err != nil {
		return nil, fmt.Errorf("the allowed connection does not pass: %w", err)
	}
	return s, nil
}

// linearFirewall loads the rules as one nftables rule per (rule, source
// prefix, destination) in order, the way iptables-based firewalls walk
// them: the baseline of what sets and maps save.
func linearFirewall(ns netns.NS, in firewall.Input) error {
	var b strings.Builder
	b.WriteString("table ip bench_linear {\n chain forward {\n  type filter hook forward priority filter; policy accept;\n")
	b.WriteString("  iifname \"" + benchTunnel + "\" ct state established,related accept\n")
	svc := map[string]firewall.Service{}
	for _, s := range in.Services {
		svc[s.Namespace+"/"+s.Name] = s
	}
	for _, p := range in.Policies {
		verdict := map[meshpolicy.Action]string{meshpolicy.Allow: "accept", meshpolicy.Deny: "reject"}
		for _, r := range p.Rules {
			for _, from := range r.From {
				cl := in.Clusters[from.Cluster]
				var srcs []string
				if from.Namespace == "" {
					srcs = append(srcs, cl.Block.String())
					for _, c := range cl.CIDRs {
						srcs = append(srcs, c.String())
					}
				}
				for _, e := range cl.Egress {
					if from.Namespace != "" && e.Namespace == from.Namespace {
						srcs = append(srcs, e.Addr.String())
					}
				}
				for _, to := range r.To {
					d := svc[to.Namespace+"/"+to.Service]
					for _, src := range srcs {
						v := verdict[r.Action]
						if p.DryRun {
							v = "counter"
						}
						fmt.Fprintf(&b, "  iifname %q ip saddr %s ip daddr %s tcp dport %d %s\n", benchTunnel, src, d.Backend, d.Ports[0].TargetPort, v)
					}
				}
			}
		}
	}
	b.WriteString("  iifname \"" + benchTunnel + "\" reject\n }\n}\n")
	return loadNft(ns, b.String())
}
