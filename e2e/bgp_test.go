package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway"
)

// bgpOf returns a site's BGP status, or an error while there is none.
func bgpOf(l *lab.Lab, site string) (*gateway.BGPStatus, error) {
	st, err := gateway.FetchStatus(context.Background(), l.SocketOf(site))
	if err != nil {
		return nil, err
	}
	if st.BGP == nil {
		return nil, fmt.Errorf("%s reports no BGP", site)
	}
	return st.BGP, nil
}

// established waits for onprem's session with its router and the routes
// it learns: the data center's LAN, and nothing the filters keep out.
func established(t *testing.T, l *lab.Lab) *gateway.BGPStatus {
	t.Helper()
	var bs *gateway.BGPStatus
	nstest.Eventually(t, 30*time.Second, "onprem's BGP session with its router, and the data center's LAN learned", func() (err error) {
		if bs, err = bgpOf(l, "onprem"); err != nil {
			return err
		}
		if len(bs.Peers) != 1 || bs.Peers[0].State != "established" || !bs.Converged {
			return fmt.Errorf("peers %+v, converged %v", bs.Peers, bs.Converged)
		}
		if len(bs.Learned) != 1 || bs.Learned[0].Prefix != netip.MustParsePrefix("172.16.10.0/24") ||
			bs.Learned[0].NextHop != netip.MustParseAddr("172.31.0.254") {
			return fmt.Errorf("learned %+v", bs.Learned)
		}
		return nil
	})
	return bs
}

// routerRoutes waits until the router's kernel has exactly want from the
// gateway (proto bird, via the gateway's LAN address).
func routerRoutes(t *testing.T, l *lab.Lab, want []netip.Prefix, what string) {
	t.Helper()
	gw := netip.MustParseAddr("172.31.0.1")
	nstest.Eventually(t, 30*time.Second, what, func() error {
		got, err := l.RouterRoutes("onprem")
		if err != nil {
			return err
		}
		for _, p := range want {
			if got[p] != gw {
				return fmt.Errorf("router routes %v: no %s via %s", got, p, gw)
			}
		}
		if len(got) != len(want) {
			return fmt.Errorf("router routes %v, want %v", got, want)
		}
		return nil
	})
}

func gatewayRoute(l *lab.Lab) (string, error) {
	out, err := l.MustHost("onprem-gw").Namespace().Command("ip", "-4", "route", "show", "proto", "242").Output()
	return strings.TrimSpace(string(out)), err
}

// The merger's onprem site has a BIRD router with the data center's LAN
// behind it. The gateway peers with it over BGP: it learns the LAN (and
// refuses the rest by its import filter and its own screening), installs
// it, adds it to the site's CIDRs so that the clouds route it, and
// announces the mesh's addresses through its export filter. The data
// center's host and the clouds' pods reach each other both ways. The
// filters change at run time; a planned stop withdraws at once; a killed
// gateway restarts gracefully, the router forwarding on its routes
// meanwhile and the gateway keeping the route it installed.
func TestOnpremBGP(t *testing.T) {
	t.Parallel()
	nstest.RequireCommands(t, "bird", "birdc")
	l := newLabWith(t, lab.Merger(), lab.Options{Discovery: true, VIPRange: netip.MustParsePrefix("242.255.0.0/24")})
	ctx := context.Background()
	bs := established(t, l)
	p := bs.Peers[0]
	// dc0's and eth0's networks, and three bogus prefixes; the import
	// filter lets in the two networks, and the gateway refuses its own LAN.
	if p.Received != 5 || p.Accepted != 2 || !p.GracefulRestart || !p.EndOfRIB {
		t.Errorf("session %+v: want 5 received, 2 accepted, graceful restart and End-of-RIB", p)
	}
	if len(bs.Refused) != 1 || bs.Refused[0].Prefix != netip.MustParsePrefix("172.31.0.0/24") {
		t.Errorf("refused %+v, want the gateway's own LAN", bs.Refused)
	}
	if r, err := gatewayRoute(l); err != nil || r != "172.16.10.0/24 via 172.31.0.254 dev lan0" {
		t.Errorf("onprem's gateway installed %q (%v)", r, err)
	}

	// The router gets the mesh's blocks, the VIP and cloud-a's routable
	// CIDR: what the export filter lets out.
	var vip netip.Addr
	nstest.Eventually(t, 30*time.Second, "the VIP of default/web at onprem", func() error {
		s, ok := lbService(status(t, l, "onprem"), "default/web")
		if !ok || !s.VIP.IsValid() {
			return fmt.Errorf("no VIP yet")
		}
		vip = s.VIP
		return nil
	})
	mesh := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("242.0.0.0/16"), netip.MustParsePrefix("242.1.0.0/16"),
		netip.MustParsePrefix("242.2.0.0/16"), netip.PrefixFrom(vip, 32),
	}
	routerRoutes(t, l, mesh, "the router's routes from the gateway")

	// The clouds route the learned LAN to onprem.
	nstest.Eventually(t, 30*time.Second, "172.16.10.0/24 in cloud-a's and cloud-b's allowed IPs for onprem", func() error {
		for _, site := range []string{"cloud-a", "cloud-b"} {
			if pr := peer(t, status(t, l, site), "onprem"); !slices.Contains(pr.AllowedIPs, "172.16.10.0/24") {
				return fmt.Errorf("%s: onprem's allowed IPs %v", site, pr.AllowedIPs)
			}
		}
		return nil
	})

	dc, a, b := l.MustHost("onprem-dc1"), l.MustHost("cloud-a-pod1"), l.MustHost("cloud-b-pod1")
	ask := func(from lab.Host, to netip.Addr) (lab.Reply, error) {
		return lab.Request(ctx, from, netip.AddrPortFrom(to, lab.ServePort), "tcp", 2*time.Second)
	}
	checks := []struct {
		from     lab.Host
		to       netip.Addr
		name     string
		seenFrom netip.Addr
	}{
		{dc, a.Addr, a.Name, dc.Addr},   // cloud-a's real address: routable both ways
		{dc, b.Global, b.Name, dc.Addr}, // cloud-b's service, through its ingress address
		{a, dc.Addr, dc.Name, a.Addr},   // the data center's host, as it is
		{b, dc.Addr, dc.Name, b.Egress}, // cloud-b leaves translated
		{dc, vip, "", dc.Addr},          // the VIP, balanced by onprem's gateway
	}
	for _, c := range checks {
		var r lab.Reply
		nstest.Eventually(t, 20*time.Second, fmt.Sprintf("%s reaches %s", c.from.Name, c.to), func() (err error) {
			r, err = ask(c.from, c.to)
			return err
		})
		if (c.name != "" && r.Name != c.name) || r.Peer.Addr() != c.seenFrom {
			t.Errorf("%s to %s: answered by %s seeing %s, want %s seeing %s", c.from.Name, c.to, r.Name, r.Peer.Addr(), c.name, c.seenFrom)
		}
	}

	// The export filter at run time: without 10/8, the router loses
	// cloud-a's CIDR; with it back, it has it again.
	var export []lab.PrefixRuleDoc
	if err := l.EditSiteFile("onprem", func(d *lab.SiteDoc) {
		export = d.BGP.Export
		d.BGP.Export = []lab.PrefixRuleDoc{{Prefix: "242.0.0.0/8", MaxLength: 32}}
	}); err != nil {
		t.Fatal(err)
	}
	routerRoutes(t, l, mesh[1:], "the router without cloud-a's CIDR (export filter narrowed)")
	if err := l.EditSiteFile("onprem", func(d *lab.SiteDoc) { d.BGP.Export = export }); err != nil {
		t.Fatal(err)
	}
	routerRoutes(t, l, mesh, "the router with cloud-a's CIDR again")

	// A planned stop (SIGTERM) withdraws at once.
	if err := l.StopGateway("onprem"); err != nil {
		t.Fatal(err)
	}
	routerRoutes(t, l, nil, "the router without routes from the stopped gateway")
	if err := l.StartGateway("onprem"); err != nil {
		t.Fatal(err)
	}
	if bs := established(t, l); bs.Restarting {
		t.Error("a gateway started after a clean stop says it restarts gracefully")
	}
	routerRoutes(t, l, mesh, "the router's routes from the started gateway")

	// A crash: the router keeps forwarding on the routes it had (graceful
	// restart), and the gateway keeps the route it installed, from the
	// kill until the routes are complete again.
	var mu sync.Mutex
	var gaps []string
	watch, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for watch.Err() == nil {
			got, err := l.RouterRoutes("onprem")
			r, gerr := gatewayRoute(l)
			mu.Lock()
			if err == nil && len(got) != len(mesh) {
				gaps = append(gaps, fmt.Sprintf("router routes %v", got))
			}
			if gerr == nil && r == "" {
				gaps = append(gaps, "the gateway's route to 172.16.10.0/24 was gone")
			}
			mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := l.KillGateway("onprem"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // down longer than a keepalive
	if err := l.StartGateway("onprem"); err != nil {
		t.Fatal(err)
	}
	bs = established(t, l)
	stop()
	wg.Wait()
	if !bs.Restarting {
		t.Error("a gateway started after a crash does not say it restarts gracefully")
	}
	if len(gaps) > 0 {
		t.Errorf("during the graceful restart: %s (and %d more)", gaps[0], len(gaps)-1)
	}
	if out, err := l.Birdc("onprem", "show", "protocols", "all", "strait_gateway"); err != nil || !strings.Contains(out, "Established") {
		t.Errorf("BIRD's session after the restart: %v\n%s", err, out)
	}
	if r, err := ask(dc, a.Addr); err != nil || r.Name != a.Name {
		t.Errorf("after the restart, onprem-dc1 to cloud-a-pod1: %+v %v", r, err)
	}

	// The router dies: the gateway keeps the route it learned while the
	// router restarts (it helps it restart gracefully).
	if err := l.KillRouter("onprem"); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if r, err := gatewayRoute(l); err != nil || r == "" {
			t.Fatalf("the gateway's route to 172.16.10.0/24 went with the router: %q %v", r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if bs, err := bgpOf(l, "onprem"); err != nil || len(bs.Learned) != 1 || !bs.Learned[0].Stale {
		t.Errorf("while the router restarts, the gateway learned %+v (%v), want its LAN kept, stale", bs, err)
	}
	if err := l.StartRouter("onprem"); err != nil {
		t.Fatal(err)
	}
	established(t, l)
	routerRoutes(t, l, mesh, "the restarted router's routes from the gateway")

	// The metrics (checked by promtool) and the status page show it.
	m := metricsOf(t, l, "onprem")
	for _, want := range []string{
		`strait_bgp_session_up{peer="dc-router"} 1`,
		`strait_bgp_routes{peer="dc-router",state="received"} 5`,
		`strait_bgp_routes{peer="dc-router",state="accepted"} 2`,
		`strait_bgp_routes{peer="dc-router",state="advertised"} 5`,
		"strait_bgp_learned_routes 1", "strait_bgp_refused_routes 1", "strait_bgp_converged 1",
	} {
		if !strings.Contains(m, want) {
			t.Errorf("onprem's metrics lack %s", want)
		}
	}
	dom := pageOf(t, l, "onprem")
	for _, want := range []string{`class="session up" data-bgp-peer="dc-router"`, `data-router="dc-router"`,
		"learned 172.16.10.0/24", "refused 172.31.0.0/24"} {
		if !strings.Contains(dom, want) {
			t.Errorf("onprem's status page, as Chromium drew it, lacks %s", want)
		}
	}

	// Without the bgp section, the gateway withdraws, removes the route
	// and the LAN leaves the site's CIDRs: the clouds stop routing it.
	if err := l.EditSiteFile("onprem", func(d *lab.SiteDoc) { d.BGP = nil }); err != nil {
		t.Fatal(err)
	}
	routerRoutes(t, l, nil, "the router without routes once the gateway has no bgp section")
	nstest.Eventually(t, 30*time.Second, "the LAN gone from the gateway and from cloud-a's allowed IPs", func() error {
		if r, err := gatewayRoute(l); err != nil || r != "" {
			return fmt.Errorf("gateway route %q %v", r, err)
		}
		if pr := peer(t, status(t, l, "cloud-a"), "onprem"); slices.Contains(pr.AllowedIPs, "172.16.10.0/24") {
			return fmt.Errorf("cloud-a: onprem's allowed IPs %v", pr.AllowedIPs)
		}
		return nil
	})
}
