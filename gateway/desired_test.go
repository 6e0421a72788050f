package gateway

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/gateway/meshconf"
)

func keys(t *testing.T, n int) []wgtypes.Key {
	t.Helper()
	var out []wgtypes.Key
	for range n {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

func mesh(t *testing.T, k []wgtypes.Key) *meshconf.Mesh {
	t.Helper()
	src := fmt.Sprintf(`
sites:
  - {name: cloud-a, publicKey: %s, endpoint: "203.0.113.10:51820", block: 242.0.0.0/16, podCIDR: 10.0.0.0/16}
  - {name: cloud-b, publicKey: %s, endpoint: "203.0.113.11:51821", block: 242.1.0.0/16, podCIDR: 10.0.0.0/16}
  - {name: branch, publicKey: %s, block: 242.3.0.0/16, prefixes: [192.168.50.0/24], persistentKeepalive: 0s}
`, k[0].PublicKey(), k[1].PublicKey(), k[2].PublicKey())
	m, err := meshconf.Parse("mesh.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestDeriveTranslatedSite(t *testing.T) {
	k := keys(t, 3)
	d, err := derive(mesh(t, k), "cloud-b", k[1], "wg-x-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	tc := d.tunnel
	if tc.PrivateKey != k[1] || tc.ListenPort != 51821 || tc.Address.String() != "242.1.0.1" || tc.Mesh.String() != "242.0.0.0/8" {
		t.Errorf("tunnel = key ok %v, port %d, address %s, mesh %s", tc.PrivateKey == k[1], tc.ListenPort, tc.Address, tc.Mesh)
	}
	var peers []string
	for _, p := range tc.Peers {
		peers = append(peers, fmt.Sprintf("%s %s %v %s", p.Name, p.Endpoint, p.AllowedIPs, p.PersistentKeepalive))
	}
	want := []string{
		"cloud-a 203.0.113.10:51820 [242.0.0.0/16] 25s",
		"branch  [242.3.0.0/16 192.168.50.0/24] 0s",
	}
	if strings.Join(peers, "\n") != strings.Join(want, "\n") {
		t.Errorf("peers:\n%s\nwant:\n%s", strings.Join(peers, "\n"), strings.Join(want, "\n"))
	}
	if d.nat.Tunnel != "wg-x-1" || len(d.nat.Maps) != 1 || d.nat.Maps[0].Real.String() != "10.0.0.0/16" ||
		d.nat.Maps[0].Global.String() != "242.1.0.0/16" || len(d.nat.Keep) != 1 || d.nat.Keep[0].String() != "242.1.0.1" {
		t.Errorf("nat = %+v", d.nat)
	}
}

func TestDeriveUntranslatedSite(t *testing.T) {
	k := keys(t, 3)
	d, err := derive(mesh(t, k), "branch", k[2], "wg0", 1380)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.nat.Maps) != 0 {
		t.Errorf("branch translates: %+v", d.nat.Maps)
	}
	if d.tunnel.MTU != 1380 || len(d.tunnel.Peers) != 2 || d.tunnel.Peers[0].PersistentKeepalive != 25*time.Second {
		t.Errorf("tunnel = %+v", d.tunnel)
	}
}

func TestDeriveRefuses(t *testing.T) {
	k := keys(t, 4)
	m := mesh(t, k)
	if _, err := derive(m, "cloud-c", k[0], "wg0", 0); err == nil || !strings.Contains(err.Error(), `"cloud-c" is not in the mesh`) {
		t.Errorf("unknown site: %v", err)
	}
	_, err := derive(m, "cloud-a", k[3], "wg0", 0)
	if err == nil || !strings.Contains(err.Error(), k[3].PublicKey().String()) || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("wrong key: %v; want an error naming this gateway's key and the site's line", err)
	}
}
