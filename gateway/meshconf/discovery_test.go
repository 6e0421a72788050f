package meshconf

import (
	"net/netip"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

const (
	caKey     = "QMZE0VHjcJFwXtzIa3kcXq3z0w8vXB6AxOvG7gR/ZBo="
	gossipKey = "b+nHGQxVMCcWLjXDU9eKw85bS9CoPWET37dEuGBxSt0="
)

func withDiscovery(section string) string {
	return "globalCIDR: 242.0.0.0/8\ndiscovery:\n" + section + `
sites:
  - name: cloud-a
    publicKey: ` + keyA + `
    endpoint: 203.0.113.10:51820
    block: 242.0.0.0/16
    cidrs: [10.0.0.0/16]
`
}

func TestParseDiscovery(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(withDiscovery(`  ca: `+caKey+`
  gossipKeys: [`+gossipKey+`, AAECAwQFBgcICQoLDA0ODw==]
  seeds: [198.18.1.2:7946, gw.example:7946]
  dns: ":53"
  region: eu-west`)))
	if err != nil {
		t.Fatal(err)
	}
	d := m.Discovery
	if d == nil || len(d.CA) != 32 || len(d.GossipKeys) != 2 || len(d.GossipKeys[1]) != 16 || len(d.Seeds) != 2 || d.DNS != "0.0.0.0:53" || d.Region != "eu-west" {
		t.Fatalf("discovery = %+v", d)
	}
	if d.Bind != "0.0.0.0:7946" {
		t.Errorf("default bind %q", d.Bind)
	}
	me, _ := m.Site("cloud-a")
	if got := d.AdvertiseAddr(me); got != "203.0.113.10:7946" {
		t.Errorf("advertise defaults to %q, want the endpoint's host with the gossip port", got)
	}
	d.Advertise = "198.51.100.1:8000"
	if got := d.AdvertiseAddr(me); got != "198.51.100.1:8000" {
		t.Errorf("explicit advertise: %q", got)
	}
}

func TestParseDiscoveryRefuses(t *testing.T) {
	for _, tt := range []struct{ name, section, want string }{
		{"no CA", "  gossipKeys: [" + gossipKey + "]", "discovery.ca: missing"},
		{"no keys", "  ca: " + caKey, "discovery.gossipKeys: missing"},
		{"empty keys", "  ca: " + caKey + "\n  gossipKeys: []", "gossip is always encrypted"},
		{"short key", "  ca: " + caKey + "\n  gossipKeys: [AAEC]", "discovery.gossipKeys[0]: 3 bytes"},
		{"key twice", "  ca: " + caKey + "\n  gossipKeys: [" + gossipKey + ", " + gossipKey + "]", "discovery.gossipKeys[1]: listed twice"},
		{"bad CA", "  ca: bm9wZQ==\n  gossipKeys: [" + gossipKey + "]", "discovery.ca: not the CA's public key"},
		{"bad seed", "  ca: " + caKey + "\n  gossipKeys: [" + gossipKey + "]\n  seeds: [198.18.1.2]", "discovery.seeds[0]"},
		{"seed without host", "  ca: " + caKey + "\n  gossipKeys: [" + gossipKey + "]\n  seeds: [':7946']", "host is empty"},
		{"bad port", "  ca: " + caKey + "\n  gossipKeys: [" + gossipKey + "]\n  dns: ':99999'", "discovery.dns"},
		{"bind by name", "  ca: " + caKey + "\n  gossipKeys: [" + gossipKey + "]\n  bind: localhost:7946", "want an IP address"},
		{"unknown field", "  ca: " + caKey + "\n  gossipKeys: [" + gossipKey + "]\n  sedes: []", "discovery.sedes: unknown field"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("mesh.yaml", []byte(withDiscovery(tt.section)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "mesh.yaml:") {
				t.Errorf("error does not name the file and line: %v", err)
			}
		})
	}
}

func learnedSite(name, key, block string, routable bool, cidrs ...string) Site {
	s := Site{Name: name, PublicKey: wgtypes.Key(mustKey(key)), Block: netip.MustParsePrefix(block), Routable: routable}
	for _, c := range cidrs {
		s.CIDRs = append(s.CIDRs, netip.MustParsePrefix(c))
	}
	return s
}

func mustKey(s string) wgtypes.Key {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		panic(err)
	}
	return k
}

func TestWithLearned(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	keyD := "YGxSQ4ew38yUMUxuUOAPIfR5HKt4pZ6ZDbJIbmCCOkE="
	keyE := "mL6/N9sTFcBRQWGN+YbIVGSnwSIM7yBqUpyUeMvd+n4="
	for _, tt := range []struct {
		name    string
		learned []Site
		sites   int
		problem string
	}{
		{"new cluster joins", []Site{learnedSite("cloud-d", keyD, "242.9.0.0/16", false, "10.0.0.0/16")}, 4, ""},
		{"the file's own entry, same key", []Site{learnedSite("cloud-a", keyA, "242.0.0.0/16", true, "10.0.0.0/16")}, 3, ""},
		{"the file's entry, another key", []Site{learnedSite("cloud-a", keyD, "242.0.0.0/16", true)}, 3, "but cloud-a (mesh file, line"},
		{"the file's entry, another block", []Site{learnedSite("cloud-a", keyA, "242.7.0.0/16", true)}, 3, "certified block is 242.7.0.0/16"},
		{"key of another site", []Site{learnedSite("cloud-d", keyB, "242.9.0.0/16", false)}, 3, "is cloud-b (mesh file"},
		{"overlapping block", []Site{learnedSite("cloud-d", keyD, "242.0.128.0/17", false)}, 3, "overlaps 242.0.0.0/16 of cloud-a"},
		{"outside the global CIDR", []Site{learnedSite("cloud-d", keyD, "10.9.0.0/16", false)}, 3, "outside the global CIDR"},
		{"CIDR inside the global CIDR", []Site{learnedSite("cloud-d", keyD, "242.9.0.0/16", false, "242.10.0.0/16")}, 3, "overlaps the global CIDR"},
		{"routable collision", []Site{learnedSite("cloud-d", keyD, "242.9.0.0/16", true, "10.0.5.0/24")}, 3, "routable too"},
		{"two learned, first by name wins", []Site{
			learnedSite("cloud-f", keyE, "242.9.0.0/16", false),
			learnedSite("cloud-e", keyD, "242.9.0.0/17", false),
		}, 4, "cluster cloud-f, learned through gossip, is left out: its block 242.9.0.0/16 overlaps 242.9.0.0/17 of cloud-e (learned)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, problems := m.WithLearned(tt.learned)
			if len(out.Sites) != tt.sites {
				t.Errorf("%d sites, want %d", len(out.Sites), tt.sites)
			}
			if len(m.Sites) != 3 {
				t.Fatal("WithLearned changed the file's mesh")
			}
			switch {
			case tt.problem == "" && len(problems) > 0:
				t.Errorf("problems %v", problems)
			case tt.problem != "" && (len(problems) != 1 || !strings.Contains(problems[0], tt.problem)):
				t.Errorf("problems %v, want one containing %q", problems, tt.problem)
			}
		})
	}
}
