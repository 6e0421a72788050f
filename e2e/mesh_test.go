package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// TestMergerEverySiteReachesEvery brings up the merger topology (cloud-a
// and cloud-b both on 10.0.0.0/16, onprem on 192.168.0.0/16) and checks
// every pair of pods with TCP and ICMP through the tunnels, and that each
// receiver sees the source the address plan says: real addresses between
// cloud-a and onprem, egress addresses wherever translation applies.
func TestMergerEverySiteReachesEvery(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	cells := l.Matrix(context.Background())
	if len(cells) != 20 {
		t.Fatalf("%d pairs, want 20", len(cells))
	}
	for _, c := range cells {
		if !c.OK() {
			t.Errorf("%s -> %s via %s: tcp %v, icmp %v, seen as %s, want %s", c.From, c.To, c.Target, c.TCP, c.ICMP, c.SeenAs, c.Want)
		}
	}
	a1, a2, b1, o1 := l.MustHost("cloud-a-pod1"), l.MustHost("cloud-a-pod2"), l.MustHost("cloud-b-pod1"), l.MustHost("onprem-pod1")
	if a1.Addr != b1.Addr {
		t.Fatalf("the topology should give both clouds the same pod address: %s, %s", a1.Addr, b1.Addr)
	}
	// The allocations: services from the ingress pools, egress from the
	// egress pools; cloud-a's payments namespace leaves by its own.
	for _, x := range []struct {
		what string
		got  netip.Addr
		in   string
	}{
		{"cloud-a-pod1's service", a1.Global, "242.0.128.0/17"}, {"cloud-b-pod1's service", b1.Global, "242.1.128.0/17"},
		{"cloud-a's egress", a1.Egress, "242.0.1.0/24"}, {"cloud-b's egress", b1.Egress, "242.1.1.0/24"},
	} {
		if !netip.MustParsePrefix(x.in).Contains(x.got) {
			t.Errorf("%s is %s, outside %s", x.what, x.got, x.in)
		}
	}
	if a1.Egress == a2.Egress {
		t.Errorf("cloud-a's payments pod leaves as %s like the default: the namespace rule did nothing", a2.Egress)
	}
	if b2 := l.MustHost("cloud-b-pod2"); b2.Egress == b1.Egress {
		t.Errorf("cloud-b's app=batch pod leaves as %s like the default: the selector rule did nothing", b2.Egress)
	}
	// UDP is translated both ways too.
	r, err := lab.Request(context.Background(), a1, netip.AddrPortFrom(b1.Global, lab.ServePort), "udp", 2*time.Second)
	if err != nil || r.Name != "cloud-b-pod1" || r.Peer.Addr() != a1.Egress {
		t.Errorf("UDP cloud-a-pod1 -> cloud-b-pod1: %+v, %v; want seen as %s", r, err, a1.Egress)
	}
	// onprem and cloud-a talk without NAT: each sees the other's pod address.
	r, err = lab.Request(context.Background(), o1, netip.AddrPortFrom(a2.Addr, lab.ServePort), "udp", 2*time.Second)
	if err != nil || r.Peer.Addr() != o1.Addr {
		t.Errorf("UDP onprem-pod1 -> cloud-a-pod2 (10.0.2.10): %+v, %v; want seen as %s", r, err, o1.Addr)
	}
	// The gateway's table reads naturally.
	cmd, _ := l.Command("cloud-b-gw", "nft", "list", "table", "ip", "strait")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "dnat ip to ip daddr . meta l4proto . th dport map @services") ||
		!strings.Contains(string(out), fmt.Sprintf("%s . tcp . %d : %s . %d", b1.Global, lab.ServePort, b1.Addr, lab.ServePort)) {
		t.Errorf("cloud-b's table:\n%s%v", out, err)
	}
}

// TestWrongKeyGetsNothingThrough: a host with a key the mesh does not know,
// claiming onprem's addresses, never completes a handshake with cloud-a and
// gets no packet out of cloud-a's tunnel; and a real peer cannot send from
// addresses outside its AllowedIPs. Both are observed where they would
// land: counters on cloud-a's gateway of what leaves its tunnel, by source,
// next to a counter showing the attempts did reach the gateway.
func TestWrongKeyGetsNothingThrough(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	pod := l.MustHost("cloud-a-pod1")
	gwA, _ := l.GatewayOf("cloud-a")
	imp, err := l.AttachWAN("impostor")
	if err != nil {
		t.Fatal(err)
	}
	impostorSrc, spoofSrc, onpremSrc := "242.2.0.77", "242.1.0.99", "242.2.0.1"
	count := newCounters(t, gwA, lab.TunnelInterface(l.Run, gwA.Index), imp.WAN.String(), impostorSrc, spoofSrc, onpremSrc)

	dir := t.TempDir()
	key := filepath.Join(dir, "impostor.key")
	genkey, err := imp.Namespace().Command("wg", "genkey").Output()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(key, genkey, 0o600)
	iface := "wg-" + l.Run + "-x"
	conf := fmt.Sprintf(`[Interface]
Address = %s/32
PostUp = wg set %%i private-key %s

[Peer]
PublicKey = %s
Endpoint = %s:51820
AllowedIPs = 242.0.0.0/16
PersistentKeepalive = 1
`, impostorSrc, key, status(t, l, "cloud-a").PublicKey, gwA.WAN)
	confPath := filepath.Join(dir, iface+".conf")
	os.WriteFile(confPath, []byte(conf), 0o600)
	up := imp.Namespace().Command("wg-quick", "up", confPath)
	up.Env = append(os.Environ(), "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go")
	if out, err := up.CombinedOutput(); err != nil {
		t.Fatalf("wg-quick up: %v\n%s", err, out)
	}
	for range 3 {
		lab.Ping(imp, netip.Addr{}, pod.Global, 300*time.Millisecond)
		lab.Request(context.Background(), imp, netip.AddrPortFrom(pod.Global, lab.ServePort), "tcp", 300*time.Millisecond)
	}
	if n := count(imp.WAN.String()); n == 0 {
		t.Fatal("no packet of the impostor reached cloud-a's gateway: the test tests nothing")
	}
	if n := count(impostorSrc); n != 0 {
		t.Errorf("%d packets of the impostor came out of cloud-a's tunnel", n)
	}
	out, err := imp.Namespace().Command("wg", "show", iface, "latest-handshakes").Output()
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(out)); len(f) != 2 || f[1] != "0" {
		t.Errorf("the impostor completed a handshake: %q", out)
	}
	if st := status(t, l, "cloud-a"); len(st.Tunnel.Peers) != 2 {
		t.Errorf("cloud-a has %d peers, want the 2 of the mesh", len(st.Tunnel.Peers))
	}

	// A real peer spoofing a source outside its AllowedIPs: onprem's
	// gateway sends from 242.1.0.99 (cloud-b's block) to a cloud-a pod.
	gwO, _ := l.GatewayOf("onprem")
	h, err := gwO.Namespace().Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, _ := h.LinkByName("lo")
	spoof, _ := netlink.ParseAddr(spoofSrc + "/32")
	if err := h.AddrAdd(lo, spoof); err != nil {
		t.Fatal(err)
	}
	// From onprem's own address the same path works, and is counted...
	if _, err := pingRetry(gwO, netip.MustParseAddr(onpremSrc), pod.Global); err != nil {
		t.Fatalf("onprem's gateway cannot ping a cloud-a pod from its own address: %v", err)
	}
	if n := count(onpremSrc); n == 0 {
		t.Fatal("onprem's own pings were not counted: the counters do not work")
	}
	// ...from cloud-b's block, cryptokey routing drops it at cloud-a.
	for range 3 {
		lab.Ping(gwO, netip.MustParseAddr(spoofSrc), pod.Global, 300*time.Millisecond)
	}
	if n := count(spoofSrc); n != 0 {
		t.Errorf("%d packets from onprem with a source in cloud-b's block came out of cloud-a's tunnel", n)
	}
}

// newCounters puts a table of counters on a gateway: packets arriving on
// its WAN from one address (wanSrc), and packets coming out of its tunnel
// from each of srcs. It returns a function that reads a counter.
func newCounters(t *testing.T, gw lab.Host, tunnel, wanSrc string, srcs ...string) func(src string) int {
	t.Helper()
	rules := fmt.Sprintf("table ip probe {\n chain c {\n  type filter hook prerouting priority raw;\n  iifname \"wan0\" ip saddr %s counter\n", wanSrc)
	for _, s := range srcs {
		rules += fmt.Sprintf("  iifname %q ip saddr %s counter\n", tunnel, s)
	}
	rules += " }\n}\n"
	cmd := gw.Namespace().Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	return func(src string) int {
		out, err := gw.Namespace().Command("nft", "list", "table", "ip", "probe").Output()
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`ip saddr ` + regexp.QuoteMeta(src) + ` counter packets (\d+)`).FindSubmatch(out)
		if m == nil {
			t.Fatalf("no counter for %s in:\n%s", src, out)
		}
		n, _ := strconv.Atoi(string(m[1]))
		return n
	}
}

// TestEndpointChangeKeepsOtherSessions moves cloud-b's gateway to another
// UDP port while traffic flows between cloud-a and onprem: cloud-a reaches
// cloud-b at the new endpoint, and the cloud-a–onprem session is untouched
// (same handshake, not a packet lost).
func TestEndpointChangeKeepsOtherSessions(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
	waitReachable(t, l, "cloud-a-pod1", "onprem-pod1")
	waitReachable(t, l, "onprem-pod1", "cloud-b-pod1")
	before := peer(t, status(t, l, "cloud-a"), "onprem")
	beforeO := peer(t, status(t, l, "onprem"), "cloud-a")
	if before.LastHandshake.IsZero() {
		t.Fatal("no handshake with onprem yet")
	}

	// Pings from cloud-a to onprem all through the change.
	stop := make(chan struct{})
	var lost []error
	var sent int
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		a, o := l.MustHost("cloud-a-pod1"), l.MustHost("onprem-pod1")
		for {
			select {
			case <-stop:
				return
			default:
			}
			sent++
			if _, err := lab.Ping(a, netip.Addr{}, l.Topology.Target(a, o), time.Second); err != nil {
				lost = append(lost, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	m := l.Mesh
	for i := range m.Sites {
		if m.Sites[i].Name == "cloud-b" {
			m.Sites[i].Endpoint = strings.Replace(m.Sites[i].Endpoint, ":51820", ":51821", 1)
		}
	}
	if err := l.WriteMesh(m); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 10*time.Second, "cloud-b listens on 51821 and cloud-a sends there", func() error {
		if p := status(t, l, "cloud-b").Tunnel.ListenPort; p != 51821 {
			return fmt.Errorf("cloud-b listens on %d", p)
		}
		if ep := peer(t, status(t, l, "cloud-a"), "cloud-b").Endpoint; !strings.HasSuffix(ep, ":51821") {
			return fmt.Errorf("cloud-a sends to cloud-b at %s", ep)
		}
		return nil
	})
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
	waitReachable(t, l, "onprem-pod1", "cloud-b-pod2")
	time.Sleep(time.Second) // more pings after the change
	close(stop)
	wg.Wait()

	after := peer(t, status(t, l, "cloud-a"), "onprem")
	afterO := peer(t, status(t, l, "onprem"), "cloud-a")
	if !after.LastHandshake.Equal(before.LastHandshake) || !afterO.LastHandshake.Equal(beforeO.LastHandshake) {
		t.Errorf("the cloud-a–onprem session was renewed: handshake %s -> %s (onprem side %s -> %s)",
			before.LastHandshake, after.LastHandshake, beforeO.LastHandshake, afterO.LastHandshake)
	}
	if after.RxBytes < before.RxBytes {
		t.Errorf("cloud-a's counters of onprem went back (%d -> %d): the peer was re-created", before.RxBytes, after.RxBytes)
	}
	if len(lost) > 0 || sent < 20 {
		t.Errorf("%d of %d pings cloud-a -> onprem lost during the change: %v", len(lost), sent, lost)
	}
}

// TestBadConfigKeepsLastGood writes an inconsistent mesh file: every
// gateway refuses it with the field and line, keeps running on the last
// good configuration, and takes the next good one.
func TestBadConfigKeepsLastGood(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
	good, err := os.ReadFile(l.MeshFile())
	if err != nil {
		t.Fatal(err)
	}
	goodHash := map[string]string{}
	for _, site := range []string{"cloud-a", "cloud-b", "onprem"} {
		goodHash[site] = status(t, l, site).Config.Hash
	}
	// onprem claims cloud-a's key: a duplicate public key.
	keys := regexp.MustCompile(`publicKey: (\S+)`).FindAllStringSubmatch(string(good), -1)
	bad := strings.Replace(string(good), keys[2][1], keys[0][1], 1)
	if err := l.WriteMeshRaw([]byte(bad)); err != nil {
		t.Fatal(err)
	}
	for _, site := range []string{"cloud-a", "cloud-b", "onprem"} {
		nstest.Eventually(t, 5*time.Second, site+" refuses the file", func() error {
			st := status(t, l, site)
			if st.Config.Refused == nil {
				return fmt.Errorf("not refused")
			}
			if !strings.Contains(st.Config.Refused.Msg, "sites[2].publicKey") || !strings.Contains(st.Config.Refused.Msg, "same public key as sites[0]") {
				return fmt.Errorf("refused with %q; want the field and the reason", st.Config.Refused.Msg)
			}
			if st.Config.Hash != goodHash[site] {
				return fmt.Errorf("runs on %s, not the last good %s", st.Config.Hash, goodHash[site])
			}
			return nil
		})
	}
	waitReachable(t, l, "cloud-a-pod1", "onprem-pod1")
	waitReachable(t, l, "onprem-pod1", "cloud-b-pod1")
	// Now a good change: onprem's keepalive off. Taken, refusal cleared.
	m := l.Mesh
	m.Sites[2].PersistentKeepalive = "0s"
	if err := l.WriteMesh(m); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 5*time.Second, "cloud-a takes the good file", func() error {
		st := status(t, l, "cloud-a")
		if st.Config.Refused != nil || st.Config.Hash == goodHash["cloud-a"] {
			return fmt.Errorf("hash %s, refused %v", st.Config.Hash, st.Config.Refused)
		}
		return nil
	})
}

// TestPlainWireGuardSite joins a site without strait, configured only by
// `strait config wg-quick` and brought up with Debian's wg-quick and
// wireguard-go, and checks it reaches cloud pods and they reach it.
func TestPlainWireGuardSite(t *testing.T) {
	t.Parallel()
	topo := lab.Merger()
	topo.Name = "merger-branch"
	topo.Sites = append(topo.Sites, lab.Site{Name: "branch", Kind: lab.KindWireGuard, Block: netip.MustParsePrefix("242.3.0.0/16")})
	l := newLab(t, topo)
	branch := l.MustHost("branch-host")
	if branch.Addr.String() != "242.3.0.1" {
		t.Fatalf("branch host address %s", branch.Addr)
	}
	for _, to := range []string{"cloud-a-pod1", "cloud-b-pod2", "onprem-pod1"} {
		r := waitReachable(t, l, "branch-host", to)
		if r.Name != to || r.Peer.Addr() != branch.Addr {
			t.Errorf("branch -> %s: answered by %s, seen as %s", to, r.Name, r.Peer.Addr())
		}
		if _, err := pingRetry(branch, netip.Addr{}, l.MustHost(to).Global); err != nil {
			t.Errorf("branch cannot ping %s: %v", to, err)
		}
		back := waitReachable(t, l, to, "branch-host")
		if want := l.Topology.SeenAs(l.MustHost(to), branch); back.Peer.Addr() != want {
			t.Errorf("%s -> branch: seen as %s, want %s", to, back.Peer.Addr(), want)
		}
	}
	// It is a plain WireGuard host: Debian's wireguard-go runs its device.
	cmd, _ := l.Command("branch-host", "wg", "show", lab.TunnelInterface(l.Run, branch.Index), "latest-handshakes")
	out, err := cmd.Output()
	if err != nil || strings.Count(string(out), "\n") != 3 || strings.Contains(string(out), "\t0\n") {
		t.Errorf("branch's wg show latest-handshakes:\n%s%v", out, err)
	}
	pid, _ := exec.Command("pgrep", "-f", "^wireguard-go "+lab.TunnelInterface(l.Run, branch.Index)).Output()
	if len(pid) == 0 {
		t.Error("no Debian wireguard-go process runs the branch's device")
	}
}

// TestLabDownAfterCrash kills every process of a lab and deletes its state
// file, as a crash would leave it; down by run ID still removes everything.
func TestLabDownAfterCrash(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Pair())
	for _, p := range l.Procs {
		syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	if err := os.Remove(filepath.Join(l.Dir, "lab.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Open(l.Run, ""); err == nil {
		t.Fatal("Open found a lab without state")
	}
	if left, _ := lab.Leftovers(l.Run, ""); len(left) == 0 {
		t.Fatal("nothing to clean up: the test does not test anything")
	}
	if err := lab.Down(l.Run, ""); err != nil {
		t.Fatal(err)
	}
	if left, err := lab.Leftovers(l.Run, ""); err != nil || len(left) > 0 {
		t.Errorf("left behind after down: %v %v", left, err)
	}
}

// TestWANImpairment changes a site's WAN link at run time: latency shows in
// the round trip, a cut stops traffic, healing brings it back.
func TestWANImpairment(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Pair())
	a, b := l.MustHost("cloud-a-pod1"), l.MustHost("cloud-b-pod1")
	base, err := pingRetry(a, netip.Addr{}, b.Global)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.SetWAN("cloud-b", lab.WAN{Latency: lab.Duration(25 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	rtt, err := pingRetry(a, netip.Addr{}, b.Global)
	if err != nil || rtt < 50*time.Millisecond || rtt > 50*time.Millisecond+base+20*time.Millisecond {
		t.Errorf("with 25ms on cloud-b's link: rtt %s (base %s), %v; want about 50ms more", rtt, base, err)
	}
	if err := l.SetWAN("cloud-b", lab.WAN{Loss: 100}); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.Ping(a, netip.Addr{}, b.Global, time.Second); err == nil {
		t.Error("ping crossed a cut WAN link")
	}
	if err := l.SetWAN("cloud-b", lab.WAN{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pingRetry(a, netip.Addr{}, b.Global); err != nil {
		t.Errorf("after healing: %v", err)
	}
}

func pingRetry(from lab.Host, src, dst netip.Addr) (time.Duration, error) {
	var err error
	for range 5 {
		var rtt time.Duration
		if rtt, err = lab.Ping(from, src, dst, time.Second); err == nil {
			return rtt, nil
		}
	}
	return 0, err
}
