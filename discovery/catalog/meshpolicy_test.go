package catalog

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

func policy(name string) meshpolicy.Policy {
	return meshpolicy.Policy{Name: name, Priority: 10, Rules: []meshpolicy.Rule{{
		Name: "no-b", Action: meshpolicy.Deny,
		From: []meshpolicy.Source{{Cluster: "cloud-b", Labels: map[string]string{"app": "batch"}}},
		To:   []meshpolicy.Destination{{Namespace: "default", Service: "db", Ports: []meshpolicy.Port{{Port: 5432}}}},
	}}}
}

func TestPublishMeshPolicy(t *testing.T) {
	m := newMesh(t)
	a, b := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b")
	gs := meshpolicy.GlobalService{Namespace: "default", Name: "web", VIP: netip.MustParseAddr("242.255.0.1"), Allocated: true,
		Weights: map[string]uint32{"cloud-b": 50}, HealthCheck: meshpolicy.HealthCheck{Protocol: "HTTP", Path: "/healthz"}}
	c := cluster("cloud-a")
	c.Egress = []Egress{{Addr: netip.MustParseAddr("242.0.1.1")}, {Addr: netip.MustParseAddr("242.0.2.1"), Namespace: "payments"}}
	s := svc("web", "242.0.128.1", 2)
	s.Total, s.Health = 3, &Health{Healthy: false, Reason: "connection refused"}
	rs, err := a.PublishAll(Local{Cluster: c, Services: []Service{s}, GlobalServices: []meshpolicy.GlobalService{gs}, Policies: []meshpolicy.Policy{policy("protect-db")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("published %d records, want cluster, service, global service, policy", len(rs))
	}
	for _, r := range rs {
		// Through the wire and back.
		data, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		back, err := Decode(data)
		if err != nil {
			t.Fatalf("%s: %v", r.Key, err)
		}
		if _, err := b.Merge(back); err != nil {
			t.Fatalf("%s: %v", r.Key, err)
		}
	}
	snap := b.Snapshot()
	if len(snap.GlobalServices) != 1 || !reflect.DeepEqual(snap.GlobalServices[0].GlobalService, gs) || snap.GlobalServices[0].Owner != "cloud-a" {
		t.Fatalf("global services at cloud-b: %+v", snap.GlobalServices)
	}
	if len(snap.Policies) != 1 || !reflect.DeepEqual(snap.Policies[0].Policy, policy("protect-db")) {
		t.Fatalf("policies at cloud-b: %+v", snap.Policies)
	}
	if got := snap.Clusters["cloud-a"].Egress; len(got) != 2 || got[1].Namespace != "payments" {
		t.Fatalf("egress addresses at cloud-b: %+v", got)
	}
	if got := snap.Services[0]; got.Total != 3 || got.Health == nil || got.Health.Reason != "connection refused" || got.Serving() {
		t.Fatalf("service at cloud-b: %+v", got)
	}
	// Withdrawn: tombstones for both declarations.
	m.now = m.now.Add(5e9)
	rs, err = a.PublishAll(Local{Cluster: c, Services: []Service{s}})
	if err != nil || len(rs) != 2 {
		t.Fatalf("withdrawing: %d records, %v", len(rs), err)
	}
	deliver(t, b, rs)
	if snap := b.Snapshot(); len(snap.GlobalServices)+len(snap.Policies) != 0 {
		t.Fatalf("after withdrawal: %+v %+v", snap.GlobalServices, snap.Policies)
	}
}

func TestPublishRefusesBadMeshPolicy(t *testing.T) {
	m := newMesh(t)
	a := m.catalog(t, "cloud-a")
	bad := policy("bad")
	bad.Rules[0].Action = "maybe"
	big := policy("big")
	for len(big.Rules) < meshpolicy.MaxRules {
		r := big.Rules[0]
		r.Name = ""
		r.From = make([]meshpolicy.Source, meshpolicy.MaxPeers)
		for i := range r.From {
			r.From[i] = meshpolicy.Source{Cluster: "cluster-with-a-long-name", Namespace: "namespace-with-a-long-name"}
		}
		big.Rules = append(big.Rules, r)
	}
	outside := cluster("cloud-a")
	outside.Egress = []Egress{{Addr: netip.MustParseAddr("10.0.0.1")}}
	for _, tt := range []struct {
		name string
		l    Local
		want string
	}{
		{"invalid rule", Local{Cluster: cluster("cloud-a"), Policies: []meshpolicy.Policy{bad}}, `rules[0].action: "maybe" is not allow or deny`},
		{"too big", Local{Cluster: cluster("cloud-a"), Policies: []meshpolicy.Policy{big}}, "more than a record holds"},
		{"twice", Local{Cluster: cluster("cloud-a"), Policies: []meshpolicy.Policy{policy("p"), policy("p")}}, "published twice"},
		{"egress outside the block", Local{Cluster: outside}, "outside the block"},
		{"allocated without VIP", Local{Cluster: cluster("cloud-a"), GlobalServices: []meshpolicy.GlobalService{{Namespace: "default", Name: "web", Allocated: true}}}, "marked allocated but empty"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.PublishAll(tt.l)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}
