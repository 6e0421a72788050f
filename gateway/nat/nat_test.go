package nat

import (
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/natpool"
)

func mustMap(t *testing.T, realCIDR, block string) natpool.PrefixMap {
	t.Helper()
	m, err := natpool.NewPrefixMap(netip.MustParsePrefix(realCIDR), netip.MustParsePrefix(block))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// newTable gives a test a Table inside a namespace of its own.
func newTable(t *testing.T) (*Table, netns.NS) {
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

var digestRE = regexp.MustCompile(` #[0-9a-f]{8}`)

func nft(t *testing.T, ns netns.NS, args ...string) string {
	t.Helper()
	out, err := ns.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestApplyReadsNaturally(t *testing.T) {
	nstest.RequireCommands(t, "nft")
	tab, ns := newTable(t)
	rules := Rules{
		Tunnel: "wg-t-0",
		Maps:   []natpool.PrefixMap{mustMap(t, "10.0.0.0/16", "242.0.0.0/16"), mustMap(t, "10.96.0.0/20", "242.0.240.0/20")},
		Keep:   []netip.Addr{netip.MustParseAddr("242.0.0.1")},
	}
	if err := tab.Apply(rules); err != nil {
		t.Fatal(err)
	}
	got := digestRE.ReplaceAllString(nft(t, ns, "list", "table", "ip", "strait"), " #digest")
	want := `table ip strait {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname "wg-t-0" ip daddr 242.0.0.0/16 ip daddr != 242.0.0.1 dnat prefix to 10.0.0.0/16 comment "in: 242.0.0.0/16 to 10.0.0.0/16, not 242.0.0.1 #digest"
		iifname "wg-t-0" ip daddr 242.0.240.0/20 dnat prefix to 10.96.0.0/20 comment "in: 242.0.240.0/20 to 10.96.0.0/20 #digest"
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "wg-t-0" ip saddr 10.0.0.0/16 snat prefix to 242.0.0.0/16 comment "out: 10.0.0.0/16 as 242.0.0.0/16 #digest"
		oifname "wg-t-0" ip saddr 10.96.0.0/20 snat prefix to 242.0.240.0/20 comment "out: 10.96.0.0/20 as 242.0.240.0/20 #digest"
	}

	chain forward {
		type filter hook forward priority mangle; policy accept;
		oifname "wg-t-0" tcp flags syn / syn,rst tcp option maxseg size set rt mtu comment "clamp TCP MSS to the tunnel MTU #digest"
	}
}
`
	if got != want {
		t.Errorf("nft list table:\n%s\nwant:\n%s", got, want)
	}
	if ok, err := tab.InSync(rules); err != nil || !ok {
		t.Errorf("InSync right after Apply = %v, %v", ok, err)
	}
}

func TestInSyncSeesDriftAndApplyRepairs(t *testing.T) {
	nstest.RequireCommands(t, "nft")
	rules := Rules{Tunnel: "wg0", Maps: []natpool.PrefixMap{mustMap(t, "10.0.0.0/16", "242.0.0.0/16")}}
	drifts := []struct {
		name string
		nft  []string
	}{
		{"table flushed", []string{"flush", "table", "ip", "strait"}},
		{"table deleted", []string{"delete", "table", "ip", "strait"}},
		{"rule added", []string{"add", "rule", "ip", "strait", "prerouting", "ip", "daddr", "242.0.0.9", "dnat", "to", "10.9.9.9"}},
		{"chain deleted", []string{"delete", "chain", "ip", "strait", "forward"}},
		{"chain added", []string{"add", "chain", "ip", "strait", "extra"}},
		{"policy changed", []string{"add", "chain", "ip", "strait", "forward", "{ type filter hook forward priority mangle; policy drop; }"}},
	}
	for _, d := range drifts {
		t.Run(d.name, func(t *testing.T) {
			tab, ns := newTable(t)
			if err := tab.Apply(rules); err != nil {
				t.Fatal(err)
			}
			before := nft(t, ns, "list", "table", "ip", "strait")
			nft(t, ns, d.nft...)
			if ok, err := tab.InSync(rules); err != nil || ok {
				t.Fatalf("InSync after %q = %v, %v; want false", d.name, ok, err)
			}
			if err := tab.Apply(rules); err != nil {
				t.Fatal(err)
			}
			if ok, err := tab.InSync(rules); err != nil || !ok {
				t.Fatalf("InSync after repair = %v, %v", ok, err)
			}
			if after := nft(t, ns, "list", "table", "ip", "strait"); after != before {
				t.Errorf("repaired table differs:\n%s\nwas:\n%s", after, before)
			}
		})
	}
}

func TestInSyncSeesChangedRules(t *testing.T) {
	tab, _ := newTable(t)
	a := Rules{Tunnel: "wg0", Maps: []natpool.PrefixMap{mustMap(t, "10.0.0.0/16", "242.0.0.0/16")}}
	changes := map[string]Rules{
		"another block":   {Tunnel: "wg0", Maps: []natpool.PrefixMap{mustMap(t, "10.0.0.0/16", "242.5.0.0/16")}},
		"another tunnel":  {Tunnel: "strait0", Maps: a.Maps},
		"an address kept": {Tunnel: "wg0", Maps: a.Maps, Keep: []netip.Addr{netip.MustParseAddr("242.0.0.1")}},
	}
	if err := tab.Apply(a); err != nil {
		t.Fatal(err)
	}
	if ok, err := tab.InSync(a); !ok || err != nil {
		t.Fatalf("InSync(a) = %v, %v right after applying a", ok, err)
	}
	for name, b := range changes {
		if ok, _ := tab.InSync(b); ok {
			t.Errorf("%s: InSync true while the kernel holds the old rules", name)
		}
	}
}

func TestRemove(t *testing.T) {
	nstest.RequireCommands(t, "nft")
	tab, ns := newTable(t)
	if err := tab.Remove(); err != nil {
		t.Fatalf("Remove of a missing table: %v", err)
	}
	if err := tab.Apply(Rules{Tunnel: "wg0"}); err != nil {
		t.Fatal(err)
	}
	if err := tab.Remove(); err != nil {
		t.Fatal(err)
	}
	if out := nft(t, ns, "list", "tables"); strings.Contains(out, "strait") {
		t.Errorf("table left after Remove:\n%s", out)
	}
}
