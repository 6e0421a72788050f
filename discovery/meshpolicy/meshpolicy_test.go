package meshpolicy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestValidateGlobalService(t *testing.T) {
	ok := GlobalService{Namespace: "default", Name: "web", VIP: netip.MustParseAddr("242.255.0.1"),
		Weights: map[string]uint32{"cloud-a": 200, "cloud-b": 0}, Locality: LocalityRegion,
		HealthCheck: HealthCheck{Protocol: "HTTP", Path: "/healthz", Interval: Duration(time.Second), Timeout: Duration(200 * time.Millisecond), UnhealthyAfter: 3}}
	if errs := ok.Validate(); len(errs) != 0 {
		t.Fatalf("valid service refused: %v", errs)
	}
	for _, tt := range []struct {
		name string
		edit func(*GlobalService)
		want string
	}{
		{"no name", func(g *GlobalService) { g.Name = "" }, "name: required"},
		{"bad namespace", func(g *GlobalService) { g.Namespace = "Default" }, "namespace: \"Default\" is not a DNS label"},
		{"IPv6 VIP", func(g *GlobalService) { g.VIP = netip.MustParseAddr("2001:db8::1") }, "vip: 2001:db8::1 is not a unicast IPv4"},
		{"heavy", func(g *GlobalService) { g.Weights["cloud-a"] = MaxWeight + 1 }, "above the largest weight"},
		{"bad cluster", func(g *GlobalService) { g.Weights["Cloud"] = 1 }, "weights[Cloud]"},
		{"locality", func(g *GlobalService) { g.Locality = "far" }, `locality: "far" is not`},
		{"protocol", func(g *GlobalService) { g.HealthCheck.Protocol = "ICMP" }, "healthCheck.protocol"},
		{"path without slash", func(g *GlobalService) { g.HealthCheck.Path = "healthz" }, "does not start with /"},
		{"TCP with path", func(g *GlobalService) { g.HealthCheck.Protocol = "TCP" }, "a TCP check has no path"},
		{"fast", func(g *GlobalService) { g.HealthCheck.Interval = Duration(time.Millisecond) }, "healthCheck.interval"},
		{"timeout above interval", func(g *GlobalService) { g.HealthCheck.Timeout = Duration(2 * time.Second) }, "healthCheck.timeout"},
		{"thresholds", func(g *GlobalService) { g.HealthCheck.HealthyAfter = 11 }, "healthCheck.healthyAfter"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := ok
			g.Weights = map[string]uint32{"cloud-a": 200}
			tt.edit(&g)
			if err := Errors(g.Validate()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
	d := HealthCheck{}.WithDefaults()
	if d.Protocol != "TCP" || d.Interval != Duration(DefaultInterval) || d.Timeout != Duration(DefaultTimeout) || d.UnhealthyAfter != 2 || d.HealthyAfter != 2 {
		t.Fatalf("defaults %+v", d)
	}
}

func rule(action Action) Rule {
	return Rule{Action: action, From: []Source{{Cluster: "cloud-b"}}, To: []Destination{{Namespace: "default", Service: "db"}}}
}

func TestValidatePolicy(t *testing.T) {
	ok := Policy{Name: "p", Rules: []Rule{rule(Deny), rule(Allow)}}
	if errs := ok.Validate(); len(errs) != 0 {
		t.Fatalf("valid policy refused: %v", errs)
	}
	if ok.RuleName(0) != "p/#0" {
		t.Errorf("RuleName of an unnamed rule: %q", ok.RuleName(0))
	}
	for _, tt := range []struct {
		name string
		edit func(*Policy)
		want string
	}{
		{"no rules", func(p *Policy) { p.Rules = nil }, "at least one rule"},
		{"too many", func(p *Policy) { p.Rules = make([]Rule, MaxRules+1) }, "at most 256 in one policy"},
		{"priority", func(p *Policy) { p.Priority = -1 }, "priority: -1"},
		{"action", func(p *Policy) { p.Rules[0].Action = "maybe" }, `rules[0].action: "maybe" is not allow or deny`},
		{"same names", func(p *Policy) { p.Rules[0].Name, p.Rules[1].Name = "x", "x" }, `rules[1].name: "x" is also rules[0]'s name`},
		{"label", func(p *Policy) { p.Rules[0].From[0].Labels = map[string]string{"a b": "c"} }, "is not a valid label"},
		{"no service", func(p *Policy) { p.Rules[0].To[0].Service = "" }, "rules[0].to[0].service: required"},
		{"port 0", func(p *Policy) { p.Rules[0].To[0].Ports = []Port{{}} }, "rules[0].to[0].ports[0].port: required"},
		{"protocol", func(p *Policy) { p.Rules[0].To[0].Ports = []Port{{Protocol: "SCTP", Port: 1}} }, "is not TCP or UDP"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := Policy{Name: "p", Rules: []Rule{rule(Deny), rule(Allow)}}
			p.Rules[0].From = []Source{{Cluster: "cloud-b"}}
			p.Rules[0].To = []Destination{{Namespace: "default", Service: "db"}}
			tt.edit(&p)
			if err := Errors(p.Validate()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestMerge(t *testing.T) {
	vip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	web := GlobalService{Namespace: "default", Name: "web", VIP: vip("242.255.0.1")}
	webAlloc := web
	webAlloc.VIP, webAlloc.Allocated = vip("242.255.0.9"), true
	webA := web
	webA.VIP, webA.Allocated = vip("242.255.0.1"), true
	webHeavy := web
	webHeavy.Weights = map[string]uint32{"x": 1}
	db := GlobalService{Namespace: "default", Name: "db", VIP: vip("242.255.0.1")}
	noVIP := GlobalService{Namespace: "default", Name: "cache"}
	for _, tt := range []struct {
		name     string
		svcs     []DeclaredService
		pols     []DeclaredPolicy
		want     []string // services kept, "ns/name@owner"
		policies []string
		problems []string
	}{
		{"one each", []DeclaredService{{"b", web}}, []DeclaredPolicy{{"a", Policy{Name: "p", Priority: 2}}, {"a", Policy{Name: "o", Priority: 5}}},
			[]string{"default/web@b"}, []string{"p", "o"}, nil},
		{"same declaration twice, VIPs allocated apart", []DeclaredService{{"b", webAlloc}, {"a", webA}},
			nil, []string{"default/web@a"}, nil, nil},
		{"different declarations: first cluster wins", []DeclaredService{{"b", web}, {"a", webHeavy}},
			nil, []string{"default/web@a"}, nil, []string{"declared differently by a and b"}},
		{"VIP taken: first name keeps it", []DeclaredService{{"a", web}, {"b", db}},
			nil, []string{"default/db@b"}, nil, []string{"default/web (declared by a) has VIP 242.255.0.1, which default/db already has"}},
		{"no VIP", []DeclaredService{{"a", noVIP}}, nil, nil, nil, []string{"has no VIP yet"}},
		{"policies differ", nil, []DeclaredPolicy{{"b", Policy{Name: "p", Priority: 1}}, {"a", Policy{Name: "p", Priority: 2}}},
			nil, []string{"p"}, []string{"policy p is declared differently by a and b: a's applies"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			set := Merge(tt.svcs, tt.pols)
			var got, pols []string
			for _, s := range set.Services {
				got = append(got, s.Key()+"@"+s.Owner)
			}
			for _, p := range set.Policies {
				pols = append(pols, p.Name)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") || strings.Join(pols, ",") != strings.Join(tt.policies, ",") {
				t.Fatalf("services %v policies %v, want %v %v", got, pols, tt.want, tt.policies)
			}
			all := strings.Join(set.Problems, "\n")
			if len(set.Problems) != len(tt.problems) {
				t.Fatalf("problems %q, want %q", set.Problems, tt.problems)
			}
			for _, p := range tt.problems {
				if !strings.Contains(all, p) {
					t.Errorf("problems %q lack %q", all, p)
				}
			}
		})
	}
}
