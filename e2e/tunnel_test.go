package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway/tunnel"
)

// TestTunnelDevice checks what the engine made of cloud-a's device: the
// MTU for WireGuard's overhead over a 1500-byte IPv4 underlay, its own
// mesh address, and one route per peer block, owned (proto 245) and
// sourced from that address.
func TestTunnelDevice(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	gw, _ := l.GatewayOf("cloud-a")
	h, err := gw.Namespace().Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(lab.TunnelInterface(l.Run, gw.Index))
	if err != nil {
		t.Fatal(err)
	}
	if mtu := link.Attrs().MTU; mtu != 1500-60 {
		t.Errorf("tunnel MTU %d, want 1440 (1500 less 20 IPv4 + 8 UDP + 32 WireGuard)", mtu)
	}
	addrs, _ := h.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "242.0.0.1/32" {
		t.Errorf("tunnel addresses %v, want 242.0.0.1/32", addrs)
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: link.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range routes {
		if r.Dst != nil {
			got = append(got, fmt.Sprintf("%s proto %d src %s", r.Dst, r.Protocol, r.Src))
		}
	}
	// cloud-b collides with cloud-a: its block only. onprem is routable
	// and does not: its block and its real CIDR.
	want := "192.168.0.0/16 proto 245 src 242.0.0.1,242.1.0.0/16 proto 245 src 242.0.0.1,242.2.0.0/16 proto 245 src 242.0.0.1"
	if strings.Join(got, ",") != want {
		t.Errorf("routes into the tunnel:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
	// The rest of the global CIDR is unreachable, never sent out the WAN.
	out, err := gw.Namespace().Command("ip", "route", "show", "proto", "245", "type", "unreachable").Output()
	if err != nil || strings.TrimSpace(string(out)) != "unreachable 242.0.0.0/8" {
		t.Errorf("unreachable routes: %q %v; want the global CIDR", out, err)
	}
}

// TestPeerRemovedAndRestored takes onprem out of the mesh file: cloud-a
// and cloud-b drop the peer and its route and keep their own session;
// onprem's gateway refuses a file without itself and keeps its last good
// configuration. Put back, onprem is reachable again.
func TestPeerRemovedAndRestored(t *testing.T) {
	t.Parallel()
	l := newLab(t, lab.Merger())
	waitReachable(t, l, "cloud-a-pod1", "onprem-pod1")
	ab := peer(t, status(t, l, "cloud-a"), "cloud-b").LastHandshake
	full := l.Mesh
	without := full
	without.Sites = append([]lab.MeshSite(nil), full.Sites[:2]...)
	if err := l.WriteMesh(without); err != nil {
		t.Fatal(err)
	}
	for _, site := range []string{"cloud-a", "cloud-b"} {
		nstest.Eventually(t, 5*time.Second, site+" drops onprem", func() error {
			st := status(t, l, site)
			if len(st.Tunnel.Peers) != 1 {
				return fmt.Errorf("%d peers", len(st.Tunnel.Peers))
			}
			return nil
		})
	}
	gw, _ := l.GatewayOf("cloud-a")
	out, _ := gw.Namespace().Command("ip", "route", "show", "proto", "245").Output()
	if strings.Contains(string(out), "242.2.0.0/16") || !strings.Contains(string(out), "242.1.0.0/16") {
		t.Errorf("cloud-a's tunnel routes after removing onprem:\n%s", out)
	}
	// Traffic for the departed block meets the unreachable route: it does
	// not leave through the WAN untranslated.
	h, err := gw.Namespace().Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if routes, err := h.RouteGet(net.ParseIP("242.2.1.10")); !errors.Is(err, syscall.EHOSTUNREACH) {
		t.Errorf("route lookup for onprem's block after onprem left: %v, %v; want EHOSTUNREACH", routes, err)
	}
	for _, to := range []netip.Addr{l.MustHost("onprem-pod1").Addr, l.MustHost("onprem-pod1").Global} {
		if _, err := lab.Request(context.Background(), l.MustHost("cloud-a-pod1"),
			netip.AddrPortFrom(to, lab.ServePort), "tcp", 500*time.Millisecond); err == nil {
			t.Errorf("cloud-a still reaches onprem at %s after onprem left the mesh", to)
		}
	}
	if got := peer(t, status(t, l, "cloud-a"), "cloud-b").LastHandshake; !got.Equal(ab) {
		t.Errorf("cloud-a's session with cloud-b changed (%s -> %s) when onprem left", ab, got)
	}
	nstest.Eventually(t, 5*time.Second, "onprem refuses a mesh without itself", func() error {
		st := status(t, l, "onprem")
		if st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, `site "onprem" is not in the mesh configuration`) {
			return fmt.Errorf("refused: %+v", st.Config.Refused)
		}
		if len(st.Tunnel.Peers) != 2 {
			return fmt.Errorf("onprem has %d peers; it should keep its last good configuration", len(st.Tunnel.Peers))
		}
		return nil
	})
	if err := l.WriteMesh(full); err != nil {
		t.Fatal(err)
	}
	waitReachable(t, l, "cloud-a-pod1", "onprem-pod1")
	waitReachable(t, l, "onprem-pod1", "cloud-b-pod2")
}

// TestKernelWireGuardWhereAvailable asks for kernel WireGuard. Where the
// module exists the lab must come up on it; where it does not (these
// machines), the gateway must refuse with ErrNotSupported's message rather
// than fall back silently, and the lab must clean up after itself.
func TestKernelWireGuardWhereAvailable(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	run := "t" + nstest.RunID()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, lab.Pair(), lab.Options{Run: run, GatewayBin: bins.gateway, StraitBin: bins.strait, WireGuard: "kernel"})
	_, haveModule := os.Stat("/sys/module/wireguard")
	if haveModule == nil {
		if err != nil {
			t.Fatalf("kernel WireGuard is loaded but the lab failed on it: %v", err)
		}
		defer l.Down()
		if impl := status(t, l, "cloud-a").Tunnel.Implementation; impl != tunnel.ModeKernel {
			t.Errorf("implementation %s, want kernel", impl)
		}
		waitReachable(t, l, "cloud-a-pod1", "cloud-b-pod1")
		return
	}
	if err == nil {
		l.Down()
		t.Fatal("no kernel WireGuard here, yet a lab asking for it came up")
	}
	if !strings.Contains(err.Error(), tunnel.ErrNotSupported.Error()) {
		t.Errorf("error %v; want it to say %q", err, tunnel.ErrNotSupported)
	}
	if left, _ := lab.Leftovers(run, ""); len(left) > 0 {
		t.Errorf("a failed lab up left: %v", left)
	}
}

// TestCLI drives the commands `make demo` and users run.
func TestCLI(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	run := "t" + nstest.RunID()
	strait := func(args ...string) (string, error) {
		out, err := exec.Command(bins.strait, args...).CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		lab.Down(run, "")
		if left, _ := lab.Leftovers(run, ""); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	if out, err := strait("lab", "up", "--run", run, "--topology", "pair"); err != nil || !strings.Contains(out, "is up") {
		t.Fatalf("lab up: %v\n%s", err, out)
	}
	if out, err := strait("lab", "up", "--run", run, "--topology", "pair"); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("second lab up with the same run: %v\n%s", err, out)
	}
	out, err := strait("lab", "matrix", "--run", run, "--paths")
	if err != nil || !strings.Contains(out, "seen as 242.0.1.1 ") {
		t.Errorf("lab matrix: %v\n%s", err, out)
	}
	out, err = strait("lab", "status", "--run", run)
	if err != nil || !strings.Contains(out, "gateway cloud-a: ready") || !strings.Contains(out, "pool ingress    ingress 242.0.128.0/17") ||
		!strings.Contains(out, "collision matrix") {
		t.Errorf("lab status: %v\n%s", err, out)
	}
	out, err = strait("lab", "exec", "--run", run, "cloud-a-pod1", "--", "ip", "-4", "-o", "addr", "show", "eth0")
	if err != nil || !strings.Contains(out, "10.0.1.10/32") {
		t.Errorf("lab exec: %v\n%s", err, out)
	}
	out, err = strait("lab", "exec", "--run", run, "cloud-a-pod1", "--", "false")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Errorf("lab exec of a failing command: %v %s; want its exit status", err, out)
	}
	if out, err = strait("lab", "exec", "--run", run, "nowhere"); err == nil || !strings.Contains(out, `no host "nowhere"`) {
		t.Errorf("lab exec to an unknown host: %v\n%s", err, out)
	}
	if out, err = strait("lab", "wan", "--run", run, "cloud-b", "--latency", "20ms"); err != nil {
		t.Errorf("lab wan: %v\n%s", err, out)
	}
	out, err = strait("status", "--socket", l(run)+"/cloud-b/gateway.sock", "--json")
	if err != nil || !strings.Contains(out, `"implementation": "userspace"`) {
		t.Errorf("status: %v\n%s", err, out)
	}
	if out, err = strait("config", "check", "--mesh", l(run)+"/mesh.yaml"); err != nil || !strings.Contains(out, "valid") {
		t.Errorf("config check: %v\n%s", err, out)
	}
	if out, err = strait("lab", "down", "--run", run); err != nil || !strings.Contains(out, "is down") {
		t.Errorf("lab down: %v\n%s", err, out)
	}
	if out, err = strait("lab", "status", "--run", run); err == nil || !strings.Contains(out, "no lab") {
		t.Errorf("status of a lab that is down: %v\n%s", err, out)
	}
}

func l(run string) string { return lab.DefaultDir + "/" + run }
