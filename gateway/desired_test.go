package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/siteconf"
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

func meshText(k []wgtypes.Key, branchKeepalive string) string {
	return fmt.Sprintf(`
sites:
  - {name: cloud-a, publicKey: %s, endpoint: "203.0.113.10:51820", block: 242.0.0.0/16, cidrs: [10.0.0.0/16], routable: true}
  - {name: cloud-b, publicKey: %s, endpoint: "203.0.113.11:51821", block: 242.1.0.0/16, cidrs: [10.0.0.0/16, 10.96.0.0/12]}
  - {name: branch, publicKey: %s, block: 242.3.0.0/16, cidrs: [192.168.50.0/24], routable: true, persistentKeepalive: %s}
`, k[0].PublicKey(), k[1].PublicKey(), k[2].PublicKey(), branchKeepalive)
}

const siteText = `
services:
  - {namespace: default, name: web, backend: 10.0.1.10, ports: [{port: 80, targetPort: 7777}, {port: 53, protocol: UDP}]}
egress:
  rules:
    - {name: payments, namespace: payments}
pods:
  - {namespace: payments, name: api, ip: 10.0.2.10}
  - {namespace: default, name: web, ip: 10.0.1.10}
`

func mustMesh(t *testing.T, k []wgtypes.Key) *meshconf.Mesh {
	t.Helper()
	m, err := meshconf.Parse("mesh.yaml", []byte(meshText(k, "0s")))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustSite(t *testing.T, text string) *siteconf.Config {
	t.Helper()
	sc, err := siteconf.Parse("site.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func TestDeriveTranslatedSite(t *testing.T) {
	k := keys(t, 3)
	d, err := derive(mustMesh(t, k), mustSite(t, siteText), "cloud-b", k[1], "wg-x-1", 0)
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
	// cloud-a's 10.0.0.0/16 is cloud-b's own: only its block is routed;
	// branch's real CIDR does not collide: routed as it is.
	want := []string{
		"cloud-a 203.0.113.10:51820 [242.0.0.0/16] 25s",
		"branch  [242.3.0.0/16 192.168.50.0/24] 0s",
	}
	if strings.Join(peers, "\n") != strings.Join(want, "\n") {
		t.Errorf("peers:\n%s\nwant:\n%s", strings.Join(peers, "\n"), strings.Join(want, "\n"))
	}
	// cloud-b is not routable: everything toward the mesh is translated.
	if got := fmt.Sprint(d.translated); got != "[192.168.50.0/24 242.0.0.0/16 242.3.0.0/16]" {
		t.Errorf("translated toward %s", got)
	}
	var reqs []string
	for _, r := range d.requests {
		reqs = append(reqs, fmt.Sprintf("%s@%s", r.Key, r.Pool))
	}
	if got := strings.Join(reqs, " "); got != "ingress/default/web@ingress egress/default@egress egress/rule/payments@egress" {
		t.Errorf("requests %s", got)
	}
	if fmt.Sprint(d.egressPods) != "map[10.0.2.10:payments]" {
		t.Errorf("egress pods %v", d.egressPods)
	}
	if len(d.pairs) != 3 || d.pairs[2].A != "cloud-b" || d.pairs[2].AB != "translated" || d.pairs[2].BA != "real" {
		t.Errorf("matrix %+v", d.pairs)
	}
}

func TestProgram(t *testing.T) {
	k := keys(t, 3)
	d, err := derive(mustMesh(t, k), mustSite(t, siteText), "cloud-b", k[1], "wg-x-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	ips := map[string]netip.Addr{
		"ingress/default/web":  netip.MustParseAddr("242.1.128.1"),
		"egress/default":       netip.MustParseAddr("242.1.1.1"),
		"egress/rule/payments": netip.MustParseAddr("242.1.1.2"),
	}
	p := program(d, func(k string) (netip.Addr, bool) { ip, ok := ips[k]; return ip, ok })
	var svcs []string
	for _, s := range p.Services {
		svcs = append(svcs, fmt.Sprintf("%s/%d:%d->%s:%d", s.Addr, s.Proto, s.Port, s.Backend, s.BackendPort))
	}
	if got := strings.Join(svcs, " "); got != "242.1.128.1/6:80->10.0.1.10:7777 242.1.128.1/17:53->10.0.1.10:53" {
		t.Errorf("services %s", got)
	}
	if fmt.Sprint(p.EgressPods) != "map[10.0.2.10:242.1.1.2]" || len(p.EgressNets) != 2 || p.EgressNets[1].As.String() != "242.1.1.1" {
		t.Errorf("egress %v %v", p.EgressPods, p.EgressNets)
	}
	// Nothing allocated: nothing exported, no SNAT (and so, nothing leaks
	// under a wrong address: peers drop sources outside AllowedIPs).
	p = program(d, func(string) (netip.Addr, bool) { return netip.Addr{}, false })
	if len(p.Services)+len(p.EgressPods)+len(p.EgressNets) != 0 {
		t.Errorf("program without allocations: %+v", p)
	}
}

func TestDeriveRefuses(t *testing.T) {
	k := keys(t, 4)
	m := mustMesh(t, k)
	sc := siteconf.Empty()
	if _, err := derive(m, sc, "cloud-c", k[0], "wg0", 0); err == nil || !strings.Contains(err.Error(), `"cloud-c" is not in the mesh`) {
		t.Errorf("unknown site: %v", err)
	}
	_, err := derive(m, sc, "cloud-a", k[3], "wg0", 0)
	if err == nil || !strings.Contains(err.Error(), k[3].PublicKey().String()) || !strings.Contains(err.Error(), "line 3") {
		t.Errorf("wrong key: %v; want an error naming this gateway's key and the site's line", err)
	}
	bad := mustSite(t, "pools: [{name: ingress, kind: ingress, cidr: 242.9.0.0/24}]")
	if _, err := derive(m, bad, "cloud-b", k[1], "wg0", 0); err == nil || !strings.Contains(err.Error(), "outside the site's block 242.1.0.0/16") {
		t.Errorf("pool outside the block: %v", err)
	}
}

// TestDeriveLoadBalancer: a balancing gateway routes the VIP range into
// its tunnel (to refuse what it does not balance); with a hub, the others
// reach the VIPs through the hub's peer, translated where the path to the
// hub is.
func TestDeriveLoadBalancer(t *testing.T) {
	k := keys(t, 3)
	sc := mustSite(t, siteText)
	parse := func(section string) *meshconf.Mesh {
		m, err := meshconf.Parse("mesh.yaml", []byte(section+meshText(k, "0s")))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	vips := netip.MustParsePrefix("242.255.0.0/24")
	allowed := func(d desired, peer string) []netip.Prefix {
		for _, p := range d.tunnel.Peers {
			if p.Name == peer {
				return p.AllowedIPs
			}
		}
		return nil
	}
	has := func(ps []netip.Prefix) bool { return slices.Contains(ps, vips) }

	d, err := derive(parse("loadBalancer: {vipRange: 242.255.0.0/24}\n"), sc, "cloud-b", k[1], "wg0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !has(d.tunnel.Routes) || has(allowed(d, "branch")) || has(d.translated) {
		t.Errorf("every gateway balancing: routes %v, branch allowed %v, translated %v", d.tunnel.Routes, allowed(d, "branch"), d.translated)
	}
	hub := parse("loadBalancer: {vipRange: 242.255.0.0/24, hub: branch}\n")
	d, err = derive(hub, sc, "cloud-b", k[1], "wg0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if has(d.tunnel.Routes) || !has(allowed(d, "branch")) || has(allowed(d, "cloud-a")) || !has(d.translated) {
		t.Errorf("cloud-b with hub branch: routes %v, branch allowed %v, translated %v", d.tunnel.Routes, allowed(d, "branch"), d.translated)
	}
	// cloud-a reaches branch on a real path: no translation to the hub.
	d, err = derive(hub, sc, "cloud-a", k[0], "wg0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !has(allowed(d, "branch")) || has(d.translated) {
		t.Errorf("cloud-a with hub branch: branch allowed %v, translated %v", allowed(d, "branch"), d.translated)
	}
	d, err = derive(hub, siteconf.Empty(), "branch", k[2], "wg0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !has(d.tunnel.Routes) {
		t.Errorf("the hub does not route the VIP range: %v", d.tunnel.Routes)
	}
	d, err = derive(parse("loadBalancer: {vipRange: 242.255.0.0/24, hub: nowhere}\n"), sc, "cloud-b", k[1], "wg0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(d.problems, "\n"), `loadBalancer.hub "nowhere" is not a site`) {
		t.Errorf("unknown hub: problems %v", d.problems)
	}
}
