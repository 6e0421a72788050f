package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/nodeagent"
	"github.com/straitnet/strait/nodeagent/policy"
)

func init() {
	register(Bench{
		Name: "pod-throughput",
		Doc: "iperf3 TCP throughput from a pod on one node to a pod on another (two node namespaces on a veth, the pods " +
			"made by strait-cni, routes between the pod CIDRs), strait-agent's NetworkPolicy programs on both pods' host " +
			"veths with 1,000 ipBlock rules compiled from NetworkPolicies (the receiver's ingress, the sender's egress; " +
			"one of them allows the flow) against the same programs with no policy, alternated in the same run; also the " +
			"programs detached and the raw veth between the nodes. The programs' counters must show that the flow went " +
			"through them and that nothing was denied",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.DurationVar(&c.Duration, "duration", 5*time.Second, "length of one iperf3 measurement")
			fs.IntVar(&c.Rounds, "rounds", 5, "rounds, each measuring with the rules, without policy and with the programs detached; the median counts")
			fs.IntVar(&c.Size, "rules", podDefaultRules, "ipBlock rules in each enforced direction (the receiver's ingress, the sender's egress)")
		},
		Run: runPodThroughput,
	})
}

const (
	podDefaultRules = 1000
	podMaxRules     = 50000
	podTargetRatio  = 0.95
	podCNIVersion   = "1.1.0"
	podMTU          = 1500
	// podNamespace is the Kubernetes namespace of the pods and policies.
	podNamespace = "bench"
	// podProbePort is a port the rules do not allow: a connection to it
	// must be dropped while they are loaded.
	podProbePort = 5202
)

var (
	podCIDRs  = [2]netip.Prefix{netip.MustParsePrefix("10.0.1.0/24"), netip.MustParsePrefix("10.0.2.0/24")}
	nodeAddrs = [2]netip.Addr{netip.MustParseAddr("172.31.0.11"), netip.MustParseAddr("172.31.0.12")}
)

// The three states of the enforcer measured, in the order of the first
// round.
const (
	podRules    = iota // the compiled policies loaded
	podNone            // attached, nothing enforced: the baseline
	podDetached        // the programs off the veths
)

var podModeNames = [...]string{"with rules", "no policy", "detached"}

// podNode is one node namespace with its pod, its enforcer and the
// program compiled for its pod.
type podNode struct {
	name      string
	ns, pod   netns.NS
	cidr      netip.Prefix
	addr      netip.Addr // the node's
	podIP     netip.Addr
	container string
	veth      string // the pod's host side
	enf       *nodeagent.Enforcer
	prog      policy.Program
}

type podMode struct {
	gbps []float64
	// cpu is the machine's busy CPU seconds per gigabit carried, each
	// round: the whole path is kernel work on this machine's CPUs.
	cpu []float64
	// seen is what both nodes' programs counted during the measurements.
	seen nodeagent.Counters
}

func runPodThroughput(ctx context.Context, c Config) (res Result, err error) {
	rules := cmp.Or(c.Size, podDefaultRules)
	if rules < 1 || rules > podMaxRules {
		return Result{}, fmt.Errorf("bench pod-throughput: %d rules; want 1 to %d", rules, podMaxRules)
	}
	secs := max(int(c.Duration.Seconds()), 1)
	rounds := max(c.Rounds, 1)
	cniBin := filepath.Join(c.BinDir, "strait-cni")
	if _, err := os.Stat(cniBin); err != nil {
		return Result{}, fmt.Errorf("bench pod-throughput: strait-cni is not built (make build puts it in %s): %w", c.BinDir, err)
	}
	if _, err := exec.LookPath("iperf3"); err != nil {
		return Result{}, errors.New("bench pod-throughput: iperf3 is missing (`make deps` installs it)")
	}

	dir, err := os.MkdirTemp("", "strait-bench-pod")
	if err != nil {
		return Result{}, fmt.Errorf("bench pod-throughput: %w", err)
	}
	defer os.RemoveAll(dir)
	// Every namespace made is removed, whatever happens; a failure to
	// remove one fails the bench.
	made := newNamespaces("pod")
	defer func() {
		if derr := made.removeAll(); derr != nil && err == nil {
			err = fmt.Errorf("bench pod-throughput: cleaning up: %w", derr)
		}
	}()
	id, newNS := made.id, made.add
	c.logf("pod-throughput: %d rules per enforced direction, %d rounds of %ds; namespaces %sbench-pod-%s-*", rules, rounds, secs, netns.Prefix, id)

	var nodes [2]*podNode
	for i := range nodes {
		n := &podNode{name: fmt.Sprintf("n%d", i+1), cidr: podCIDRs[i], addr: nodeAddrs[i]}
		n.container = "bench-pod-" + id + "-" + n.name
		n.veth = plugin.HostVeth(n.container, "eth0")
		if n.ns, err = newNS(n.name); err != nil {
			return Result{}, err
		}
		if n.pod, err = newNS(n.name + "-pod"); err != nil {
			return Result{}, err
		}
		if err := n.ns.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
			return Result{}, err
		}
		nodes[i] = n
	}
	if err := podLinkNodes(nodes[0], nodes[1]); err != nil {
		return Result{}, err
	}
	for i, n := range nodes {
		peer := nodes[1-i]
		if err := ipIn(n.ns, "route", "add", peer.cidr.String(), "via", peer.addr.String()); err != nil {
			return Result{}, err
		}
		if err := n.addPod(ctx, cniBin, c.BinDir, filepath.Join(dir, n.name)); err != nil {
			return Result{}, err
		}
	}
	client, server := nodes[0], nodes[1]
	c.logf("pod-throughput: pod %s on %s (%s), pod %s on %s (%s)", client.podIP, client.name, client.addr, server.podIP, server.name, server.addr)
	// Both paths work before any program is there (a closed port
	// answers with a reset), so that a failure later is the programs'.
	if err := podReachable(client.ns, server.addr); err != nil {
		return Result{}, err
	}
	if err := podReachable(client.pod, server.podIP); err != nil {
		return Result{}, err
	}

	// The policies, compiled as each node's agent compiles them: for its
	// own pod, from every policy, pod and namespace of the cluster.
	pols := podPolicies(rules, client.podIP, server.podIP)
	pods, nss := podObjects(client.podIP, server.podIP)
	start := time.Now()
	for _, n := range nodes {
		var problems []string
		n.prog, problems = policy.Compile(pols, pods, nss, []netip.Addr{n.podIP})
		if len(problems) > 0 {
			return Result{}, fmt.Errorf("bench pod-throughput: compiling the policies for %s: %s", n.podIP, strings.Join(problems, "; "))
		}
	}
	compileMS := ms(time.Since(start))
	egress := policy.PodDir{Pod: client.podIP, Dir: policy.Egress}
	ingress := policy.PodDir{Pod: server.podIP, Dir: policy.Ingress}
	for _, chk := range []struct {
		n  *podNode
		pd policy.PodDir
	}{{client, egress}, {server, ingress}} {
		p := chk.n.prog
		if len(p.Enforced) != 1 || !p.Enforced[chk.pd] {
			return Result{}, fmt.Errorf("bench pod-throughput: the program for %s enforces %v, want %v alone", chk.n.podIP, p.Enforced, chk.pd)
		}
		peer := server.podIP
		if chk.pd.Dir == policy.Ingress {
			peer = client.podIP
		}
		if !p.Allowed(chk.pd.Pod, chk.pd.Dir, peer, policy.ProtoTCP, lab.IperfPort) || p.Allowed(chk.pd.Pod, chk.pd.Dir, peer, policy.ProtoTCP, podProbePort) {
			return Result{}, fmt.Errorf("bench pod-throughput: the program for %s %s does not allow exactly port %d of %s", chk.pd.Pod, chk.pd.Dir, lab.IperfPort, peer)
		}
	}
	c.logf("pod-throughput: compiled in %.1f ms: %d entries for %s egress, %d for %s ingress", compileMS, len(client.prog.Entries), client.podIP, len(server.prog.Entries), server.podIP)

	for _, n := range nodes {
		if n.enf, err = nodeagent.NewEnforcer(""); err != nil {
			return Result{}, fmt.Errorf("bench pod-throughput: %w", err)
		}
		defer n.enf.Close()
	}

	// iperf3 servers: in the server pod, and on its node for the raw veth.
	for _, ns := range []netns.NS{server.pod, server.ns} {
		srv := ns.Command("iperf3", "-s", "-p", fmt.Sprint(lab.IperfPort))
		if err := srv.Start(); err != nil {
			return Result{}, fmt.Errorf("bench pod-throughput: iperf3 server in %s: %w", ns.Name, err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
	}

	b := &podBench{nodes: nodes}
	// Warm-up, not counted, each state once: maps, caches, servers.
	for m := range podModeNames {
		if err := b.set(m); err != nil {
			return Result{}, err
		}
		if _, _, err := podIperf(ctx, client.pod, server.podIP, 1); err != nil {
			return Result{}, fmt.Errorf("bench pod-throughput: warm-up %s: %w", podModeNames[m], err)
		}
	}
	// The rules are really enforced: a port they do not allow is
	// dropped, by the sender's egress.
	if err := b.set(podRules); err != nil {
		return Result{}, err
	}
	probeDenied, err := b.probe(server.podIP)
	if err != nil {
		return Result{}, err
	}

	c.logf("pod-throughput: raw veth between the nodes, %ds...", secs)
	raw, _, err := podIperf(ctx, client.ns, server.addr, secs)
	if err != nil {
		return Result{}, fmt.Errorf("bench pod-throughput: raw veth: %w", err)
	}
	c.logf("  %.2f Gbit/s", raw)

	modes := make([]podMode, len(podModeNames))
	var paired, pairedDetached []float64
	var busy, steal float64 // over the measurements, CPU seconds
	for r := range rounds {
		var g [len(podModeNames)]float64
		for _, m := range podOrder(r) {
			if err := b.set(m); err != nil {
				return Result{}, err
			}
			before, err := b.counters()
			if err != nil {
				return Result{}, err
			}
			cpu0, err := podCPU()
			if err != nil {
				return Result{}, err
			}
			gbps, gbit, err := podIperf(ctx, client.pod, server.podIP, secs)
			if err != nil {
				return Result{}, fmt.Errorf("bench pod-throughput: %s: %w", podModeNames[m], err)
			}
			cpu1, err := podCPU()
			if err != nil {
				return Result{}, err
			}
			after, err := b.counters()
			if err != nil {
				return Result{}, err
			}
			busy, steal = busy+cpu1.busy-cpu0.busy, steal+cpu1.steal-cpu0.steal
			modes[m].cpu = append(modes[m].cpu, (cpu1.busy-cpu0.busy)/gbit)
			for i, n := range nodes {
				d := counterDelta(after[i], before[i])
				if err := podCheck(m, n, d); err != nil {
					return Result{}, err
				}
				modes[m].seen = counterSum(modes[m].seen, d)
			}
			g[m] = gbps
			modes[m].gbps = append(modes[m].gbps, gbps)
			c.logf("round %d: %-10s %.2f Gbit/s, %.3f CPU s/Gbit", r+1, podModeNames[m], gbps, modes[m].cpu[len(modes[m].cpu)-1])
		}
		paired = append(paired, g[podRules]/g[podNone])
		pairedDetached = append(pairedDetached, g[podRules]/g[podDetached])
	}

	return Result{
		Bench: "pod-throughput",
		Value: median(modes[podRules].gbps),
		Unit:  "Gbit/s",
		Baseline: "same pod-to-pod path across two nodes, strait-agent's policy programs attached to both pods' veths " +
			"with no policy (nothing enforced)",
		BaselineValue: median(modes[podNone].gbps),
		Extra: map[string]any{
			// Each round's ratio of measurements taken back to back; their
			// median is steadier than the ratio of medians.
			"paired_ratio_median": round(median(paired)),
			"target_ratio":        podTargetRatio,
			"rules_rounds":        roundAll(modes[podRules].gbps),
			"baseline_rounds":     roundAll(modes[podNone].gbps),
			// The programs detached from both veths: what the enforcer
			// costs at all.
			"no_enforcer_gbps":                round(median(modes[podDetached].gbps)),
			"no_enforcer_rounds":              roundAll(modes[podDetached].gbps),
			"no_enforcer_paired_ratio_median": round(median(pairedDetached)),
			"raw_veth_gbps":                   round(raw),
			// The machine's busy CPU seconds (every CPU: the senders, the
			// receivers and the kernel between them) per gigabit carried,
			// median of the rounds: efficiency, steadier than throughput
			// on a shared machine. steal_share is the CPU time the
			// hypervisor took during the measurements, of busy plus stolen:
			// what makes throughput noisy there.
			"rules_cpu_s_per_gbit":       round(median(modes[podRules].cpu)),
			"baseline_cpu_s_per_gbit":    round(median(modes[podNone].cpu)),
			"no_enforcer_cpu_s_per_gbit": round(median(modes[podDetached].cpu)),
			"steal_share":                round(steal / max(busy+steal, 1e-9)),
			"rules":                      rules,
			"policy_entries": map[string]int{
				"sender_egress":    len(client.prog.Entries),
				"receiver_ingress": len(server.prog.Entries),
			},
			"compile_ms": round(compileMS),
			// What both nodes' programs counted during the measured runs:
			// with the rules, the connections allowed by a rule and the
			// rest tracked; without, unenforced; nothing denied.
			"counters": map[string]any{
				"with_rules": counterMap(modes[podRules].seen),
				"no_policy":  counterMap(modes[podNone].seen),
			},
			// Packets the rules dropped from a connection to a port they do
			// not allow, tried once before the rounds.
			"probe_denied": probeDenied,
			"seconds":      secs,
			"rounds":       rounds,
			"pod_mtu":      podMTU,
			"path":         "pod-veth(TCX: sender egress)-node-veth-node-veth(TCX: receiver ingress)-pod",
		},
	}, nil
}

// podOrder is the order of the states in round r: reversed every other
// round, so that the two compared swap places and drift of the machine
// falls on both.
func podOrder(r int) []int {
	o := []int{podRules, podNone, podDetached}
	if r%2 == 1 {
		slices.Reverse(o)
	}
	return o
}

type podBench struct {
	nodes [2]*podNode
}

// set puts both enforcers in state m.
func (b *podBench) set(m int) error {
	for _, n := range b.nodes {
		if m == podDetached {
			n.enf.Detach(n.veth)
			if a := n.enf.Attached(); len(a) != 0 {
				return fmt.Errorf("bench pod-throughput: %s: still attached to %v", n.name, a)
			}
			continue
		}
		prog := policy.Program{}
		if m == podRules {
			prog = n.prog
		}
		if _, err := n.enf.Sync(prog); err != nil {
			return fmt.Errorf("bench pod-throughput: %s: loading %s: %w", n.name, podModeNames[m], err)
		}
		if err := n.ns.Do(func() error { return n.enf.Attach(n.veth, n.podIP) }); err != nil {
			return fmt.Errorf("bench pod-throughput: %s: %w", n.name, err)
		}
	}
	return nil
}

func (b *podBench) counters() ([2]nodeagent.Counters, error) {
	var out [2]nodeagent.Counters
	for i, n := range b.nodes {
		c, err := n.enf.Counters()
		if err != nil {
			return out, fmt.Errorf("bench pod-throughput: %s: counters: %w", n.name, err)
		}
		out[i] = c
	}
	return out, nil
}

// probe connects from the client pod to a port the rules do not allow:
// the connection must time out and the sender's programs must count the
// drop.
func (b *podBench) probe(server netip.Addr) (uint64, error) {
	client := b.nodes[0]
	before, err := client.enf.Counters()
	if err != nil {
		return 0, err
	}
	var derr error
	if err := client.pod.Do(func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(server, podProbePort).String(), 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		derr = err
		return nil
	}); err != nil {
		return 0, err
	}
	after, err := client.enf.Counters()
	if err != nil {
		return 0, err
	}
	var ne net.Error
	if denied := after.Denied - before.Denied; errors.As(derr, &ne) && ne.Timeout() && denied > 0 {
		return denied, nil
	}
	return 0, fmt.Errorf("bench pod-throughput: with the rules loaded, a connection to %s:%d (not allowed) ended with %v and %d packets denied: want a timeout, and drops counted",
		server, podProbePort, derr, after.Denied-before.Denied)
}

// podCheck fails the bench when the programs did not see the iperf3 flow
// as state m should have: with the rules, its connections allowed by a
// rule and the rest of it tracked; without policy, unenforced; detached,
// nothing at all. Nothing is ever denied.
func podCheck(m int, n *podNode, d nodeagent.Counters) error {
	var ok bool
	switch m {
	case podRules:
		ok = d.Denied == 0 && d.Allowed > 0 && d.Tracked > 0
	case podNone:
		ok = d.Denied == 0 && d.Allowed == 0 && d.Unenforced+d.Tracked > 0
	case podDetached:
		ok = d == nodeagent.Counters{}
	}
	if !ok {
		return fmt.Errorf("bench pod-throughput: %s, the programs on %s counted %+v during the measurement: the flow did not go through them as it should", podModeNames[m], n.name, d)
	}
	return nil
}

func counterDelta(a, b nodeagent.Counters) nodeagent.Counters {
	return nodeagent.Counters{Allowed: a.Allowed - b.Allowed, Denied: a.Denied - b.Denied, Tracked: a.Tracked - b.Tracked, Unenforced: a.Unenforced - b.Unenforced}
}

func counterSum(a, b nodeagent.Counters) nodeagent.Counters {
	return nodeagent.Counters{Allowed: a.Allowed + b.Allowed, Denied: a.Denied + b.Denied, Tracked: a.Tracked + b.Tracked, Unenforced: a.Unenforced + b.Unenforced}
}

func counterMap(c nodeagent.Counters) map[string]uint64 {
	return map[string]uint64{"allowed": c.Allowed, "denied": c.Denied, "tracked": c.Tracked, "unenforced": c.Unenforced}
}

// podLinkNodes joins two nodes by a veth, eth0 on both ends, on a /24.
func podLinkNodes(a, b *podNode) error {
	ha, err := a.ns.Handle()
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := b.ns.Handle()
	if err != nil {
		return err
	}
	defer hb.Close()
	fd, err := b.ns.Open()
	if err != nil {
		return err
	}
	defer fd.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: podMTU}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(fd))}); err != nil {
		return fmt.Errorf("bench pod-throughput: veth between the nodes: %w", err)
	}
	for _, x := range []struct {
		h    *netlink.Handle
		addr netip.Addr
	}{{ha, a.addr}, {hb, b.addr}} {
		l, err := x.h.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(netip.PrefixFrom(x.addr, 24).String())
		if err := x.h.AddrAdd(l, addr); err != nil {
			return err
		}
		if err := x.h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

func ipIn(ns netns.NS, args ...string) error {
	if out, err := ns.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("bench pod-throughput: ip %s in %s: %v: %s", strings.Join(args, " "), ns.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// addPod makes the node's pod with strait-cni ADD, exec'd in the node's
// namespace as a runtime does it, with the first plugin of the conflist
// strait-agent would write for the node (its state file saying ready).
func (n *podNode) addPod(ctx context.Context, bin, cniPath, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	state := filepath.Join(dir, "agent.json")
	data, _ := json.Marshal(plugin.AgentState{Ready: true, Since: time.Now()})
	if err := os.WriteFile(state, data, 0o644); err != nil {
		return fmt.Errorf("bench pod-throughput: %w", err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(nodeagent.Conflist(podCNIVersion, []netip.Prefix{n.cidr}, podMTU, filepath.Join(dir, "ipam"), state, nil), &list); err != nil || len(list.Plugins) == 0 {
		return fmt.Errorf("bench pod-throughput: the conflist: %v", err)
	}
	conf := list.Plugins[0]
	conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
	stdin, _ := json.Marshal(conf)

	cmd := n.ns.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND=ADD", "CNI_CONTAINERID="+n.container,
		"CNI_NETNS="+filepath.Join(netns.Dir, n.pod.Name), "CNI_IFNAME=eth0", "CNI_PATH="+cniPath)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("bench pod-throughput: strait-cni: %w", err)
	}
	kill := func() { cmd.Process.Kill() }
	timer := time.AfterFunc(cniExecTimeout, kill)
	stop := context.AfterFunc(ctx, kill)
	err := cmd.Wait()
	timer.Stop()
	stop()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("bench pod-throughput: strait-cni ADD on %s: %v: %s %s", n.name, err, bytes.TrimSpace(stdout.Bytes()), bytes.TrimSpace(stderr.Bytes()))
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil || len(r.IPs) == 0 {
		return fmt.Errorf("bench pod-throughput: strait-cni ADD on %s: result %q: %v", n.name, stdout.Bytes(), err)
	}
	a, err := netip.ParsePrefix(r.IPs[0].Address)
	if err != nil || !n.cidr.Contains(a.Addr()) {
		return fmt.Errorf("bench pod-throughput: strait-cni ADD on %s: address %q is not in %s", n.name, r.IPs[0].Address, n.cidr)
	}
	n.podIP = a.Addr()
	return nil
}

// podReachable waits until a TCP connection from ns to a closed port of
// to is refused (or accepted): the path works both ways.
func podReachable(ns netns.NS, to netip.Addr) error {
	var last error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		err := ns.Do(func() error {
			c, err := net.DialTimeout("tcp", netip.AddrPortFrom(to, 9).String(), time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err == nil || errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("bench pod-throughput: %s cannot reach %s: %w", ns.Name, to, last)
}

type podCPUTime struct{ busy, steal float64 }

// podCPU reads the machine's CPU time so far from /proc/stat, in seconds:
// busy (user, nice, system, irq, softirq; guest is in user) and stolen
// by the hypervisor.
func podCPU() (podCPUTime, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return podCPUTime{}, fmt.Errorf("bench pod-throughput: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return podCPUTime{}, fmt.Errorf("bench pod-throughput: /proc/stat begins with %q", line)
	}
	var v [8]float64
	for i := range v {
		n, err := strconv.ParseUint(f[i+1], 10, 64)
		if err != nil {
			return podCPUTime{}, fmt.Errorf("bench pod-throughput: /proc/stat: %q: %w", line, err)
		}
		v[i] = float64(n) / clockTicks
	}
	// user nice system idle iowait irq softirq steal
	return podCPUTime{busy: v[0] + v[1] + v[2] + v[5] + v[6], steal: v[7]}, nil
}

// podIperf runs an iperf3 client inside ns against the server at target
// and returns the receiver's throughput in Gbit/s, and the gigabits the
// client sent in all (the omitted first second too). Unlike iperf, the
// client gives up connecting after 3s (a dropped SYN would otherwise
// hang it for minutes), and ctx stops it.
func podIperf(ctx context.Context, ns netns.NS, target netip.Addr, secs int) (gbps, gbit float64, err error) {
	var last error
	for try := 0; try < 20; try++ {
		cmd := ns.Command("iperf3", "-c", target.String(), "-p", fmt.Sprint(lab.IperfPort), "-t", fmt.Sprint(secs), "-O", "1",
			"-J", "--connect-timeout", "3000")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Start(); err != nil {
			return 0, 0, fmt.Errorf("iperf3: %w", err)
		}
		stop := context.AfterFunc(ctx, func() { cmd.Process.Kill() })
		err := cmd.Wait()
		stop()
		if ctx.Err() != nil {
			return 0, 0, ctx.Err()
		}
		var res struct {
			Error     string `json:"error"`
			Intervals []struct {
				Sum struct {
					Bytes float64 `json:"bytes"`
				} `json:"sum"`
			} `json:"intervals"`
			End struct {
				SumReceived struct {
					Bytes         float64 `json:"bytes"`
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		switch jerr := json.Unmarshal(stdout.Bytes(), &res); {
		case jerr != nil:
			last = fmt.Errorf("iperf3: %v: %s %s", err, bytes.TrimSpace(stdout.Bytes()), bytes.TrimSpace(stderr.Bytes()))
		case res.Error != "":
			last = fmt.Errorf("iperf3: %s", res.Error)
		case err != nil:
			last = fmt.Errorf("iperf3: %v", err)
		case res.End.SumReceived.Bytes == 0:
			return 0, 0, fmt.Errorf("iperf3 to %s: nothing received", target)
		default:
			var sent float64
			for _, iv := range res.Intervals {
				sent += iv.Sum.Bytes
			}
			return res.End.SumReceived.BitsPerSecond / 1e9, max(sent, res.End.SumReceived.Bytes) * 8 / 1e9, nil
		}
		// The server may not listen yet, or still be busy with the last
		// test.
		if s := last.Error(); !strings.Contains(s, "connect") && !strings.Contains(s, "busy") {
			return 0, 0, last
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return 0, 0, last
}

// podObjects are the cluster's pods and namespaces the policies select
// from: the client pod and the server pod, running, in podNamespace.
func podObjects(client, server netip.Addr) ([]*corev1.Pod, []*corev1.Namespace) {
	pod := func(name string, ip netip.Addr) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: podNamespace, Labels: map[string]string{"app": name}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}},
		}
	}
	return []*corev1.Pod{pod("iperf-client", client), pod("iperf-server", server)},
		[]*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: podNamespace}}}
}

// podPolicies are two NetworkPolicies of n rules each: the server's
// ingress and the client's egress. n-1 rules are ipBlocks elsewhere in
// 10.0.0.0/8 and 172.16.0.0/12 (/24s, /32s, /24s with an except) with
// assorted ports; the last one allows the other pod, as a /32, on the
// iperf3 port.
func podPolicies(n int, client, server netip.Addr) []*networkingv1.NetworkPolicy {
	port := func(proto corev1.Protocol, p, end int) networkingv1.NetworkPolicyPort {
		pp := intstr.FromInt32(int32(p))
		np := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &pp}
		if end > p {
			e := int32(end)
			np.EndPort = &e
		}
		return np
	}
	rule := func(i int, last netip.Addr) (networkingv1.NetworkPolicyPeer, []networkingv1.NetworkPolicyPort) {
		if i == n-1 {
			return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: netip.PrefixFrom(last, 32).String()}},
				[]networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, lab.IperfPort, 0)}
		}
		var b networkingv1.IPBlock
		a, c := 1+i%250, i/250%256
		switch i % 4 {
		case 0:
			b.CIDR = fmt.Sprintf("10.%d.%d.0/24", a, c)
		case 1:
			b.CIDR = fmt.Sprintf("10.%d.%d.%d/32", a, (100+c)%256, 1+i%7)
		case 2:
			b.CIDR = fmt.Sprintf("172.%d.%d.%d/32", 16+i%16, i/16%256, 1+i%200)
		case 3:
			x, y := 16+i%16, 128+i/16%128
			b.CIDR = fmt.Sprintf("172.%d.%d.0/24", x, y)
			b.Except = []string{fmt.Sprintf("172.%d.%d.%d/28", x, y, 16*(i%16))}
		}
		var ports []networkingv1.NetworkPolicyPort
		switch i % 5 {
		case 0:
			ports = append(ports, port(corev1.ProtocolTCP, 8000+i%1000, 0))
		case 1:
			ports = append(ports, port(corev1.ProtocolUDP, 53, 0), port(corev1.ProtocolTCP, 53, 0))
		case 2:
			ports = append(ports, port(corev1.ProtocolTCP, 30000+i%1000, 30010+i%1000))
		case 3:
			ports = append(ports, port(corev1.ProtocolTCP, 80, 0), port(corev1.ProtocolTCP, 443, 0))
		case 4:
			ports = append(ports, port(corev1.ProtocolSCTP, 9000+i%100, 0))
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: &b}, ports
	}
	in := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "iperf-server-ingress", Namespace: podNamespace},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "iperf-server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	out := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "iperf-client-egress", Namespace: podNamespace},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "iperf-client"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	}
	for i := range n {
		peer, ports := rule(i, client)
		in.Spec.Ingress = append(in.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{peer}, Ports: ports})
		peer, ports = rule(i, server)
		out.Spec.Egress = append(out.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: []networkingv1.NetworkPolicyPeer{peer}, Ports: ports})
	}
	return []*networkingv1.NetworkPolicy{in, out}
}
