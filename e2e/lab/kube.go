package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/straitnet/strait/discovery/kubepolicy"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/e2e/kube"
	"github.com/straitnet/strait/e2e/netns"
)

// KubeServiceCIDR is the service CIDR of every cluster of the lab: the
// same in each, as clusters built apart overlap in their services as well
// as their pods.
var KubeServiceCIDR = kube.DefaultServiceCIDR

// KubeSites are the sites that run a cluster of the lab's own.
func (l *Lab) KubeSites() []string {
	if !l.Kube {
		return nil
	}
	var sites []string
	for _, s := range l.Topology.Sites {
		if _, ok := l.GatewayOf(s.Name); ok && s.Kubernetes {
			sites = append(sites, s.Name)
		}
	}
	return sites
}

// kubeDir holds a site's cluster: etcd's data, certificates, kubeconfig,
// kube-proxy configurations and the logs.
func (l *Lab) kubeDir(site string) string { return filepath.Join(l.Dir, site, "kube") }

// startKube makes each Kubernetes site a cluster of its own, set up as a
// real cluster would be around the gateway:
//
//   - etcd and kube-apiserver run in the gateway's namespace, the API on
//     the gateway's LAN address (172.31.0.1:6443), where the nodes reach
//     it; the gateway gets the kubeconfig;
//   - the MCS API's and strait's CRDs are installed, and each node has the
//     Node object its kubelet would register;
//   - kube-proxy (nftables mode) runs on every node, so that ClusterIPs
//     work there as in a real cluster;
//   - the gateway routes the service CIDR to the site's first node.
//
// All of them are lab processes: they outlive `strait lab up`, and Down
// ends them with their namespaces.
//
// Why kube-proxy runs on the nodes and not in the gateway's namespace:
// the gateway translates a Kubernetes export's ingress address to the
// Service's ClusterIP with a DNAT in prerouting. The kernel binds one
// destination translation per connection and hook, so a kube-proxy in the
// same namespace never translates that ClusterIP further (its
// nat-prerouting chain is not consulted once strait's has bound the
// connection), and its filter-forward chain then rejects the packet as
// traffic to an invalid ClusterIP port. Both were seen in the lab with
// `nft monitor trace`. Where the gateway has a namespace of its own, as a
// pod on a node has, the node's kube-proxy translates the ClusterIP, as
// here: the route stands for the gateway pod's way out through its node.
// The node masquerades what comes from outside the cluster's pod CIDR,
// as kube-proxy does, so replies come back through it.
func (l *Lab) startKube(ctx context.Context) error {
	sites := l.KubeSites()
	if len(sites) == 0 {
		return nil
	}
	proxyBin, err := kube.ProxyBinary(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	servers := make([]*kube.Server, len(sites))
	errs := make([]error, len(sites))
	var wg sync.WaitGroup
	for i, site := range sites {
		wg.Go(func() { servers[i], errs[i] = l.startCluster(ctx, site) })
	}
	wg.Wait()
	for i, s := range servers {
		if s == nil {
			continue
		}
		gw, _ := l.GatewayOf(sites[i])
		for _, p := range s.Procs {
			l.Procs = append(l.Procs, Proc{Host: gw.Name, What: p.Name, Pid: p.Pid, Log: p.Log})
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	kc := map[string]string{}
	for k, v := range l.Kubeconfigs {
		kc[k] = v
	}
	l.Kubeconfigs = kc
	b := &builder{handles: map[string]*netlink.Handle{}}
	defer b.close()
	for i, site := range sites {
		l.Kubeconfigs[site] = servers[i].Kubeconfig
		nodes := l.nodesOf(site)
		for _, n := range nodes {
			if err := l.startProxy(n, proxyBin, servers[i].Kubeconfig); err != nil {
				return err
			}
		}
		gw, _ := l.GatewayOf(site)
		if err := b.route(gw.NS, KubeServiceCIDR, nodes[0].Addr, ""); err != nil {
			return err
		}
	}
	if err := l.save(); err != nil {
		return err
	}
	for _, site := range sites {
		for _, n := range l.nodesOf(site) {
			if err := l.waitProxy(ctx, n, 60*time.Second); err != nil {
				return err
			}
		}
	}
	l.logf("clusters up: kube-apiserver and etcd in the gateways of %s, kube-proxy on their nodes (%s)",
		strings.Join(sites, ", "), time.Since(start).Round(time.Millisecond))
	return nil
}

// startCluster starts a site's etcd and kube-apiserver in its gateway's
// namespace and gives the cluster what the gateway and kube-proxy need.
func (l *Lab) startCluster(ctx context.Context, site string) (*kube.Server, error) {
	gw, _ := l.GatewayOf(site)
	s, err := kube.StartWith(ctx, l.kubeDir(site), kube.Options{
		NS: gw.NS, Addr: gw.Addr, ServiceCIDR: KubeServiceCIDR, Detached: true,
	})
	if err != nil {
		return s, fmt.Errorf("lab: cluster of %s: %w", site, err)
	}
	cfg := s.Config()
	if err := errors.Join(kubesource.InstallCRDs(ctx, cfg), kubepolicy.InstallCRDs(ctx, cfg)); err != nil {
		return s, fmt.Errorf("lab: cluster of %s: %w", site, err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return s, err
	}
	for _, n := range l.nodesOf(site) {
		if err := registerNode(ctx, client, n); err != nil {
			return s, fmt.Errorf("lab: cluster of %s: %w", site, err)
		}
	}
	return s, nil
}

// registerNode makes the Node object a node's kubelet would: its name,
// pod CIDR and address. kube-proxy reads its node's addresses from it.
func registerNode(ctx context.Context, client kubernetes.Interface, n Host) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{corev1.LabelHostname: n.Name}},
		Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
	}
	created, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	created.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: n.Addr.String()},
		{Type: corev1.NodeHostName, Address: n.Name},
	}
	if _, err := client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", n.Name, err)
	}
	return nil
}

// startProxy starts kube-proxy on a node, against its site's cluster.
func (l *Lab) startProxy(n Host, bin, kubeconfig string) error {
	s, _ := l.Topology.siteOf(n.Site)
	conf := filepath.Join(l.kubeDir(n.Site), "kube-proxy-"+n.Name+".yaml")
	cfg := kube.ProxyConfig{Node: n.Name, Kubeconfig: kubeconfig, ClusterCIDR: s.PodCIDR}
	if err := os.WriteFile(conf, cfg.YAML(), 0o600); err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	return l.spawn(n, "kube-proxy", filepath.Join(l.kubeDir(n.Site), "kube-proxy-"+n.Name+".log"), bin, "--config", conf)
}

// waitProxy waits until a node's kube-proxy says it has programmed the
// cluster's Services.
func (l *Lab) waitProxy(ctx context.Context, n Host, timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: n.Namespace().DialContext}}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		if pid := l.pidOf(n.Name, "kube-proxy"); pid != 0 && !netns.Alive(pid) {
			return fmt.Errorf("lab: kube-proxy on %s exited\n%s", n.Name, l.tail(filepath.Join(l.kubeDir(n.Site), "kube-proxy-"+n.Name+".log")))
		}
		resp, err := c.Get("http://" + kube.ProxyHealthz + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: kube-proxy on %s not healthy after %s: %s\n%s", n.Name, timeout, last,
				l.tail(filepath.Join(l.kubeDir(n.Site), "kube-proxy-"+n.Name+".log")))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// nodesOf returns a site's nodes, in order.
func (l *Lab) nodesOf(site string) []Host {
	var out []Host
	for _, h := range l.Hosts {
		if h.Site == site && h.Role == RoleNode {
			out = append(out, h)
		}
	}
	return out
}

// KubeConfig is a client configuration for a site's cluster as its
// gateway sees it: from the gateway's kubeconfig, dialing inside the
// gateway's namespace (where the lab's clusters listen, and where a
// test forwards its own).
func (l *Lab) KubeConfig(site string) (*rest.Config, error) {
	path := l.Kubeconfigs[site]
	if path == "" {
		var with []string
		for s := range l.Kubeconfigs {
			with = append(with, s)
		}
		slices.Sort(with)
		have := "no site has one"
		if len(with) > 0 {
			have = "sites with one: " + strings.Join(with, ", ")
		}
		return nil, fmt.Errorf("lab: site %q has no cluster in lab %s (%s; `strait lab up --kube` gives the topology's Kubernetes sites one)",
			site, l.Run, have)
	}
	gw, ok := l.GatewayOf(site)
	if !ok {
		return nil, fmt.Errorf("lab: site %q has no gateway", site)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("lab: kubeconfig of %s: %w", site, err)
	}
	cfg.Dial = gw.Namespace().DialContext
	return cfg, nil
}

// leftoverProcs lists the processes whose command line names a run's
// state directory (the lab's etcd, kube-apiserver, kube-proxy, gateways,
// WAN emulator): none may outlive Down.
func leftoverProcs(stateDir string) []string {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var left []string
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !netns.Alive(pid) {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if slices.ContainsFunc(args, func(a string) bool { return a == stateDir || strings.HasPrefix(a, stateDir+"/") }) {
			left = append(left, fmt.Sprintf("process %d (%s)", pid, filepath.Base(args[0])))
		}
	}
	return left
}
