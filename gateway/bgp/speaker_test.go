package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be a router: a speaker in a process of
// its own. gobgp writes package variables whenever BGP starts, so two
// speakers in one process race.
func TestMain(m *testing.M) {
	if os.Getenv("STRAIT_BGP_TEST_ROUTER") == "1" {
		os.Exit(routerMain(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

// routerMain runs a speaker configured by the JSON Config on the first
// line of in, then answers commands, a line each: "announce P,P" (ok),
// "learned" (the prefixes, comma-separated). It stops at the end of in.
func routerMain(in io.Reader, out io.Writer) int {
	ctx := context.Background()
	sc := bufio.NewScanner(in)
	var c Config
	if !sc.Scan() || json.Unmarshal(sc.Bytes(), &c) != nil {
		fmt.Fprintln(out, "error: no configuration")
		return 1
	}
	s := New(Options{})
	if err := s.Configure(ctx, c); err != nil {
		fmt.Fprintln(out, "error:", err)
		return 1
	}
	defer s.Stop(ctx)
	fmt.Fprintln(out, "ok")
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "announce":
			var ps []netip.Prefix
			for _, f := range strings.Split(arg, ",") {
				if f != "" {
					ps = append(ps, netip.MustParsePrefix(f))
				}
			}
			if err := s.Announce(ctx, ps); err != nil {
				fmt.Fprintln(out, "error:", err)
				continue
			}
			fmt.Fprintln(out, "ok")
		case "learned":
			rs, err := s.Learned(ctx)
			if err != nil {
				fmt.Fprintln(out, "error:", err)
				continue
			}
			var fs []string
			for _, p := range Prefixes(rs) {
				fs = append(fs, p.String())
			}
			fmt.Fprintln(out, strings.Join(fs, ","))
		}
	}
	return 0
}

// router is a speaker in a child process (see TestMain).
type router struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startRouter(t *testing.T, c Config) *router {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "STRAIT_BGP_TEST_ROUTER=1")
	cmd.Stderr = io.Discard
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Wait() })
	r := &router{in: in, out: bufio.NewScanner(outp)}
	data, _ := json.Marshal(c)
	r.do(t, string(data))
	return r
}

// do sends one line and returns the answer.
func (r *router) do(t *testing.T, line string) string {
	t.Helper()
	if _, err := fmt.Fprintln(r.in, line); err != nil {
		t.Fatal(err)
	}
	if !r.out.Scan() {
		t.Fatalf("the router process ended after %q", line)
	}
	if a := r.out.Text(); strings.HasPrefix(a, "error:") {
		t.Fatalf("router: %s", a)
	}
	return r.out.Text()
}

func (r *router) announce(t *testing.T, ps ...string) { r.do(t, "announce "+strings.Join(ps, ",")) }

func (r *router) learned(t *testing.T) []netip.Prefix {
	var out []netip.Prefix
	for _, f := range strings.Split(r.do(t, "learned"), ",") {
		if f != "" {
			out = append(out, netip.MustParsePrefix(f))
		}
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func prefixesOf(t *testing.T, s *Speaker) []netip.Prefix {
	t.Helper()
	rs, err := s.Learned(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return Prefixes(rs)
}

func wantPrefixes(got []netip.Prefix, want ...string) error {
	var w []netip.Prefix
	for _, s := range want {
		w = append(w, netip.MustParsePrefix(s))
	}
	if !slices.Equal(got, w) {
		return fmt.Errorf("learned %v, want %v", got, w)
	}
	return nil
}

// The gateway's speaker, which only connects, and two routers in
// processes of their own, which listen on free ports, over loopback. The
// filters apply both ways, change at run time, one router's routes never
// reach the other, and a planned stop withdraws.
func TestSpeakersFilterBothWays(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	lo := netip.MustParseAddr("127.0.0.1")
	gw := New(Options{})
	gwCfg := Config{
		ASN: 64512, RouterID: netip.MustParseAddr("10.255.0.1"), ListenPort: -1, HoldTime: 3 * time.Second,
		Peers:  []Peer{{Name: "router", Address: lo, ASN: 64513, Port: uint16(port)}},
		Import: []PrefixRule{{Prefix: netip.MustParsePrefix("172.16.0.0/12"), MaxLength: 24}},
		Export: []PrefixRule{{Prefix: netip.MustParsePrefix("242.0.0.0/8"), MaxLength: 32}},
	}
	routerCfg := Config{
		ASN: 64513, RouterID: netip.MustParseAddr("10.255.0.2"), ListenPort: port, HoldTime: 3 * time.Second,
		Peers:  []Peer{{Name: "gateway", Address: lo, ASN: 64512, Port: 1}}, // port 1: it never connects itself
		Import: []PrefixRule{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), MaxLength: 32}},
	}
	router := startRouter(t, routerCfg)
	// A second router, in an AS of its own: what the first announces
	// must not reach it through the gateway.
	port2 := freePort(t)
	router2Cfg := routerCfg
	router2Cfg.ASN, router2Cfg.RouterID, router2Cfg.ListenPort = 64514, netip.MustParseAddr("10.255.0.3"), port2
	router2 := startRouter(t, router2Cfg)
	gwCfg.Peers = append(gwCfg.Peers, Peer{Name: "router2", Address: netip.MustParseAddr("127.0.0.2"), ASN: 64514, Port: uint16(port2)})
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Stop(ctx) })
	router.announce(t,
		"172.16.10.0/24",
		"172.16.99.128/25", // longer than the import filter's 24
		"10.1.0.0/16",      // outside it
	)
	if err := gw.Announce(ctx, []netip.Prefix{
		netip.MustParsePrefix("242.0.0.0/16"),
		netip.MustParsePrefix("242.255.0.187/32"),
		netip.MustParsePrefix("10.2.0.0/16"), // outside the export filter
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the gateway learns what its import filter lets through", func() error {
		return wantPrefixes(prefixesOf(t, gw), "172.16.10.0/24")
	})
	eventually(t, "the router learns what the export filter lets through", func() error {
		return wantPrefixes(router.learned(t), "242.0.0.0/16", "242.255.0.187/32")
	})
	eventually(t, "the second router learns the gateway's announcements, not the first router's", func() error {
		return wantPrefixes(router2.learned(t), "242.0.0.0/16", "242.255.0.187/32")
	})
	rs, _ := gw.Learned(ctx)
	if rs[0].NextHop != lo || rs[0].Peer != "router" {
		t.Errorf("learned %+v, want next hop %s from router", rs[0], lo)
	}
	eventually(t, "the session's counters and capabilities", func() error {
		ps, err := gw.Peers(ctx)
		if err != nil {
			return err
		}
		p := ps[0]
		if p.State != "established" || p.Received != 3 || p.Accepted != 1 || p.Advertised != 2 || !p.GracefulRestart || p.Since.IsZero() {
			return fmt.Errorf("%+v", p)
		}
		if !gw.Converged(ctx) {
			return fmt.Errorf("not converged with %+v", p)
		}
		return nil
	})

	// A withdrawal, and a wider import filter at run time.
	if err := gw.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	gwCfg.Import = append(gwCfg.Import, PrefixRule{Prefix: netip.MustParsePrefix("10.0.0.0/8"), MaxLength: 16})
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the withdrawal reaches the router", func() error {
		return wantPrefixes(router.learned(t), "242.0.0.0/16")
	})
	eventually(t, "the wider filter takes what was received before", func() error {
		return wantPrefixes(prefixesOf(t, gw), "10.1.0.0/16", "172.16.10.0/24")
	})

	// Narrower filters at run time, both ways.
	gwCfg.Import = gwCfg.Import[:1]
	gwCfg.Export = []PrefixRule{{Prefix: netip.MustParsePrefix("242.0.0.0/16")}}
	if err := gw.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16"), netip.MustParsePrefix("242.1.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router gets the second announcement", func() error {
		return wantPrefixes(router.learned(t), "242.0.0.0/16", "242.1.0.0/16")
	})
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the narrower export filter withdraws", func() error {
		return wantPrefixes(router.learned(t), "242.0.0.0/16")
	})
	eventually(t, "the narrower import filter drops", func() error {
		return wantPrefixes(prefixesOf(t, gw), "172.16.10.0/24")
	})
	gwCfg.Export = nil
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no export filter lets all out again", func() error {
		return wantPrefixes(router.learned(t), "242.0.0.0/16", "242.1.0.0/16")
	})
	// All of the gateway's own, and still nothing of the first router's.
	eventually(t, "the second router without an export filter", func() error {
		return wantPrefixes(router2.learned(t), "242.0.0.0/16", "242.1.0.0/16")
	})
	time.Sleep(time.Second)
	if err := wantPrefixes(router2.learned(t), "242.0.0.0/16", "242.1.0.0/16"); err != nil {
		t.Errorf("a route of the first router reached the second through the gateway: %v", err)
	}

	// A planned stop withdraws the gateway's routes at once.
	if err := gw.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router withdraws the stopped gateway's routes", func() error {
		return wantPrefixes(router.learned(t))
	})
	if rs, err := gw.Learned(ctx); err != nil || rs != nil {
		t.Errorf("a stopped speaker learned %v, %v", rs, err)
	}
	// And it starts again.
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	if err := gw.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the restarted gateway's routes", func() error {
		return wantPrefixes(router.learned(t), "242.0.0.0/16")
	})
}

func TestConfigureRefusesInvalid(t *testing.T) {
	s := New(Options{})
	err := s.Configure(context.Background(), Config{ASN: 1, RouterID: netip.MustParseAddr("10.0.0.1")})
	if err == nil || err.Error() != "bgp: peers: at least one is required" {
		t.Fatalf("got %v", err)
	}
}
