package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/gateway/bgp"
)

func init() {
	register(Bench{
		Name: "bgp",
		Doc: "time for the gateway's BGP speaker to learn and install N routes a BIRD router announces (and to remove " +
			"them when withdrawn), against BIRD learning the same routes from the same router",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Size, "routes", 10000, "routes the router announces")
			fs.IntVar(&c.Rounds, "rounds", 3, "announce-and-withdraw rounds")
		},
		Run: runBGP,
	})
}

// The benchmark's namespaces: the router (BIRD) in the middle, the
// gateway's speaker on one side, a second BIRD on the other.
const (
	bgpRouterASN   = 64513
	bgpGatewayASN  = 64512
	bgpBaselineASN = 64514
	// birdProto is RTPROT_BIRD, the protocol of the routes BIRD installs.
	birdProto = 12
)

// BGPReceiverMain is the gateway side of the benchmark, run as
// `strait bench-bgp-receiver` inside its namespace: the gateway's speaker
// and its kernel routes, as a gateway runs them, peering with the router,
// installing what it learns until stdin closes.
func BGPReceiverMain(args []string) error {
	fs := flag.NewFlagSet("bench-bgp-receiver", flag.ContinueOnError)
	self := fs.String("self", "10.9.0.2", "this side's address (router ID)")
	peer := fs.String("peer", "10.9.0.1", "the router's address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changed := make(chan struct{}, 1)
	s := bgp.New(bgp.Options{OnChange: func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}})
	cfg := bgp.Config{
		ASN: bgpGatewayASN, RouterID: netip.MustParseAddr(*self), ListenPort: -1, HoldTime: 9 * time.Second,
		Peers:  []bgp.Peer{{Name: "router", Address: netip.MustParseAddr(*peer), ASN: bgpRouterASN}},
		Import: []bgp.PrefixRule{{Prefix: netip.MustParsePrefix("172.16.0.0/12"), MaxLength: 32}},
	}
	if err := s.Configure(ctx, cfg); err != nil {
		return err
	}
	defer s.Stop(context.Background())
	routes, err := bgp.NewKernelRoutes()
	if err != nil {
		return err
	}
	defer routes.Close()
	go func() { // ends the run when the benchmark closes stdin
		buf := make([]byte, 1)
		os.Stdin.Read(buf)
		cancel()
	}()
	local, err := routes.Connected()
	if err != nil {
		return err
	}
	// The gateway's pass: learned routes, screened, synced to the kernel.
	for {
		learned, err := s.Learned(ctx)
		if err != nil && ctx.Err() == nil {
			return err
		}
		accepted, _ := bgp.Screen(learned, nil, local)
		if _, err := bgp.SyncRoutes(routes, accepted, true); err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "bench-bgp-receiver:", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

func runBGP(ctx context.Context, c Config) (Result, error) {
	n := c.Size
	if n <= 0 {
		n = 10000
	}
	if n > 1<<18 {
		return Result{}, fmt.Errorf("bench bgp: %d routes; at most %d fit 172.16.0.0/12 as /30s", n, 1<<18)
	}
	bird, err := exec.LookPath("bird")
	if err != nil {
		return Result{}, errors.New("bench bgp: bird is missing (Debian's bird2; `make deps` installs it)")
	}
	run := runID("bg")
	t, err := newTriple(run, 0)
	if err != nil {
		return Result{}, fmt.Errorf("bench bgp: %w", err)
	}
	defer t.stop()
	dir, err := os.MkdirTemp("", "strait-bench-bgp-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	// The router (t.gw) announces n /30s of 172.16.0.0/12, off until a
	// round turns them on.
	var routes strings.Builder
	for i := range n {
		a := netip.AddrFrom4([4]byte{172, byte(16 + i>>14), byte(i >> 6), byte(i&63) << 2})
		fmt.Fprintf(&routes, "\troute %s/30 blackhole;\n", a)
	}
	routerConf := fmt.Sprintf(`router id 10.9.0.1;
protocol device {}
protocol static announced { ipv4; disabled; 
%s}
protocol bgp strait_side { local 10.9.0.1 as %d; neighbor 10.9.0.2 as %d; hold time 9; ipv4 { import none; export where source = RTS_STATIC; }; }
protocol bgp bird_side { local 10.0.1.1 as %d; neighbor 10.0.1.10 as %d; hold time 9; ipv4 { import none; export where source = RTS_STATIC; }; }
`, routes.String(), bgpRouterASN, bgpGatewayASN, bgpRouterASN, bgpBaselineASN)
	baselineConf := fmt.Sprintf(`router id 10.0.1.10;
protocol device {}
protocol kernel { ipv4 { import none; export all; }; }
protocol bgp upstream { local 10.0.1.10 as %d; neighbor 10.0.1.1 as %d; hold time 9; ipv4 { import all; export none; }; }
`, bgpBaselineASN, bgpRouterASN)
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
			p.Wait()
		}
	}()
	startBird := func(ns netns.NS, name, conf string) error {
		path := filepath.Join(dir, name+".conf")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			return err
		}
		cmd := ns.Command(bird, "-f", "-c", path, "-s", filepath.Join(dir, name+".ctl"), "-P", filepath.Join(dir, name+".pid"))
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			return err
		}
		defer logf.Close()
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("bird %s: %w", name, err)
		}
		procs = append(procs, cmd)
		return nil
	}
	birdc := func(ns netns.NS, name string, args ...string) (string, error) {
		out, err := ns.Command("birdc", append([]string{"-s", filepath.Join(dir, name+".ctl")}, args...)...).CombinedOutput()
		return string(out), err
	}
	if err := startBird(t.gw, "router", routerConf); err != nil {
		return Result{}, fmt.Errorf("bench bgp: %w", err)
	}
	if err := startBird(t.server, "baseline", baselineConf); err != nil {
		return Result{}, fmt.Errorf("bench bgp: %w", err)
	}
	recv := t.client.Command(c.StraitBin, "bench-bgp-receiver")
	stdin, err := recv.StdinPipe()
	if err != nil {
		return Result{}, err
	}
	recv.Stderr = c.Log
	if err := recv.Start(); err != nil {
		return Result{}, fmt.Errorf("bench bgp: the gateway's speaker: %w", err)
	}
	defer func() { stdin.Close(); recv.Wait() }()

	// Both sessions up.
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := birdc(t.gw, "router", "show", "protocols")
		if err == nil && strings.Count(out, "Established") == 2 {
			break
		}
		if time.Now().After(deadline) {
			logs, _ := os.ReadFile(filepath.Join(dir, "router.log"))
			return Result{}, fmt.Errorf("bench bgp: sessions not established within 60s:\n%s\nrouter's log:\n%s", out, logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.logf("both sessions established; %d routes a round", n)

	hs := map[string]*netlink.Handle{}
	for name, ns := range map[string]netns.NS{"gateway": t.client, "bird": t.server} {
		h, err := ns.Handle()
		if err != nil {
			return Result{}, err
		}
		defer h.Close()
		hs[name] = h
	}
	count := func(h *netlink.Handle, proto netlink.RouteProtocol) (int, error) {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN, Protocol: proto},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
		return len(rs), err
	}
	// wait measures, from start, when each side's kernel has want routes.
	wait := func(start time.Time, want int) (gw, base time.Duration, err error) {
		deadline := start.Add(5 * time.Minute)
		for gw == 0 || base == 0 {
			if gw == 0 {
				k, err := count(hs["gateway"], bgp.RouteProtocol)
				if err != nil {
					return 0, 0, err
				}
				if k == want {
					gw = time.Since(start)
				}
			}
			if base == 0 {
				k, err := count(hs["bird"], birdProto)
				if err != nil {
					return 0, 0, err
				}
				if k == want {
					base = time.Since(start)
				}
			}
			if time.Now().After(deadline) {
				return 0, 0, fmt.Errorf("not %d routes on both sides within 5 minutes (gateway %v, BIRD %v)", want, gw, base)
			}
			if ctx.Err() != nil {
				return 0, 0, ctx.Err()
			}
			time.Sleep(20 * time.Millisecond)
		}
		return gw, base, nil
	}
	var learnGw, learnBird, dropGw, dropBird []float64
	for r := range max(c.Rounds, 1) {
		start := time.Now()
		if out, err := birdc(t.gw, "router", "enable", "announced"); err != nil {
			return Result{}, fmt.Errorf("bench bgp: enable: %v: %s", err, out)
		}
		gw, base, err := wait(start, n)
		if err != nil {
			return Result{}, fmt.Errorf("bench bgp: round %d, announced: %w", r+1, err)
		}
		learnGw, learnBird = append(learnGw, ms(gw)), append(learnBird, ms(base))
		start = time.Now()
		if out, err := birdc(t.gw, "router", "disable", "announced"); err != nil {
			return Result{}, fmt.Errorf("bench bgp: disable: %v: %s", err, out)
		}
		gw2, base2, err := wait(start, 0)
		if err != nil {
			return Result{}, fmt.Errorf("bench bgp: round %d, withdrawn: %w", r+1, err)
		}
		dropGw, dropBird = append(dropGw, ms(gw2)), append(dropBird, ms(base2))
		c.logf("round %d: installed in %.0f ms (BIRD %.0f ms), removed in %.0f ms (BIRD %.0f ms)", r+1, ms(gw), ms(base), ms(gw2), ms(base2))
	}
	return Result{
		Bench: "bgp", Value: round(median(learnGw)), Unit: "ms",
		Baseline:      fmt.Sprintf("BIRD learning the same %d routes from the same router into its kernel (median ms)", n),
		BaselineValue: round(median(learnBird)),
		Extra: map[string]any{
			"routes":               n,
			"withdraw_ms":          round(median(dropGw)),
			"baseline_withdraw_ms": round(median(dropBird)),
			"withdraw_ratio":       round(median(dropGw) / median(dropBird)),
			"rounds":               len(learnGw),
			"measured":             "from `birdc enable` at the router until the receiver's kernel holds every route (and from `disable` until none)",
		},
	}, nil
}
