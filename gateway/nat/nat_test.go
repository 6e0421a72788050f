package nat

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

func a(s string) netip.Addr   { return netip.MustParseAddr(s) }
func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// newTable gives a test a Table inside a namespace of its own.
func newTable(t *testing.T) (*Table, netns.NS) {
	nstest.RequireCommands(t, "nft")
	ns := nstest.New(t, "nat")
	fd, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	tab, err := New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab, ns
}

func nft(t *testing.T, ns netns.NS, args ...string) string {
	t.Helper()
	out, err := ns.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

var digestRE = regexp.MustCompile(` #[0-9a-f]{8}`)

func listing(t *testing.T, ns netns.NS) string {
	return digestRE.ReplaceAllString(nft(t, ns, "list", "table", "ip", "strait"), " #digest")
}

func program() Program {
	return Program{
		Tunnel: "wg-t-1",
		Services: []Service{
			{Addr: a("242.1.128.1"), Proto: 6, Port: 80, Backend: a("10.0.1.10"), BackendPort: 7777},
			{Addr: a("242.1.128.1"), Proto: 17, Port: 53, Backend: a("10.96.0.10"), BackendPort: 5353},
			{Addr: a("242.1.128.2"), Proto: 6, Port: 5432, Backend: a("10.96.0.12"), BackendPort: 5432},
		},
		EgressPods: map[netip.Addr]netip.Addr{a("10.0.2.10"): a("242.1.2.1")},
		EgressNets: []EgressNet{{p("10.0.0.0/16"), a("242.1.1.1")}, {p("10.96.0.0/12"), a("242.1.1.1")}},
		Translated: []netip.Prefix{p("242.0.0.0/16"), p("192.168.0.0/16")},
	}
}

func TestSyncReadsNaturally(t *testing.T) {
	tab, ns := newTable(t)
	prog := program()
	// Hash maps list in the kernel's order: one service keeps the listing
	// stable; the other tests check contents as sets.
	prog.Services = prog.Services[:1]
	st, err := tab.Sync(prog)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full || st.ServiceElements != 1 {
		t.Errorf("stats %+v", st)
	}
	want := `table ip strait {
	map services {
		type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
		elements = { 242.1.128.1 . tcp . 80 : 10.0.1.10 . 7777 }
	}

	map service_echo {
		type ipv4_addr : ipv4_addr
		elements = { 242.1.128.1 : 10.0.1.10 }
	}

	map egress_by_pod {
		type ipv4_addr : ipv4_addr
		elements = { 10.0.2.10 : 242.1.2.1 }
	}

	map egress_by_cidr {
		type ipv4_addr : ipv4_addr
		flags interval
		elements = { 10.0.0.0/16 : 242.1.1.1, 10.96.0.0/12 : 242.1.1.1 }
	}

	set translated_destinations {
		type ipv4_addr
		flags interval
		elements = { 192.168.0.0/16, 242.0.0.0/16 }
	}

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "wg-t-1" dnat ip to ip daddr . meta l4proto . th dport map @services comment "services: global address, protocol, port to backend #digest"
		iifname "wg-t-1" icmp type echo-request dnat to ip daddr map @service_echo comment "ping: a service address answers from its backend #digest"
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wg-t-1" ip daddr @translated_destinations snat to ip saddr map @egress_by_pod comment "egress: pods to the address they leave as #digest"
		oifname "wg-t-1" ip daddr @translated_destinations snat to ip saddr map @egress_by_cidr comment "egress: sources to the address they leave as #digest"
	}

	chain forward {
		type filter hook forward priority mangle; policy accept;
		oifname "wg-t-1" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment "clamp TCP MSS to the tunnel MTU #digest"
	}
}
`
	if got := listing(t, ns); got != want {
		t.Errorf("nft list table:\n%s\nwant:\n%s", got, want)
	}
	if ok, err := tab.Verify(); !ok || err != nil {
		t.Errorf("Verify right after Sync = %v, %v", ok, err)
	}
}

func TestSyncIncremental(t *testing.T) {
	tab, ns := newTable(t)
	prog := program()
	if _, err := tab.Sync(prog); err != nil {
		t.Fatal(err)
	}
	// One service more, one pod's rule gone, the default egress moved.
	prog.Services = append(prog.Services, Service{Addr: a("242.1.128.3"), Proto: 6, Port: 443, Backend: a("10.96.0.13"), BackendPort: 8443})
	prog.EgressPods = nil
	prog.EgressNets = []EgressNet{{p("10.0.0.0/16"), a("242.1.1.2")}, {p("10.96.0.0/12"), a("242.1.1.1")}}
	st, err := tab.Sync(prog)
	if err != nil {
		t.Fatal(err)
	}
	// 1 service and its echo entry + 2 interval elements added; 1 pod +
	// 2 interval elements removed.
	if st.Full || st.Added != 4 || st.Removed != 3 {
		t.Errorf("stats %+v; want 4 added, 3 removed, not a rewrite", st)
	}
	got := listing(t, ns)
	for _, want := range []string{
		"242.1.128.3 . tcp . 443 : 10.96.0.13 . 8443",
		"10.0.0.0/16 : 242.1.1.2, 10.96.0.0/12 : 242.1.1.1",
		"242.1.128.2 . tcp . 5432 : 10.96.0.12 . 5432",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("after the change, the table lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "10.0.2.10") {
		t.Errorf("the removed pod is still there:\n%s", got)
	}
	if st, _ := tab.Sync(prog); st.Added+st.Removed != 0 || st.Full {
		t.Errorf("a Sync without change did %+v", st)
	}
	if ok, _ := tab.Verify(); !ok {
		t.Error("Verify after incremental changes = false")
	}
}

func TestVerifySeesDriftAndSyncRepairs(t *testing.T) {
	drifts := []struct {
		name string
		nft  []string
	}{
		{"table flushed", []string{"flush", "table", "ip", "strait"}},
		{"table deleted", []string{"delete", "table", "ip", "strait"}},
		{"service removed", []string{"delete", "element", "ip", "strait", "services", "{ 242.1.128.2 . tcp . 5432 }"}},
		{"service added", []string{"add", "element", "ip", "strait", "services", "{ 242.1.128.9 . tcp . 22 : 10.0.0.9 . 22 }"}},
		{"echo removed", []string{"delete", "element", "ip", "strait", "service_echo", "{ 242.1.128.2 }"}},
		{"egress edited", []string{"delete", "element", "ip", "strait", "egress_by_pod", "{ 10.0.2.10 }"}},
		{"destination added", []string{"add", "element", "ip", "strait", "translated_destinations", "{ 10.9.0.0/16 }"}},
		{"rule added", []string{"add", "rule", "ip", "strait", "prerouting", "ip", "daddr", "242.0.0.9", "dnat", "to", "10.9.9.9"}},
		{"policy changed", []string{"add", "chain", "ip", "strait", "forward", "{ type filter hook forward priority mangle; policy drop; }"}},
		{"table switched off", []string{"add", "table", "ip", "strait", "{ flags dormant; }"}},
		{"rule body replaced, comment kept", nil}, // below: needs the rule's handle
	}
	for _, d := range drifts {
		t.Run(d.name, func(t *testing.T) {
			tab, ns := newTable(t)
			if _, err := tab.Sync(program()); err != nil {
				t.Fatal(err)
			}
			before := listing(t, ns)
			if d.nft == nil {
				// Replace the first postrouting rule's body, keeping its
				// comment, as `nft -f` of an edited listing would.
				out := nft(t, ns, "-a", "list", "chain", "ip", "strait", "postrouting")
				m := regexp.MustCompile(`comment "([^"]*)" # handle (\d+)`).FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("no rule in:\n%s", out)
				}
				nft(t, ns, "replace", "rule", "ip", "strait", "postrouting", "handle", m[2], "oifname", `"wg-t-1"`, "accept", "comment", `"`+m[1]+`"`)
			} else {
				nft(t, ns, d.nft...)
			}
			if ok, err := tab.Verify(); err != nil || ok {
				t.Fatalf("Verify after %q = %v, %v; want false", d.name, ok, err)
			}
			st, err := tab.Sync(program())
			if err != nil {
				t.Fatal(err)
			}
			if !st.Full {
				t.Error("the repair was not a whole rewrite")
			}
			if ok, err := tab.Verify(); err != nil || !ok {
				t.Fatalf("Verify after the repair = %v, %v", ok, err)
			}
			if after := listing(t, ns); after != before {
				t.Errorf("repaired table differs:\n%s\nwas:\n%s", after, before)
			}
		})
	}
}

func TestSyncChangesTunnel(t *testing.T) {
	tab, ns := newTable(t)
	prog := program()
	tab.Sync(prog)
	prog.Tunnel = "strait0"
	if st, err := tab.Sync(prog); err != nil || !st.Full {
		t.Fatalf("a new tunnel name: %+v, %v; want a rewrite", st, err)
	}
	if got := listing(t, ns); strings.Contains(got, "wg-t-1") || !strings.Contains(got, `iifname "strait0"`) {
		t.Errorf("rules still name the old tunnel:\n%s", got)
	}
}

func TestSyncRefusesContradictions(t *testing.T) {
	tab, _ := newTable(t)
	prog := program()
	prog.Services = append(prog.Services, Service{Addr: a("242.1.128.1"), Proto: 6, Port: 80, Backend: a("10.0.9.9"), BackendPort: 80})
	if _, err := tab.Sync(prog); err == nil || !strings.Contains(err.Error(), "maps to both") {
		t.Errorf("two backends for one key: %v", err)
	}
	prog = program()
	prog.EgressNets = append(prog.EgressNets, EgressNet{p("10.0.5.0/24"), a("242.1.1.9")})
	if _, err := tab.Sync(prog); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlapping egress sources: %v", err)
	}
}

func TestSyncManyServices(t *testing.T) {
	tab, ns := newTable(t)
	prog := program()
	prog.Services = nil
	for i := range 10000 {
		prog.Services = append(prog.Services, Service{Addr: netip.AddrFrom4([4]byte{242, 1, byte(128 + i/250), byte(1 + i%250)}),
			Proto: 6, Port: 80, Backend: a("10.0.1.10"), BackendPort: 7777})
	}
	start := time.Now()
	if _, err := tab.Sync(prog); err != nil {
		t.Fatal(err)
	}
	t.Logf("10,000 services from empty in %s", time.Since(start))
	if ok, err := tab.Verify(); !ok || err != nil {
		t.Errorf("Verify with 10,000 services = %v, %v", ok, err)
	}
	out := nft(t, ns, "list", "map", "ip", "strait", "services")
	if n := strings.Count(out, " : 10.0.1.10 . 7777"); n != 10000 {
		t.Errorf("the kernel holds %d services, want 10,000", n)
	}
	prog.Services = prog.Services[1:]
	st, err := tab.Sync(prog)
	if err != nil || st.Removed != 2 || st.Added != 0 {
		t.Errorf("one removal among 10,000 (the service and its echo entry): %+v, %v", st, err)
	}
}
