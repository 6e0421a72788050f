package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/discovery/kubepolicy"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/e2e/kube"
	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/natpool"
)

// conditionTrue says whether an object's status has a condition of the
// type with status True.
func conditionTrue(o *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// query asks the DNS server of site's gateway from host, inside host's
// namespace, as a pod's resolver would.
func query(l *lab.Lab, from lab.Host, site, name string, qtype uint16) (*dns.Msg, error) {
	gw, ok := l.GatewayOf(site)
	if !ok {
		return nil, fmt.Errorf("no gateway in %s", site)
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	var r *dns.Msg
	err := from.Namespace().Do(func() error {
		c := &dns.Client{Timeout: 2 * time.Second}
		var err error
		r, _, err = c.Exchange(m, netip.AddrPortFrom(gw.Addr, lab.DNSPort).String())
		return err
	})
	return r, err
}

// addrs are the A records of an answer.
func addrs(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out
}

// TestDiscoveryMesh runs the merger lab with discovery: every gateway's
// mesh file holds only itself; the peers, their blocks and their services
// come from the gossip catalog, and pods resolve other clusters' services
// under clusterset.local.
func TestDiscoveryMesh(t *testing.T) {
	t.Parallel()
	l := newLabWith(t, lab.Merger(), lab.Options{Discovery: true})
	for _, s := range l.Topology.Sites {
		st := status(t, l, s.Name)
		if st.Discovery == nil || len(st.Discovery.Clusters) != len(l.Topology.Sites) {
			t.Fatalf("gateway of %s knows clusters %v, want all %d", s.Name, st.Discovery, len(l.Topology.Sites))
		}
	}
	// Learned peers carry traffic, translated where CIDRs collide.
	waitReachable(t, l, "cloud-b-pod1", "cloud-a-pod1")
	waitReachable(t, l, "onprem-pod1", "cloud-b-pod2")

	from := l.MustHost("cloud-b-pod1")
	target := l.MustHost("cloud-a-pod1")
	name := target.Service() + "." + target.PodNamespace + ".svc.clusterset.local"
	r, err := query(l, from, "cloud-b", name, dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	if got := addrs(r); r.Rcode != dns.RcodeSuccess || !slices.Equal(got, []string{target.Global.String()}) {
		t.Fatalf("%s: %s %v, want %s (cloud-a's ingress address)", name, dns.RcodeToString[r.Rcode], got, target.Global)
	}
	if !r.Authoritative || r.Answer[0].Header().Ttl == 0 || r.Answer[0].Header().Ttl > 30 {
		t.Errorf("answer not authoritative or TTL %d not short: %v", r.Answer[0].Header().Ttl, r)
	}
	// The per-cluster name, the same address.
	r, err = query(l, from, "cloud-b", "cloud-a."+name, dns.TypeA)
	if err != nil || !slices.Equal(addrs(r), []string{target.Global.String()}) {
		t.Fatalf("cloud-a.%s: %v %v", name, r, err)
	}
	// The address answers: the name leads to the pod.
	reply, err := lab.Request(context.Background(), from, netip.AddrPortFrom(netip.MustParseAddr(addrs(r)[0]), lab.ServePort), "tcp", 2*time.Second)
	if err != nil || reply.Name != target.Name {
		t.Fatalf("connecting to what %s resolves to: %+v %v", name, reply, err)
	}
	// NXDOMAIN for what nobody exports, NODATA for AAAA of what exists.
	r, err = query(l, from, "cloud-b", "nothing.default.svc.clusterset.local", dns.TypeA)
	if err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("unexported name: %v %v, want NXDOMAIN", r, err)
	}
	r, err = query(l, from, "cloud-b", name, dns.TypeAAAA)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) == 0 {
		t.Fatalf("AAAA of an IPv4 service: %v %v, want NODATA with the SOA", r, err)
	}

	// A gateway that stops leaves: the others stop answering its
	// services (the name stays, NODATA), and answer again once it is back.
	if err := l.StopGateway("cloud-a"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 10*time.Second, "cloud-a's service withdrawn from DNS", func() error {
		r, err := query(l, from, "cloud-b", name, dns.TypeA)
		if err != nil {
			return err
		}
		if len(r.Answer) != 0 {
			return fmt.Errorf("still answers %v", addrs(r))
		}
		return nil
	})
	if err := l.StartGateway("cloud-a"); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 20*time.Second, "cloud-a's service back in DNS", func() error {
		r, err := query(l, from, "cloud-b", name, dns.TypeA)
		if err != nil {
			return err
		}
		if !slices.Equal(addrs(r), []string{target.Global.String()}) {
			return fmt.Errorf("answers %v", addrs(r))
		}
		return nil
	})
}

// TestServiceExportBecomesImport gives each site of the pair a cluster of
// its own, a real kube-apiserver and etcd: a Service exported in cloud-a
// with a ServiceExport appears in cloud-b as a ServiceImport and resolves
// through cloud-b's gateway; unexported, both go away.
func TestServiceExportBecomesImport(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	sites := []string{"cloud-a", "cloud-b"}
	servers := startClusters(t, len(sites))
	kc := map[string]string{}
	for i, s := range sites {
		kc[s] = servers[i].Kubeconfig
	}
	var forwards []*netns.Forwarder
	t.Cleanup(func() {
		for _, f := range forwards {
			f.Close()
		}
	})
	vips := netip.MustParsePrefix("242.255.0.0/24")
	l := newLabWith(t, lab.Pair(), lab.Options{Discovery: true, Kubeconfigs: kc, VIPRange: vips, BeforeGateways: func(l *lab.Lab) error {
		// Each gateway reaches its cluster's API at the address of
		// its kubeconfig, inside its own namespace.
		for i, s := range sites {
			gw, _ := l.GatewayOf(s)
			u, err := url.Parse(servers[i].URL)
			if err != nil {
				return err
			}
			f, err := netns.Forward(gw.Namespace(), u.Host)
			if err != nil {
				return err
			}
			forwards = append(forwards, f)
		}
		return nil
	}})
	a, b := clients(t, servers[0]), clients(t, servers[1])
	ctx := context.Background()

	pod := l.MustHost("cloud-a-pod1")
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}},
	}
	if _, err := a.kube.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{pod.Addr.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(80))}},
	}
	if _, err := a.kube.DiscoveryV1().EndpointSlices("shop").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	export := &mcsv1a1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"}}
	if _, err := a.mcs.MulticlusterV1alpha1().ServiceExports("shop").Create(ctx, export, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// cloud-b gets the ServiceImport, with cloud-a's ingress address.
	var ip string
	nstest.Eventually(t, 30*time.Second, "ServiceImport shop/web in cloud-b", func() error {
		si, err := b.mcs.MulticlusterV1alpha1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if len(si.Spec.IPs) != 1 || len(si.Spec.Ports) != 1 || si.Spec.Ports[0].Port != 80 || si.Spec.Ports[0].Name != "http" {
			return fmt.Errorf("spec %+v", si.Spec)
		}
		if len(si.Status.Clusters) != 1 || si.Status.Clusters[0].Cluster != "cloud-a" {
			return fmt.Errorf("status %+v", si.Status)
		}
		ip = si.Spec.IPs[0]
		return nil
	})
	if a, ok := netip.ParseAddr(ip); ok != nil || !l.Topology.Sites[0].Block.Contains(a) {
		t.Fatalf("ServiceImport lists %s, not an address of cloud-a's block %s", ip, l.Topology.Sites[0].Block)
	}
	// cloud-a's ServiceExport says it is exported; cloud-a imports
	// nothing of its own.
	nstest.Eventually(t, 30*time.Second, "ServiceExport shop/web valid and ready", func() error {
		se, err := a.mcs.MulticlusterV1alpha1().ServiceExports("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range []string{kubesource.ConditionValid, kubesource.ConditionReady} {
			if !meta.IsStatusConditionTrue(se.Status.Conditions, c) {
				return fmt.Errorf("condition %s not true: %+v", c, se.Status.Conditions)
			}
		}
		return nil
	})
	if _, err := a.mcs.MulticlusterV1alpha1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("cloud-a imports its own service: %v", err)
	}

	// A pod in cloud-b resolves it, by name and by named port, to the
	// address of the ServiceImport.
	from := l.MustHost("cloud-b-pod1")
	r, err := query(l, from, "cloud-b", "web.shop.svc.clusterset.local", dns.TypeA)
	if err != nil || !slices.Equal(addrs(r), []string{ip}) {
		t.Fatalf("web.shop.svc.clusterset.local: %v %v, want %s", r, err, ip)
	}
	r, err = query(l, from, "cloud-b", "_http._tcp.web.shop.svc.clusterset.local", dns.TypeSRV)
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("SRV of the named port: %v %v", r, err)
	}
	if srv := r.Answer[0].(*dns.SRV); srv.Port != 80 || srv.Target != "cloud-a.web.shop.svc.clusterset.local." {
		t.Errorf("SRV %v, want port 80 at cloud-a.web.shop.svc.clusterset.local.", srv)
	}
	// cloud-a's gateway translates the address to the Service's ClusterIP.
	st := status(t, l, "cloud-a")
	if st.NAT.Services == 0 {
		t.Errorf("cloud-a programs no service mapping for the export: %+v", st.NAT)
	}
	if !slices.ContainsFunc(st.Allocations, func(al natpool.Allocation) bool { return al.Key == "ingress/shop/web" && al.IP.String() == ip }) {
		t.Errorf("cloud-a's allocations %v lack ingress/shop/web at %s", st.Allocations, ip)
	}

	// cloud-b declares shop/web global and writes a policy for it, as
	// strait.io objects: written once, in any cluster, for the mesh.
	gsvc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "strait.io/v1alpha1", "kind": "GlobalService",
		"metadata": map[string]any{"namespace": "shop", "name": "web"},
		"spec":     map[string]any{"weights": map[string]any{"cloud-a": int64(200)}, "healthCheck": map[string]any{"protocol": "TCP", "interval": "1s"}},
	}}
	if _, err := b.dyn.Resource(kubepolicy.GlobalServices).Namespace("shop").Create(ctx, gsvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fwp := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "strait.io/v1alpha1", "kind": "FirewallPolicy",
		"metadata": map[string]any{"name": "shop-guard"},
		"spec": map[string]any{"priority": int64(5), "rules": []any{map[string]any{
			"name": "no-b", "action": "deny",
			"from": []any{map[string]any{"cluster": "cloud-b"}},
			"to":   []any{map[string]any{"namespace": "shop", "service": "web"}},
		}}},
	}}
	if _, err := b.dyn.Resource(kubepolicy.FirewallPolicies).Create(ctx, fwp, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The schema lets this label key through; the gateway refuses it
	// and says so on the object.
	bad := fwp.DeepCopy()
	bad.SetName("bad-labels")
	unstructured.SetNestedSlice(bad.Object, []any{map[string]any{"action": "allow", "from": []any{map[string]any{"labels": map[string]any{"a b": "c"}}}}}, "spec", "rules")
	if _, err := b.dyn.Resource(kubepolicy.FirewallPolicies).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatalf("an object the schema should let through: %v", err)
	}
	var vip string
	nstest.Eventually(t, 30*time.Second, "GlobalService shop/web in cloud-b accepted, with a VIP", func() error {
		o, err := b.dyn.Resource(kubepolicy.GlobalServices).Namespace("shop").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		vip, _, _ = unstructured.NestedString(o.Object, "status", "vip")
		if a, err := netip.ParseAddr(vip); err != nil || !vips.Contains(a) {
			return fmt.Errorf("status %v: no VIP from %s", o.Object["status"], vips)
		}
		if !conditionTrue(o, kubepolicy.ConditionAccepted) {
			return fmt.Errorf("not accepted: %v", o.Object["status"])
		}
		return nil
	})
	nstest.Eventually(t, 30*time.Second, "FirewallPolicy bad-labels refused on its status", func() error {
		o, err := b.dyn.Resource(kubepolicy.FirewallPolicies).Get(ctx, "bad-labels", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if conditionTrue(o, kubepolicy.ConditionAccepted) || !strings.Contains(fmt.Sprint(o.Object["status"]), "not a valid label") {
			return fmt.Errorf("status %v", o.Object["status"])
		}
		return nil
	})
	// cloud-a, which has the instance, learned both from the catalog.
	nstest.Eventually(t, 30*time.Second, "cloud-a balancing shop/web at the VIP and enforcing shop-guard", func() error {
		st := status(t, l, "cloud-a")
		if st.LoadBalancer == nil || len(st.LoadBalancer.Services) != 1 || st.LoadBalancer.Services[0].VIP.String() != vip {
			return fmt.Errorf("load balancer %+v", st.LoadBalancer)
		}
		if st.Firewall == nil || len(st.Firewall.Rules) != 1 || st.Firewall.Rules[0].Name != "shop-guard/no-b" {
			return fmt.Errorf("firewall %+v", st.Firewall)
		}
		return nil
	})
	r, err = query(l, from, "cloud-b", "web.shop.svc.clusterset.local", dns.TypeA)
	if err != nil || !slices.Equal(addrs(r), []string{vip}) {
		t.Fatalf("web.shop.svc.clusterset.local once global: %v %v, want the VIP %s", r, err, vip)
	}
	if err := b.dyn.Resource(kubepolicy.GlobalServices).Namespace("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 30*time.Second, "shop/web no longer global at cloud-b's DNS", func() error {
		r, err := query(l, from, "cloud-b", "web.shop.svc.clusterset.local", dns.TypeA)
		if err != nil || !slices.Equal(addrs(r), []string{ip}) {
			return fmt.Errorf("%v %v, want the ingress address %s again", r, err, ip)
		}
		return nil
	})

	// Unexported: the import and the name go.
	if err := a.mcs.MulticlusterV1alpha1().ServiceExports("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 30*time.Second, "ServiceImport shop/web gone from cloud-b", func() error {
		_, err := b.mcs.MulticlusterV1alpha1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("still there (%v)", err)
	})
	r, err = query(l, from, "cloud-b", "web.shop.svc.clusterset.local", dns.TypeA)
	if err != nil || r.Rcode != dns.RcodeNameError {
		t.Fatalf("after unexport: %v %v, want NXDOMAIN", r, err)
	}
}

type clusterClients struct {
	kube kubernetes.Interface
	mcs  mcsclient.Interface
	dyn  dynamic.Interface
}

func clients(t *testing.T, s *kube.Server) clusterClients {
	t.Helper()
	k, err := kubernetes.NewForConfig(s.Config())
	if err != nil {
		t.Fatal(err)
	}
	m, err := mcsclient.NewForConfig(s.Config())
	if err != nil {
		t.Fatal(err)
	}
	d, err := dynamic.NewForConfig(s.Config())
	if err != nil {
		t.Fatal(err)
	}
	return clusterClients{k, m, d}
}

// startClusters starts n kube-apiservers at once, each with the MCS API's
// CRDs and a namespace "shop".
func startClusters(t *testing.T, n int) []*kube.Server {
	t.Helper()
	nstest.RequireCommands(t, "etcd")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	servers := make([]*kube.Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		dir := t.TempDir()
		wg.Go(func() {
			s, err := kube.Start(ctx, dir)
			if err == nil {
				servers[i] = s
				err = errors.Join(kubesource.InstallCRDs(ctx, s.Config()), kubepolicy.InstallCRDs(ctx, s.Config()))
			}
			if err == nil {
				var k kubernetes.Interface
				if k, err = s.Client(); err == nil {
					_, err = k.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{})
				}
			}
			errs[i] = err
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, s := range servers {
			if s != nil {
				s.Stop()
			}
		}
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("cluster %d: %v", i, err)
		}
	}
	return servers
}

// TestWANCutAndHeal cuts cloud-b off the WAN in a lab with discovery: the
// others see it down and stop answering its services in DNS; healed, it is
// back in the catalog, in DNS, and reachable, without a restart.
func TestWANCutAndHeal(t *testing.T) {
	t.Parallel()
	l := newLabWith(t, lab.Merger(), lab.Options{Discovery: true})
	from, target := l.MustHost("cloud-a-pod1"), l.MustHost("cloud-b-pod2")
	name := target.Service() + "." + target.PodNamespace + ".svc.clusterset.local"
	waitReachable(t, l, from.Name, target.Name)
	if err := l.SetWAN("cloud-b", lab.WAN{Loss: 100}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 30*time.Second, "cloud-a seeing cloud-b down, and its service gone from DNS", func() error {
		st := status(t, l, "cloud-a")
		if st.Discovery == nil || st.Discovery.Clusters["cloud-b"] {
			return fmt.Errorf("clusters %v", st.Discovery)
		}
		r, err := query(l, from, "cloud-a", name, dns.TypeA)
		if err != nil || len(addrs(r)) != 0 {
			return fmt.Errorf("%s still answers %v (%v)", name, r, err)
		}
		return nil
	})
	if err := l.SetWAN("cloud-b", lab.WAN{}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 60*time.Second, "cloud-b back in cloud-a's catalog and DNS", func() error {
		st := status(t, l, "cloud-a")
		if st.Discovery == nil || !st.Discovery.Clusters["cloud-b"] {
			return fmt.Errorf("clusters %v", st.Discovery)
		}
		r, err := query(l, from, "cloud-a", name, dns.TypeA)
		if err != nil || !slices.Equal(addrs(r), []string{target.Global.String()}) {
			return fmt.Errorf("%s: %v %v", name, r, err)
		}
		return nil
	})
	waitReachable(t, l, from.Name, target.Name)
}
