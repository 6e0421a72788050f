package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/e2e/kube"
	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// TestMergerDemoOnKubernetes is `make demo`'s story: the merger lab with a
// real cluster in each cloud (kube-apiserver and etcd in the gateway,
// kube-proxy on the nodes, the same service CIDR in both). An app
// exported in cloud-b with a ServiceExport is imported into cloud-a,
// resolves there under clusterset.local, and answers a TCP connection
// from a cloud-a pod; the connection's path, read from the kernel's
// conntrack tables, goes pod IP, egress IP, ingress IP, ClusterIP,
// backend pod.
//
// Not parallel: two clusters (API servers, etcd, four kube-proxies) next
// to two other labs starve every gateway of the two cores; the package's
// parallel tests start once it is done.
func TestMergerDemoOnKubernetes(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "etcd")
	// `make test` builds both first; a bare `go test` may have to.
	bctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	for _, build := range []func(context.Context) (string, error){kube.Binary, kube.ProxyBinary} {
		if _, err := build(bctx); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	l := newLabWith(t, lab.Merger(), lab.Options{Discovery: true, Kube: true, VIPRange: netip.MustParsePrefix("242.255.0.0/24")})
	t.Logf("lab with clusters up in %s", time.Since(start).Round(time.Millisecond))
	if got := l.KubeSites(); !slices.Equal(got, []string{"cloud-a", "cloud-b"}) {
		t.Fatalf("clusters in %v, want cloud-a and cloud-b", got)
	}
	// The lab's processes, each where it belongs: the clusters in the
	// gateways, kube-proxy on every node of the clouds and nowhere else.
	for _, want := range []struct{ host, what string }{
		{"cloud-a-gw", "etcd"}, {"cloud-a-gw", "kube-apiserver"}, {"cloud-b-gw", "etcd"}, {"cloud-b-gw", "kube-apiserver"},
		{"cloud-a-node1", "kube-proxy"}, {"cloud-a-node2", "kube-proxy"}, {"cloud-b-node1", "kube-proxy"}, {"cloud-b-node2", "kube-proxy"},
	} {
		i := slices.IndexFunc(l.Procs, func(p lab.Proc) bool { return p.Host == want.host && p.What == want.what })
		if i < 0 || !netns.Alive(l.Procs[i].Pid) {
			t.Errorf("no %s running in %s: %+v", want.what, want.host, l.Procs)
		}
	}
	ctx := context.Background()
	cfgA, err := l.KubeConfig("cloud-a")
	if err != nil {
		t.Fatal(err)
	}
	cfgB, err := l.KubeConfig("cloud-b")
	if err != nil {
		t.Fatal(err)
	}
	kubeA, err := kubernetes.NewForConfig(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	kubeB, err := kubernetes.NewForConfig(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	// Both clusters have the same service CIDR: their first ClusterIP,
	// the API's own, is the same address.
	for _, k := range []kubernetes.Interface{kubeA, kubeB} {
		svc, err := k.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil || svc.Spec.ClusterIP != "10.96.0.1" {
			t.Fatalf("the kubernetes Service: %v, %v (want 10.96.0.1 in both clusters)", svc, err)
		}
	}

	// The demo's objects: the namespace in cloud-a, the app in cloud-b.
	if _, err := l.Apply(ctx, "cloud-a", lab.DemoNamespace); err != nil {
		t.Fatal(err)
	}
	applied, err := l.Apply(ctx, "cloud-b", lab.DemoApp)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"namespace demo", "service demo/app", "endpointslice demo/app-cloud-b-pod1", "serviceexport demo/app"}; !slices.Equal(applied, want) {
		t.Errorf("applied %v, want %v", applied, want)
	}
	svc, err := kubeB.CoreV1().Services("demo").Get(ctx, "app", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	clusterIP := netip.MustParseAddr(svc.Spec.ClusterIP)
	if !lab.KubeServiceCIDR.Contains(clusterIP) {
		t.Fatalf("ClusterIP %s is not in the service CIDR %s", clusterIP, lab.KubeServiceCIDR)
	}

	// cloud-a imports it, with cloud-b's ingress address.
	mcsA, err := mcsclient.NewForConfig(cfgA)
	if err != nil {
		t.Fatal(err)
	}
	cloudB, cloudA := l.Topology.Sites[1], l.Topology.Sites[0]
	var ingress netip.Addr
	nstest.Eventually(t, 60*time.Second, "ServiceImport demo/app in cloud-a", func() error {
		si, err := mcsA.MulticlusterV1alpha1().ServiceImports("demo").Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(si.Spec.IPs) != 1 || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 {
			return fmt.Errorf("spec %+v", si.Spec)
		}
		if len(si.Status.Clusters) != 1 || si.Status.Clusters[0].Cluster != "cloud-b" {
			return fmt.Errorf("status %+v", si.Status)
		}
		ingress, err = netip.ParseAddr(si.Spec.IPs[0])
		return err
	})
	if !cloudB.Block.Contains(ingress) {
		t.Fatalf("ServiceImport lists %s, not an address of cloud-b's block %s", ingress, cloudB.Block)
	}

	// A cloud-a pod resolves the name through its gateway and reaches
	// cloud-b's pod through it.
	from, backend := l.MustHost("cloud-a-pod1"), l.MustHost("cloud-b-pod1")
	const name = "app.demo.svc.clusterset.local"
	r, err := query(l, from, "cloud-a", name, dns.TypeA)
	if err != nil || !slices.Equal(addrs(r), []string{ingress.String()}) {
		t.Fatalf("%s from %s: %v %v, want %s", name, from.Name, r, err, ingress)
	}
	var reply lab.Reply
	nstest.Eventually(t, 20*time.Second, "a TCP exchange from cloud-a-pod1 with demo/app", func() error {
		reply, err = lab.Request(ctx, from, netip.AddrPortFrom(ingress, 80), "tcp", 2*time.Second)
		return err
	})
	if reply.Name != backend.Name || reply.Local != netip.AddrPortFrom(backend.Addr, lab.ServePort) {
		t.Fatalf("answered by %+v, want %s at %s:%d", reply, backend.Name, backend.Addr, lab.ServePort)
	}

	// The trace, from the kernel's state: every address in its place.
	tr, err := l.TraceConnection(ctx, from.Name, name+":80")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	lab.PrintTrace(&out, tr)
	t.Logf("trace:\n%s", out.String())
	if !tr.Complete {
		t.Fatal("the trace does not reach the server's socket")
	}
	want := []struct {
		role string
		in   func(netip.Addr) bool
		what string
		at   string
	}{
		{lab.AddrPod, func(a netip.Addr) bool { return a == from.Addr }, "cloud-a-pod1's address", "cloud-a-pod1"},
		{lab.AddrEgress, func(a netip.Addr) bool { return cloudA.Block.Contains(a) && a == from.Egress }, "cloud-a's egress address in " + cloudA.Block.String(), "cloud-a-gw"},
		{lab.AddrIngress, func(a netip.Addr) bool { return cloudB.Block.Contains(a) && a == ingress }, "cloud-b's ingress address in " + cloudB.Block.String(), "cloud-a-pod1"},
		{lab.AddrCluster, func(a netip.Addr) bool { return lab.KubeServiceCIDR.Contains(a) && a == clusterIP }, "demo/app's ClusterIP " + clusterIP.String(), "cloud-b-gw"},
		{lab.AddrBackend, func(a netip.Addr) bool { return a == backend.Addr }, "cloud-b-pod1's address", "cloud-b-node1"},
	}
	if len(tr.Stops) != len(want) {
		t.Fatalf("path of %d addresses, want %d: %v", len(tr.Stops), len(want), tr.Stops)
	}
	for i, w := range want {
		s := tr.Stops[i]
		if s.Role != w.role || !w.in(s.Addr.Addr()) || s.At != w.at {
			t.Errorf("address %d of the path: %s at %s, want %s, %s, taken at %s", i, s, s.At, w.role, w.what, w.at)
		}
	}
	if last := tr.Stops[len(tr.Stops)-1]; last.Addr.Port() != lab.ServePort {
		t.Errorf("backend port %d, want the pod's %d (the Service's targetPort)", last.Addr.Port(), lab.ServePort)
	}
	// kube-proxy on cloud-b-node1 masqueraded what came from outside the
	// cluster's pod CIDR: the backend saw the node.
	if tr.SeenAs.Role != lab.AddrNode || tr.SeenAs.Of != "cloud-b-node1" || tr.SeenAs.Addr != tr.Reply.Peer {
		t.Errorf("the backend saw %s (%+v), want cloud-b-node1's address as its reply says (%s)", tr.SeenAs, tr.SeenAs, tr.Reply.Peer)
	}
	// No kube-proxy table in a gateway: see lab.startKube for why.
	for _, gw := range []string{"cloud-a-gw", "cloud-b-gw"} {
		cmd, _ := l.Command(gw, "nft", "list", "tables")
		out, err := cmd.Output()
		if err != nil || strings.Contains(string(out), "kube-proxy") || !strings.Contains(string(out), "table ip strait") {
			t.Errorf("%s's tables: %s %v", gw, out, err)
		}
	}
}
