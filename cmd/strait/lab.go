package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/straitnet/strait/e2e/kube"
	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/lab/wanemu"
	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/natpool"
)

func labCmd(args []string) error {
	if len(args) == 0 {
		return usagef("lab: which subcommand? (up, status, matrix, exec, connect, trace, kube, wan, down, ls)")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "up":
		return labUp(args)
	case "status":
		return labStatus(args)
	case "matrix":
		return labMatrix(args)
	case "exec":
		return labExec(args)
	case "connect":
		return labConnect(args)
	case "trace":
		return labTrace(args)
	case "kube":
		return labKube(args)
	case "wan":
		return labWAN(args)
	case "down":
		return labDown(args)
	case "ls":
		return labLs(args)
	case "serve":
		return labServe(args)
	case "wan-emulator":
		return labWANEmulator(args)
	case "kube-apiserver":
		return labKubeAPIServer(args)
	}
	return usagef("lab: unknown subcommand %q", sub)
}

// labFlags are the flags every lab subcommand has.
func labFlags(name string) (*flag.FlagSet, *string, *string) {
	fs := flag.NewFlagSet("lab "+name, flag.ContinueOnError)
	run := fs.String("run", "demo", "run ID of the lab (1-8 lowercase letters or digits)")
	dir := fs.String("dir", lab.DefaultDir, "state directory of labs")
	return fs, run, dir
}

// binDir is where strait's binaries are: next to this one.
func binDir() string {
	exe, err := os.Executable()
	if err != nil {
		return "."
	}
	return filepath.Dir(exe)
}

func labUp(args []string) error {
	fs, run, dir := labFlags("up")
	topo := fs.String("topology", "merger", "topology: merger, pair, or a YAML file")
	wg := fs.String("wireguard", "auto", "gateways' WireGuard implementation: auto, kernel, userspace, wireguard-go")
	wgGo := fs.String("wireguard-go", "", "wireguard-go binary for --wireguard=wireguard-go")
	gwBin := fs.String("gateway-bin", filepath.Join(binDir(), "strait-gateway"), "strait-gateway binary")
	quiet := fs.Bool("quiet", false, "print nothing but errors")
	vips := fs.String("vip-range", "242.255.0.0/24", "the mesh's VIP range: gateways balance global services (empty: no load balancer)")
	disc := fs.Bool("discovery", true, "gateways learn each other through the gossip catalog, each from a mesh file of its own, and answer clusterset.local; false: one shared mesh file lists every site")
	kubeOn := fs.Bool("kube", false, "the topology's Kubernetes sites run clusters: kube-apiserver and etcd in the gateway, kube-proxy on the nodes (`strait lab kube` reaches them)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var vipRange netip.Prefix
	if *vips != "" {
		var err error
		if vipRange, err = netip.ParsePrefix(*vips); err != nil {
			return usagef("--vip-range %q: %v", *vips, err)
		}
	}
	t, ok := lab.Builtin(*topo)
	if !ok {
		var err error
		if t, err = lab.LoadTopology(*topo); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var log io.Writer = os.Stdout
	if *quiet {
		log = nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	l, err := lab.Up(ctx, t, lab.Options{
		Run: *run, Dir: *dir, GatewayBin: *gwBin, StraitBin: self,
		WireGuard: *wg, WireGuardGo: *wgGo, Log: log, Discovery: *disc, VIPRange: vipRange, Kube: *kubeOn,
	})
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Printf("\nlab %q (topology %s) is up: %d hosts. `strait lab status --run %s` shows it.\n", l.Run, t.Name, len(l.Hosts), l.Run)
	}
	return nil
}

func labStatus(args []string) error {
	fs, run, dir := labFlags("status")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	fmt.Printf("lab %q, topology %s, state in %s\n\n", l.Run, l.Topology.Name, l.Dir)
	fmt.Printf("%-16s %-8s %-32s %-16s %s\n", "HOST", "ROLE", "NETWORK NAMESPACE", "ADDRESS", "")
	for _, h := range l.Hosts {
		addr, other := "", ""
		if h.Addr.IsValid() {
			addr = h.Addr.String()
		}
		switch {
		case h.Role == lab.RolePod:
			other = fmt.Sprintf("%s/%s, service %s, leaves as %s", h.PodNamespace, h.Service(), h.Global, h.Egress)
		case h.WAN.IsValid():
			other = "wan " + h.WAN.String()
		}
		if h.Role == lab.RoleNode {
			other = "pods " + h.PodCIDR.String()
		}
		fmt.Printf("%-16s %-8s %-32s %-16s %s\n", h.Name, h.Role, h.NS, addr, other)
	}
	var matrix []natpool.Pair
	for _, s := range l.Topology.Sites {
		if _, ok := l.GatewayOf(s.Name); !ok {
			continue
		}
		fmt.Println()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := gateway.FetchStatus(ctx, l.SocketOf(s.Name))
		cancel()
		if err != nil {
			fmt.Printf("gateway %s: NOT ANSWERING: %v\n", s.Name, err)
			continue
		}
		printStatus(os.Stdout, st)
		matrix = st.Matrix
	}
	if matrix != nil {
		fmt.Println()
		printMatrix(os.Stdout, matrix)
	}
	return nil
}

func labMatrix(args []string) error {
	fs, run, dir := labFlags("matrix")
	paths := fs.Bool("paths", false, "also list every pair with the address used and the source the receiver saw")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	start := time.Now()
	cells := l.Matrix(context.Background())
	fmt.Printf("connectivity of lab %q: TCP to port %d and ICMP echo, real traffic, every pair (%s)\n\n", l.Run, lab.ServePort, time.Since(start).Round(time.Millisecond))
	lab.PrintMatrix(os.Stdout, l.Hosts, cells)
	failed := 0
	for _, c := range cells {
		if !c.OK() {
			failed++
		}
	}
	if *paths || failed > 0 {
		fmt.Println()
		lab.PrintPaths(os.Stdout, cells)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d pairs failed", failed, len(cells))
	}
	return nil
}

// labConnect opens TCP connections from a host to a lab server's address
// and counts which server answered each: a VIP's spread over its backends.
func labConnect(args []string) error {
	fs, run, dir := labFlags("connect")
	n := fs.Int("n", 20, "connections")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usagef("lab connect HOST ADDR[:PORT]: from which host to where?")
	}
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	from, ok := l.Host(fs.Arg(0))
	if !ok {
		return fmt.Errorf("lab connect: no host %q (`strait lab status` lists them)", fs.Arg(0))
	}
	to, err := netip.ParseAddrPort(fs.Arg(1))
	if err != nil {
		a, aerr := netip.ParseAddr(fs.Arg(1))
		if aerr != nil {
			return usagef("lab connect: %q is not an address or address:port", fs.Arg(1))
		}
		to = netip.AddrPortFrom(a, lab.ServePort)
	}
	seen := map[string]int{}
	failed := 0
	for range *n {
		r, err := lab.Request(context.Background(), from, to, "tcp", 2*time.Second)
		if err != nil {
			failed++
			seen["failed: "+err.Error()]++
			continue
		}
		seen[r.Name+" (saw "+r.Peer.Addr().String()+")"]++
	}
	for _, k := range slices.Sorted(maps.Keys(seen)) {
		fmt.Printf("  %3d  %s\n", seen[k], k)
	}
	if failed == *n {
		return fmt.Errorf("lab connect: no connection from %s to %s", from.Name, to)
	}
	return nil
}

func labExec(args []string) error {
	fs, run, dir := labFlags("exec")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usagef("lab exec: which host? (`strait lab status` lists them)")
	}
	host, cmdArgs := rest[0], rest[1:]
	if len(cmdArgs) > 0 && cmdArgs[0] == "--" {
		cmdArgs = cmdArgs[1:]
	}
	if len(cmdArgs) == 0 {
		sh := os.Getenv("SHELL")
		if sh == "" {
			sh = "/bin/bash"
		}
		cmdArgs = []string{sh}
	}
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	cmd, err := l.Command(host, cmdArgs[0], cmdArgs[1:]...)
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "STRAIT_LAB_HOST="+host)
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			os.Exit(ee.ExitCode())
		}
		return err
	}
	return nil
}

func labWAN(args []string) error {
	fs, run, dir := labFlags("wan")
	latency := fs.Duration("latency", 0, "one-way delay added on the site's WAN link, each direction")
	jitter := fs.Duration("jitter", 0, "jitter of the delay")
	loss := fs.Float64("loss", 0, "packet loss in percent, each direction")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("lab wan: name one site")
	}
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	w := lab.WAN{Latency: lab.Duration(*latency), Jitter: lab.Duration(*jitter), Loss: *loss}
	if err := l.SetWAN(pos[0], w); err != nil {
		return err
	}
	fmt.Printf("WAN of %s: latency %s, jitter %s, loss %g%%\n", pos[0], *latency, *jitter, *loss)
	return nil
}

func labDown(args []string) error {
	fs, run, dir := labFlags("down")
	all := fs.Bool("all", false, "remove every lab, including what crashed runs and tests left")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runs := []string{*run}
	if *all {
		var err error
		if runs, err = lab.Runs(*dir); err != nil {
			return err
		}
	}
	// Every run, even when one fails: --all is what cleans up after crashes.
	var errs []error
	for _, r := range runs {
		if err := lab.Down(r, *dir); err != nil {
			errs = append(errs, fmt.Errorf("lab %s: %w", r, err))
			continue
		}
		left, err := lab.Leftovers(r, *dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if len(left) > 0 {
			errs = append(errs, fmt.Errorf("lab %s: left behind: %s", r, strings.Join(left, ", ")))
			continue
		}
		fmt.Printf("lab %q is down\n", r)
	}
	return errors.Join(errs...)
}

func labLs(args []string) error {
	fs, _, dir := labFlags("ls")
	if err := fs.Parse(args); err != nil {
		return err
	}
	runs, err := lab.Runs(*dir)
	if err != nil {
		return err
	}
	for _, r := range runs {
		if l, err := lab.Open(r, *dir); err == nil {
			fmt.Printf("%-10s topology %-8s %d hosts\n", r, l.Topology.Name, len(l.Hosts))
		} else {
			fmt.Printf("%-10s (no state: leftovers of a crash; `strait lab down --run %s`)\n", r, r)
		}
	}
	return nil
}

// labServe is the server every lab pod runs (not for users).
func labServe(args []string) error {
	fs := flag.NewFlagSet("lab serve", flag.ContinueOnError)
	name := fs.String("name", "", "host name to answer with")
	port := fs.Int("port", lab.ServePort, "TCP and UDP port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return lab.Serve(ctx, *name, *port, slog.New(slog.NewTextHandler(os.Stderr, nil)))
}

// labWANEmulator is the WAN emulator the lab runs in its WAN router (not
// for users).
func labWANEmulator(args []string) error {
	fs := flag.NewFlagSet("lab wan-emulator", flag.ContinueOnError)
	cfg := fs.String("config", "", "emulator configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return wanemu.Daemon(ctx, *cfg, slog.New(slog.NewTextHandler(os.Stderr, nil)))
}

// labKubeAPIServer builds the pinned kube-apiserver and kube-proxy into
// the cache, if they are not there yet, and prints their paths.
func labKubeAPIServer(args []string) error {
	fs := flag.NewFlagSet("lab kube-apiserver", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, build := range []func(context.Context) (string, error){kube.Binary, kube.ProxyBinary} {
		path, err := build(context.Background())
		if err != nil {
			return err
		}
		fmt.Println(path)
	}
	return nil
}
