package nodeagent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/cni/ipam"
	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/nodeagent/policy"
)

// policies is the agent's NetworkPolicy enforcement: the informers it
// compiles from and the enforcer it programs.
type policies struct {
	enf                   *Enforcer
	pols, pods, nss       cache.Indexer
	synced                []cache.InformerSynced
	lastProblems          []string
	lastEntries, lastPods int
}

// watchPolicies registers the informers policy needs; poke asks for a pass.
func watchPolicies(f informers.SharedInformerFactory, enf *Enforcer, poke func()) (*policies, error) {
	h := cache.ResourceEventHandlerFuncs{AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() }}
	// Pods are cached cluster-wide, for selectors: only what policy
	// reads of them is kept.
	if err := f.Core().V1().Pods().Informer().SetTransform(trimPod); err != nil {
		return nil, fmt.Errorf("nodeagent: pod transform: %w", err)
	}
	p := &policies{enf: enf}
	for _, inf := range []cache.SharedIndexInformer{
		f.Networking().V1().NetworkPolicies().Informer(), f.Core().V1().Pods().Informer(), f.Core().V1().Namespaces().Informer(),
	} {
		inf.AddEventHandler(h)
		p.synced = append(p.synced, inf.HasSynced)
	}
	p.pols = f.Networking().V1().NetworkPolicies().Informer().GetIndexer()
	p.pods = f.Core().V1().Pods().Informer().GetIndexer()
	p.nss = f.Core().V1().Namespaces().Informer().GetIndexer()
	return p, nil
}

func (p *policies) hasSynced() bool {
	for _, s := range p.synced {
		if !s() {
			return false
		}
	}
	return true
}

// sync compiles the policies for this node's pods, programs the maps
// (only what changed) and attaches the programs to every pod veth
// strait-cni made. Traffic between a pod and its node (the addresses in
// nodeAddrs) is always allowed, as Kubernetes has it: kubelet's probes come
// from there. It returns what could not be compiled or attached.
func (p *policies) sync(node string, nodeAddrs []netip.Addr, cniDataDir string, podCIDRs []netip.Prefix) ([]string, error) {
	var pols []*networkingv1.NetworkPolicy
	for _, o := range p.pols.List() {
		if np, ok := o.(*networkingv1.NetworkPolicy); ok {
			pols = append(pols, np)
		}
	}
	var pods []*corev1.Pod
	var local []netip.Addr
	for _, o := range p.pods.List() {
		pod, ok := o.(*corev1.Pod)
		if !ok {
			continue
		}
		pods = append(pods, pod)
		if pod.Spec.NodeName != node || pod.Spec.HostNetwork {
			continue
		}
		for _, ip := range pod.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
				local = append(local, a)
			}
		}
	}
	var nss []*corev1.Namespace
	for _, o := range p.nss.List() {
		if ns, ok := o.(*corev1.Namespace); ok {
			nss = append(nss, ns)
		}
	}
	prog, problems := policy.Compile(pols, pods, nss, local)
	for pd := range prog.Enforced {
		for _, a := range nodeAddrs {
			if a.Is4() {
				prog.Entries[policy.Entry{Pod: pd.Pod, Dir: pd.Dir, Peer: netip.PrefixFrom(a, 32)}] = policy.PortSet{Any: true}
			}
		}
	}
	// Veths first: a pod's first packets then already meet its rules.
	problems = append(problems, p.attach(cniDataDir, podCIDRs)...)
	if _, err := p.enf.Sync(prog); err != nil {
		return problems, fmt.Errorf("programming policy maps: %w", err)
	}
	p.lastEntries, p.lastPods = len(prog.Entries), len(local)
	return problems, nil
}

// attach puts the programs on every host veth strait-cni made (by their
// alias), with the pod's address from strait-cni's store, and takes them
// off those that went. A veth that goes meanwhile is no problem.
func (p *policies) attach(cniDataDir string, podCIDRs []netip.Prefix) []string {
	links, err := netlink.LinkList()
	if err != nil {
		return []string{fmt.Sprintf("listing links: %v", err)}
	}
	var problems []string
	addrs := map[ipam.Attachment][]netip.Addr{}
	if store, err := ipam.Open(cniDataDir, podCIDRs); err == nil {
		if all, err := store.Allocations(); err == nil {
			addrs = all
		} else {
			problems = append(problems, fmt.Sprintf("pod addresses: %v", err))
		}
	}
	present := map[string]bool{}
	for _, l := range links {
		a := l.Attrs()
		att, ok := plugin.ParseAlias(a.Alias)
		if !ok || !strings.HasPrefix(a.Alias, plugin.AliasPrefix) {
			continue
		}
		present[a.Name] = true
		var pod netip.Addr
		for _, x := range addrs[att] {
			if x.Is4() {
				pod = x
			}
		}
		if err := p.enf.Attach(a.Name, pod); err != nil {
			var nf netlink.LinkNotFoundError
			if !errors.As(err, &nf) && !errors.Is(err, unix.ENODEV) {
				problems = append(problems, err.Error())
			}
		}
	}
	for _, n := range p.enf.Attached() {
		if !present[n] {
			p.enf.Detach(n)
		}
	}
	slices.Sort(problems)
	return problems
}

// trimPod keeps what compiling policies needs of a Pod: its identity and
// labels, node, host networking, container ports and where it stands.
func trimPod(o any) (any, error) {
	pod, ok := o.(*corev1.Pod)
	if !ok {
		return o, nil
	}
	t := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			Labels: pod.Labels, ResourceVersion: pod.ResourceVersion, DeletionTimestamp: pod.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: pod.Spec.NodeName, HostNetwork: pod.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs},
	}
	for _, c := range pod.Spec.Containers {
		t.Spec.Containers = append(t.Spec.Containers, corev1.Container{Name: c.Name, Ports: c.Ports})
	}
	for _, c := range pod.Spec.InitContainers {
		t.Spec.InitContainers = append(t.Spec.InitContainers, corev1.Container{Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy})
	}
	return t, nil
}
