package fwtable

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway/firewall"
)

// bigProgram compiles a large mesh: 100 clusters with 10 sources each,
// services with two ports, and rules in policies of 50 over 10
// priorities, a tenth of them dry-run.
func bigProgram(tb testing.TB, seed uint64, rules, services int) firewall.Program {
	r := rand.New(rand.NewPCG(seed, 1))
	in := firewall.Input{Self: "self", Default: meshpolicy.Deny, Clusters: map[string]firewall.Cluster{}}
	for i := range 100 {
		cl := firewall.Cluster{Block: netip.PrefixFrom(netip.AddrFrom4([4]byte{242, byte(i), 0, 0}), 16)}
		for n := range 9 {
			cl.Egress = append(cl.Egress, firewall.Egress{Addr: netip.AddrFrom4([4]byte{242, byte(i), 0, byte(1 + n)}), Namespace: fmt.Sprintf("ns%d", n)})
		}
		in.Clusters[fmt.Sprintf("c%d", i)] = cl
	}
	for k := range services {
		in.Services = append(in.Services, firewall.Service{Namespace: fmt.Sprintf("ns%d", k%20), Name: fmt.Sprintf("svc%d", k),
			Backend: netip.AddrFrom4([4]byte{10, 96, byte(k >> 8), byte(k)}),
			Ports:   []firewall.ServicePort{{Proto: 6, Port: 80, TargetPort: 8080}, {Proto: 17, Port: 53, TargetPort: 53}}})
	}
	var pols []meshpolicy.DeclaredPolicy
	for pi := 0; pi*50 < rules; pi++ {
		pol := meshpolicy.Policy{Name: fmt.Sprintf("policy-%04d", pi), Priority: int32(r.IntN(10)), DryRun: r.IntN(10) == 0}
		for j := 0; j < 50 && pi*50+j < rules; j++ {
			ru := meshpolicy.Rule{Action: []meshpolicy.Action{meshpolicy.Allow, meshpolicy.Deny}[r.IntN(2)]}
			if r.IntN(20) != 0 {
				s := meshpolicy.Source{Cluster: fmt.Sprintf("c%d", r.IntN(100))}
				if r.IntN(10) != 0 {
					s.Namespace = fmt.Sprintf("ns%d", r.IntN(9))
				}
				ru.From = []meshpolicy.Source{s}
			}
			if r.IntN(20) != 0 {
				k := r.IntN(services)
				ru.To = []meshpolicy.Destination{{Namespace: fmt.Sprintf("ns%d", k%20), Service: fmt.Sprintf("svc%d", k)}}
			}
			pol.Rules = append(pol.Rules, ru)
		}
		pols = append(pols, meshpolicy.DeclaredPolicy{Owner: "c0", Policy: pol})
	}
	in.Policies = meshpolicy.Merge(nil, pols).Policies
	p := firewall.Compile(in)
	if p.Failed {
		tb.Fatal(p.Problems)
	}
	return p
}

// BenchmarkSync rewrites a table of 10,000 rules, alternating two
// programs so that every Sync has something to write (counters carried
// over by name included).
func BenchmarkSync(b *testing.B) {
	nstest.RequireRoot(b)
	tab := newTable(b, nstest.New(b, "fwbench"))
	progs := []firewall.Program{bigProgram(b, 1, 10_000, 1_000), bigProgram(b, 2, 10_000, 1_000)}
	var st SyncStats
	i := 0
	for b.Loop() {
		var err error
		if st, err = tab.Sync(tunnel, progs[i%2]); err != nil || !st.Full {
			b.Fatalf("%+v, %v", st, err)
		}
		i++
	}
	b.ReportMetric(float64(st.Chains+st.SourceChains), "chains")
	b.ReportMetric(float64(st.DestMaps), "maps")
	b.ReportMetric(float64(st.SourceElements+st.DestElements), "elements")
	// Verify reads the whole table back when something committed since
	// the last check (forgetting the generation stands for that), and
	// nothing when not.
	tab.checked = 0
	start := time.Now()
	if ok, err := tab.Verify(); !ok || err != nil {
		b.Fatalf("Verify = %v, %v", ok, err)
	}
	b.ReportMetric(float64(time.Since(start).Milliseconds()), "verify-ms")
	start = time.Now()
	if ok, err := tab.Verify(); !ok || err != nil {
		b.Fatalf("Verify = %v, %v", ok, err)
	}
	b.ReportMetric(float64(time.Since(start).Microseconds()), "verify-unchanged-µs")
}
