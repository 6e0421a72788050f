package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/straitnet/strait/natpool"
)

// render prints a plan one host a line, for comparison in table tests.
func render(hosts []Host) string {
	var b strings.Builder
	for _, h := range hosts {
		fmt.Fprintf(&b, "%s %s %s", h.Name, h.Role, h.NS)
		if h.Addr.IsValid() {
			fmt.Fprintf(&b, " addr=%s", h.Addr)
		}
		if h.Global.IsValid() {
			fmt.Fprintf(&b, " global=%s", h.Global)
		}
		if h.WAN.IsValid() {
			fmt.Fprintf(&b, " wan=%s", h.WAN)
		}
		if h.PodCIDR.IsValid() {
			fmt.Fprintf(&b, " pods=%s", h.PodCIDR)
		}
		if h.Node != "" {
			fmt.Fprintf(&b, " on=%s", h.Node)
		}
		if h.PodNamespace != "" {
			fmt.Fprintf(&b, " ns=%s app=%s", h.PodNamespace, h.Labels["app"])
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestPlanMerger(t *testing.T) {
	hosts, err := Plan(Merger(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	want := `wan wan strait-demo-wan
cloud-a-lan switch strait-demo-cloud-a-lan
cloud-a-gw gateway strait-demo-cloud-a-gw addr=172.31.0.1 wan=198.18.0.2
cloud-a-node1 node strait-demo-cloud-a-node1 addr=172.31.0.11 pods=10.0.1.0/24
cloud-a-pod1 pod strait-demo-cloud-a-pod1 addr=10.0.1.10 on=cloud-a-node1 ns=default app=pod1
cloud-a-node2 node strait-demo-cloud-a-node2 addr=172.31.0.12 pods=10.0.2.0/24
cloud-a-pod2 pod strait-demo-cloud-a-pod2 addr=10.0.2.10 on=cloud-a-node2 ns=payments app=api
cloud-b-lan switch strait-demo-cloud-b-lan
cloud-b-gw gateway strait-demo-cloud-b-gw addr=172.31.0.1 wan=198.18.1.2
cloud-b-node1 node strait-demo-cloud-b-node1 addr=172.31.0.11 pods=10.0.1.0/24
cloud-b-pod1 pod strait-demo-cloud-b-pod1 addr=10.0.1.10 on=cloud-b-node1 ns=default app=pod1
cloud-b-node2 node strait-demo-cloud-b-node2 addr=172.31.0.12 pods=10.0.2.0/24
cloud-b-pod2 pod strait-demo-cloud-b-pod2 addr=10.0.2.10 on=cloud-b-node2 ns=default app=batch
onprem-lan switch strait-demo-onprem-lan
onprem-gw gateway strait-demo-onprem-gw addr=172.31.0.1 wan=198.18.2.2
onprem-node1 node strait-demo-onprem-node1 addr=172.31.0.11 pods=192.168.1.0/24
onprem-pod1 pod strait-demo-onprem-pod1 addr=192.168.1.10 on=onprem-node1 ns=default app=pod1
onprem-router router strait-demo-onprem-router addr=172.31.0.254 global=172.16.10.1
onprem-dc1 dchost strait-demo-onprem-dc1 addr=172.16.10.10 on=onprem-router
`
	if got := render(hosts); got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}
}

func TestPlanPodsAndPlainSite(t *testing.T) {
	topo := Topology{Name: "x", GlobalCIDR: pfx("242.0.0.0/8"), Sites: []Site{
		{Name: "c", PodCIDR: pfx("10.8.0.0/20"), Block: pfx("242.9.16.0/20"), Nodes: 1, PodsPerNode: 2},
		{Name: "branch", Kind: KindWireGuard, Block: pfx("242.3.0.0/16")},
	}}
	hosts, err := Plan(topo, "r1")
	if err != nil {
		t.Fatal(err)
	}
	want := `wan wan strait-r1-wan
c-lan switch strait-r1-c-lan
c-gw gateway strait-r1-c-gw addr=172.31.0.1 wan=198.18.0.2
c-node1 node strait-r1-c-node1 addr=172.31.0.11 pods=10.8.1.0/24
c-pod1 pod strait-r1-c-pod1 addr=10.8.1.10 on=c-node1 ns=default app=pod1
c-pod2 pod strait-r1-c-pod2 addr=10.8.1.11 on=c-node1 ns=default app=pod2
branch-host plain strait-r1-branch-host addr=242.3.0.1 global=242.3.0.1 wan=198.18.1.2
`
	if got := render(hosts); got != want {
		t.Errorf("plan:\n%s\nwant:\n%s", got, want)
	}
}

func TestPlanDerivesBlocks(t *testing.T) {
	topo := Pair()
	topo.Sites[1].Block = netip.Prefix{}
	resolved, err := topo.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := natpool.DeriveBlock(topo.GlobalCIDR, natpool.DefaultBlockBits, "cloud-b")
	if resolved.Sites[1].Block != want || resolved.Sites[0].Block.String() != "242.0.0.0/16" {
		t.Errorf("resolved blocks %s, %s; want cloud-b's derived %s", resolved.Sites[0].Block, resolved.Sites[1].Block, want)
	}
	if topo.Sites[1].Block.IsValid() {
		t.Error("Resolve changed the topology it was given")
	}
}

// TestTargetAndSeenAs checks the lab's expectations against the address
// plan on the merger topology.
func TestTargetAndSeenAs(t *testing.T) {
	topo := Merger()
	hosts, err := Plan(topo, "r")
	if err != nil {
		t.Fatal(err)
	}
	h := map[string]Host{}
	for _, x := range hosts {
		x.Global = netip.MustParseAddr("242.99.0.1") // stand-ins for allocations
		x.Egress = netip.MustParseAddr("242.99.1.1")
		h[x.Name] = x
	}
	for _, tt := range []struct {
		from, to       string
		target, seenAs string
	}{
		{"cloud-a-pod1", "cloud-a-pod2", "10.0.2.10", "10.0.1.10"},   // same site
		{"cloud-a-pod1", "cloud-b-pod1", "242.99.0.1", "242.99.1.1"}, // collide: service, egress
		{"cloud-b-pod1", "cloud-a-pod1", "242.99.0.1", "242.99.1.1"},
		{"cloud-a-pod1", "onprem-pod1", "192.168.1.10", "10.0.1.10"}, // both routable: real
		{"onprem-pod1", "cloud-a-pod2", "10.0.2.10", "192.168.1.10"},
		{"cloud-b-pod2", "onprem-pod1", "192.168.1.10", "242.99.1.1"}, // cloud-b not routable
		{"onprem-pod1", "cloud-b-pod2", "242.99.0.1", "192.168.1.10"},
	} {
		from, to := h[tt.from], h[tt.to]
		if got := topo.Target(from, to).String(); got != tt.target {
			t.Errorf("%s -> %s: target %s, want %s", tt.from, tt.to, got, tt.target)
		}
		if got := topo.SeenAs(from, to).String(); got != tt.seenAs {
			t.Errorf("%s -> %s: seen as %s, want %s", tt.from, tt.to, got, tt.seenAs)
		}
	}
}

func TestPlanRefuses(t *testing.T) {
	good := Pair()
	tests := []struct {
		name string
		run  string
		edit func(*Topology)
		want string
	}{
		{"bad run ID", "Demo", func(*Topology) {}, "run ID"},
		{"run ID too long", "abcdefghi", func(*Topology) {}, "run ID"},
		{"no sites", "r", func(t *Topology) { t.Sites = nil }, "no sites"},
		{"duplicate site", "r", func(t *Topology) { t.Sites[1].Name = t.Sites[0].Name }, "appears twice"},
		{"site name too long", "r", func(t *Topology) { t.Sites[0].Name = "a-very-long-site-name" }, "1 to 15"},
		{"block outside", "r", func(t *Topology) { t.Sites[0].Block = pfx("10.9.0.0/16") }, "not inside the global CIDR"},
		{"pod CIDR in the global CIDR", "r", func(t *Topology) { t.Sites[0].PodCIDR = pfx("242.7.0.0/16") }, "overlaps the global CIDR"},
		{"too many nodes", "r", func(t *Topology) {
			t.Sites[0].PodCIDR, t.Sites[0].Block, t.Sites[0].Nodes = pfx("10.0.0.0/23"), pfx("242.0.0.0/23"), 2
		}, "do not fit"},
		{"unknown kind", "r", func(t *Topology) { t.Sites[0].Kind = "vpn" }, "unknown kind"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			topo := good
			topo.Sites = append([]Site(nil), good.Sites...)
			tt.edit(&topo)
			if _, err := Plan(topo, tt.run); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Plan = %v, want an error saying %q", err, tt.want)
			}
		})
	}
}

func TestTunnelInterfaceFits(t *testing.T) {
	if n := TunnelInterface("abcdefgh", 199); len(n) > 15 {
		t.Errorf("%q is longer than an interface name may be", n)
	}
}

func TestParseReply(t *testing.T) {
	r, err := parseReply("strait-lab name=cloud-b-pod1 local=10.0.1.10:7777 peer=242.0.1.10:40000\n")
	if err != nil || r.Name != "cloud-b-pod1" || r.Peer.String() != "242.0.1.10:40000" {
		t.Errorf("parseReply = %+v, %v", r, err)
	}
	if _, err := parseReply("HTTP/1.1 400 Bad Request"); err == nil {
		t.Error("accepted a reply from something else")
	}
}

func FuzzParseReply(f *testing.F) {
	f.Add("strait-lab name=a local=10.0.1.10:7777 peer=242.0.1.10:40000\n")
	f.Add("strait-lab peer=[::1]:80")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseReply(s)
		if err == nil && r.Peer.IsValid() && !strings.Contains(s, r.Peer.Addr().String()) && !r.Peer.Addr().Is4In6() {
			t.Fatalf("peer %s not in %q", r.Peer, s)
		}
	})
}

func TestBirdConfigAndRoutes(t *testing.T) {
	m := Merger()
	s := m.Sites[2]
	hosts, err := Plan(m, "demo")
	if err != nil {
		t.Fatal(err)
	}
	var router Host
	for _, h := range hosts {
		if h.Role == RoleRouter {
			router = h
		}
	}
	conf := birdConfig(s, router, lanGWAddr, m.GlobalCIDR)
	for _, want := range []string{
		"router id 172.31.0.254;",
		"local 172.31.0.254 as 64513;",
		"neighbor 172.31.0.1 as 64512;",
		"graceful restart on;",
		"route 10.0.0.0/8 blackhole;",
		"import filter { if net ~ [ 242.0.0.0/8{8,32}, 10.0.0.0/8{8,16} ] then accept; reject; };",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("bird.conf lacks %q:\n%s", want, conf)
		}
	}
	got := parseRoutes("242.0.0.0/16 via 172.31.0.1 dev eth0 proto bird metric 32\n242.255.0.187 via 172.31.0.1 dev eth0 proto bird metric 32\ndefault dev eth0 proto bird\n")
	want := map[netip.Prefix]netip.Addr{
		pfx("242.0.0.0/16"):     netip.MustParseAddr("172.31.0.1"),
		pfx("242.255.0.187/32"): netip.MustParseAddr("172.31.0.1"),
		pfx("0.0.0.0/0"):        {},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for p, nh := range want {
		if got[p] != nh {
			t.Errorf("%s: got %s, want %s", p, got[p], nh)
		}
	}
	bad := s
	bad.Router = &Router{ASN: 1, GatewayASN: 2, LAN: pfx("192.168.5.0/24")}
	if err := checkRouter(bad, m.GlobalCIDR); err == nil {
		t.Error("a router LAN inside the pod CIDR was taken")
	}
}
