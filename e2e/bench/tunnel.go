package bench

import (
	"context"
	"crypto/rand"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns"
)

const wireguardModule = "golang.zx2c4.com/wireguard"

func init() {
	register(Bench{
		Name: "tunnel",
		Doc: "iperf3 TCP throughput pod to pod across the tunnel between two sites, strait's gateway against " +
			"the upstream wireguard-go binary of the same module version in the same topology; raw veth too",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.DurationVar(&c.Duration, "duration", 8*time.Second, "length of one iperf3 measurement")
			fs.IntVar(&c.Rounds, "rounds", 5, "measurements of each side, alternated; the median counts")
		},
		Run: runTunnel,
	})
}

func runID(prefix string) string {
	var b [3]byte
	rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

func runTunnel(ctx context.Context, c Config) (Result, error) {
	upstream := filepath.Join(c.BinDir, "wireguard-go")
	want, err := wireGuardVersionOf(c.GatewayBin)
	if err != nil {
		return Result{}, err
	}
	if err := checkUpstream(upstream, want); err != nil {
		return Result{}, err
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return Result{}, errors.New("bench tunnel: iperf3 is missing (`make deps` installs it)")
	}
	secs := max(int(c.Duration.Seconds()), 2)
	rounds := max(c.Rounds, 1)

	c.logf("raw veth between two namespaces, %ds...", secs)
	raw, err := rawVeth(ctx, secs)
	if err != nil {
		return Result{}, err
	}
	c.logf("  %.2f Gbit/s", raw)

	sides := []struct {
		name string
		opts lab.Options
		lab  *lab.Lab
		gbps []float64
		cpu  []float64 // CPU seconds of the tunnel processes per gigabit
	}{
		{name: "strait", opts: lab.Options{Run: runID("bs"), WireGuard: "userspace"}},
		{name: "upstream", opts: lab.Options{Run: runID("bu"), WireGuard: "wireguard-go", WireGuardGo: upstream}},
	}
	for i := range sides {
		s := &sides[i]
		s.opts.GatewayBin, s.opts.StraitBin = c.GatewayBin, c.StraitBin
		// Gateways look at their configuration every 10s, not every second:
		// the control plane has nothing to do during the measurement.
		s.opts.Interval = 10 * time.Second
		l, err := lab.Up(ctx, lab.Pair(), s.opts)
		if err != nil {
			return Result{}, fmt.Errorf("bench tunnel: %s lab: %w", s.name, err)
		}
		defer l.Down()
		s.lab = l
		if err := startIperfServer(l, "cloud-b-pod1"); err != nil {
			return Result{}, err
		}
		// Warm up, unmeasured: buffer pools, heaps and caches of both
		// sides reach their steady state before any round counts.
		if _, err := iperfPods(ctx, l, "cloud-a-pod1", "cloud-b-pod1", 2); err != nil {
			return Result{}, fmt.Errorf("bench tunnel: %s warm-up: %w", s.name, err)
		}
	}
	var paired []float64
	for r := range rounds {
		var g [2]float64
		for k := range sides {
			// Alternate who goes first, so that drift of the machine
			// during the run hits both sides alike.
			i := (k + r) % len(sides)
			s := &sides[i]
			before, err := tunnelCPU(s.lab)
			if err != nil {
				return Result{}, err
			}
			gbps, err := iperfPods(ctx, s.lab, "cloud-a-pod1", "cloud-b-pod1", secs)
			if err != nil {
				return Result{}, fmt.Errorf("bench tunnel: %s: %w", s.name, err)
			}
			after, err := tunnelCPU(s.lab)
			if err != nil {
				return Result{}, err
			}
			g[i] = gbps
			s.gbps = append(s.gbps, gbps)
			s.cpu = append(s.cpu, (after-before)/(gbps*float64(secs)))
			c.logf("round %d: %-8s %.2f Gbit/s, %.2f CPU s/Gbit", r+1, s.name, gbps, s.cpu[len(s.cpu)-1])
		}
		paired = append(paired, g[0]/g[1])
	}
	st, err := tunnelMTU(sides[0].lab)
	if err != nil {
		return Result{}, err
	}
	return Result{
		Bench:         "tunnel",
		Value:         median(sides[0].gbps),
		Unit:          "Gbit/s",
		Baseline:      fmt.Sprintf("upstream wireguard-go binary built from %s %s, same topology", wireguardModule, want),
		BaselineValue: median(sides[1].gbps),
		Extra: map[string]any{
			"raw_veth_gbps":   round(raw),
			"strait_rounds":   roundAll(sides[0].gbps),
			"baseline_rounds": roundAll(sides[1].gbps),
			// Each round's ratio of two measurements taken back to back;
			// their median is steadier than the ratio of medians.
			"paired_ratio_median": round(median(paired)),
			// CPU seconds the tunnel processes (both gateways) spent per
			// gigabit carried: efficiency, less noisy than throughput on a
			// CPU-bound, shared machine.
			"strait_cpu_s_per_gbit":   round(median(sides[0].cpu)),
			"baseline_cpu_s_per_gbit": round(median(sides[1].cpu)),
			"seconds":                 secs,
			"tunnel_mtu":              st,
			"path":                    "pod-node-gateway(SNAT)-WireGuard-WAN router-WireGuard-gateway(DNAT)-node-pod",
		},
	}, nil
}

// tunnelCPU is the CPU time, in seconds, that every process in the lab's
// gateway hosts has used: strait-gateway, and wireguard-go where it runs
// the device.
func tunnelCPU(l *lab.Lab) (float64, error) {
	var ticks int64
	for _, h := range l.Hosts {
		if h.Role != lab.RoleGateway {
			continue
		}
		pids, err := h.Namespace().Pids()
		if err != nil {
			return 0, err
		}
		for _, pid := range pids {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue // gone
			}
			// utime and stime are fields 14 and 15, after the command
			// name in parentheses.
			f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
			if len(f) < 13 {
				continue
			}
			u, _ := strconv.ParseInt(f[11], 10, 64)
			s, _ := strconv.ParseInt(f[12], 10, 64)
			ticks += u + s
		}
	}
	return float64(ticks) / clockTicks, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on Linux.
const clockTicks = 100

func roundAll(xs []float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = round(x)
	}
	return out
}

// wireGuardVersionOf is the golang.zx2c4.com/wireguard version a binary was
// built with: for the gateway, the one in go.mod.
func wireGuardVersionOf(path string) (string, error) {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("bench tunnel: %s: %w", path, err)
	}
	for _, d := range bi.Deps {
		if d.Path == wireguardModule {
			return d.Version, nil
		}
	}
	return "", fmt.Errorf("bench tunnel: %s does not include %s", path, wireguardModule)
}

// checkUpstream makes sure the baseline binary is wireguard-go's own main
// package built from the same module version strait uses.
func checkUpstream(path, want string) error {
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("bench tunnel: upstream wireguard-go at %s: %w (`make build` builds it from the version in go.mod)", path, err)
	}
	if bi.Path != wireguardModule {
		return fmt.Errorf("bench tunnel: %s is %s, not wireguard-go's main package %s", path, bi.Path, wireguardModule)
	}
	got := bi.Main.Version
	for _, d := range bi.Deps {
		if d.Path == wireguardModule {
			got = d.Version
		}
	}
	if got != want {
		return fmt.Errorf("bench tunnel: %s was built from %s %s, strait uses %s: rebuild it (`make build`)", path, wireguardModule, got, want)
	}
	return nil
}

func startIperfServer(l *lab.Lab, host string) error {
	cmd, err := l.Command(host, "iperf3", "-s", "-p", fmt.Sprint(lab.IperfPort))
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("bench: iperf3 server in %s: %w", host, err)
	}
	go cmd.Wait() // the lab's Down stops it
	return nil
}

// iperfPods runs iperf3 from one pod to the lab server address of another
// and returns the receiver's throughput in Gbit/s.
func iperfPods(ctx context.Context, l *lab.Lab, from, to string, secs int) (float64, error) {
	src, dst := l.MustHost(from), l.MustHost(to)
	target := l.Topology.Target(src, dst)
	// Warm up: the handshake, ARP, and a reachable server.
	if _, err := lab.Request(ctx, src, netip.AddrPortFrom(target, lab.ServePort), "tcp", 3*time.Second); err != nil {
		return 0, fmt.Errorf("%s cannot reach %s at %s: %w", from, to, target, err)
	}
	return iperf(ctx, src.Namespace(), target, secs)
}

// iperf runs an iperf3 client inside ns against a server at target,
// retrying while the server is not listening yet.
func iperf(ctx context.Context, ns netns.NS, target netip.Addr, secs int) (float64, error) {
	var last error
	for try := 0; try < 30; try++ {
		cmd := ns.Command("iperf3", "-c", target.String(), "-p", fmt.Sprint(lab.IperfPort), "-t", fmt.Sprint(secs), "-O", "1", "-J")
		out, err := cmd.Output()
		var res struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal(out, &res); jerr != nil {
			last = fmt.Errorf("iperf3: %v: %s", err, out)
		} else if res.Error != "" {
			last = fmt.Errorf("iperf3: %s", res.Error)
		} else if err == nil {
			return res.End.SumReceived.BitsPerSecond / 1e9, nil
		}
		if !strings.Contains(fmt.Sprint(last), "connect") && !strings.Contains(fmt.Sprint(last), "busy") {
			return 0, last
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, last
}

// rawVeth measures iperf3 over one bare veth between two namespaces.
func rawVeth(ctx context.Context, secs int) (_ float64, err error) {
	run := runID("bv")
	a, err := netns.Add(netns.Prefix + run + "-a")
	if err != nil {
		return 0, err
	}
	defer netns.Delete(a.Name)
	b, err := netns.Add(netns.Prefix + run + "-b")
	if err != nil {
		return 0, err
	}
	defer netns.Delete(b.Name)
	ha, err := a.Handle()
	if err != nil {
		return 0, err
	}
	defer ha.Close()
	hb, err := b.Handle()
	if err != nil {
		return 0, err
	}
	defer hb.Close()
	fd, err := b.Open()
	if err != nil {
		return 0, err
	}
	defer fd.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(fd))}); err != nil {
		return 0, fmt.Errorf("bench: veth: %w", err)
	}
	for i, h := range []*netlink.Handle{ha, hb} {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return 0, err
		}
		addr, _ := netlink.ParseAddr(fmt.Sprintf("10.99.0.%d/24", i+1))
		if err := h.AddrAdd(l, addr); err != nil {
			return 0, err
		}
		if err := h.LinkSetUp(l); err != nil {
			return 0, err
		}
	}
	srv := b.Command("iperf3", "-s", "-p", fmt.Sprint(lab.IperfPort))
	if err := srv.Start(); err != nil {
		return 0, err
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	return iperf(ctx, a, netip.MustParseAddr("10.99.0.2"), secs)
}

// tunnelMTU reads the tunnel MTU a gateway of the lab chose.
func tunnelMTU(l *lab.Lab) (int, error) {
	gw, _ := l.GatewayOf("cloud-a")
	h, err := gw.Namespace().Handle()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	link, err := h.LinkByName(lab.TunnelInterface(l.Run, gw.Index))
	if err != nil {
		return 0, err
	}
	return link.Attrs().MTU, nil
}
