package fwtable

import (
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/firewall"
)

var seedFlag = flag.Uint64("fwtable.seed", 0, "seed of the randomized tests (default: the time)")

// randomLabInput makes policies over the lab's addresses: cloud-a's six
// egress addresses with random selectors, cloud-b, and cloud-c on a real
// path; some of the server's listeners are services.
func randomLabInput(r *rand.Rand) firewall.Input {
	pick := func(ss ...string) string { return ss[r.IntN(len(ss))] }
	in := firewall.Input{Self: "home", Default: []meshpolicy.Action{allow, deny}[r.IntN(2)], Clusters: map[string]firewall.Cluster{
		"cloud-b": {Block: netip.MustParsePrefix("242.2.0.0/16"), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.60.0.0/16")}, RealPath: r.IntN(2) == 0},
		"cloud-c": {Block: netip.MustParsePrefix("242.3.0.0/16"), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.50.0.0/16")}, RealPath: true},
	}}
	a := firewall.Cluster{Block: netip.MustParsePrefix("242.1.0.0/16")}
	for i := 1; i <= 6; i++ {
		e := firewall.Egress{Addr: netip.AddrFrom4([4]byte{242, 1, 0, byte(i)}), Namespace: pick("", "x", "y")}
		if r.IntN(2) == 0 {
			e.Labels = map[string]string{"app": pick("web", "db")}
		}
		a.Egress = append(a.Egress, e)
	}
	in.Clusters["cloud-a"] = a
	all := []firewall.Service{
		{Namespace: "x", Name: "s1", Backend: addr("10.96.0.1"), Ports: []firewall.ServicePort{{Proto: 6, Port: 80, TargetPort: 8080}, {Proto: 17, Port: 53, TargetPort: 5353}}},
		{Namespace: "x", Name: "s2", Backend: addr("10.96.0.2"), Ports: []firewall.ServicePort{{Proto: 6, Port: 443, TargetPort: 8443}, {Proto: 6, Port: 8080}}},
		{Namespace: "y", Name: "s3", Backend: addr("10.96.0.1"), Ports: []firewall.ServicePort{{Proto: 6, Port: 9000}}},
		{Namespace: "y", Name: "s4", Backend: addr("10.96.0.2"), Ports: []firewall.ServicePort{{Proto: 17, Port: 53, TargetPort: 5353}}},
	}
	for _, sv := range all {
		if r.IntN(4) != 0 {
			in.Services = append(in.Services, sv)
		}
	}
	var pols []meshpolicy.DeclaredPolicy
	for i := range 1 + r.IntN(4) {
		pol := policy(fmt.Sprintf("p%d", i), int32(r.IntN(2)))
		pol.DryRun = r.IntN(4) == 0
		for range 1 + r.IntN(4) {
			ru := meshpolicy.Rule{Action: []meshpolicy.Action{allow, deny}[r.IntN(2)]}
			for range r.IntN(3) {
				s := meshpolicy.Source{Cluster: pick("cloud-a", "cloud-a", "cloud-b", "cloud-c", "")}
				if r.IntN(2) == 0 {
					s.Namespace = pick("x", "y")
				}
				if r.IntN(4) == 0 {
					s.Labels = map[string]string{"app": pick("web", "db")}
				}
				ru.From = append(ru.From, s)
			}
			for range r.IntN(3) {
				sv := all[r.IntN(len(all))]
				d := meshpolicy.Destination{Namespace: sv.Namespace, Service: sv.Name}
				if r.IntN(2) == 0 {
					pt := sv.Ports[r.IntN(len(sv.Ports))]
					d.Ports = []meshpolicy.Port{{Protocol: map[uint8]string{6: "TCP", 17: "UDP"}[pt.Proto], Port: pt.Port}}
				}
				ru.To = append(ru.To, d)
			}
			pol.Rules = append(pol.Rules, ru)
		}
		pols = append(pols, pol)
	}
	in.Policies = meshpolicy.Merge(nil, pols).Policies
	return in
}

func destOf(network, target string) firewall.DestKey {
	host, port, _ := net.SplitHostPort(target)
	n, _ := strconv.Atoi(port)
	proto := uint8(6)
	if network == "udp" {
		proto = 17
	}
	return firewall.DestKey{Addr: addr(host), Proto: proto, Port: uint16(n)}
}

// TestKernelMatchesProgram syncs random programs one after another and
// checks every connection of the lab against Program.Decide, and the
// counters against the chains that decided them, carried over by name.
func TestKernelMatchesProgram(t *testing.T) {
	l := newLab(t)
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -fwtable.seed=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 0))
	want := map[string]uint64{} // counters by name
	for iter := range 12 {
		in := randomLabInput(r)
		p := firewall.Compile(in)
		if p.Failed {
			t.Fatal(p.Problems)
		}
		l.sync(t, p)
		// The firewall decides new connections. A flow of an earlier
		// program that a new one reuses (the same ephemeral port, by
		// chance) would pass as established: each program starts from
		// an empty conntrack table.
		if out, err := l.gw.Command("conntrack", "-F").CombinedOutput(); err != nil {
			t.Fatalf("conntrack -F: %v: %s", err, out)
		}
		// The counters of the rules of the new program's names carry over.
		kept := map[string]uint64{"default": want["default"]}
		for _, ri := range p.Rules {
			kept[ri.Name] = want[ri.Name]
		}
		want = kept
		count := func(ch firewall.Chain) {
			for _, i := range ch.Count {
				want[p.Rules[i].Name]++
			}
			if !ch.Decided {
				want["default"]++
			}
		}
		for _, src := range clientAddrs {
			for _, dst := range tcpTargets {
				ch := p.Decide(addr(src), destOf("tcp", dst))
				count(ch)
				err := l.tcp(src, dst)
				if ch.Verdict == allow && err != nil {
					t.Errorf("seed %d program %d: %s -> %s: %v; the program allows it (%+v)\ninput %+v", seed, iter, src, dst, err, ch, in)
				}
				if ch.Verdict == deny && !errors.Is(err, syscall.ECONNREFUSED) {
					t.Errorf("seed %d program %d: %s -> %s: %v; the program denies it (%+v)\ninput %+v", seed, iter, src, dst, err, ch, in)
				}
			}
			for _, dst := range udpTargets {
				ch := p.Decide(addr(src), destOf("udp", dst))
				count(ch)
				err := l.udp(src, dst)
				if (ch.Verdict == allow) != (err == nil) || (err != nil && !errors.Is(err, syscall.EHOSTUNREACH)) {
					t.Errorf("seed %d program %d: UDP %s -> %s: %v; the program says %+v", seed, iter, src, dst, err, ch)
				}
			}
		}
		for name, n := range want {
			if n == 0 {
				delete(want, name)
			}
		}
		if got := l.packets(t); !maps.Equal(got, want) {
			t.Fatalf("seed %d program %d: counters %v, want %v", seed, iter, got, want)
		}
	}
}
