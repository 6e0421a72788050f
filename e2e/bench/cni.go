package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/e2e/netns"
)

func init() {
	register(Bench{
		Name: "cni",
		Doc: "p50 time of one ADD by strait-cni, exec'd in a node's namespace as a runtime does it, against the " +
			"reference bridge plugin with host-local IPAM (Debian's containernetworking-plugins), in the same run, " +
			"in alternating blocks of pods; also p99 and DEL, and what ip netns exec of true costs there (netns_exec_p50_ms, " +
			"in every figure). Every ADD must report an address the pod really has, every DEL must remove it",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Size, "pods", cniDefaultPods, "pods (each its own namespace) added and deleted by each plugin per round")
			fs.IntVar(&c.Rounds, "rounds", 3, "rounds, each adding every pod with both plugins, then deleting them")
		},
		Run: runCNI,
	})
}

const (
	cniDefaultPods = 100
	// cniBlock is how many pods one plugin handles before the other takes
	// its turn: machine noise then falls on both.
	cniBlock = 10
	// cniWarmup pods are added and deleted by each plugin before anything
	// is timed (the bridge created, the stores opened, caches warm).
	cniWarmup = 3
	// cniVersion both plugins are driven at: the reference plugins
	// (1.1.1) know 1.0.0 at most.
	cniVersion = "1.0.0"
	// cniRefDir is where Debian installs the reference plugins.
	cniRefDir = "/usr/lib/cni"
	// cniExecTimeout bounds one plugin run: past it the bench fails
	// rather than hangs.
	cniExecTimeout = 30 * time.Second
)

// cniSide is one plugin measured: its node namespace, its pods, its
// timings.
type cniSide struct {
	name    string
	bin     string
	cniPath string
	conf    []byte
	subnet  netip.Prefix
	node    netns.NS
	pods    []netns.NS
	// addrs holds the address ADD reported for each pod in this round.
	addrs    []netip.Addr
	add, del []float64 // ms
	// bare is `ip netns exec` of true in the node's namespace, timed
	// before each block: what every plugin run pays before the plugin
	// itself starts.
	bare []float64
}

func runCNI(ctx context.Context, c Config) (res Result, err error) {
	pods := cmp.Or(c.Size, cniDefaultPods)
	if pods < 1 || pods > 10000 {
		return Result{}, fmt.Errorf("bench cni: %d pods; want 1 to 10000", pods)
	}
	rounds := max(c.Rounds, 1)
	straitBin := filepath.Join(c.BinDir, "strait-cni")
	if _, err := os.Stat(straitBin); err != nil {
		return Result{}, fmt.Errorf("bench cni: strait-cni is not built (make build puts it in %s): %w", c.BinDir, err)
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(cniRefDir, p)); err != nil {
			return Result{}, fmt.Errorf("bench cni: the reference plugin %s is missing (Debian's containernetworking-plugins package: apt-get install containernetworking-plugins): %w", p, err)
		}
	}

	dir, err := os.MkdirTemp("", "strait-bench-cni")
	if err != nil {
		return Result{}, fmt.Errorf("bench cni: %w", err)
	}
	defer os.RemoveAll(dir)
	// Every namespace made is removed, whatever happens; a failure to
	// remove one fails the bench.
	made := newNamespaces("cni")
	defer func() {
		if derr := made.removeAll(); derr != nil && err == nil {
			err = fmt.Errorf("bench cni: cleaning up: %w", derr)
		}
	}()
	id, newNS := made.id, made.add

	state := filepath.Join(dir, "agent.json")
	data, _ := json.Marshal(plugin.AgentState{Ready: true, Since: time.Now()})
	if err := os.WriteFile(state, data, 0o644); err != nil {
		return Result{}, fmt.Errorf("bench cni: %w", err)
	}
	straitConf, _ := json.Marshal(map[string]any{
		"cniVersion": cniVersion, "name": "strait", "type": "strait-cni",
		"podCIDRs": []string{"10.98.0.0/16"}, "dataDir": filepath.Join(dir, "strait"),
		"agentState": state, "mtu": 1500,
	})
	refConf, _ := json.Marshal(map[string]any{
		"cniVersion": cniVersion, "name": "ref", "type": "bridge",
		"bridge": "cni0", "isGateway": true, "ipMasq": false,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": "10.99.0.0/16"}}},
			"dataDir": filepath.Join(dir, "host-local"),
		},
	})
	sides := []*cniSide{
		{name: "strait", bin: straitBin, cniPath: c.BinDir, conf: straitConf, subnet: netip.MustParsePrefix("10.98.0.0/16")},
		{name: "ref", bin: filepath.Join(cniRefDir, "bridge"), cniPath: cniRefDir, conf: refConf, subnet: netip.MustParsePrefix("10.99.0.0/16")},
	}
	c.logf("cni: %d pods per plugin, %d rounds, blocks of %d; namespaces %s%s-*", pods, rounds, cniBlock, netns.Prefix+"bench-cni-", id)
	for _, s := range sides {
		if s.node, err = newNS(s.name + "-node"); err != nil {
			return Result{}, err
		}
		// A node has an address of its own.
		if out, err := s.node.Command("ip", "addr", "add", "172.31.0.11/32", "dev", "lo").CombinedOutput(); err != nil {
			return Result{}, fmt.Errorf("bench cni: address on %s's lo: %v: %s", s.node.Name, err, bytes.TrimSpace(out))
		}
		for i := range pods {
			ns, err := newNS(fmt.Sprintf("%s-p%d", s.name, i))
			if err != nil {
				return Result{}, err
			}
			s.pods = append(s.pods, ns)
		}
		s.addrs = make([]netip.Addr, pods)
	}

	// Warm-up, not counted: the bridge made, the address stores created,
	// both binaries in the page cache.
	for i := range min(cniWarmup, pods) {
		for _, s := range sides {
			cid := fmt.Sprintf("warm%d", i)
			if _, _, err := s.addPod(ctx, cid, i); err != nil {
				return Result{}, err
			}
			if _, err := s.delPod(ctx, cid, i); err != nil {
				return Result{}, err
			}
		}
	}

	for r := range rounds {
		na, nd, nb := len(sides[0].add), len(sides[0].del), len(sides[0].bare)
		cid := func(i int) string { return fmt.Sprintf("r%d-pod%d", r, i) }
		// ADD every pod, the plugins taking turns by blocks; which goes
		// first alternates too.
		err := cniInterleave(pods, sides, func(s *cniSide, i int) error {
			if i%cniBlock == 0 {
				if err := s.timeBare(ctx); err != nil {
					return err
				}
			}
			a, d, err := s.addPod(ctx, cid(i), i)
			s.addrs[i] = a
			s.add = append(s.add, ms(d))
			return err
		})
		if err != nil {
			return Result{}, err
		}
		for _, s := range sides {
			if err := s.verify(true); err != nil {
				return Result{}, err
			}
		}
		err = cniInterleave(pods, sides, func(s *cniSide, i int) error {
			if i%cniBlock == 0 {
				if err := s.timeBare(ctx); err != nil {
					return err
				}
			}
			d, err := s.delPod(ctx, cid(i), i)
			s.del = append(s.del, ms(d))
			return err
		})
		if err != nil {
			return Result{}, err
		}
		for _, s := range sides {
			if err := s.verify(false); err != nil {
				return Result{}, err
			}
		}
		// This round's figures alone (both sides take the same samples).
		st, ref := sides[0], sides[1]
		c.logf("cni: round %d: ADD p50 %.2f ms strait, %.2f ms reference; DEL p50 %.2f ms strait, %.2f ms reference; ip netns exec %.2f ms",
			r+1, median(st.add[na:]), median(ref.add[na:]), median(st.del[nd:]), median(ref.del[nd:]),
			median(slices.Concat(st.bare[nb:], ref.bare[nb:])))
	}

	st, ref := sides[0], sides[1]
	p := func(xs []float64, q float64) float64 { return round(percentile(xs, q)) }
	delRatio := 0.0
	if b := percentile(ref.del, 0.5); b > 0 {
		delRatio = round(percentile(st.del, 0.5) / b)
	}
	return Result{
		Bench:         "cni",
		Value:         percentile(st.add, 0.5),
		Unit:          "ms",
		Baseline:      "reference bridge + host-local plugins (" + cniRefVersion() + "), ADD p50 ms, each plugin exec'd by ip netns exec in its node's namespace",
		BaselineValue: percentile(ref.add, 0.5),
		Extra: map[string]any{
			"add_p99_ms":          p(st.add, 0.99),
			"del_p50_ms":          p(st.del, 0.5),
			"del_p99_ms":          p(st.del, 0.99),
			"baseline_add_p99_ms": p(ref.add, 0.99),
			"baseline_del_p50_ms": p(ref.del, 0.5),
			"baseline_del_p99_ms": p(ref.del, 0.99),
			"del_ratio":           delRatio,
			"netns_exec_p50_ms":   p(slices.Concat(st.bare, ref.bare), 0.5),
			"target_ratio":        1.0,
			"pods":                pods,
			"rounds":              rounds,
			"samples":             len(st.add),
			"cni_version":         cniVersion,
		},
	}, nil
}

// cniInterleave runs fn for every pod of every side: blocks of cniBlock
// pods, the sides taking turns, the side going first alternating.
func cniInterleave(pods int, sides []*cniSide, fn func(*cniSide, int) error) error {
	for b, start := 0, 0; start < pods; b, start = b+1, start+cniBlock {
		order := slices.Clone(sides)
		if b%2 == 1 {
			slices.Reverse(order)
		}
		for _, s := range order {
			for i := start; i < min(start+cniBlock, pods); i++ {
				if err := fn(s, i); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// addPod runs ADD for pod i and checks its result: exit 0, the version
// asked for, an address from the side's subnet.
func (s *cniSide) addPod(ctx context.Context, cid string, i int) (netip.Addr, time.Duration, error) {
	out, d, err := s.exec(ctx, "ADD", cid, i)
	if err != nil {
		return netip.Addr{}, d, err
	}
	var r struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return netip.Addr{}, d, fmt.Errorf("bench cni: %s ADD %s: result does not decode (%v): %q", s.name, cid, err, out)
	}
	if r.CNIVersion != cniVersion || len(r.IPs) == 0 {
		return netip.Addr{}, d, fmt.Errorf("bench cni: %s ADD %s: result of version %q with %d addresses, want %s with one: %s", s.name, cid, r.CNIVersion, len(r.IPs), cniVersion, out)
	}
	a, err := netip.ParsePrefix(r.IPs[0].Address)
	if err != nil || !s.subnet.Contains(a.Addr()) {
		return netip.Addr{}, d, fmt.Errorf("bench cni: %s ADD %s: address %q is not in %s", s.name, cid, r.IPs[0].Address, s.subnet)
	}
	return a.Addr(), d, nil
}

// delPod runs DEL for pod i; it must exit 0.
func (s *cniSide) delPod(ctx context.Context, cid string, i int) (time.Duration, error) {
	_, d, err := s.exec(ctx, "DEL", cid, i)
	return d, err
}

// exec runs the plugin once as a runtime does (its environment plus the
// CNI variables, the configuration on stdin) inside the node's namespace,
// and times it from start to exit.
func (s *cniSide) exec(ctx context.Context, command, cid string, i int) ([]byte, time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	cmd := s.node.Command(s.bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+cid,
		"CNI_NETNS="+filepath.Join(netns.Dir, s.pods[i].Name), "CNI_IFNAME=eth0", "CNI_PATH="+s.cniPath)
	cmd.Stdin = bytes.NewReader(s.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("bench cni: %s %s: %w", s.name, command, err)
	}
	kill := func() { cmd.Process.Kill() }
	timer := time.AfterFunc(cniExecTimeout, kill)
	stop := context.AfterFunc(ctx, kill)
	err := cmd.Wait()
	d := time.Since(start)
	timer.Stop()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return nil, d, ctx.Err()
		}
		return nil, d, fmt.Errorf("bench cni: %s %s %s in %s (after %v): %v: %s %s", s.name, command, cid, s.pods[i].Name,
			d.Round(time.Millisecond), err, bytes.TrimSpace(stdout.Bytes()), bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), d, nil
}

// timeBare times `ip netns exec` of true in the node's namespace.
func (s *cniSide) timeBare(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cmd := s.node.Command("true")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("bench cni: ip netns exec %s true: %v: %s", s.node.Name, err, bytes.TrimSpace(out))
	}
	s.bare = append(s.bare, ms(time.Since(start)))
	return nil
}

// verify looks into every pod: after ADD, eth0 is there with the address
// the plugin reported; after DEL, it is gone.
func (s *cniSide) verify(added bool) error {
	for i, ns := range s.pods {
		h, err := ns.Handle()
		if err != nil {
			return err
		}
		link, err := h.LinkByName("eth0")
		var found bool
		if err == nil && added {
			addrs, aerr := h.AddrList(link, netlink.FAMILY_ALL)
			err = aerr
			for _, a := range addrs {
				if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == s.addrs[i] {
					found = true
				}
			}
		}
		h.Close()
		switch {
		case added && err != nil:
			return fmt.Errorf("bench cni: %s: after ADD, %s has no eth0: %w", s.name, ns.Name, err)
		case added && !found:
			return fmt.Errorf("bench cni: %s: ADD reported %s, but eth0 in %s does not have it", s.name, s.addrs[i], ns.Name)
		case !added && err == nil:
			return fmt.Errorf("bench cni: %s: DEL left eth0 in %s", s.name, ns.Name)
		case !added && !errors.As(err, new(netlink.LinkNotFoundError)):
			return fmt.Errorf("bench cni: %s: after DEL, looking for eth0 in %s: %w", s.name, ns.Name, err)
		}
	}
	return nil
}

// cniRefVersion names the reference plugins' package and version, as far
// as dpkg knows it.
func cniRefVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return "containernetworking-plugins " + v
	}
	return cniRefDir
}
