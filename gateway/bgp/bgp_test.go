package bgp

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func TestPrefixRuleMatches(t *testing.T) {
	tests := []struct {
		rule PrefixRule
		p    string
		want bool
	}{
		{PrefixRule{Prefix: pfx("172.16.0.0/12"), MaxLength: 24}, "172.16.10.0/24", true},
		{PrefixRule{Prefix: pfx("172.16.0.0/12"), MaxLength: 24}, "172.16.0.0/12", true},
		{PrefixRule{Prefix: pfx("172.16.0.0/12"), MaxLength: 24}, "172.16.10.128/25", false},
		{PrefixRule{Prefix: pfx("172.16.0.0/12"), MaxLength: 24}, "172.0.0.0/8", false},
		{PrefixRule{Prefix: pfx("172.16.0.0/12"), MaxLength: 24}, "10.0.0.0/16", false},
		{PrefixRule{Prefix: pfx("10.0.0.0/16")}, "10.0.0.0/16", true},
		{PrefixRule{Prefix: pfx("10.0.0.0/16")}, "10.0.1.0/24", false},
		{PrefixRule{Prefix: pfx("0.0.0.0/0"), MaxLength: 32}, "242.255.0.187/32", true},
	}
	for _, tt := range tests {
		if got := tt.rule.Matches(pfx(tt.p)); got != tt.want {
			t.Errorf("%s matches %s: %v, want %v", tt.rule, tt.p, got, tt.want)
		}
	}
}

func TestScreen(t *testing.T) {
	nh := addr("172.31.0.254")
	reserved := []Reserved{
		{Prefix: pfx("242.0.0.0/8"), What: "the global CIDR"},
		{Prefix: pfx("10.0.0.0/16"), What: "cloud-a's CIDR"},
		{Prefix: pfx("172.31.0.0/24"), What: "the gateway's network"},
		{Prefix: pfx("192.168.1.0/24"), What: "the host", Exact: true},
	}
	routes := []Route{
		{Prefix: pfx("172.16.10.0/24"), NextHop: nh, Peer: "r2"},
		{Prefix: pfx("172.16.10.0/24"), NextHop: addr("172.31.0.253"), Peer: "r1"},
		{Prefix: pfx("10.0.5.0/24"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("242.1.0.0/16"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("0.0.0.0/0"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("172.31.0.0/25"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("172.20.0.0/16"), NextHop: addr("172.20.0.1"), Peer: "r1"},
		{Prefix: pfx("172.21.0.0/16"), Peer: "r1"},
		{Prefix: pfx("192.168.200.0/24"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("192.168.1.0/24"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("192.168.0.0/16"), NextHop: nh, Peer: "r1"},
	}
	acc, ref := Screen(routes, reserved, nil)
	wantAcc := []Route{
		{Prefix: pfx("172.16.10.0/24"), NextHop: addr("172.31.0.253"), Peer: "r1"},
		{Prefix: pfx("192.168.0.0/16"), NextHop: nh, Peer: "r1"},
		{Prefix: pfx("192.168.200.0/24"), NextHop: nh, Peer: "r1"},
	}
	if !slices.Equal(acc, wantAcc) {
		t.Errorf("accepted %+v\nwant %+v", acc, wantAcc)
	}
	wantRef := map[string]string{
		"0.0.0.0/0":      "a default route",
		"10.0.5.0/24":    "overlaps cloud-a's CIDR 10.0.0.0/16",
		"172.20.0.0/16":  "its next hop 172.20.0.1 is inside it",
		"172.21.0.0/16":  "next hop invalid IP is not an IPv4 address",
		"172.31.0.0/25":  "overlaps the gateway's network 172.31.0.0/24",
		"242.1.0.0/16":   "overlaps the global CIDR 242.0.0.0/8",
		"192.168.1.0/24": "the host has a route to it already",
	}
	if len(ref) != len(wantRef) {
		t.Errorf("refused %+v", ref)
	}
	for _, r := range ref {
		if w := wantRef[r.Prefix.String()]; w == "" || !strings.Contains(r.Reason, w) {
			t.Errorf("refused %s: %q, want %q", r.Prefix, r.Reason, w)
		}
	}
}

func TestScreenNextHops(t *testing.T) {
	local := []netip.Prefix{pfx("172.31.0.1/24"), pfx("198.18.2.2/24")}
	routes := []Route{
		{Prefix: pfx("172.16.1.0/24"), NextHop: addr("172.31.0.254")},
		{Prefix: pfx("172.16.2.0/24"), NextHop: addr("172.31.0.1")},
		{Prefix: pfx("172.16.3.0/24"), NextHop: addr("10.9.9.9")},
	}
	acc, ref := Screen(routes, nil, local)
	if len(acc) != 1 || acc[0].Prefix != pfx("172.16.1.0/24") {
		t.Errorf("accepted %+v", acc)
	}
	want := []string{"its next hop 172.31.0.1 is the gateway itself", "its next hop 10.9.9.9 is on none of the gateway's networks"}
	if len(ref) != 2 || ref[0].Reason != want[0] || ref[1].Reason != want[1] {
		t.Errorf("refused %+v, want %q", ref, want)
	}
}

func TestValidate(t *testing.T) {
	good := Config{ASN: 64512, RouterID: addr("10.0.0.1"), Peers: []Peer{{Name: "r", Address: addr("10.0.0.2"), ASN: 64513}}}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.ASN = 0 }, "asn: required"},
		{func(c *Config) { c.RouterID = netip.Addr{} }, "routerID"},
		{func(c *Config) { c.RouterID = addr("0.0.0.0") }, "routerID: \"0.0.0.0\" is not a unicast IPv4 address"},
		{func(c *Config) { c.Peers[0].Address = addr("10.0.0.1") }, "peers[0].address: 10.0.0.1 is the gateway's own router ID"},
		{func(c *Config) { c.Peers[0].Address = addr("224.0.0.5") }, "peers[0].address: \"224.0.0.5\" is not a unicast"},
		{func(c *Config) { c.Peers = nil }, "peers: at least one"},
		{func(c *Config) { c.Peers = append(c.Peers, Peer{Name: "r", Address: addr("10.0.0.3"), ASN: 1}) }, `peers[1].name: "r" appears twice`},
		{func(c *Config) { c.Peers[0].ASN = 0 }, "peers[0].asn: required"},
		{func(c *Config) { c.HoldTime = 1 }, "holdTime"},
		{func(c *Config) { c.Import = []PrefixRule{{Prefix: pfx("10.0.0.0/8"), MaxLength: 4}} }, "import[0].maxLength: 4 is outside 8 to 32"},
		{func(c *Config) { c.Export = []PrefixRule{{Prefix: netip.PrefixFrom(addr("10.0.0.1"), 8)}} }, "export[0].prefix"},
	}
	for _, tt := range tests {
		c := good
		c.Peers = slices.Clone(good.Peers)
		tt.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("got %v, want %q", err, tt.want)
		}
	}
}

// fakeTable is a RouteTable in memory.
type fakeTable struct {
	routes map[netip.Prefix]netip.Addr
	fail   netip.Prefix
}

func (f *fakeTable) List() ([]Route, error) {
	var out []Route
	for p, nh := range f.routes {
		out = append(out, Route{Prefix: p, NextHop: nh})
	}
	return out, nil
}
func (f *fakeTable) Replace(r Route) error {
	if r.Prefix == f.fail {
		return errors.New("refused")
	}
	f.routes[r.Prefix] = r.NextHop
	return nil
}
func (f *fakeTable) Delete(r Route) error               { delete(f.routes, r.Prefix); return nil }
func (f *fakeTable) Connected() ([]netip.Prefix, error) { return nil, nil }
func (f *fakeTable) Foreign() ([]netip.Prefix, error)   { return nil, nil }

func TestSyncRoutes(t *testing.T) {
	nh, nh2 := addr("172.31.0.254"), addr("172.31.0.253")
	tab := &fakeTable{routes: map[netip.Prefix]netip.Addr{pfx("172.16.1.0/24"): nh, pfx("172.16.2.0/24"): nh}}
	want := []Route{{Prefix: pfx("172.16.1.0/24"), NextHop: nh2}, {Prefix: pfx("172.16.3.0/24"), NextHop: nh}}
	// Before the routes learned are complete: nothing goes.
	st, err := SyncRoutes(tab, want, false)
	if err != nil || st.Added != 2 || st.Removed != 0 || len(tab.routes) != 3 || tab.routes[pfx("172.16.1.0/24")] != nh2 {
		t.Fatalf("without prune: %+v %v %v", st, err, tab.routes)
	}
	st, err = SyncRoutes(tab, want, true)
	if err != nil || st.Added != 0 || st.Removed != 1 || len(tab.routes) != 2 {
		t.Fatalf("with prune: %+v %v %v", st, err, tab.routes)
	}
	tab.fail = pfx("172.16.4.0/24")
	st, err = SyncRoutes(tab, append(want, Route{Prefix: tab.fail, NextHop: nh}), true)
	if err == nil || st.Added+st.Removed != 0 || st.Failed[tab.fail] == nil || len(st.Failed) != 1 || len(tab.routes) != 2 {
		t.Fatalf("a failing route: %+v %v %v", st, err, tab.routes)
	}
}
