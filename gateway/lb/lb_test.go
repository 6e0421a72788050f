package lb

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/lb/maglev"
)

var (
	tcp80 = PortKey{Proto: 6, Port: 80}
	udp53 = PortKey{Proto: 17, Port: 53}
	vips  = netip.MustParsePrefix("242.255.0.0/24")
)

func inst(cluster, region string, ready, total int, healthy bool, ports ...PortKey) Instance {
	if len(ports) == 0 {
		ports = []PortKey{tcp80}
	}
	i := Instance{Cluster: cluster, Region: region, Addr: netip.MustParseAddr("242.0.0.1"), Ports: map[PortKey]uint16{},
		Ready: ready, Total: total, Healthy: healthy}
	for _, p := range ports {
		i.Ports[p] = p.Port
	}
	return i
}

func plan(t *testing.T, g meshpolicy.GlobalService, self, region string, insts ...Instance) (Service, []string) {
	t.Helper()
	g.Namespace, g.Name = "default", "web"
	if !g.VIP.IsValid() {
		g.VIP = netip.MustParseAddr("242.255.0.10")
	}
	svcs, problems, err := Plan(Input{Self: self, Region: region, TableSize: 4099, VIPRange: vips,
		Services:  []meshpolicy.DeclaredService{{Owner: "a", GlobalService: g}},
		Instances: map[string][]Instance{"default/web": insts}})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) == 0 {
		return Service{}, problems
	}
	return svcs[0], problems
}

// shares are the backends' shares by cluster, as planned and as the table
// holds them.
func shares(t *testing.T, g Group) (planned, table map[string]float64) {
	t.Helper()
	planned, table = map[string]float64{}, map[string]float64{}
	for _, b := range g.Backends {
		planned[b.Cluster] = b.Share
	}
	if g.Table == nil {
		return planned, table
	}
	counts := maglev.Counts(g.Table, len(g.Backends))
	for i, n := range counts {
		table[g.Backends[i].Cluster] = float64(n) / float64(len(g.Table))
	}
	return planned, table
}

func TestLocalityAndSpillover(t *testing.T) {
	for _, tc := range []struct {
		name     string
		g        meshpolicy.GlobalService
		insts    []Instance
		want     map[string]float64
		problems string
	}{
		{"own cluster first", meshpolicy.GlobalService{},
			[]Instance{inst("a", "eu", 2, 2, true), inst("b", "eu", 2, 2, true), inst("c", "us", 2, 2, true)},
			map[string]float64{"a": 1}, ""},
		{"own region next", meshpolicy.GlobalService{},
			[]Instance{inst("a", "eu", 0, 2, true), inst("b", "eu", 2, 2, true), inst("c", "us", 2, 2, true)},
			map[string]float64{"b": 1}, ""},
		{"then the rest", meshpolicy.GlobalService{},
			[]Instance{inst("a", "eu", 2, 2, false), inst("b", "eu", 2, 2, false), inst("c", "us", 2, 2, true), inst("d", "us", 1, 1, true)},
			map[string]float64{"c": 0.5, "d": 0.5}, ""},
		// Half the own cluster's backends ready: it takes 0.5*1.4 = 70%,
		// the region the rest.
		{"short spills over", meshpolicy.GlobalService{},
			[]Instance{inst("a", "eu", 1, 2, true), inst("b", "eu", 2, 2, true), inst("c", "us", 2, 2, true)},
			map[string]float64{"a": 0.7, "b": 0.3}, ""},
		{"region locality pools own and region", meshpolicy.GlobalService{Locality: meshpolicy.LocalityRegion},
			[]Instance{inst("a", "eu", 2, 2, true), inst("b", "eu", 2, 2, true), inst("c", "us", 2, 2, true)},
			map[string]float64{"a": 0.5, "b": 0.5}, ""},
		{"no locality: weights", meshpolicy.GlobalService{Locality: meshpolicy.LocalityNone, Weights: map[string]uint32{"a": 300, "b": 100}},
			[]Instance{inst("a", "eu", 2, 2, true), inst("b", "eu", 2, 2, true), inst("c", "us", 2, 2, true)},
			map[string]float64{"a": 0.6, "b": 0.2, "c": 0.2}, ""},
		{"weight 0 drains", meshpolicy.GlobalService{Weights: map[string]uint32{"a": 0}},
			[]Instance{inst("a", "eu", 2, 2, true), inst("b", "eu", 2, 2, true)},
			map[string]float64{"b": 1}, ""},
		{"nothing serving", meshpolicy.GlobalService{},
			[]Instance{inst("a", "eu", 2, 2, false), inst("b", "eu", 0, 2, true)},
			map[string]float64{}, "a failing its health check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, problems := plan(t, tc.g, "a", "eu", tc.insts...)
			planned, table := shares(t, svc.Groups[0])
			for c, want := range tc.want {
				if math.Abs(planned[c]-want) > 1e-9 {
					t.Errorf("%s planned %.4f, want %.4f (all: %v)", c, planned[c], want, planned)
				}
				if math.Abs(table[c]-want) > 0.01 {
					t.Errorf("%s holds %.4f of the table, want %.4f (all: %v)", c, table[c], want, table)
				}
			}
			for c, got := range planned {
				if _, ok := tc.want[c]; !ok && got != 0 {
					t.Errorf("%s has share %.4f, want none", c, got)
				}
			}
			if got := strings.Join(problems, "\n"); !strings.Contains(got, tc.problems) || (tc.problems == "" && got != "") {
				t.Errorf("problems %q, want %q", got, tc.problems)
			}
		})
	}
}

func TestPortsGroupedByInstances(t *testing.T) {
	svc, _ := plan(t, meshpolicy.GlobalService{Locality: meshpolicy.LocalityNone}, "a", "",
		inst("a", "", 1, 1, true, tcp80, udp53), inst("b", "", 1, 1, true, tcp80))
	if len(svc.Groups) != 2 {
		t.Fatalf("groups %+v, want 80/tcp (a, b) and 53/udp (a)", svc.Groups)
	}
	for _, g := range svc.Groups {
		if g.Ports[0] == udp53 && len(g.Backends) != 1 {
			t.Errorf("53/udp has backends %+v, want a alone", g.Backends)
		}
	}
}

func TestRefusesVIPOutsideRange(t *testing.T) {
	_, problems := plan(t, meshpolicy.GlobalService{VIP: netip.MustParseAddr("242.254.0.1")}, "a", "", inst("a", "", 1, 1, true))
	if len(problems) != 1 || !strings.Contains(problems[0], "outside the VIP range") {
		t.Fatalf("problems %q", problems)
	}
}

func TestGone(t *testing.T) {
	both, _ := plan(t, meshpolicy.GlobalService{}, "a", "eu", inst("a", "eu", 1, 1, true), inst("b", "eu", 1, 1, true))
	// Locality gives b no share, but b still serves: no flush.
	if g := Gone([]Service{both}, []Service{both}); len(g) != 0 {
		t.Fatalf("gone %v with nothing changed", g)
	}
	bAddr := netip.MustParseAddr("242.1.0.1")
	both.Groups[0].Backends[1].Addr = bAddr
	failed, _ := plan(t, meshpolicy.GlobalService{}, "a", "eu", inst("a", "eu", 1, 1, true), inst("b", "eu", 1, 1, false))
	failed.Groups[0].Backends[1].Addr = bAddr
	g := Gone([]Service{both}, []Service{failed})
	if len(g) != 1 || g[0].Backend != bAddr || g[0].VIP != both.VIP {
		t.Fatalf("gone %v, want b's address behind the VIP", g)
	}
}

func TestPlanMovesOnlyTheFailedInstancesEntries(t *testing.T) {
	var insts []Instance
	for i := range 20 {
		insts = append(insts, inst(fmt.Sprintf("c%02d", i), "", 1, 1, true))
	}
	g := meshpolicy.GlobalService{Namespace: "default", Name: "web", VIP: netip.MustParseAddr("242.255.0.10"), Locality: meshpolicy.LocalityNone}
	in := Input{Self: "x", TableSize: 65537, VIPRange: vips, Services: []meshpolicy.DeclaredService{{Owner: "a", GlobalService: g}},
		Instances: map[string][]Instance{"default/web": insts}}
	before, _, err := Plan(in)
	if err != nil {
		t.Fatal(err)
	}
	failed := slices.Clone(insts)
	failed[7].Healthy = false
	in.Instances = map[string][]Instance{"default/web": failed}
	in.Prev = before
	after, _, err := Plan(in)
	if err != nil {
		t.Fatal(err)
	}
	b, a := before[0].Groups[0], after[0].Groups[0]
	moved := 0
	for i := range a.Table {
		was, is := b.Backends[b.Table[i]].Cluster, a.Backends[a.Table[i]].Cluster
		if was != is {
			moved++
			if was != "c07" {
				t.Fatalf("entry %d moved from %s, which still serves", i, was)
			}
		}
		if is == "c07" {
			t.Fatalf("entry %d still on the failed instance", i)
		}
	}
	if moved == 0 {
		t.Fatal("nothing moved")
	}
}
