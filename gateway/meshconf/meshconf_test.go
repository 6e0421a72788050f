package meshconf

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/straitnet/strait/gateway/internal/yamlpos"
	"github.com/straitnet/strait/natpool"
)

// Keys from `wg genkey | wg pubkey`.
const (
	keyA = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
	keyB = "TrMvSoP4jYQlY6RIzBgbssQqY3vxI2Pi+y71lOWWXX0="
	keyC = "gN65BkIKy1eCE9pP1wdc8ROUtkHLF2PfAqYdyYBz6EA="
)

const good = `
globalCIDR: 242.0.0.0/8
sites:
  - name: cloud-a
    publicKey: ` + keyA + `
    endpoint: 203.0.113.10:51820
    block: 242.0.0.0/16
    cidrs: [10.0.0.0/16]
    routable: true
  - name: cloud-b
    publicKey: ` + keyB + `
    endpoint: gw.cloud-b.example:51821
    cidrs: [10.0.0.0/16, 10.96.0.0/12]
    persistentKeepalive: 0s
  - name: branch
    publicKey: ` + keyC + `
    block: 242.3.0.0/16
    cidrs: [192.168.50.0/24]
    routable: true
    listenPort: 40000
`

func TestParseGood(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if got := m.GlobalCIDR.String(); got != "242.0.0.0/8" || m.BlockBits != 16 {
		t.Errorf("GlobalCIDR = %s, block bits %d", got, m.BlockBits)
	}
	if len(m.Sites) != 3 {
		t.Fatalf("%d sites, want 3", len(m.Sites))
	}
	a, ok := m.Site("cloud-a")
	if !ok {
		t.Fatal("cloud-a missing")
	}
	if a.ListenPort != 51820 || a.PersistentKeepalive != DefaultPersistentKeepalive || !a.Routable || a.BlockDerived {
		t.Errorf("cloud-a = %+v", a)
	}
	if got := a.TunnelAddr().String(); got != "242.0.0.1" {
		t.Errorf("TunnelAddr = %s, want 242.0.0.1", got)
	}
	b, _ := m.Site("cloud-b")
	if b.ListenPort != 51821 || b.PersistentKeepalive != 0 || b.Endpoint != "gw.cloud-b.example:51821" || b.Routable {
		t.Errorf("cloud-b = %+v", b)
	}
	derived, _ := natpool.DeriveBlock(m.GlobalCIDR, 16, "cloud-b")
	if !b.BlockDerived || b.Block != derived {
		t.Errorf("cloud-b's block %s (derived %v), want %s derived from its name", b.Block, b.BlockDerived, derived)
	}
	if fmt.Sprint(b.CIDRs) != "[10.0.0.0/16 10.96.0.0/12]" {
		t.Errorf("cloud-b CIDRs %v", b.CIDRs)
	}
	c, _ := m.Site("branch")
	if c.Endpoint != "" || c.ListenPort != 40000 || c.Line != 15 {
		t.Errorf("branch = %+v", c)
	}
	peers := m.Peers("cloud-b")
	if len(peers) != 2 || peers[0].Name != "cloud-a" || peers[1].Name != "branch" {
		t.Errorf("Peers(cloud-b) = %v", peers)
	}
}

func TestParseBlockSize(t *testing.T) {
	m, err := Parse("m", []byte("blockSize: /20\nsites:\n  - {name: a, publicKey: "+keyA+"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.BlockBits != 20 || m.Sites[0].Block.Bits() != 20 {
		t.Errorf("block bits %d, a's block %s", m.BlockBits, m.Sites[0].Block)
	}
}

func TestParseDefaultsGlobalCIDR(t *testing.T) {
	m, err := Parse("m", []byte("sites:\n  - {name: a, publicKey: "+keyA+", block: 242.9.0.0/16}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if m.GlobalCIDR.String() != "242.0.0.0/8" {
		t.Errorf("default GlobalCIDR = %s", m.GlobalCIDR)
	}
}

// site renders one site entry for the bad-input table.
func site(name, key, block string, extra ...string) string {
	s := "  - name: " + name + "\n    publicKey: " + key + "\n    block: " + block + "\n"
	for _, e := range extra {
		s += "    " + e + "\n"
	}
	return s
}

func TestParseRefuses(t *testing.T) {
	tests := []struct {
		name string
		in   string
		// want holds the "line:col: field: " of every expected error, in
		// order, and a fragment of its message after a '|'.
		want []string
	}{
		{"duplicate public key",
			"sites:\n" + site("a", keyA, "242.0.0.0/16") + site("b", keyA, "242.1.0.0/16"),
			[]string{"6:16: sites[1].publicKey|same public key as sites[0] (a, line 3)"}},
		{"two routable sites collide",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "cidrs: [10.0.0.0/16]", "routable: true") + site("b", keyB, "242.1.0.0/16", "cidrs: [10.0.128.0/17]", "routable: true"),
			[]string{"11:15: sites[1].routable|10.0.128.0/17 of b collides with 10.0.0.0/16 of a (sites[0], line 5), which is routable too"}},
		{"overlapping blocks",
			"sites:\n" + site("a", keyA, "242.0.0.0/15") + site("b", keyB, "242.1.0.0/16"),
			[]string{"7:12: sites[1].block|242.1.0.0/16 overlaps block of a (sites[0], line 4) 242.0.0.0/15: assign one of them a block explicitly"}},
		{"derived block collides with an assigned one",
			"sites:\n" + site("a", keyA, "242.56.0.0/16") + "  - name: cloud-a\n    publicKey: " + keyB + "\n",
			[]string{"5:11: sites[1].block|242.56.0.0/16 (derived from the name) overlaps block of a (sites[0], line 4) 242.56.0.0/16"}},
		{"endpoint does not parse",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "endpoint: 203.0.113.7"),
			[]string{"5:15: sites[0].endpoint|want host:port"}},
		{"endpoint port out of range",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "endpoint: 203.0.113.7:70000"),
			[]string{"5:15: sites[0].endpoint|not a UDP port"}},
		{"endpoint bad host",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "endpoint: 'bad_host!:51820'"),
			[]string{"5:15: sites[0].endpoint|neither an IP address nor a DNS name"}},
		{"block outside the global CIDR",
			"globalCIDR: 242.0.0.0/8\nsites:\n" + site("a", keyA, "243.0.0.0/16"),
			[]string{"5:12: sites[0].block|243.0.0.0/16 is outside the global CIDR 242.0.0.0/8"}},
		{"block with host bits",
			"sites:\n" + site("a", keyA, "242.0.0.1/16"),
			[]string{"4:12: sites[0].block|has host bits set; the prefix is 242.0.0.0/16"}},
		{"real CIDR inside the global CIDR",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "cidrs: [242.9.0.0/16]"),
			[]string{"5:13: sites[0].cidrs[0]|overlaps the global CIDR"}},
		{"real CIDRs overlap each other",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "cidrs: [10.0.0.0/8, 10.1.0.0/16]"),
			[]string{"5:25: sites[0].cidrs[1]|10.1.0.0/16 overlaps 10.0.0.0/8 of the same site"}},
		{"bad entry before a colliding one",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "cidrs: [bogus, 10.0.0.0/16, 242.5.0.0/16]"),
			[]string{"5:13: sites[0].cidrs[0]|not a CIDR prefix", "5:33: sites[0].cidrs[2]|242.5.0.0/16 overlaps the global CIDR"}},
		{"block too small",
			"sites:\n" + site("a", keyA, "242.0.0.0/29"),
			[]string{"4:12: sites[0].block|too small"}},
		{"bad block size",
			"blockSize: 16\nsites:\n" + site("a", keyA, "242.0.0.0/16"),
			[]string{"1:12: blockSize|not a prefix length such as /16"}},
		{"routable not a boolean",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "routable: sure"),
			[]string{"5:15: sites[0].routable|neither true nor false"}},
		{"bad key",
			"sites:\n" + site("a", "notakey", "242.0.0.0/16"),
			[]string{"3:16: sites[0].publicKey|not a WireGuard key"}},
		{"duplicate names",
			"sites:\n" + site("a", keyA, "242.0.0.0/16") + site("a", keyB, "242.1.0.0/16"),
			[]string{"5:11: sites[1].name|site \"a\" is defined twice"}},
		{"unknown field",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "blokc: 242.0.0.0/16"),
			[]string{"5:5: sites[0].blokc|unknown field"}},
		{"field set twice",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "block: 242.1.0.0/16"),
			[]string{"5:5: sites[0].block|set twice (first on line 4)"}},
		{"missing fields",
			"sites:\n  - block: 242.0.0.0/16\n",
			[]string{"2:5: sites[0].name|missing", "2:5: sites[0].publicKey|missing"}},
		{"no sites",
			"globalCIDR: 242.0.0.0/8\n",
			[]string{"1:1: sites|missing"}},
		{"IPv6 global CIDR",
			"globalCIDR: fd00::/8\nsites:\n" + site("a", keyA, "242.0.0.0/16"),
			[]string{"1:13: globalCIDR|only IPv4"}},
		{"bad keepalive",
			"sites:\n" + site("a", keyA, "242.0.0.0/16", "persistentKeepalive: 1.5s"),
			[]string{"5:26: sites[0].persistentKeepalive|whole seconds"}},
		{"bad name",
			"sites:\n" + site("Cloud_A", keyA, "242.0.0.0/16"),
			[]string{"2:11: sites[0].name|not a valid site name"}},
		{"sites not a list",
			"sites: cloud-a\n",
			[]string{"1:8: sites|want a list of sites"}},
		{"YAML syntax",
			"sites:\n  - name: [a\n",
			[]string{"1:1: |not valid YAML"}},
		{"empty file",
			"",
			[]string{"|empty file"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("mesh.yaml", []byte(tt.in))
			var list yamlpos.ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("Parse accepted it or returned %T %v; want an ErrorList", err, err)
			}
			if len(list) != len(tt.want) {
				t.Fatalf("got %d errors, want %d:\n%v", len(list), len(tt.want), err)
			}
			for i, w := range tt.want {
				where, frag, _ := strings.Cut(w, "|")
				line, field, _ := strings.Cut(where, ": ")
				e := list[i]
				if field == "" && !strings.Contains(where, ":") {
					field, line = line, ""
				}
				if line != "" {
					if got := e.Error(); !strings.HasPrefix(got, "mesh.yaml:"+line+": "+field) {
						t.Errorf("error %d = %q, want it at mesh.yaml:%s naming %q", i, got, line, field)
					}
				}
				if e.Field != field {
					t.Errorf("error %d field = %q, want %q", i, e.Field, field)
				}
				if !strings.Contains(e.Msg, frag) {
					t.Errorf("error %d = %q, want it to say %q", i, e.Msg, frag)
				}
			}
		})
	}
}

func TestErrorListReportsEverything(t *testing.T) {
	in := "sites:\n" + site("a", keyA, "243.0.0.0/16", "endpoint: x") + site("b", keyA, "242.1.0.0/16")
	_, err := Parse("mesh.yaml", []byte(in))
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{"sites[0].block", "sites[0].endpoint", "sites[1].publicKey"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error does not mention %s:\n%s", want, msg)
		}
	}
	if lines := strings.Count(msg, "\n") + 1; lines != 3 {
		t.Errorf("%d lines of errors, want 3:\n%s", lines, msg)
	}
}

func TestKeepaliveDefault(t *testing.T) {
	m, err := Parse("m", []byte("sites:\n"+site("a", keyA, "242.0.0.0/16")))
	if err != nil {
		t.Fatal(err)
	}
	if m.Sites[0].PersistentKeepalive != 25*time.Second {
		t.Errorf("keepalive = %s", m.Sites[0].PersistentKeepalive)
	}
}

// FuzzParse checks that no input panics the parser and that whatever it
// accepts satisfies the invariants the gateway relies on.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("sites:\n" + site("a", keyA, "242.0.0.0/16", "cidrs: [192.168.0.0/16]", "routable: true")))
	f.Add([]byte("sites: [{name: a, block: 242.0.0.0/16, publicKey: " + keyB + "}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse("fuzz.yaml", data)
		if err != nil {
			if m != nil {
				t.Fatal("returned a mesh with an error")
			}
			return
		}
		seen := map[string]bool{}
		for _, s := range m.Sites {
			if seen[s.Name] {
				t.Fatalf("duplicate site %q accepted", s.Name)
			}
			seen[s.Name] = true
			if !m.GlobalCIDR.Contains(s.Block.Addr()) || s.Block.Bits() < m.GlobalCIDR.Bits() {
				t.Fatalf("block %s outside %s accepted", s.Block, m.GlobalCIDR)
			}
		}
		// At every gateway, the AllowedIPs of its peers must not overlap:
		// WireGuard's cryptokey routing needs them apart.
		for _, v := range m.Sites {
			var routed []netip.Prefix
			for _, p := range m.Peers(v.Name) {
				for _, x := range natpool.RoutedTo(v.Plan(), p.Plan()) {
					for _, y := range routed {
						if x.Overlaps(y) {
							t.Fatalf("at %s, AllowedIPs %s and %s overlap", v.Name, x, y)
						}
					}
					routed = append(routed, x)
				}
			}
		}
	})
}
