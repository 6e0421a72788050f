package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/gateway/tunnel"
)

// DefaultDir keeps the state of lab runs: mesh file, keys, logs, lab.json.
// It is on tmpfs, like the namespaces, so neither outlives a reboot.
const DefaultDir = "/run/strait/lab"

// Options for Up.
type Options struct {
	// Run names this lab; every namespace is "strait-<run>-<host>".
	Run string
	// Dir is the state root; default DefaultDir.
	Dir string
	// GatewayBin is the strait-gateway binary; StraitBin the strait one
	// (pods run `strait lab serve`, plain sites `strait config wg-quick`).
	GatewayBin, StraitBin string
	// WireGuard is the gateways' --wireguard mode; default auto.
	WireGuard string
	// WireGuardGo is the binary for WireGuard mode wireguard-go.
	WireGuardGo string
	// Interval is the gateways' reconcile interval; default 1s.
	Interval time.Duration
	// Log receives progress lines; nil is quiet.
	Log io.Writer
	// Discovery has the gateways learn each other from the gossip
	// catalog, each with a mesh file of its own, and answer
	// clusterset.local on DNSPort.
	Discovery bool
	// Kubeconfigs gives sites' gateways a cluster's API (--kubeconfig),
	// as seen from the gateway's namespace.
	Kubeconfigs map[string]string
	// Kube makes every site of the topology marked Kubernetes a cluster
	// of its own: kube-apiserver and etcd in its gateway's namespace,
	// kube-proxy on its nodes, all lab processes (see kube.go). Its
	// gateway gets the kubeconfig.
	Kube bool
	// BeforeGateways runs once the network is built, before the
	// gateways start (to reach services into the namespaces).
	BeforeGateways func(*Lab) error
	// VIPRange, when valid, gives the mesh files a loadBalancer section:
	// the gateways balance global services with VIPs from it; Hub, when
	// set, is the one site that balances for all.
	VIPRange netip.Prefix
	Hub      string
}

// Lab is a lab that is up. Its exported fields are saved in lab.json, so
// that other commands (status, exec, down) find it.
type Lab struct {
	Run      string   `json:"run"`
	Dir      string   `json:"dir"`
	Topology Topology `json:"topology"`
	Hosts    []Host   `json:"hosts"`
	Procs    []Proc   `json:"procs"`
	Bins     struct {
		Gateway     string `json:"gateway"`
		Strait      string `json:"strait"`
		WireGuard   string `json:"wireguard"`
		WireGuardGo string `json:"wireguardGo,omitempty"`
		Interval    string `json:"interval"`
	} `json:"bins"`
	// Mesh is the mesh configuration the gateways run on.
	Mesh MeshDoc `json:"mesh"`
	// WANGeneration counts changes of the WAN emulator's configuration.
	WANGeneration int `json:"wanGeneration"`
	// DerivedBlocks names the sites whose blocks the mesh file leaves to
	// the gateways to derive.
	DerivedBlocks []string `json:"derivedBlocks,omitempty"`
	// Discovery says the gateways learn each other through gossip.
	Discovery   bool              `json:"discovery,omitempty"`
	Kubeconfigs map[string]string `json:"kubeconfigs,omitempty"`
	// Kube says the Kubernetes sites run clusters of the lab's own.
	Kube bool `json:"kube,omitempty"`
	// VIPRange is the mesh's VIP range, if the gateways balance.
	VIPRange netip.Prefix `json:"vipRange,omitzero"`
	Hub      string       `json:"hub,omitempty"`

	beforeGateways func(*Lab) error

	log io.Writer
}

// Proc is a process the lab started.
type Proc struct {
	Host string `json:"host"`
	What string `json:"what"` // "gateway", "server"
	Pid  int    `json:"pid"`
	Log  string `json:"log"`
}

// Up builds the topology and starts its gateways and pod servers. If any
// step fails, everything made so far is removed.
func Up(ctx context.Context, t Topology, o Options) (_ *Lab, err error) {
	if o.Dir == "" {
		o.Dir = DefaultDir
	}
	if o.WireGuard == "" {
		o.WireGuard = string(tunnel.ModeAuto)
	}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	var derived []string
	for _, s := range t.Sites {
		if !s.Block.IsValid() {
			derived = append(derived, s.Name)
		}
	}
	if t, err = t.Resolve(); err != nil {
		return nil, err
	}
	hosts, err := Plan(t, o.Run)
	if err != nil {
		return nil, err
	}
	if left, _ := netns.List(nsPrefix(o.Run)); len(left) > 0 {
		return nil, fmt.Errorf("lab: run %q is already up (%d namespaces); `strait lab down --run %s` removes it", o.Run, len(left), o.Run)
	}
	for _, b := range []string{o.GatewayBin, o.StraitBin} {
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("lab: binary: %w (run `make build`)", err)
		}
	}
	l := &Lab{Run: o.Run, Dir: filepath.Join(o.Dir, o.Run), Topology: t, Hosts: hosts, DerivedBlocks: derived, log: o.Log,
		Discovery: o.Discovery, Kubeconfigs: o.Kubeconfigs, beforeGateways: o.BeforeGateways, VIPRange: o.VIPRange, Hub: o.Hub, Kube: o.Kube}
	l.Bins.Gateway, l.Bins.Strait, l.Bins.WireGuard, l.Bins.WireGuardGo = o.GatewayBin, o.StraitBin, o.WireGuard, o.WireGuardGo
	l.Bins.Interval = o.Interval.String()
	defer func() {
		if err != nil {
			if derr := Down(o.Run, o.Dir); derr != nil {
				err = errors.Join(err, derr)
			}
		}
	}()
	if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	start := time.Now()
	if err := l.build(); err != nil {
		return nil, err
	}
	l.logf("network built: %d namespaces in %s", len(hosts), time.Since(start).Round(time.Millisecond))
	if err := l.save(); err != nil {
		return nil, err
	}
	if err := l.startKube(ctx); err != nil {
		return nil, err
	}
	if err := l.startGateways(ctx); err != nil {
		return nil, err
	}
	if err := l.joinPlainSites(ctx); err != nil {
		return nil, err
	}
	if err := l.waitMeshed(ctx, 20*time.Second); err != nil {
		return nil, err
	}
	if err := l.readAllocations(ctx); err != nil {
		return nil, err
	}
	l.logf("tunnels up: every gateway has a WireGuard session with every peer (%s)", time.Since(start).Round(time.Millisecond))
	if err := l.startServers(ctx); err != nil {
		return nil, err
	}
	if err := l.waitBalanced(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if err := l.save(); err != nil {
		return nil, err
	}
	l.logf("lab %q up in %s", l.Run, time.Since(start).Round(time.Millisecond))
	return l, nil
}

func nsPrefix(run string) string { return netns.Prefix + run + "-" }

func (l *Lab) logf(format string, args ...any) {
	if l.log != nil {
		fmt.Fprintf(l.log, format+"\n", args...)
	}
}

// SetLog sets where progress lines go.
func (l *Lab) SetLog(w io.Writer) { l.log = w }

// Host returns the host called name.
func (l *Lab) Host(name string) (Host, bool) {
	i := slices.IndexFunc(l.Hosts, func(h Host) bool { return h.Name == name })
	if i < 0 {
		return Host{}, false
	}
	return l.Hosts[i], true
}

// MustHost returns the host called name, or panics: for tests, where a
// missing host is a bug in the test.
func (l *Lab) MustHost(name string) Host {
	h, ok := l.Host(name)
	if !ok {
		panic("lab: no host " + name)
	}
	return h
}

// NS returns the namespace of a host.
func (h Host) Namespace() netns.NS { return netns.NS{Name: h.NS} }

func (l *Lab) statePath() string { return filepath.Join(l.Dir, "lab.json") }

func (l *Lab) save() error {
	data, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(l.statePath(), data, 0o600)
}

// Open finds a lab that is up by its run ID.
func Open(run, dir string) (*Lab, error) {
	if dir == "" {
		dir = DefaultDir
	}
	if err := ValidRun(run); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(filepath.Join(dir, run, "lab.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("lab: no lab %q is up (no %s); `strait lab up` makes one", run, filepath.Join(dir, run, "lab.json"))
	}
	if err != nil {
		return nil, fmt.Errorf("lab: %w", err)
	}
	var l Lab
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("lab: state of run %q: %w", run, err)
	}
	return &l, nil
}

// Down removes the lab.
func (l *Lab) Down() error {
	return Down(l.Run, filepath.Dir(l.Dir))
}

// Down removes everything of a run by name: processes, namespaces (and
// with them every link, route and nftables table inside), leftover
// WireGuard sockets, and the state directory. It needs no state file, so
// it also cleans up after a crash.
func Down(run, dir string) error {
	if err := ValidRun(run); err != nil {
		return err
	}
	if dir == "" {
		dir = DefaultDir
	}
	names, err := netns.List(nsPrefix(run))
	if err != nil {
		return err
	}
	var errs []error
	// Stop every process first, so none reacts to links vanishing.
	for _, n := range names {
		if err := (netns.NS{Name: n}).Kill(2 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	for _, n := range names {
		if err := netns.Delete(n); err != nil {
			errs = append(errs, err)
		}
	}
	socks, _ := filepath.Glob(filepath.Join(tunnel.UAPIDir, TunnelInterface(run, 0)[:len("wg-"+run+"-")]+"*.sock"))
	for _, s := range socks {
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Join(dir, run)); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Runs lists the run IDs that have namespaces or state.
func Runs(dir string) ([]string, error) {
	if dir == "" {
		dir = DefaultDir
	}
	seen := map[string]bool{}
	names, err := netns.List(netns.Prefix)
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		run, _, _ := strings.Cut(strings.TrimPrefix(n, netns.Prefix), "-")
		if ValidRun(run) == nil {
			seen[run] = true
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() && ValidRun(e.Name()) == nil {
			seen[e.Name()] = true
		}
	}
	runs := make([]string, 0, len(seen))
	for r := range seen {
		runs = append(runs, r)
	}
	slices.Sort(runs)
	return runs, nil
}

// Leftovers lists what of a run still exists: namespaces, WireGuard
// sockets, the state directory, and links in the current (root) namespace
// that carry the run's name. Empty after a clean Down.
func Leftovers(run, dir string) ([]string, error) {
	if dir == "" {
		dir = DefaultDir
	}
	var left []string
	names, err := netns.List(nsPrefix(run))
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		left = append(left, "namespace "+n)
	}
	socks, _ := filepath.Glob(filepath.Join(tunnel.UAPIDir, "wg-"+run+"-*.sock"))
	for _, s := range socks {
		left = append(left, "socket "+s)
	}
	if _, err := os.Stat(filepath.Join(dir, run)); err == nil {
		left = append(left, "state "+filepath.Join(dir, run))
	}
	left = append(left, leftoverProcs(filepath.Join(dir, run))...)
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, ln := range links {
		if strings.Contains(ln.Attrs().Name, "-"+run+"-") {
			left = append(left, "root-namespace link "+ln.Attrs().Name)
		}
	}
	return left, nil
}

// GatewayOf returns the gateway host of a site.
func (l *Lab) GatewayOf(site string) (Host, bool) {
	for _, h := range l.Hosts {
		if h.Site == site && h.Role == RoleGateway {
			return h, true
		}
	}
	return Host{}, false
}

// SocketOf is the status socket of a site's gateway.
func (l *Lab) SocketOf(site string) string {
	return filepath.Join(l.Dir, site, "gateway.sock")
}

// Endpoints returns the lab's pods and plain hosts.
func (l *Lab) Endpoints() []Host { return Endpoints(l.Hosts) }

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return nil
}

func addrNet(a netip.Addr, bits int) *netlink.Addr {
	return &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(a, bits))}
}
