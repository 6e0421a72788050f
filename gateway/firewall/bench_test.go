package firewall

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// bigInput is a large mesh: 100 clusters with 10 sources each (the
// cluster, and 9 namespaces with egress addresses of their own), services
// with two ports each, and rules in policies of 50 over 10 priorities, a
// tenth of them dry-run; one rule in 20 has no sources, one in 20 no
// destinations.
func bigInput(r *rand.Rand, rules, services int) Input {
	in := Input{Self: "self", Default: meshpolicy.Deny, Clusters: map[string]Cluster{}}
	const clusters, namespaces = 100, 9
	for i := range clusters {
		cl := Cluster{Block: netip.PrefixFrom(netip.AddrFrom4([4]byte{242, byte(i), 0, 0}), 16),
			CIDRs:    []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16)},
			RealPath: i%2 == 0 && i >= clusters/2}
		for n := range namespaces {
			cl.Egress = append(cl.Egress, Egress{Addr: netip.AddrFrom4([4]byte{242, byte(i), 0, byte(1 + n)}), Namespace: fmt.Sprintf("ns%d", n)})
		}
		in.Clusters[fmt.Sprintf("c%d", i)] = cl
	}
	for k := range services {
		in.Services = append(in.Services, Service{Namespace: fmt.Sprintf("ns%d", k%20), Name: fmt.Sprintf("svc%d", k),
			Backend: netip.AddrFrom4([4]byte{10, 96, byte(k >> 8), byte(k)}),
			Ports:   []ServicePort{{ProtoTCP, 80, 8080}, {ProtoUDP, 53, 53}}})
	}
	source := func() meshpolicy.Source {
		s := meshpolicy.Source{Cluster: fmt.Sprintf("c%d", r.IntN(clusters/2))} // translated clusters
		if r.IntN(10) != 0 {
			s.Namespace = fmt.Sprintf("ns%d", r.IntN(namespaces))
		}
		return s
	}
	for pi := 0; pi*50 < rules; pi++ {
		pol := meshpolicy.Policy{Name: fmt.Sprintf("policy-%04d", pi), Priority: int32(r.IntN(10)), DryRun: r.IntN(10) == 0}
		for j := 0; j < 50 && pi*50+j < rules; j++ {
			ru := meshpolicy.Rule{Action: []meshpolicy.Action{meshpolicy.Allow, meshpolicy.Deny}[r.IntN(2)]}
			if r.IntN(20) != 0 {
				for range 1 + r.IntN(2) {
					ru.From = append(ru.From, source())
				}
			}
			if r.IntN(20) != 0 {
				for range 1 + r.IntN(2) {
					k := r.IntN(services)
					d := meshpolicy.Destination{Namespace: fmt.Sprintf("ns%d", k%20), Service: fmt.Sprintf("svc%d", k)}
					if r.IntN(2) == 0 {
						d.Ports = []meshpolicy.Port{{Port: 80}}
					}
					ru.To = append(ru.To, d)
				}
			}
			pol.Rules = append(pol.Rules, ru)
		}
		in.Policies = append(in.Policies, meshpolicy.DeclaredPolicy{Owner: "c0", Policy: pol})
	}
	in.Policies = meshpolicy.Merge(nil, in.Policies).Policies
	return in
}

func BenchmarkCompile(b *testing.B) {
	in := bigInput(rand.New(rand.NewPCG(1, 2)), 10_000, 1_000)
	var p Program
	for b.Loop() {
		p = Compile(in)
	}
	b.ReportMetric(float64(len(p.Verdicts)), "verdicts")
	b.ReportMetric(float64(len(p.Chains)), "chains")
	b.ReportMetric(float64(len(p.Sources)), "ranges")
}

// TestCompileLarge keeps the large case honest: it compiles within a few
// seconds even under the race detector, and agrees with the reference on
// a sample of connections.
func TestCompileLarge(t *testing.T) {
	if testing.Short() {
		t.Skip("large")
	}
	seed := testSeed(t)
	r := rand.New(rand.NewPCG(seed, 0))
	in := bigInput(r, 10_000, 1_000)
	start := time.Now()
	p := Compile(in)
	took := time.Since(start)
	t.Logf("compiled 10,000 rules in %s: %d source ranges, %d destination keys, %d verdicts, %d chains, %d problems",
		took, len(p.Sources), len(p.Dests), len(p.Verdicts), len(p.Chains), len(p.Problems))
	if p.Failed {
		t.Fatalf("failed: %v", p.Problems)
	}
	checkShape(t, p)
	for range 4_000 {
		src := netip.AddrFrom4([4]byte{242, byte(r.IntN(100)), 0, byte(r.IntN(12))})
		if r.IntN(4) == 0 {
			src = netip.AddrFrom4([4]byte{10, byte(r.IntN(100)), byte(r.IntN(3)), byte(r.IntN(3))})
		}
		k := r.IntN(1000)
		dst := DestKey{Addr: netip.AddrFrom4([4]byte{10, 96, byte(k >> 8), byte(k)}), Proto: ProtoTCP, Port: 8080}
		if r.IntN(3) == 0 {
			dst.Proto, dst.Port = ProtoUDP, 53
		}
		count, action, decided := decide(in, src, dst)
		got := p.Decide(src, dst)
		if fmt.Sprint(got.Count) != fmt.Sprint(count) || got.Verdict != action || got.Decided != decided {
			t.Fatalf("seed %d: %s -> %v: program %+v, policies %v %s %v", seed, src, dst, got, count, action, decided)
		}
	}
}
