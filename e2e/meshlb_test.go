package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway"
)

// metricsOf scrapes a site's gateway's /metrics from inside its namespace
// and checks the text with promtool.
func metricsOf(t *testing.T, l *lab.Lab, site string) string {
	t.Helper()
	nstest.RequireCommands(t, "promtool")
	gw, _ := l.GatewayOf(site)
	var body []byte
	// Dialled on the namespace's thread: http.Transport would dial from
	// another goroutine, in another namespace.
	var conn net.Conn
	if err := gw.Namespace().Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", "127.0.0.1:9464", 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("metrics of %s: %v", site, err)
	}
	defer conn.Close()
	err := func() error {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nHost: gateway\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s", resp.Status)
		}
		body, err = io.ReadAll(resp.Body)
		return err
	}()
	if err != nil {
		t.Fatalf("metrics of %s: %v", site, err)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool check metrics on %s's metrics: %v\n%s", site, err, out)
	}
	return string(body)
}

// pageOf loads a site's gateway's status page in headless Chromium, inside
// the gateway's namespace, and returns the DOM its script drew.
func pageOf(t *testing.T, l *lab.Lab, site string) string {
	t.Helper()
	nstest.RequireCommands(t, "chromium")
	gw, _ := l.GatewayOf(site)
	cmd := gw.Namespace().Command("chromium", "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir="+t.TempDir(),
		"--virtual-time-budget=10000", "--dump-dom", "http://127.0.0.1:9464/")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium on %s's status page: %v\n%s", site, err, errOut.String())
	}
	return out.String()
}

// lbService is a global service in a gateway's status.
func lbService(st gateway.Status, name string) (gateway.LBService, bool) {
	if st.LoadBalancer == nil {
		return gateway.LBService{}, false
	}
	for _, s := range st.LoadBalancer.Services {
		if s.Name == name {
			return s, true
		}
	}
	return gateway.LBService{}, false
}

// serving lists the clusters whose instances take new connections.
func serving(s gateway.LBService) []string {
	var out []string
	for _, b := range s.Backends {
		if b.Serving && b.Checked && b.Share > 0 {
			out = append(out, b.Cluster)
		}
	}
	return out
}

// udpFlow is one UDP socket in a pod talking to a VIP: conntrack keeps
// its datagrams on one backend.
type udpFlow struct {
	c net.Conn
}

func openFlow(t *testing.T, from lab.Host, dst netip.AddrPort) *udpFlow {
	t.Helper()
	var c net.Conn
	if err := from.Namespace().Do(func() (err error) { c, err = net.Dial("udp4", dst.String()); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpFlow{c}
}

// ask sends a datagram and returns the name of the server that answered.
func (f *udpFlow) ask() (string, error) {
	f.c.SetDeadline(time.Now().Add(time.Second))
	if _, err := f.c.Write([]byte("hello\n")); err != nil {
		return "", err
	}
	buf := make([]byte, 512)
	n, err := f.c.Read(buf)
	if err != nil {
		return "", err
	}
	for _, fld := range strings.Fields(string(buf[:n])) {
		if v, ok := strings.CutPrefix(fld, "name="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("not a lab reply: %q", buf[:n])
}

// TestGlobalServiceAndFirewall runs the merger lab with a load balancer:
// a service exported by cloud-a and cloud-b behind one VIP, reached from
// onprem; cloud-a's backend stops and traffic moves to cloud-b within
// the health checks' time, established flows to cloud-b staying; and a
// deny policy written in cloud-a's site file keeps cloud-b from onprem's
// database while everything else still flows.
func TestGlobalServiceAndFirewall(t *testing.T) {
	t.Parallel()
	vips := netip.MustParsePrefix("242.255.0.0/24")
	l := newLabWith(t, lab.Merger(), lab.Options{Discovery: true, VIPRange: vips})
	// The merger topology has cloud-a-pod1 and cloud-b-pod1 export
	// default/web, and onprem declare it global; onprem exports its
	// database too.
	db := l.MustHost("onprem-pod1")
	if err := l.EditSiteFile("onprem", func(d *lab.SiteDoc) {
		d.Services = append(d.Services, lab.ServiceDoc{Namespace: "default", Name: "db", Backend: db.Addr.String(),
			Ports: []lab.PortDoc{{Port: lab.ServePort, Protocol: "TCP"}}})
	}); err != nil {
		t.Fatal(err)
	}

	// onprem's gateway balances web over both clouds.
	var web gateway.LBService
	nstest.Eventually(t, 30*time.Second, "onprem balancing default/web over cloud-a and cloud-b", func() error {
		s, ok := lbService(status(t, l, "onprem"), "default/web")
		if !ok || len(serving(s)) != 2 {
			return fmt.Errorf("status: %+v", status(t, l, "onprem").LoadBalancer)
		}
		web = s
		return nil
	})
	if !vips.Contains(web.VIP) {
		t.Fatalf("VIP %s is outside the VIP range %s", web.VIP, vips)
	}
	client := l.MustHost("onprem-pod1")
	vip := netip.AddrPortFrom(web.VIP, lab.ServePort)
	r, err := query(l, client, "onprem", "web.default.svc.clusterset.local", dns.TypeA)
	if err != nil || len(addrs(r)) != 1 || addrs(r)[0] != web.VIP.String() {
		t.Fatalf("web.default.svc.clusterset.local: %v %v, want the VIP %s", r, err, web.VIP)
	}
	seen := map[string]int{}
	for range 30 {
		rep, err := lab.Request(context.Background(), client, vip, "tcp", 2*time.Second)
		if err != nil {
			t.Fatalf("connecting to the VIP: %v", err)
		}
		seen[rep.Name]++
	}
	t.Logf("30 connections from onprem to %s: %v", vip, seen)
	if seen["cloud-a-pod1"] == 0 || seen["cloud-b-pod1"] == 0 {
		t.Fatalf("want connections at both clouds: %v", seen)
	}

	// Flows held over UDP, one on each cloud.
	var onA, onB *udpFlow
	for i := 0; i < 40 && (onA == nil || onB == nil); i++ {
		f := openFlow(t, client, vip)
		name, err := f.ask()
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case name == "cloud-a-pod1" && onA == nil:
			onA = f
		case name == "cloud-b-pod1" && onB == nil:
			onB = f
		}
	}
	if onA == nil || onB == nil {
		t.Fatal("no UDP flow landed on one of the clouds in 40 tries")
	}

	// cloud-a's backend stops: new connections go to cloud-b once the
	// health checks see it; the flow on cloud-b keeps its backend, the one
	// on cloud-a moves.
	stopped := time.Now()
	if err := l.StopServer("cloud-a-pod1"); err != nil {
		t.Fatal(err)
	}
	var moved time.Duration
	nstest.Eventually(t, 10*time.Second, "onprem's traffic to web moving to cloud-b", func() error {
		s, _ := lbService(status(t, l, "onprem"), "default/web")
		if got := serving(s); len(got) != 1 || got[0] != "cloud-b" {
			return fmt.Errorf("serving: %v", got)
		}
		moved = time.Since(stopped)
		return nil
	})
	t.Logf("cloud-a's backend out of onprem's tables %s after it stopped (health checks every 500ms, out after 2 failures)", moved.Round(10*time.Millisecond))
	if moved > 4*time.Second {
		t.Errorf("failover took %s; the health checks and gossip should take about 2s", moved)
	}
	for range 20 {
		rep, err := lab.Request(context.Background(), client, vip, "tcp", 2*time.Second)
		if err != nil || rep.Name != "cloud-b-pod1" {
			t.Fatalf("after cloud-a failed: %+v %v, want cloud-b-pod1", rep, err)
		}
	}
	if name, err := onB.ask(); err != nil || name != "cloud-b-pod1" {
		t.Fatalf("the flow held on cloud-b: %q %v", name, err)
	}
	if name, err := onA.ask(); err != nil || name != "cloud-b-pod1" {
		t.Fatalf("the flow held on cloud-a, after cloud-a failed: %q %v, want it moved to cloud-b", name, err)
	}
	// Back: cloud-a serves again, cloud-b's flow stays where it is.
	if err := l.StartServer("cloud-a-pod1"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 10*time.Second, "cloud-a serving again", func() error {
		s, _ := lbService(status(t, l, "onprem"), "default/web")
		if len(serving(s)) != 2 {
			return fmt.Errorf("serving: %v", serving(s))
		}
		return nil
	})
	if name, err := onB.ask(); err != nil || name != "cloud-b-pod1" {
		t.Fatalf("the flow held on cloud-b after cloud-a came back: %q %v", name, err)
	}

	// Nothing serves: the VIP refuses at once rather than black-holing.
	for _, site := range []string{"cloud-a", "cloud-b"} {
		if err := l.StopServer(site + "-pod1"); err != nil {
			t.Fatal(err)
		}
	}
	nstest.Eventually(t, 10*time.Second, "the VIP refusing with no backend serving", func() error {
		s, _ := lbService(status(t, l, "onprem"), "default/web")
		if len(serving(s)) != 0 {
			return fmt.Errorf("still serving: %v", serving(s))
		}
		return nil
	})
	// Refused by the gateway (the stopped servers would reset too: the
	// counter tells them apart).
	refusedBefore := status(t, l, "onprem").LoadBalancer.Refused
	if _, err := lab.Request(context.Background(), client, vip, "tcp", time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("connecting with no backend serving: %v, want connection refused", err)
	}
	nstest.Eventually(t, 5*time.Second, "onprem counting the refusal", func() error {
		if got := status(t, l, "onprem").LoadBalancer.Refused; got <= refusedBefore {
			return fmt.Errorf("refused %d, was %d", got, refusedBefore)
		}
		return nil
	})
	for _, site := range []string{"cloud-a", "cloud-b"} {
		if err := l.StartServer(site + "-pod1"); err != nil {
			t.Fatal(err)
		}
	}
	nstest.Eventually(t, 10*time.Second, "both clouds serving again", func() error {
		s, _ := lbService(status(t, l, "onprem"), "default/web")
		if len(serving(s)) != 2 {
			return fmt.Errorf("serving: %v", serving(s))
		}
		return nil
	})

	// The firewall: a policy written in cloud-a's site file, enforced by
	// onprem's gateway, keeps cloud-b from the database.
	fromB, fromA := l.MustHost("cloud-b-pod1"), l.MustHost("cloud-a-pod1")
	dbAt := func(src lab.Host) netip.AddrPort {
		return netip.AddrPortFrom(l.Topology.Target(src, db), lab.ServePort)
	}
	if _, err := lab.Request(context.Background(), fromB, dbAt(fromB), "tcp", 2*time.Second); err != nil {
		t.Fatalf("cloud-b to the database before any policy: %v", err)
	}
	policy := meshpolicy.Policy{Name: "protect-db", Priority: 10, Rules: []meshpolicy.Rule{{
		Name: "no-cloud-b", Action: meshpolicy.Deny,
		From: []meshpolicy.Source{{Cluster: "cloud-b"}},
		To:   []meshpolicy.Destination{{Namespace: "default", Service: "db"}},
	}}}
	if err := l.EditSiteFile("cloud-a", func(d *lab.SiteDoc) { d.FirewallPolicies = []meshpolicy.Policy{policy} }); err != nil {
		t.Fatal(err)
	}
	// A policy goes through the catalog: seconds, more on a busy machine.
	nstest.Eventually(t, 30*time.Second, "cloud-b refused at the database", func() error {
		_, err := lab.Request(context.Background(), fromB, dbAt(fromB), "tcp", time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("cloud-b to the database: %v, want connection refused", err)
		}
		return nil
	})
	// Everything else still flows.
	if rep, err := lab.Request(context.Background(), fromA, dbAt(fromA), "tcp", 2*time.Second); err != nil || rep.Name != db.Name {
		t.Fatalf("cloud-a to the database: %+v %v", rep, err)
	}
	waitReachable(t, l, "cloud-b-pod1", "cloud-a-pod1")
	if _, err := lab.Request(context.Background(), client, vip, "tcp", 2*time.Second); err != nil {
		t.Fatalf("onprem to the VIP with the policy in place: %v", err)
	}
	var before uint64
	nstest.Eventually(t, 5*time.Second, "onprem's firewall counting the denied connections", func() error {
		st := status(t, l, "onprem")
		if st.Firewall == nil || len(st.Firewall.Rules) != 1 || st.Firewall.Rules[0].Name != "protect-db/no-cloud-b" || st.Firewall.Rules[0].Matched == 0 {
			return fmt.Errorf("status: %+v", st.Firewall)
		}
		before = st.Firewall.Rules[0].Matched
		return nil
	})
	// The deny was logged, sampled, with its rule.
	nstest.Eventually(t, 5*time.Second, "the deny in onprem's gateway log", func() error {
		data, _ := os.ReadFile(l.GatewayLog("onprem"))
		if !strings.Contains(string(data), "connection denied") || !strings.Contains(string(data), "protect-db/no-cloud-b") {
			return errors.New("not logged")
		}
		return nil
	})
	// Dry run: the rule counts, the database answers.
	policy.DryRun = true
	if err := l.EditSiteFile("cloud-a", func(d *lab.SiteDoc) { d.FirewallPolicies = []meshpolicy.Policy{policy} }); err != nil {
		t.Fatal(err)
	}
	// A policy goes through the catalog: seconds, more on a busy machine.
	nstest.Eventually(t, 30*time.Second, "cloud-b reaching the database under a dry-run policy", func() error {
		_, err := lab.Request(context.Background(), fromB, dbAt(fromB), "tcp", time.Second)
		return err
	})
	// The same, as Prometheus metrics, which promtool accepts.
	text := metricsOf(t, l, "onprem")
	for _, series := range []string{
		`strait_lb_backend_serving{service="default/web",cluster="cloud-a"} 1`,
		`strait_firewall_rule_matches_total{rule="protect-db/no-cloud-b",action="deny",dry_run="true"}`,
		`strait_tunnel_peer_receive_bytes_total{peer="cloud-b"}`,
		`strait_catalog_clusters{state="alive"} 3`,
		`strait_catalog_last_change_timestamp_seconds `,
		`strait_natpool_addresses{pool="ingress",kind="ingress",state="used"}`,
	} {
		if !strings.Contains(text, series) {
			t.Errorf("onprem's metrics lack %s", series)
		}
	}
	// The status page, drawn by its script in headless Chromium: the
	// mesh's three sites, tunnels up to both peers, the VIP's row.
	dom := pageOf(t, l, "onprem")
	for _, want := range []string{`data-drawn="true"`, `data-site="onprem"`, `data-site="cloud-a"`, `data-site="cloud-b"`,
		`class="tunnel up" data-peer="cloud-a"`, `class="tunnel up" data-peer="cloud-b"`, "default/web", "protect-db/no-cloud-b"} {
		if !strings.Contains(dom, want) {
			t.Errorf("onprem's status page, as Chromium drew it, lacks %s:\n%s", want, dom)
		}
	}
	nstest.Eventually(t, 5*time.Second, "the dry-run rule counting", func() error {
		st := status(t, l, "onprem")
		if st.Firewall == nil || len(st.Firewall.Rules) != 1 || !st.Firewall.Rules[0].DryRun || st.Firewall.Rules[0].Matched <= before {
			return fmt.Errorf("status: %+v (counted %d before)", st.Firewall, before)
		}
		return nil
	})
}

// TestHubBalancer sets onprem aside to balance for the whole mesh: cloud-b's
// pods reach the VIP through onprem, which spreads them over cloud-a's and
// cloud-b's instances and masquerades them, and enforces the policies on
// them: a policy keeps cloud-b's pods from web while cloud-a's still reach
// it through the hub.
func TestHubBalancer(t *testing.T) {
	t.Parallel()
	l := newLabWith(t, lab.Merger(), lab.Options{Discovery: true, VIPRange: netip.MustParsePrefix("242.255.0.0/24"), Hub: "onprem"})
	st := status(t, l, "cloud-b")
	if st.LoadBalancer == nil || st.LoadBalancer.Hub != "onprem" || len(st.LoadBalancer.Services) != 0 {
		t.Fatalf("cloud-b balances itself: %+v", st.LoadBalancer)
	}
	web, ok := lbService(status(t, l, "onprem"), "default/web")
	if !ok {
		t.Fatal("onprem does not balance default/web")
	}
	vip := netip.AddrPortFrom(web.VIP, lab.ServePort)
	hubAddr := l.Topology.Sites[2].Block.Addr().Next() // onprem's tunnel address
	seen := map[string]int{}
	for range 30 {
		rep, err := lab.Request(context.Background(), l.MustHost("cloud-b-pod1"), vip, "tcp", 2*time.Second)
		if err != nil {
			t.Fatalf("cloud-b to the VIP through the hub: %v", err)
		}
		if rep.Peer.Addr() != hubAddr {
			t.Fatalf("%s saw the connection from %s; the hub masquerades as %s", rep.Name, rep.Peer.Addr(), hubAddr)
		}
		seen[rep.Name]++
	}
	t.Logf("30 connections from cloud-b through the hub: %v", seen)
	if seen["cloud-a-pod1"] == 0 || seen["cloud-b-pod1"] == 0 {
		t.Fatalf("want both instances: %v", seen)
	}
	policy := meshpolicy.Policy{Name: "web-not-for-b", Rules: []meshpolicy.Rule{{Action: meshpolicy.Deny,
		From: []meshpolicy.Source{{Cluster: "cloud-b"}}, To: []meshpolicy.Destination{{Namespace: "default", Service: "web"}}}}}
	if err := l.EditSiteFile("cloud-a", func(d *lab.SiteDoc) { d.FirewallPolicies = []meshpolicy.Policy{policy} }); err != nil {
		t.Fatal(err)
	}
	// A policy goes through the catalog: seconds, more on a busy machine.
	nstest.Eventually(t, 30*time.Second, "the hub refusing cloud-b at the VIP", func() error {
		_, err := lab.Request(context.Background(), l.MustHost("cloud-b-pod1"), vip, "tcp", time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("cloud-b to the VIP: %v, want connection refused", err)
		}
		return nil
	})
	for range 10 {
		if _, err := lab.Request(context.Background(), l.MustHost("cloud-a-pod1"), vip, "tcp", 2*time.Second); err != nil {
			t.Fatalf("cloud-a to the VIP through the hub, with the policy in place: %v", err)
		}
	}

	// The hub goes down: the others balance their own clients meanwhile
	// (cloud-b's first to its own instance), and route to the hub again
	// once it is back.
	if err := l.StopGateway("onprem"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 20*time.Second, "cloud-b balancing itself while the hub is down", func() error {
		if _, ok := lbService(status(t, l, "cloud-b"), "default/web"); !ok {
			return fmt.Errorf("load balancer %+v", status(t, l, "cloud-b").LoadBalancer)
		}
		rep, err := lab.Request(context.Background(), l.MustHost("cloud-b-pod1"), vip, "tcp", time.Second)
		if err != nil || rep.Name != "cloud-b-pod1" {
			return fmt.Errorf("cloud-b to the VIP: %+v %v, want its own instance", rep, err)
		}
		return nil
	})
	if err := l.StartGateway("onprem"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 30*time.Second, "cloud-b routing to the hub again", func() error {
		if _, ok := lbService(status(t, l, "cloud-b"), "default/web"); ok {
			return errors.New("cloud-b still balances itself")
		}
		_, err := lab.Request(context.Background(), l.MustHost("cloud-b-pod1"), vip, "tcp", time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("cloud-b to the VIP: %v, want the hub's refusal again", err)
		}
		return nil
	})
}
