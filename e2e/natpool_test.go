package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/natpool"
)

// TestICMPErrorsTranslated sends, from a cloud-a pod to a cloud-b service,
// traffic that draws ICMP errors from beyond both translations: a UDP port
// nobody listens on (port unreachable, from the backend pod), and a packet
// too big for the last link before the backend (fragmentation needed, from
// cloud-b's node). Both errors must come back through cloud-b's DNAT and
// cloud-a's SNAT, rewritten inside and out, to reach the socket that
// caused them.
func TestICMPErrorsTranslated(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Pair())
	a, b := l.MustHost("cloud-a-pod1"), l.MustHost("cloud-b-pod1")
	waitReachable(t, l, a.Name, b.Name)

	// Port unreachable: a connected UDP socket learns ECONNREFUSED.
	var conn net.Conn
	err := a.Namespace().Do(func() (err error) {
		conn, err = net.Dial("udp4", netip.AddrPortFrom(b.Global, lab.ClosedPort).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	refused := false
	for range 5 {
		conn.Write([]byte("anyone?"))
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err := conn.Read(make([]byte, 64))
		if errors.Is(err, syscall.ECONNREFUSED) {
			refused = true
			break
		}
	}
	if !refused {
		t.Error("no port unreachable came back through both translations")
	}

	// Fragmentation needed: the link from cloud-b's node to the pod
	// takes 1300 bytes; a 1400-byte datagram with DF set stops there.
	node := l.MustHost(b.Node)
	h, err := node.Namespace().Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth, err := h.LinkByName(fmt.Sprintf("pod%d", b.Index))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMTU(veth, 1300); err != nil {
		t.Fatal(err)
	}
	var big net.Conn
	if err := a.Namespace().Do(func() (err error) {
		big, err = net.Dial("udp4", netip.AddrPortFrom(b.Global, lab.ServePort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	raw, _ := big.(*net.UDPConn).SyscallConn()
	raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO)
	})
	var mtu int
	for range 10 {
		big.Write(make([]byte, 1400))
		time.Sleep(100 * time.Millisecond)
		raw.Control(func(fd uintptr) { mtu, _ = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU) })
		if mtu == 1300 {
			break
		}
	}
	if mtu != 1300 {
		t.Errorf("path MTU to %s as the cloud-a pod's socket knows it: %d; want 1300, learnt from a translated fragmentation-needed", b.Global, mtu)
	}
}

// TestThirdCloudOnTheSameCIDR adds cloud-c, a third cluster on 10.0.0.0/16,
// whose block is derived from its name by every gateway alike: all pairs
// work, with the sources the plan says.
func TestThirdCloudOnTheSameCIDR(t *testing.T) {
	t.Parallel()
	topo := lab.Merger()
	topo.Name = "merger3"
	topo.Sites = append(topo.Sites, lab.Site{Name: "cloud-c", PodCIDR: netip.MustParsePrefix("10.0.0.0/16"), Nodes: 1, PodsPerNode: 1})
	l := newLab(t, topo)
	block, _ := natpool.DeriveBlock(topo.GlobalCIDR, natpool.DefaultBlockBits, "cloud-c")
	c := l.MustHost("cloud-c-pod1")
	if !block.Contains(c.Global) || !block.Contains(c.Egress) {
		t.Errorf("cloud-c's addresses %s, %s are outside its derived block %s", c.Global, c.Egress, block)
	}
	if m, _ := os.ReadFile(l.MeshFile()); strings.Contains(string(m), block.String()) {
		t.Fatalf("the mesh file names cloud-c's block: the gateways did not derive it")
	}
	cells := l.Matrix(context.Background())
	if len(cells) != 30 {
		t.Fatalf("%d pairs, want 30", len(cells))
	}
	for _, cell := range cells {
		if !cell.OK() {
			t.Errorf("%s -> %s via %s: tcp %v, icmp %v, seen as %s, want %s", cell.From, cell.To, cell.Target, cell.TCP, cell.ICMP, cell.SeenAs, cell.Want)
		}
	}
}

// TestRestartKeepsAllocations restarts cloud-b's gateway: it comes back
// with exactly the same addresses, and the same services answer at them.
func TestRestartKeepsAllocations(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	before := status(t, l, "cloud-b").Allocations
	if err := l.StopGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	if err := l.StartGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitGateway(context.Background(), "cloud-b", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	after := status(t, l, "cloud-b").Allocations
	if fmt.Sprint(keysAndIPs(after)) != fmt.Sprint(keysAndIPs(before)) {
		t.Errorf("allocations changed across a restart:\nbefore %v\nafter  %v", keysAndIPs(before), keysAndIPs(after))
	}
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod2")
	waitReachable(t, l, "onprem-pod1", "cloud-b-pod1")
}

func keysAndIPs(as []natpool.Allocation) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Key+"="+a.IP.String())
	}
	return out
}

// TestCorruptStoreStopsStart damages cloud-b's allocation file while its
// gateway is down: the gateway refuses to start, says why, and leaves the
// file as it is; with the file restored it starts on the same addresses.
func TestCorruptStoreStopsStart(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Pair())
	before := keysAndIPs(status(t, l, "cloud-b").Allocations)
	if err := l.StopGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(l.Dir, "cloud-b", gateway.AllocationsName)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bad := good[:len(good)*2/3] // a write cut short
	if err := os.WriteFile(path, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.StartGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	err = l.WaitGateway(context.Background(), "cloud-b", 10*time.Second)
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "cannot be trusted") ||
		!strings.Contains(err.Error(), path) {
		t.Fatalf("start on a corrupt store: %v; want the gateway to exit naming the file", err)
	}
	if now, _ := os.ReadFile(path); string(now) != string(bad) {
		t.Error("the gateway changed the corrupt file")
	}
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := l.StartGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitGateway(context.Background(), "cloud-b", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if after := keysAndIPs(status(t, l, "cloud-b").Allocations); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("allocations after the restore %v, before %v", after, before)
	}
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
}

// TestDriftRepaired flushes cloud-b's table and deletes one service from
// its map by hand: the gateway puts both back within seconds.
func TestDriftRepaired(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Pair())
	gw, _ := l.GatewayOf("cloud-b")
	b := l.MustHost("cloud-b-pod1")
	nft := func(args ...string) string {
		out, err := gw.Namespace().Command("nft", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for i, edit := range [][]string{
		{"flush", "table", "ip", "strait"},
		{"delete", "element", "ip", "strait", "services", fmt.Sprintf("{ %s . tcp . %d }", b.Global, lab.ServePort)},
	} {
		nft(edit...)
		start := time.Now()
		nstest.Eventually(t, 10*time.Second, fmt.Sprintf("the gateway repairs %v", edit), func() error {
			if st := status(t, l, "cloud-b"); st.NAT.Drifts < i+1 {
				return fmt.Errorf("%d drifts repaired", st.NAT.Drifts)
			}
			if !strings.Contains(nft("list", "map", "ip", "strait", "services"), fmt.Sprintf("%s . tcp . %d", b.Global, lab.ServePort)) {
				return errors.New("the service is not back")
			}
			return nil
		})
		t.Logf("%v repaired in %s", edit, time.Since(start).Round(100*time.Millisecond))
		waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
	}
}

// TestBadSiteFileKeepsRunning gives cloud-b a site file whose pool overlaps
// another and whose service names a pool that does not exist: refused,
// named, and traffic keeps flowing on the last good configuration.
func TestBadSiteFileKeepsRunning(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Pair())
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
	bad := `pools:
  - {name: ingress, kind: ingress, cidr: 242.1.128.0/17}
  - {name: egress, kind: egress, cidr: 242.1.200.0/24}
services:
  - {namespace: default, name: x, backend: 10.0.1.10, pool: vip, ports: [{port: 80}]}
`
	if err := os.WriteFile(l.SiteFile("cloud-b"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 5*time.Second, "cloud-b refuses the site file", func() error {
		st := status(t, l, "cloud-b")
		if st.Config.Refused == nil {
			return errors.New("not refused")
		}
		for _, want := range []string{`pools[1]: 242.1.200.0/24 overlaps pool "ingress"`, `services[0].pool: pool "vip" does not exist`} {
			if !strings.Contains(st.Config.Refused.Msg, want) {
				return fmt.Errorf("refusal %q does not say %q", st.Config.Refused.Msg, want)
			}
		}
		return nil
	})
	waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
}

// TestKilledDuringTransfer kills cloud-b's gateway (SIGKILL) in the middle
// of an iperf3 transfer from cloud-a, and starts it again: the transfer
// recovers and completes, and no address changed. The translation and
// conntrack stay in the kernel while the gateway is down; the tunnel comes
// back with the same keys and addresses.
func TestKilledDuringTransfer(t *testing.T) {
	t.Parallel()
	nstest.RequireCommands(t, "iperf3")
	l := newLab(t, lab.Pair())
	src, dst := l.MustHost("cloud-a-pod1"), l.MustHost("cloud-b-pod1")
	target := l.Topology.Target(src, dst)
	waitReachable(t, l, src.Name, dst.Name)
	before := keysAndIPs(status(t, l, "cloud-b").Allocations)
	server, err := l.Command(dst.Name, "iperf3", "-s", "-1", "-p", fmt.Sprint(lab.IperfPort))
	if err != nil {
		t.Fatal(err)
	}
	if err := server.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Process.Kill(); server.Wait() })
	time.Sleep(300 * time.Millisecond) // the server listening
	client := src.Namespace().Command("iperf3", "-c", target.String(), "-p", fmt.Sprint(lab.IperfPort), "-t", "12", "-i", "1", "-J")
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := client.Output()
		done <- result{out, err}
	}()
	time.Sleep(3 * time.Second)
	if err := l.KillGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // down a while
	if err := l.StartGateway("cloud-b"); err != nil {
		t.Fatal(err)
	}
	if err := l.WaitGateway(context.Background(), "cloud-b", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("iperf3 did not finish")
	}
	var res struct {
		Error     string `json:"error"`
		Intervals []struct {
			Sum struct {
				Start float64 `json:"start"`
				Bytes float64 `json:"bytes"`
			} `json:"sum"`
		} `json:"intervals"`
		End struct {
			SumReceived struct {
				Bytes float64 `json:"bytes"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(r.out, &res); err != nil || res.Error != "" || r.err != nil {
		t.Fatalf("iperf3 across the restart: %v %s %v\n%s", r.err, res.Error, err, r.out)
	}
	var stalled, after int
	for _, iv := range res.Intervals {
		switch {
		case iv.Sum.Bytes == 0:
			stalled++
		case iv.Sum.Start >= 6:
			after++
		}
	}
	t.Logf("iperf3: %.0f MB received, %d of %d one-second intervals without data", res.End.SumReceived.Bytes/1e6, stalled, len(res.Intervals))
	if after == 0 {
		t.Fatalf("no data after the restart: %s", r.out)
	}
	if now := keysAndIPs(status(t, l, "cloud-b").Allocations); fmt.Sprint(now) != fmt.Sprint(before) {
		t.Errorf("allocations changed across the kill:\nbefore %v\nafter  %v", before, now)
	}
}
