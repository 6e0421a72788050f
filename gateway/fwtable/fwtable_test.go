package fwtable

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/firewall"
)

const (
	allow = meshpolicy.Allow
	deny  = meshpolicy.Deny
)

// The lab's services and other listeners, served in every lab.
const (
	api    = "10.96.0.1:8080" // payments/api TCP 80
	dns    = "10.96.0.1:5353" // payments/api UDP 53
	web    = "10.96.0.2:8443" // shop/web TCP 443
	other  = "10.96.0.1:9000" // no service
	aDflt  = "242.1.0.1"      // cloud-a's default egress address
	aPay   = "242.1.0.5"      // cloud-a's namespace payments
	bBlock = "242.2.0.1"      // cloud-b
)

func input(dflt meshpolicy.Action, pols ...meshpolicy.DeclaredPolicy) firewall.Input {
	return firewall.Input{
		Self:     "home",
		Default:  dflt,
		Policies: meshpolicy.Merge(nil, pols).Policies,
		Clusters: map[string]firewall.Cluster{
			"cloud-a": {Block: netip.MustParsePrefix("242.1.0.0/16"), Egress: []firewall.Egress{
				{Addr: addr(aDflt)}, {Addr: addr(aPay), Namespace: "payments"}}},
			"cloud-b": {Block: netip.MustParsePrefix("242.2.0.0/16")},
		},
		Services: []firewall.Service{
			{Namespace: "payments", Name: "api", Backend: addr("10.96.0.1"), Ports: []firewall.ServicePort{{Proto: 6, Port: 80, TargetPort: 8080}, {Proto: 17, Port: 53, TargetPort: 5353}}},
			{Namespace: "shop", Name: "web", Backend: addr("10.96.0.2"), Ports: []firewall.ServicePort{{Proto: 6, Port: 443, TargetPort: 8443}}},
		},
	}
}

func policy(name string, prio int32, rules ...meshpolicy.Rule) meshpolicy.DeclaredPolicy {
	return meshpolicy.DeclaredPolicy{Owner: "home", Policy: meshpolicy.Policy{Name: name, Priority: prio, Rules: rules}}
}

func from(cluster, ns string) []meshpolicy.Source {
	return []meshpolicy.Source{{Cluster: cluster, Namespace: ns}}
}

func to(ns, svc string) []meshpolicy.Destination {
	return []meshpolicy.Destination{{Namespace: ns, Service: svc}}
}

func compile(t *testing.T, in firewall.Input) firewall.Program {
	t.Helper()
	p := firewall.Compile(in)
	if len(p.Problems) > 0 || p.Failed {
		t.Fatalf("compile: %q", p.Problems)
	}
	return p
}

func (l *lab) sync(t *testing.T, p firewall.Program) SyncStats {
	t.Helper()
	st, err := l.tab.Sync(tunnel, p)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// packets returns the counters' packets by name, leaving out zeros.
func (l *lab) packets(t *testing.T) map[string]uint64 {
	t.Helper()
	cs, err := l.tab.Counters()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for name, c := range cs {
		if c.Packets > 0 {
			out[name] = c.Packets
		}
	}
	return out
}

func checkPackets(t *testing.T, l *lab, want map[string]uint64) {
	t.Helper()
	if got := l.packets(t); !maps.Equal(got, want) {
		t.Errorf("counters %v, want %v", got, want)
	}
}

// paymentsPolicies: cloud-a's namespace payments may reach payments/api,
// no one else may; cloud-b may reach shop/web.
func paymentsPolicies() []meshpolicy.DeclaredPolicy {
	return []meshpolicy.DeclaredPolicy{
		policy("payments", 0,
			meshpolicy.Rule{Name: "api", Action: allow, From: from("cloud-a", "payments"), To: to("payments", "api")},
			meshpolicy.Rule{Name: "no-api", Action: deny, To: to("payments", "api")}),
		policy("shop", 1, meshpolicy.Rule{Name: "b-web", Action: allow, From: from("cloud-b", ""), To: to("shop", "web")}),
	}
}

func TestAllowDenyDefault(t *testing.T) {
	l := newLab(t)
	st := l.sync(t, compile(t, input(deny, paymentsPolicies()...)))
	if !st.Full || st.Rules != 3 || st.Carried != 0 {
		t.Errorf("stats %+v", st)
	}
	expect(t, "payments to api", "allow", func() error { return l.tcp(aPay, api) })
	expect(t, "payments to api, UDP", "allow", func() error { return l.udp(aPay, dns) })
	expect(t, "cloud-a to api", "reset", func() error { return l.tcp(aDflt, api) })
	expect(t, "cloud-a to api, UDP", "prohibited", func() error { return l.udp(aDflt, dns) })
	expect(t, "cloud-b to web", "allow", func() error { return l.tcp(bBlock, web) })
	expect(t, "cloud-a to web: default deny", "reset", func() error { return l.tcp(aDflt, web) })
	expect(t, "cloud-b to no service: default deny", "reset", func() error { return l.tcp(bBlock, other) })
	// One packet a connection: only the first is new.
	checkPackets(t, l, map[string]uint64{"payments/api": 2, "payments/no-api": 2, "shop/b-web": 1, "default": 2})

	// The default-deny switch off: the same rules, the rest allowed.
	st = l.sync(t, compile(t, input(allow, paymentsPolicies()...)))
	if !st.Full || st.Carried != 3 {
		t.Errorf("stats %+v; want a rewrite carrying 3 rule counters", st)
	}
	expect(t, "cloud-a to web: default allow", "allow", func() error { return l.tcp(aDflt, web) })
	expect(t, "cloud-b to no service: default allow", "allow", func() error { return l.tcp(bBlock, other) })
	expect(t, "cloud-a to api, still", "reset", func() error { return l.tcp(aDflt, api) })
	checkPackets(t, l, map[string]uint64{"payments/api": 2, "payments/no-api": 3, "shop/b-web": 1, "default": 4})
}

func TestDryRun(t *testing.T) {
	l := newLab(t)
	audit := policy("audit", 0, meshpolicy.Rule{Name: "deny-a", Action: deny, From: from("cloud-a", "")})
	audit.DryRun = true
	l.sync(t, compile(t, input(deny, audit,
		policy("p", 1, meshpolicy.Rule{Name: "a-api", Action: allow, From: from("cloud-a", ""), To: to("payments", "api")}))))
	// The dry-run rule counts, the next rule decides.
	expect(t, "cloud-a to api", "allow", func() error { return l.tcp(aDflt, api) })
	// The dry-run rule counts, the default decides.
	expect(t, "cloud-a to web", "reset", func() error { return l.tcp(aDflt, web) })
	// Nothing matches: the default.
	expect(t, "cloud-b to api", "reset", func() error { return l.tcp(bBlock, api) })
	checkPackets(t, l, map[string]uint64{"audit/deny-a": 2, "p/a-api": 1, "default": 2})
}

func TestCountersCarriedOver(t *testing.T) {
	l := newLab(t)
	l.sync(t, compile(t, input(deny, paymentsPolicies()...)))
	expect(t, "payments to api", "allow", func() error { return l.tcp(aPay, api) })
	expect(t, "cloud-a to api", "reset", func() error { return l.tcp(aDflt, api) })
	expect(t, "cloud-b to web", "allow", func() error { return l.tcp(bBlock, web) })
	expect(t, "cloud-a to other", "reset", func() error { return l.tcp(aDflt, other) })
	want := map[string]uint64{"payments/api": 1, "payments/no-api": 1, "shop/b-web": 1, "default": 1}
	checkPackets(t, l, want)

	// A new policy in front shifts every rule's index; shop's rule goes.
	pols := paymentsPolicies()[:1]
	pols = append(pols, policy("first", -1, meshpolicy.Rule{Name: "b-other", Action: allow, From: from("cloud-b", "")}))
	st := l.sync(t, compile(t, input(deny, pols...)))
	if !st.Full || st.Carried != 2 || st.Rules != 3 {
		t.Errorf("stats %+v; want a rewrite carrying 2", st)
	}
	delete(want, "shop/b-web")
	checkPackets(t, l, want)
	expect(t, "cloud-b to other", "allow", func() error { return l.tcp(bBlock, other) })
	expect(t, "payments to api", "allow", func() error { return l.tcp(aPay, api) })
	want["first/b-other"], want["payments/api"] = 1, 2
	checkPackets(t, l, want)

	// A gateway that restarts finds the names in the table, which its
	// Close left there.
	must(t, l.tab.Close())
	l.tab = newTable(t, l.gw)
	cs := l.packets(t)
	if !maps.Equal(cs, want) {
		t.Errorf("counters read by a new Table %v, want %v", cs, want)
	}
	pols = append(pols, policy("zz", 9, meshpolicy.Rule{Action: deny}))
	st = l.sync(t, compile(t, input(deny, pols...)))
	if !st.Full || st.Carried != 3 {
		t.Errorf("stats %+v; want a rewrite carrying 3", st)
	}
	checkPackets(t, l, want)
}

func TestSyncUnchanged(t *testing.T) {
	l := newLab(t)
	p := compile(t, input(deny, paymentsPolicies()...))
	l.sync(t, p)
	before := l.nft(t, "-a", "list", "table", "ip", TableName) // handles change on a rewrite
	st := l.sync(t, compile(t, input(deny, paymentsPolicies()...)))
	if st.Full {
		t.Errorf("an unchanged program rewrote the table: %+v", st)
	}
	if after := l.nft(t, "-a", "list", "table", "ip", TableName); after != before {
		t.Errorf("table changed:\n%s\nwas\n%s", after, before)
	}
	// Another tunnel is a change.
	if st, err := l.tab.Sync("mesh1", p); err != nil || !st.Full {
		t.Errorf("new tunnel: %+v, %v", st, err)
	}
}

func TestVerifyDrift(t *testing.T) {
	l := newLab(t)
	if ok, err := l.tab.Verify(); ok || err != nil {
		t.Errorf("Verify before any Sync = %v, %v", ok, err)
	}
	p := compile(t, input(deny, paymentsPolicies()...))
	for _, c := range []struct {
		name  string
		drift []string
	}{
		{"flush the table", []string{"flush", "table", "ip", TableName}},
		{"delete a destination", []string{"delete", "element", "ip", TableName, fmt.Sprintf("d%d", classOf(p, aPay)), "{ 10.96.0.1 . tcp . 8080 }"}},
		{"delete a source range", []string{"delete", "element", "ip", TableName, "sources", "{ 242.1.0.5 }"}},
		{"flush a verdict chain", []string{"flush", "chain", "ip", TableName, "v0"}},
		{"add a rule", []string{"insert", "rule", "ip", TableName, "forward", "accept"}},
		{"delete the table", []string{"delete", "table", "ip", TableName}},
	} {
		t.Run(c.name, func(t *testing.T) {
			l.sync(t, p)
			if ok, err := l.tab.Verify(); !ok || err != nil {
				t.Fatalf("Verify right after Sync = %v, %v", ok, err)
			}
			l.nft(t, c.drift...)
			if ok, err := l.tab.Verify(); ok || err != nil {
				t.Errorf("Verify after drift = %v, %v", ok, err)
			}
			if st := l.sync(t, p); !st.Full {
				t.Errorf("Sync after drift did not rewrite: %+v", st)
			}
			if ok, err := l.tab.Verify(); !ok || err != nil {
				t.Errorf("Verify after the repair = %v, %v", ok, err)
			}
			expect(t, "payments to api", "allow", func() error { return l.tcp(aPay, api) })
			expect(t, "cloud-a to api", "reset", func() error { return l.tcp(aDflt, api) })
		})
	}
}

// classOf is the source class of an address.
func classOf(p firewall.Program, a string) uint32 {
	for _, r := range p.Sources {
		if !addr(a).Less(r.First) && !r.Last.Less(addr(a)) {
			return r.Class
		}
	}
	return 0
}

func TestEstablishedSurvive(t *testing.T) {
	l := newLab(t)
	l.sync(t, compile(t, input(allow)))
	c, err := l.dial(aDflt, api)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.echo("before"); err != nil {
		t.Fatal(err)
	}
	l.sync(t, compile(t, input(deny, policy("lock", 0, meshpolicy.Rule{Action: deny, From: from("cloud-a", "")}))))
	if err := c.echo("after"); err != nil {
		t.Errorf("an established connection broke on a Sync that denies new ones: %v", err)
	}
	expect(t, "a new connection", "reset", func() error { return l.tcp(aDflt, api) })
}

func TestListing(t *testing.T) {
	l := newLab(t)
	p := compile(t, input(deny, paymentsPolicies()...))
	l.sync(t, p)
	got := l.nft(t, "list", "table", "ip", TableName)
	if testing.Verbose() {
		t.Log(got)
	}
	for _, want := range []string{
		"counter payments/api", // not there: counters are named by index
	} {
		if strings.Contains(got, want) {
			t.Errorf("listing has %q", want)
		}
	}
	for _, want := range []string{
		"counter default {",
		"counter r0 {",
		"map sources {\n\t\ttype ipv4_addr : verdict\n\t\tflags interval\n",
		fmt.Sprintf("map d%d {\n\t\ttype ipv4_addr . inet_proto . inet_service : verdict\n", classOf(p, aPay)),
		"10.96.0.1 . tcp . 8080 : jump v",
		`iifname "mesh0" ct state new ip saddr vmap @sources`,
		fmt.Sprintf("chain s%d {\n\t\tip daddr . meta l4proto . th dport vmap @d%d", classOf(p, aPay), classOf(p, aPay)),
		"type filter hook forward priority filter; policy accept;",
		`counter name "r0" accept comment "payments/api #`,
		`counter name "r1" limit rate 10/second burst 20 packets log prefix "strait-deny 1 " group 7100 comment "payments/no-api #`,
		"reject with tcp reset",
		"reject with icmp admin-prohibited",
		`counter name "default" limit rate 10/second burst 20 packets log prefix "strait-deny default " group 7100`,
		"set rule_names {\n\t\ttype mark\n\t\telements = { 0x00000000 comment \"payments/api\", 0x00000001 comment \"payments/no-api\",",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("listing lacks %q:\n%s", want, got)
		}
	}
	// What nft lists, nft loads (here where there is no such table).
	path := filepath.Join(t.TempDir(), "fw.nft")
	must(t, os.WriteFile(path, []byte(got), 0o600))
	if out, err := l.client.Command("nft", "-f", path).CombinedOutput(); err != nil {
		t.Errorf("nft -f of the listing: %v\n%s", err, out)
	}
}

func TestRemove(t *testing.T) {
	l := newLab(t)
	l.sync(t, compile(t, input(deny)))
	expect(t, "default deny", "reset", func() error { return l.tcp(aDflt, api) })
	must(t, l.tab.Remove())
	if out := l.nft(t, "list", "tables"); strings.Contains(out, TableName) {
		t.Errorf("table left: %s", out)
	}
	expect(t, "no table", "allow", func() error { return l.tcp(aDflt, api) })
	if ok, _ := l.tab.Verify(); ok {
		t.Error("Verify after Remove = true")
	}
	must(t, l.tab.Remove()) // no table: not an error
	if cs, err := l.tab.Counters(); err != nil || len(cs) != 0 {
		t.Errorf("Counters without a table = %v, %v", cs, err)
	}
}

func TestLogPrefix(t *testing.T) {
	for _, c := range []struct {
		prefix string
		rule   int
		ok     bool
	}{
		{LogPrefix(0), 0, true},
		{LogPrefix(12345), 12345, true},
		{DefaultLogPrefix, -1, true},
		{"strait-deny 7", 7, true}, // NFLOG may trim the trailing space
		{"strait-deny x ", 0, false},
		{"strait-deny -3 ", 0, false},
		{"other 3 ", 0, false},
	} {
		rule, ok := ParseLogPrefix(c.prefix)
		if rule != c.rule || ok != c.ok {
			t.Errorf("ParseLogPrefix(%q) = %d, %v; want %d, %v", c.prefix, rule, ok, c.rule, c.ok)
		}
	}
	if LogPrefix(3) != "strait-deny 3 " {
		t.Errorf("LogPrefix(3) = %q", LogPrefix(3))
	}
}

func TestValidate(t *testing.T) {
	good := firewall.Compile(input(deny, paymentsPolicies()...))
	if err := validate(tunnel, good); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		tunnel string
		edit   func(*firewall.Program)
		want   string
	}{
		{"no tunnel", "", nil, `tunnel "" is not an interface name`},
		{"long tunnel", "0123456789abcdef", nil, "is not an interface name"},
		{"default", tunnel, func(p *firewall.Program) { p.Default = "" }, `default action "" is not allow or deny`},
		{"source class 0", tunnel, func(p *firewall.Program) { p.Sources[0].Class = 0 }, "source range 0"},
		{"source order", tunnel, func(p *firewall.Program) { p.Sources[0], p.Sources[1] = p.Sources[1], p.Sources[0] }, "overlap or are out of order"},
		{"verdict chain", tunnel, func(p *firewall.Program) { p.Verdicts[[2]uint32{1, 1}] = 99 }, "leads to chain 99"},
		{"chain rule", tunnel, func(p *firewall.Program) { p.Chains[0].Count = []int{42} }, "counts rule 42"},
	} {
		p := firewall.Compile(input(deny, paymentsPolicies()...))
		p.Sources = slices.Clone(p.Sources)
		if c.edit != nil {
			c.edit(&p)
		}
		err := validate(c.tunnel, p)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if !reflect.DeepEqual(digest(tunnel, good), digest(tunnel, firewall.Compile(input(deny, paymentsPolicies()...)))) {
		t.Error("one program, two digests")
	}
	if digest(tunnel, good) == digest("mesh1", good) {
		t.Error("the tunnel does not change the digest")
	}
}
