package nodeagent_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/straitnet/strait/e2e/kube/kubetest"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// TestAgentEnforcesNetworkPolicy applies the Kubernetes documentation's
// NetworkPolicy examples on a real kube-apiserver: default deny, allow
// from a namespace, ipBlock with except; strait-agent compiles them into
// its eBPF maps and real connections between pods made by strait-cni
// follow.
func TestAgentEnforcesNetworkPolicy(t *testing.T) {
	nstest.RequireRoot(t)
	srv := kubetest.Start(t)
	kc, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lan := nstest.New(t, "plan")
	n := &testNode{name: "pn", addr: "172.31.0.11", podCIDR: "10.0.7.0/24", ns: nstest.New(t, "pn"), dir: t.TempDir()}
	link(t, n.ns, "eth0", n.addr+"/24", lan, "p-pn", "")
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}, Spec: corev1.NodeSpec{PodCIDRs: []string{n.podCIDR}}}
	created, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr}}
	if _, err := kc.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	startAgent(t, srv, n.ns, n.name, n.dir)
	waitReady(t, n)

	for ns, labels := range map[string]map[string]string{"team-a": {"team": "a"}, "team-b": {"team": "b"}, "shop": nil} {
		if _, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// No controller-manager here makes the default service account.
		if _, err := kc.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	type pod struct {
		ns, name string
		net      netns.NS
		ip       netip.Addr
	}
	pods := map[string]*pod{"a": {ns: "team-a", name: "client"}, "c": {ns: "team-b", name: "client"}, "b": {ns: "shop", name: "web"}}
	for key, p := range pods {
		p.net = nstest.New(t, "pp"+key)
		p.ip = netip.MustParseAddr(addPodAs(t, n, p.net, "c"+key))
		makePod(t, kc, p.ns, p.name, n.name, p.ip)
	}
	var ln net.Listener
	if err := pods["b"].net.Do(func() (err error) { ln, err = net.Listen("tcp", ":80"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	expect := func(what string, a, c bool) {
		t.Helper()
		nstest.Eventually(t, 15*time.Second, what, func() error {
			gotA, gotC := connects(pods["a"].net, pods["b"].ip, 80), connects(pods["c"].net, pods["b"].ip, 80)
			if gotA != a || gotC != c {
				return fmt.Errorf("team-a reaches shop/web: %v (want %v); team-b: %v (want %v)", gotA, a, gotC, c)
			}
			return nil
		})
	}
	nps := kc.NetworkingV1().NetworkPolicies("shop")
	expect("no policy: both reach the web pod", true, true)

	denyAll := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default-deny-ingress"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := nps.Create(ctx, denyAll, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("default deny ingress in shop", false, false)

	tcp := corev1.ProtocolTCP
	port80 := networkingv1.NetworkPolicyPort{Protocol: &tcp}
	port80.Port = intOrStr(80)
	fromTeamA := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-team-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}},
				Ports: []networkingv1.NetworkPolicyPort{port80},
			}},
		}}
	if _, err := nps.Create(ctx, fromTeamA, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("allow from namespace team=a", true, false)

	if err := nps.Delete(ctx, "allow-team-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	block := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-pods-but-c"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.7.0/24", Except: []string{pods["c"].ip.String() + "/32"}}}},
		}}}}
	if _, err := nps.Create(ctx, block, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("ipBlock 10.0.7.0/24 except team-b's pod", true, false)

	for _, name := range []string{"allow-pods-but-c", "default-deny-ingress"} {
		if err := nps.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	expect("policies deleted", true, true)
}

func makePod(t *testing.T, kc kubernetes.Interface, ns, name, node string, ip netip.Addr) {
	t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "none"}}}}
	created, err := kc.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	created.Status.Phase = corev1.PodRunning
	created.Status.PodIP = ip.String()
	created.Status.PodIPs = []corev1.PodIP{{IP: ip.String()}}
	if _, err := kc.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func intOrStr(p int) *intstr.IntOrString {
	v := intstr.FromInt32(int32(p))
	return &v
}
