package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/internal/atomicfile"
)

// AnnotationVTEPMAC is where each node's agent publishes the MAC of its
// VXLAN device, for the nodes that reach it over VXLAN.
const AnnotationVTEPMAC = "strait.io/vtep-mac"

// Defaults of Options.
const (
	DefaultCNIConfDir = "/etc/cni/net.d"
	ConflistName      = "10-strait.conflist"
)

// Options configure an Agent. Zero values take the documented defaults.
type Options struct {
	Kube kubernetes.Interface
	// NodeName is this node's name. Required.
	NodeName string
	// Gateway is the cluster's strait gateway on the nodes' network;
	// Mesh the destinations routed to it (the global CIDR, other sites'
	// routable CIDRs). Without a gateway, nothing is.
	Gateway netip.Addr
	Mesh    []netip.Prefix
	// CNIConfDir receives the conflist (default DefaultCNIConfDir);
	// StateFile the agent's readiness for strait-cni (default
	// plugin.DefaultAgentState); CNIDataDir is strait-cni's address
	// store (default plugin.DefaultDataDir).
	CNIConfDir, StateFile, CNIDataDir string
	// CNIVersion of the conflist; default: see Conflist. Chain lists
	// plugins to run after strait-cni (such as portmap), by type.
	CNIVersion string
	Chain      []string
	// MTU of pods; default the node's link MTU, less VXLAN's overhead
	// when some node is reached over VXLAN.
	MTU int
	// Interval is how often the agent repairs drift; default 10s.
	Interval time.Duration
	// NoPolicy turns NetworkPolicy enforcement off (it is on by default:
	// eBPF on every pod's host-side veth).
	NoPolicy bool
	// BPFPinDir keeps the policy maps and attachments on a bpffs, so
	// that pods stay enforced while the agent restarts; empty pins
	// nothing. strait-agent's default is DefaultBPFPinDir.
	BPFPinDir string
	Logger    *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	opts  Options
	log   *slog.Logger
	dp    dataplane
	nodes cache.Indexer
	pol   *policies // nil with NoPolicy

	mu       sync.Mutex
	state    plugin.AgentState
	problems []string
	conflist []byte
}

// New checks the options.
func New(opts Options) (*Agent, error) {
	if opts.Kube == nil || opts.NodeName == "" {
		return nil, errors.New("nodeagent: a Kubernetes client and the node's name are required")
	}
	if opts.CNIConfDir == "" {
		opts.CNIConfDir = DefaultCNIConfDir
	}
	if opts.StateFile == "" {
		opts.StateFile = plugin.DefaultAgentState
	}
	if opts.CNIDataDir == "" {
		opts.CNIDataDir = plugin.DefaultDataDir
	}
	if opts.Interval <= 0 {
		opts.Interval = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Agent{opts: opts, log: opts.Logger.With("component", "nodeagent", "node", opts.NodeName)}, nil
}

// Run watches the Nodes and keeps the node's routing, the conflist and the
// readiness in line until ctx ends. Until the node is ready the state file
// says what is missing, so strait-cni can tell the runtime.
func (a *Agent) Run(ctx context.Context) error {
	a.setState(false, "strait-agent is starting: waiting for the Nodes from the API server")
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		a.setState(false, fmt.Sprintf("cannot enable IPv4 forwarding: %v", err))
		return fmt.Errorf("nodeagent: ip_forward: %w", err)
	}
	factory := informers.NewSharedInformerFactory(a.opts.Kube, 10*time.Minute)
	inf := factory.Core().V1().Nodes().Informer()
	a.nodes = inf.GetIndexer()
	kick := make(chan struct{}, 1)
	poke := func() {
		select {
		case kick <- struct{}{}:
		default:
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	})
	if !a.opts.NoPolicy {
		if err := ensureBPFFS(a.opts.BPFPinDir); err != nil {
			a.setState(false, fmt.Sprintf("NetworkPolicy enforcement: %v", err))
			return err
		}
		enf, err := NewEnforcer(a.opts.BPFPinDir)
		if err != nil {
			a.setState(false, fmt.Sprintf("NetworkPolicy enforcement: %v", err))
			return err
		}
		defer enf.Close()
		if a.pol, err = watchPolicies(factory, enf, poke); err != nil {
			return err
		}
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for !inf.HasSynced() || (a.pol != nil && !a.pol.hasSynced()) {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	t := time.NewTicker(a.opts.Interval)
	defer t.Stop()
	for {
		a.reconcile(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-kick:
		case <-t.C:
		}
	}
}

// reconcile is one pass: plan from the Nodes, apply, publish the VXLAN
// MAC, write the conflist, and say whether the node is ready.
func (a *Agent) reconcile(ctx context.Context) {
	var self Node
	var selfObj *corev1.Node
	var others []Node
	for _, o := range a.nodes.List() {
		n, ok := o.(*corev1.Node)
		if !ok {
			continue
		}
		info := nodeOf(n)
		if n.Name == a.opts.NodeName {
			self, selfObj = info, n
			continue
		}
		others = append(others, info)
	}
	switch {
	case selfObj == nil:
		a.setState(false, fmt.Sprintf("the Node %q does not exist in the API server (is --node right?)", a.opts.NodeName))
		return
	case len(self.PodCIDRs) == 0:
		a.setState(false, fmt.Sprintf("the Node %q has no spec.podCIDRs yet (does the controller-manager allocate node CIDRs?)", a.opts.NodeName))
		return
	case !self.InternalIP.IsValid():
		a.setState(false, fmt.Sprintf("the Node %q has no InternalIP address", a.opts.NodeName))
		return
	}
	var problems []string
	if vtep, ok := VTEPAddr(self); ok {
		mac, err := a.dp.ensureVXLAN(self.InternalIP, vtep)
		if err != nil {
			problems = append(problems, fmt.Sprintf("VXLAN device: %v", err))
		} else if selfObj.Annotations[AnnotationVTEPMAC] != mac.String() {
			if err := a.publishMAC(ctx, mac); err != nil {
				problems = append(problems, fmt.Sprintf("publishing the VXLAN MAC: %v", err))
			}
		}
	}
	local, err := a.dp.localPrefixes()
	if err != nil {
		a.setState(false, fmt.Sprintf("reading the node's addresses: %v", err))
		return
	}
	d, planProblems := Plan(self, others, local, a.opts.Gateway, a.opts.Mesh)
	problems = append(problems, planProblems...)
	if err := a.dp.apply(d); err != nil {
		a.setState(false, fmt.Sprintf("programming routes: %v", err))
		a.report(problems)
		return
	}
	mtu := a.opts.MTU
	if mtu == 0 {
		if mtu, err = underlayMTU(self.InternalIP); err != nil {
			a.setState(false, err.Error())
			return
		}
		mtu -= vxlanOverhead // a pod's packets may cross VXLAN
	}
	if a.pol != nil {
		nodeAddrs := []netip.Addr{self.InternalIP}
		if vtep, ok := VTEPAddr(self); ok {
			nodeAddrs = append(nodeAddrs, vtep)
		}
		polProblems, err := a.pol.sync(a.opts.NodeName, nodeAddrs, a.opts.CNIDataDir, self.PodCIDRs)
		problems = append(problems, polProblems...)
		if err != nil {
			// New pods wait rather than start without their policy.
			a.setState(false, fmt.Sprintf("NetworkPolicy: %v", err))
			a.report(problems)
			return
		}
	}
	if err := a.writeConflist(self.PodCIDRs, mtu); err != nil {
		a.setState(false, fmt.Sprintf("writing the CNI configuration: %v", err))
		return
	}
	a.report(problems)
	a.setState(true, "")
}

// report logs problems that are new.
func (a *Agent) report(problems []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range problems {
		if !slices.Contains(a.problems, p) {
			a.log.Warn("not routed", "why", p)
		}
	}
	a.problems = problems
}

// Problems are what the last pass could not route.
func (a *Agent) Problems() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.problems)
}

func (a *Agent) publishMAC(ctx context.Context, mac net.HardwareAddr) error {
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{AnnotationVTEPMAC: mac.String()}}})
	_, err := a.opts.Kube.CoreV1().Nodes().Patch(ctx, a.opts.NodeName, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// Conflist is the CNI configuration for the node: strait-cni first, then
// the chained plugins. An empty version means 1.0.0 with 1.1.0 offered in
// cniVersions (spec 1.1.0) to runtimes that speak it, for STATUS and GC;
// runtimes whose libcni predates 1.1.0 take 1.0.0. With a chain, 1.0.0
// alone: Debian's reference plugins stop there, and a chain runs at one
// version.
func Conflist(version string, podCIDRs []netip.Prefix, mtu int, dataDir, stateFile string, chain []string) []byte {
	var cidrs []string
	for _, p := range podCIDRs {
		cidrs = append(cidrs, p.String())
	}
	plugins := []map[string]any{{"type": "strait-cni", "podCIDRs": cidrs, "mtu": mtu, "dataDir": dataDir, "agentState": stateFile}}
	for _, c := range chain {
		p := map[string]any{"type": c}
		switch c {
		case "portmap":
			p["capabilities"] = map[string]bool{"portMappings": true}
		case "bandwidth":
			p["capabilities"] = map[string]bool{"bandwidth": true}
		}
		plugins = append(plugins, p)
	}
	list := map[string]any{"cniVersion": version, "name": "strait", "plugins": plugins}
	if version == "" {
		list["cniVersion"] = "1.0.0"
		if len(chain) == 0 {
			list["cniVersions"] = []string{"1.0.0", "1.1.0"}
		}
	}
	b, _ := json.MarshalIndent(list, "", "  ")
	return append(b, '\n')
}

func (a *Agent) writeConflist(podCIDRs []netip.Prefix, mtu int) error {
	data := Conflist(a.opts.CNIVersion, podCIDRs, mtu, a.opts.CNIDataDir, a.opts.StateFile, a.opts.Chain)
	a.mu.Lock()
	same := bytes.Equal(data, a.conflist)
	a.mu.Unlock()
	if same {
		return nil
	}
	if err := atomicfile.Write(filepath.Join(a.opts.CNIConfDir, ConflistName), data, 0o644, false); err != nil {
		return err
	}
	a.mu.Lock()
	a.conflist = data
	a.mu.Unlock()
	a.log.Info("CNI configuration written", "path", filepath.Join(a.opts.CNIConfDir, ConflistName), "podCIDRs", podCIDRs, "mtu", mtu)
	return nil
}

// setState writes the readiness strait-cni reads, when it changes.
func (a *Agent) setState(ready bool, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state.Ready == ready && a.state.Reason == reason && !a.state.Since.IsZero() {
		return
	}
	a.state = plugin.AgentState{Ready: ready, Reason: reason, Since: time.Now().UTC()}
	data, _ := json.Marshal(a.state)
	if err := atomicfile.Write(a.opts.StateFile, data, 0o644, false); err != nil {
		a.log.Error("writing the agent's state", "path", a.opts.StateFile, "err", err)
	}
	if ready {
		a.log.Info("node ready for pods")
	} else {
		a.log.Warn("node not ready for pods", "reason", reason)
	}
}

// State is the agent's readiness.
func (a *Agent) State() plugin.AgentState {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

// nodeOf reads what the agent needs of a Node.
func nodeOf(n *corev1.Node) Node {
	out := Node{Name: n.Name}
	for _, addr := range n.Status.Addresses {
		if addr.Type == corev1.NodeInternalIP {
			if a, err := netip.ParseAddr(addr.Address); err == nil && (!out.InternalIP.IsValid() || (a.Is4() && !out.InternalIP.Is4())) {
				out.InternalIP = a
			}
		}
	}
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil {
			out.PodCIDRs = append(out.PodCIDRs, p.Masked())
		}
	}
	if mac, err := net.ParseMAC(strings.TrimSpace(n.Annotations[AnnotationVTEPMAC])); err == nil {
		out.VTEPMAC = mac
	}
	return out
}
