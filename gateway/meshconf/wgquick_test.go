package meshconf

import (
	"strings"
	"testing"
)

func TestWGQuick(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	got, err := WGQuick(m, "branch", "/etc/wireguard/branch.key")
	b, _ := m.Site("cloud-b")
	derivedB := b.Block.String()
	if err != nil {
		t.Fatal(err)
	}
	want := `# wg-quick configuration for site "branch" of the strait mesh (strait config wg-quick branch).
# The private key stays on this host in /etc/wireguard/branch.key; its public key must be
# the site's publicKey, ` + keyC + ` (wg pubkey < /etc/wireguard/branch.key).
# This host routes 192.168.50.0/24 for the mesh: enable forwarding (sysctl net.ipv4.ip_forward=1).
[Interface]
Address = 242.3.0.1/32
ListenPort = 40000
# Loads the private key, then turns on keepalives where peers want them.
PostUp = wg set %i private-key /etc/wireguard/branch.key peer ` + keyA + ` persistent-keepalive 25

[Peer]
# cloud-a
PublicKey = ` + keyA + `
Endpoint = 203.0.113.10:51820
AllowedIPs = 242.0.0.0/16, 10.0.0.0/16

[Peer]
# cloud-b
PublicKey = ` + keyB + `
Endpoint = gw.cloud-b.example:51821
AllowedIPs = ` + derivedB + `
`
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
	// cloud-b turned keepalives off (persistentKeepalive: 0s): the branch
	// sends it none, while cloud-a, at the default, gets them.
}

func TestWGQuickRefuses(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WGQuick(m, "nowhere", ""); err == nil || !strings.Contains(err.Error(), "cloud-a, cloud-b, branch") {
		t.Errorf("unknown site: %v", err)
	}
	if _, err := WGQuick(m, "cloud-b", ""); err == nil || !strings.Contains(err.Error(), "not routable") {
		t.Errorf("a site with real CIDRs that are not routable: %v", err)
	}
}
