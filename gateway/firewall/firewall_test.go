package firewall

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

func a(s string) netip.Addr   { return netip.MustParseAddr(s) }
func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

const (
	allow = meshpolicy.Allow
	deny  = meshpolicy.Deny
)

// mesh is a small mesh seen from cluster "home": cloud-a is translated and
// gives namespace payments (and its web pods) addresses of their own;
// cloud-b reaches home on a real path.
func mesh() Input {
	return Input{
		Self:    "home",
		Default: deny,
		Clusters: map[string]Cluster{
			"cloud-a": {Block: p("242.1.0.0/16"), CIDRs: []netip.Prefix{p("10.0.0.0/16")}, Egress: []Egress{
				{Addr: a("242.1.0.1")},
				{Addr: a("242.1.0.5"), Namespace: "payments"},
				{Addr: a("242.1.0.6"), Namespace: "payments", Labels: map[string]string{"app": "web", "tier": "front"}},
			}},
			"cloud-b": {Block: p("242.2.0.0/16"), CIDRs: []netip.Prefix{p("10.2.0.0/16")}, RealPath: true,
				Egress: []Egress{{Addr: a("242.2.0.5"), Namespace: "payments"}}},
		},
		Services: []Service{
			{Namespace: "payments", Name: "api", Backend: a("10.96.0.1"), Ports: []ServicePort{{ProtoTCP, 80, 8080}, {ProtoUDP, 53, 0}}},
			{Namespace: "shop", Name: "web", Backend: a("10.96.0.2"), Ports: []ServicePort{{ProtoTCP, 443, 8443}}},
		},
	}
}

func policy(name string, prio int32, rules ...meshpolicy.Rule) meshpolicy.DeclaredPolicy {
	return meshpolicy.DeclaredPolicy{Owner: "home", Policy: meshpolicy.Policy{Name: name, Priority: prio, Rules: rules}}
}

func dryRun(pol meshpolicy.DeclaredPolicy) meshpolicy.DeclaredPolicy {
	pol.DryRun = true
	return pol
}

func from(cluster, ns string) []meshpolicy.Source {
	return []meshpolicy.Source{{Cluster: cluster, Namespace: ns}}
}

func to(ns, svc string, ports ...uint16) []meshpolicy.Destination {
	d := meshpolicy.Destination{Namespace: ns, Service: svc}
	for _, pt := range ports {
		d.Ports = append(d.Ports, meshpolicy.Port{Port: pt})
	}
	return []meshpolicy.Destination{d}
}

func TestCompileSmall(t *testing.T) {
	in := mesh()
	in.Policies = []meshpolicy.DeclaredPolicy{policy("payments", 0,
		meshpolicy.Rule{Name: "web", Action: allow, From: from("cloud-a", "payments"), To: to("payments", "api", 80)})}
	got := Compile(in)
	want := Program{
		Default: deny,
		Sources: []SourceRange{
			{a("0.0.0.0"), a("242.1.0.4"), 1},
			{a("242.1.0.5"), a("242.1.0.6"), 2},
			{a("242.1.0.7"), a("255.255.255.255"), 1},
		},
		Dests:    map[DestKey]uint32{{a("10.96.0.1"), ProtoTCP, 8080}: 1},
		Verdicts: map[[2]uint32]uint32{{2, 1}: 0},
		Chains:   []Chain{{Count: []int{0}, Verdict: allow, Decided: true}},
		Rules:    []RuleInfo{{Name: "payments/web", Policy: "payments", Action: allow}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Compile:\n%+v\nwant\n%+v", got, want)
	}
	for _, c := range []struct {
		src  string
		dst  DestKey
		want Chain
	}{
		{"242.1.0.5", DestKey{a("10.96.0.1"), ProtoTCP, 8080}, Chain{Count: []int{0}, Verdict: allow, Decided: true}},
		{"242.1.0.6", DestKey{a("10.96.0.1"), ProtoTCP, 8080}, Chain{Count: []int{0}, Verdict: allow, Decided: true}},
		{"242.1.0.1", DestKey{a("10.96.0.1"), ProtoTCP, 8080}, Chain{Verdict: deny}},
		{"242.1.0.5", DestKey{a("10.96.0.1"), ProtoUDP, 53}, Chain{Verdict: deny}},
		{"242.1.0.5", DestKey{a("10.96.0.2"), ProtoTCP, 8443}, Chain{Verdict: deny}},
		{"::1", DestKey{a("10.96.0.1"), ProtoTCP, 8080}, Chain{Verdict: deny}},
	} {
		if got := got.Decide(a(c.src), c.dst); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Decide(%s, %v) = %+v, want %+v", c.src, c.dst, got, c.want)
		}
	}
}

func TestDryRunAndDefault(t *testing.T) {
	in := mesh()
	in.Default = allow
	in.Policies = []meshpolicy.DeclaredPolicy{
		dryRun(policy("audit", 0, meshpolicy.Rule{Action: deny, From: from("cloud-a", "")})),
		policy("shop", 1, meshpolicy.Rule{Name: "only-b", Action: deny, From: from("cloud-a", ""), To: to("shop", "web")}),
	}
	prog := Compile(in)
	if len(prog.Problems) != 0 {
		t.Errorf("problems: %q", prog.Problems)
	}
	web := DestKey{a("10.96.0.2"), ProtoTCP, 8443}
	api := DestKey{a("10.96.0.1"), ProtoTCP, 8080}
	for _, c := range []struct {
		src  string
		dst  DestKey
		want Chain
	}{
		// The dry-run rule counts, the next rule decides.
		{"242.1.3.3", web, Chain{Count: []int{0, 1}, Verdict: deny, Decided: true}},
		// The dry-run rule counts, and the default decides.
		{"242.1.3.3", api, Chain{Count: []int{0}, Verdict: allow}},
		{"242.2.3.3", web, Chain{Verdict: allow}},
		{"10.2.1.1", web, Chain{Verdict: allow}},
	} {
		if got := prog.Decide(a(c.src), c.dst); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Decide(%s, %v) = %+v, want %+v", c.src, c.dst, got, c.want)
		}
	}
}

func TestRuleNames(t *testing.T) {
	in := mesh()
	in.Policies = []meshpolicy.DeclaredPolicy{
		policy("a", 0, meshpolicy.Rule{Name: "web", Action: allow}, meshpolicy.Rule{Action: deny}),
		dryRun(policy("b", 1, meshpolicy.Rule{Action: deny})),
	}
	want := []RuleInfo{
		{Name: "a/web", Policy: "a", Action: allow},
		{Name: "a/#1", Policy: "a", Action: deny},
		{Name: "b/#0", Policy: "b", Action: deny, DryRun: true},
	}
	if got := Compile(in).Rules; !reflect.DeepEqual(got, want) {
		t.Errorf("Rules = %+v, want %+v", got, want)
	}
}

func TestProblems(t *testing.T) {
	rule := func(r meshpolicy.Rule) func(*Input) {
		return func(in *Input) { in.Policies = []meshpolicy.DeclaredPolicy{policy("p", 0, r)} }
	}
	for _, c := range []struct {
		name   string
		edit   func(*Input)
		want   []string // substrings, one problem each, in order
		checks map[string]Chain
	}{
		{name: "none", edit: rule(meshpolicy.Rule{Name: "r", Action: allow, From: from("cloud-a", "payments"), To: to("payments", "api")})},
		{name: "default", edit: func(in *Input) { in.Default = "" },
			want: []string{`the default action "" is not allow or deny: deny applies`}},
		{name: "unknown cluster", edit: rule(meshpolicy.Rule{Name: "r", Action: allow, From: from("nowhere", "")}),
			want: []string{"rule p/r: source cluster nowhere is not in the mesh: the source matches nothing"}},
		{name: "own cluster is silent", edit: rule(meshpolicy.Rule{Name: "r", Action: allow, From: from("home", "")}),
			checks: map[string]Chain{"242.1.0.1": {Verdict: deny}}},
		{name: "namespace without an egress address",
			edit:   rule(meshpolicy.Rule{Name: "r", Action: allow, From: from("cloud-a", "shop")}),
			want:   []string{"rule p/r: cannot tell namespace shop of cloud-a from the rest of cloud-a: no egress rule of cloud-a gives only these pods an address of their own; the source matches nothing from cloud-a"},
			checks: map[string]Chain{"242.1.0.1": {Verdict: deny}, "242.1.0.5": {Verdict: deny}}},
		{name: "namespace on a real path",
			edit:   rule(meshpolicy.Rule{Name: "r", Action: allow, From: from("cloud-b", "payments")}),
			want:   []string{"rule p/r: cannot tell namespace payments of cloud-b from the rest of cloud-b: cloud-b reaches this gateway on a real path, with its pods' own addresses; the source matches only 242.2.0.5"},
			checks: map[string]Chain{"242.2.0.5": {Count: []int{0}, Verdict: allow, Decided: true}, "10.2.0.9": {Verdict: deny}}},
		{name: "labels narrower than every egress selector",
			edit: rule(meshpolicy.Rule{Name: "r", Action: allow, From: []meshpolicy.Source{{Cluster: "cloud-a", Labels: map[string]string{"app": "db"}}}}),
			want: []string{"rule p/r: cannot tell pods app=db of cloud-a from the rest of cloud-a"}},
		{name: "labels: an egress selector that includes them",
			edit:   rule(meshpolicy.Rule{Name: "r", Action: allow, From: []meshpolicy.Source{{Cluster: "cloud-a", Labels: map[string]string{"app": "web"}}}}),
			checks: map[string]Chain{"242.1.0.6": {Count: []int{0}, Verdict: allow, Decided: true}, "242.1.0.5": {Verdict: deny}}},
		{name: "every cluster, by namespace",
			edit:   rule(meshpolicy.Rule{Name: "r", Action: allow, From: []meshpolicy.Source{{Namespace: "payments"}}}),
			want:   []string{"rule p/r: cannot tell namespace payments of cloud-b from the rest of cloud-b: cloud-b reaches this gateway on a real path"},
			checks: map[string]Chain{"242.1.0.5": {Count: []int{0}, Verdict: allow, Decided: true}, "242.1.0.6": {Count: []int{0}, Verdict: allow, Decided: true}, "242.1.0.1": {Verdict: deny}}},
		{name: "missing port",
			edit: rule(meshpolicy.Rule{Name: "r", Action: allow, To: to("payments", "api", 9999)}),
			want: []string{"rule p/r: service payments/api has no port TCP/9999 (it has TCP/80, UDP/53): the port matches nothing"}},
		{name: "unknown protocol",
			edit: rule(meshpolicy.Rule{Name: "r", Action: allow, To: []meshpolicy.Destination{{Namespace: "payments", Service: "api", Ports: []meshpolicy.Port{{Protocol: "SCTP", Port: 80}}}}}),
			want: []string{`rule p/r: destination payments/api: protocol "SCTP" is not TCP or UDP`}},
		{name: "service elsewhere is silent",
			edit: rule(meshpolicy.Rule{Name: "r", Action: allow, To: []meshpolicy.Destination{{Namespace: "x", Service: "y"}, {Namespace: "payments", Service: "api", Cluster: "cloud-a"}}}),
			// Not a rule without destinations: it matches nothing here.
			checks: map[string]Chain{"242.1.0.1": {Verdict: deny}}},
		{name: "own service missing",
			edit: rule(meshpolicy.Rule{Name: "r", Action: allow, To: []meshpolicy.Destination{{Namespace: "x", Service: "y", Cluster: "home"}}}),
			want: []string{"rule p/r: destination x/y of cluster home: home has no such service"}},
		{name: "bad action",
			edit: rule(meshpolicy.Rule{Name: "r", Action: "reject"}),
			want: []string{`rule p/r: action "reject" is not allow or deny: the rule matches nothing`}},
		{name: "clusters overlap on real paths",
			edit: func(in *Input) {
				in.Clusters["cloud-c"] = Cluster{Block: p("242.3.0.0/16"), CIDRs: []netip.Prefix{p("10.2.128.0/17")}, RealPath: true}
			},
			want: []string{"clusters cloud-b (10.2.0.0/16) and cloud-c (10.2.128.0/17) overlap as sources here"}},
		{name: "services share a backend port",
			edit: func(in *Input) {
				in.Services = append(in.Services, Service{Namespace: "payments", Name: "api2", Backend: a("10.96.0.1"), Ports: []ServicePort{{ProtoTCP, 8080, 0}}})
			},
			want: []string{"services payments/api and payments/api2 both lead to 10.96.0.1 TCP/8080: rules cannot tell them apart"}},
		{name: "one problem, many rules",
			edit: func(in *Input) {
				var rs []meshpolicy.Rule
				for i := range 6 {
					rs = append(rs, meshpolicy.Rule{Name: fmt.Sprintf("r%d", i), Action: allow, From: from("gone", "")})
				}
				in.Policies = []meshpolicy.DeclaredPolicy{policy("p", 0, rs...)}
			},
			want: []string{"rules p/r0, p/r1, p/r2 and 3 more: source cluster gone is not in the mesh"}},
		{name: "non-IPv4",
			edit: func(in *Input) {
				in.Clusters["v6"] = Cluster{Block: p("fd00::/64"), CIDRs: []netip.Prefix{p("fd01::/64")}, Egress: []Egress{{Addr: a("fd00::1")}}}
				in.Services = append(in.Services, Service{Namespace: "v6", Name: "s", Backend: a("fd02::1")})
			},
			want: []string{"cluster v6 has no IPv4 block (fd00::/64)", "cluster v6: CIDR fd01::/64 is not IPv4", "cluster v6: egress address fd00::1 is not IPv4", "service v6/s: backend fd02::1 is not IPv4"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := mesh()
			c.edit(&in)
			prog := Compile(in)
			if len(prog.Problems) != len(c.want) {
				t.Fatalf("problems:\n%s\nwant %d", strings.Join(prog.Problems, "\n"), len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(prog.Problems[i], w) {
					t.Errorf("problem %d: %q\nwant it to say %q", i, prog.Problems[i], w)
				}
			}
			for src, want := range c.checks {
				if got := prog.Decide(a(src), DestKey{a("10.96.0.1"), ProtoTCP, 8080}); !reflect.DeepEqual(got, want) {
					t.Errorf("Decide(%s) = %+v, want %+v", src, got, want)
				}
			}
		})
	}
}

func TestConflicts(t *testing.T) {
	anyRule := func(act meshpolicy.Action) meshpolicy.Rule { return meshpolicy.Rule{Name: "all", Action: act} }
	webRule := func(act meshpolicy.Action) meshpolicy.Rule {
		return meshpolicy.Rule{Name: "web", Action: act, From: from("cloud-a", ""), To: to("shop", "web")}
	}
	for _, c := range []struct {
		name     string
		policies []meshpolicy.DeclaredPolicy
		want     []string
	}{
		{name: "same priority, other actions",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 5, webRule(allow)), policy("b", 5, webRule(deny))},
			want:     []string{"rules a/web (allow) and b/web (deny) are in policies of the same priority 5 and disagree on connections such as from 242.1.0.0 to 10.96.0.2 TCP/8443: a/web decides, as a comes before b by name"}},
		{name: "a rule without destinations against one with",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 0, anyRule(deny)), policy("b", 0, webRule(allow))},
			want:     []string{"rules a/all (deny) and b/web (allow) are in policies of the same priority 0 and disagree on connections such as from 242.1.0.0 to 10.96.0.2 TCP/8443"}},
		{name: "rules without destinations",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 0, meshpolicy.Rule{Name: "b", Action: allow, From: from("cloud-b", "")}), policy("b", 0, anyRule(deny))},
			want:     []string{"rules a/b (allow) and b/all (deny) are in policies of the same priority 0 and disagree on connections such as from 10.2.0.0 to any destination"}},
		{name: "other priorities",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 5, webRule(allow)), policy("b", 6, webRule(deny))}},
		{name: "one policy",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 5, webRule(allow), webRule(deny))}},
		{name: "same action",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 5, webRule(deny)), policy("b", 5, webRule(deny))}},
		{name: "dry run does not decide",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 5, webRule(allow)), dryRun(policy("b", 5, webRule(deny)))}},
		{name: "the other policy decides the same first",
			// b decides a/web's connections by b/web, as a does; b/all
			// decides only what a does not.
			policies: []meshpolicy.DeclaredPolicy{policy("a", 0, webRule(allow)), policy("b", 0, webRule(allow), anyRule(deny))}},
		{name: "shadowed by an earlier priority",
			policies: []meshpolicy.DeclaredPolicy{policy("first", 0, anyRule(deny)), policy("a", 5, webRule(allow)), policy("b", 5, webRule(deny))}},
		{name: "each pair once",
			policies: []meshpolicy.DeclaredPolicy{policy("a", 0, anyRule(allow)), policy("b", 0, anyRule(deny)), policy("c", 0, anyRule(deny))},
			want:     []string{"rules a/all (allow) and b/all (deny)", "rules a/all (allow) and c/all (deny)"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			in := mesh()
			in.Policies = meshpolicy.Merge(nil, c.policies).Policies
			prog := Compile(in)
			if len(prog.Problems) != len(c.want) {
				t.Fatalf("problems:\n%s\nwant %d", strings.Join(prog.Problems, "\n"), len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(prog.Problems[i], w) {
					t.Errorf("problem %d: %q\nwant it to say %q", i, prog.Problems[i], w)
				}
			}
		})
	}
}

func TestVerdictLimit(t *testing.T) {
	defer func(n int) { verdictLimit = n }(verdictLimit)
	verdictLimit = 3
	in := mesh()
	in.Policies = []meshpolicy.DeclaredPolicy{policy("p", 0,
		meshpolicy.Rule{Action: allow, From: from("cloud-a", "payments"), To: to("payments", "api")},
		meshpolicy.Rule{Action: deny, From: from("cloud-b", ""), To: to("shop", "web")},
		meshpolicy.Rule{Action: allow, To: to("shop", "web")},
		meshpolicy.Rule{Action: deny, From: from("cloud-a", "")},
	)}
	prog := Compile(in)
	if !prog.Failed || len(prog.Verdicts) != 0 || len(prog.Dests) != 0 || len(prog.Chains) != 0 || len(prog.Rules) != 4 {
		t.Fatalf("over the limit: %+v", prog)
	}
	if len(prog.Problems) != 1 || !strings.Contains(prog.Problems[0], "need more than 3 verdict entries") {
		t.Errorf("problems %q", prog.Problems)
	}
	if got := prog.Decide(a("242.1.0.5"), DestKey{a("10.96.0.1"), ProtoTCP, 8080}); !reflect.DeepEqual(got, Chain{Verdict: deny}) {
		t.Errorf("a failed program decides %+v", got)
	}
	verdictLimit = MaxVerdicts
	if prog := Compile(in); prog.Failed {
		t.Errorf("within the limit: %q", prog.Problems)
	}
}
