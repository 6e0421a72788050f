package bench

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/nodeagent"
	"github.com/straitnet/strait/nodeagent/policy"
)

// TestPodPolicies compiles the bench's policies as each node's agent
// would: every rule is valid, the iperf3 flow is allowed by exactly its
// rule, and the lookup holds about one entry per rule.
func TestPodPolicies(t *testing.T) {
	client, server := netip.MustParseAddr("10.0.1.2"), netip.MustParseAddr("10.0.2.2")
	pods, nss := podObjects(client, server)
	for _, n := range []int{1, 10, podDefaultRules} {
		pols := podPolicies(n, client, server)
		if len(pols[0].Spec.Ingress) != n || len(pols[1].Spec.Egress) != n {
			t.Fatalf("%d rules: got %d ingress and %d egress", n, len(pols[0].Spec.Ingress), len(pols[1].Spec.Egress))
		}
		for _, tt := range []struct {
			local, peer netip.Addr
			dir         policy.Direction
		}{{client, server, policy.Egress}, {server, client, policy.Ingress}} {
			prog, problems := policy.Compile(pols, pods, nss, []netip.Addr{tt.local})
			if len(problems) > 0 {
				t.Fatalf("%d rules: %v", n, problems)
			}
			if len(prog.Enforced) != 1 || !prog.Enforced[policy.PodDir{Pod: tt.local, Dir: tt.dir}] {
				t.Errorf("%d rules, %s: enforced %v", n, tt.local, prog.Enforced)
			}
			if !prog.Allowed(tt.local, tt.dir, tt.peer, policy.ProtoTCP, lab.IperfPort) {
				t.Errorf("%d rules, %s %s: the iperf3 flow is not allowed", n, tt.local, tt.dir)
			}
			for _, p := range []uint16{podProbePort, 80, 53} {
				if prog.Allowed(tt.local, tt.dir, tt.peer, policy.ProtoTCP, p) {
					t.Errorf("%d rules, %s %s: port %d of the peer allowed", n, tt.local, tt.dir, p)
				}
			}
			// Every rule but the last adds an entry, the /24s with an
			// except two.
			if want := n + (n-1)/4; len(prog.Entries) < n || len(prog.Entries) > want {
				t.Errorf("%d rules, %s %s: %d entries, want %d to %d", n, tt.local, tt.dir, len(prog.Entries), n, want)
			}
			// A decoy rule does what it says: the first /24 on its port.
			if n > 1 && !prog.Allowed(tt.local, tt.dir, netip.MustParseAddr("10.1.0.7"), policy.ProtoTCP, 8000) {
				t.Errorf("%d rules, %s %s: the first decoy rule is not there", n, tt.local, tt.dir)
			}
		}
	}
}

func TestPodOrder(t *testing.T) {
	if got := podOrder(0); !slices.Equal(got, []int{podRules, podNone, podDetached}) {
		t.Errorf("round 0: %v", got)
	}
	if got := podOrder(1); !slices.Equal(got, []int{podDetached, podNone, podRules}) {
		t.Errorf("round 1: %v", got)
	}
}

// TestPodCheck: the bench fails when the flow did not go through the
// programs as the state says.
func TestPodCheck(t *testing.T) {
	n := &podNode{name: "n1"}
	for _, tt := range []struct {
		m    int
		d    nodeagent.Counters
		fail bool
	}{
		{podRules, nodeagent.Counters{Allowed: 2, Tracked: 1000}, false},
		{podRules, nodeagent.Counters{Allowed: 2, Tracked: 1000, Denied: 1}, true},
		{podRules, nodeagent.Counters{}, true},
		{podRules, nodeagent.Counters{Unenforced: 1000}, true},
		{podNone, nodeagent.Counters{Unenforced: 1000}, false},
		{podNone, nodeagent.Counters{Allowed: 2, Tracked: 1000}, true},
		{podNone, nodeagent.Counters{}, true},
		{podDetached, nodeagent.Counters{}, false},
		{podDetached, nodeagent.Counters{Unenforced: 1}, true},
	} {
		if err := podCheck(tt.m, n, tt.d); (err != nil) != tt.fail {
			t.Errorf("%s %+v: %v", podModeNames[tt.m], tt.d, err)
		}
	}
}
