package nodeagent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/e2e/kube"
	"github.com/straitnet/strait/e2e/kube/kubetest"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/nodeagent"
)

var bins string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strait-agent-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/straitnet/strait/cmd/strait-agent", "github.com/straitnet/strait/cmd/strait-cni").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building: %v\n%s", err, out)
		os.Exit(1)
	}
	bins = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func ip(t *testing.T, ns netns.NS, args ...string) string {
	t.Helper()
	out, err := ns.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s in %s: %v\n%s", strings.Join(args, " "), ns.Name, err, out)
	}
	return string(out)
}

// link joins two namespaces with a veth and addresses its ends.
func link(t *testing.T, a netns.NS, aName, aAddr string, b netns.NS, bName, bAddr string) {
	t.Helper()
	ip(t, a, "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	for _, end := range []struct {
		ns         netns.NS
		name, addr string
	}{{a, aName, aAddr}, {b, bName, bAddr}} {
		if end.addr != "" {
			ip(t, end.ns, "addr", "add", end.addr, "dev", end.name)
		}
		ip(t, end.ns, "link", "set", end.name, "up")
	}
}

type testNode struct {
	name, addr, podCIDR string
	ns                  netns.NS
	dir                 string
}

// TestAgentRoutesNodesAndPods runs three nodes: n1 and n2 share a LAN,
// n3 sits behind a router. Each runs strait-agent against a real
// kube-apiserver; pods made with strait-cni from the agents' conflists
// reach each other across the LAN directly and across the router over
// VXLAN.
func TestAgentRoutesNodesAndPods(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "ip", "ping")
	srv := kubetest.Start(t)
	kc, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	lan, rt := nstest.New(t, "lan"), nstest.New(t, "rt")
	ip(t, lan, "link", "add", "br0", "type", "bridge")
	ip(t, lan, "link", "set", "br0", "up")
	nodes := []*testNode{
		{name: "n1", addr: "172.31.0.11", podCIDR: "10.0.1.0/24"},
		{name: "n2", addr: "172.31.0.12", podCIDR: "10.0.2.0/24"},
		{name: "n3", addr: "172.31.5.13", podCIDR: "10.0.3.0/24"},
	}
	link(t, rt, "lan", "172.31.0.1/24", lan, "p-rt", "")
	ip(t, lan, "link", "set", "p-rt", "master", "br0")
	if err := rt.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		n.ns = nstest.New(t, n.name)
		n.dir = t.TempDir()
		if n.name == "n3" {
			link(t, n.ns, "eth0", n.addr+"/24", rt, "n3", "172.31.5.1/24")
			ip(t, n.ns, "route", "add", "default", "via", "172.31.5.1")
		} else {
			link(t, n.ns, "eth0", n.addr+"/24", lan, "p-"+n.name, "")
			ip(t, lan, "link", "set", "p-"+n.name, "master", "br0")
			ip(t, n.ns, "route", "add", "default", "via", "172.31.0.1")
		}
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}, Spec: corev1.NodeSpec{PodCIDR: n.podCIDR, PodCIDRs: []string{n.podCIDR}}}
		created, err := kc.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr}}
		if _, err := kc.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		startAgent(t, srv, n.ns, n.name, n.dir)
	}
	for _, n := range nodes {
		waitReady(t, n)
	}

	// n1's routes: n2 directly, n3 over VXLAN, the mesh to the gateway.
	routes := ip(t, nodes[0].ns, "route", "show", "proto", "246")
	for _, want := range []string{"10.0.2.0/24 via 172.31.0.12", "10.0.3.0/24 via 10.0.3.0 dev strait.vx onlink", "242.0.0.0/8 via 172.31.0.1"} {
		if !strings.Contains(routes, want) {
			t.Errorf("n1 lacks %q:\n%s", want, routes)
		}
	}

	// n3 cannot reach the gateway on a link of its own: it says so.
	if r := ip(t, nodes[2].ns, "route", "show", "proto", "246"); strings.Contains(r, "242.0.0.0/8") {
		t.Errorf("n3 routes the mesh to a gateway it has no link to:\n%s", r)
	}

	// Pods from each agent's conflist, as the runtime would make them.
	pods := map[string]string{}
	for _, n := range nodes {
		pod := nstest.New(t, "pod-"+n.name)
		pods[n.name] = addPod(t, n, pod)
		t.Cleanup(func() { cniCmd(t, n, "DEL", "c-"+n.name, "/run/netns/"+pod.Name) })
		pods[n.name+"-ns"] = pod.Name
	}
	from := netns.NS{Name: pods["n1-ns"]}
	for _, to := range []string{"n2", "n3"} {
		var out []byte
		var err error
		for range 20 { // the first packets wait for neighbour resolution
			if out, err = from.Command("ping", "-c1", "-W1", pods[to]).CombinedOutput(); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("pod on n1 to pod on %s (%s): %v\n%s", to, pods[to], err, out)
		}
	}

	// A node that goes takes its route with it.
	if err := kc.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 10*time.Second, "n1 drops the route to n2's pods", func() error {
		if r := ip(t, nodes[0].ns, "route", "show", "proto", "246"); strings.Contains(r, "10.0.2.0/24") {
			return fmt.Errorf("still:\n%s", r)
		}
		return nil
	})
}

// TestAgentSaysWhyNotReady: a Node without pod CIDRs keeps the node not
// ready, with the reason strait-cni passes on.
func TestAgentSaysWhyNotReady(t *testing.T) {
	nstest.RequireRoot(t)
	srv := kubetest.Start(t)
	kc, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	n := &testNode{name: "bare", ns: nstest.New(t, "bare"), dir: t.TempDir()}
	startAgent(t, srv, n.ns, "bare", n.dir)
	nstest.Eventually(t, 20*time.Second, "the missing Node named", func() error {
		return reason(n, `the Node "bare" does not exist`)
	})
	if _, err := kc.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "bare"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, 20*time.Second, "the missing pod CIDRs named", func() error {
		return reason(n, "has no spec.podCIDRs yet")
	})
	if _, err := os.Stat(filepath.Join(n.dir, nodeagent.ConflistName)); err == nil {
		t.Error("a conflist was written for a node that is not ready")
	}
}

func reason(n *testNode, want string) error {
	data, err := os.ReadFile(filepath.Join(n.dir, "agent.json"))
	if err != nil {
		return err
	}
	var st plugin.AgentState
	if err := json.Unmarshal(data, &st); err != nil {
		return err
	}
	if st.Ready || !strings.Contains(st.Reason, want) {
		return fmt.Errorf("state %+v", st)
	}
	return nil
}

// startAgent runs strait-agent in ns, reaching the API server through a
// forwarder at the kubeconfig's address inside ns.
func startAgent(t *testing.T, srv *kube.Server, ns netns.NS, node, dir string) {
	t.Helper()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	f, err := netns.Forward(ns, u.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd := ns.Command(filepath.Join(bins, "strait-agent"), "run", "--node", node, "--kubeconfig", srv.Kubeconfig,
		"--gateway", "172.31.0.1", "--mesh", "242.0.0.0/8", "--cni-conf-dir", dir, "--state-file", filepath.Join(dir, "agent.json"),
		"--cni-data-dir", filepath.Join(dir, "ipam"), "--interval", "1s", "--log-format", "text", "--bpf-pin-dir=")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent %s:\n%s", node, log.String())
		}
	})
}

func waitReady(t *testing.T, n *testNode) {
	t.Helper()
	nstest.Eventually(t, 30*time.Second, n.name+" ready", func() error {
		data, err := os.ReadFile(filepath.Join(n.dir, "agent.json"))
		if err != nil {
			return err
		}
		var st plugin.AgentState
		json.Unmarshal(data, &st)
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.Reason)
		}
		_, err = os.Stat(filepath.Join(n.dir, nodeagent.ConflistName))
		return err
	})
}

// addPod runs strait-cni ADD with the first plugin of the node's conflist
// and returns the pod's address.
func addPod(t *testing.T, n *testNode, pod netns.NS) string {
	t.Helper()
	out := cniCmd(t, n, "ADD", "c-"+n.name, "/run/netns/"+pod.Name)
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) == 0 {
		t.Fatalf("ADD on %s: %s %v", n.name, out, err)
	}
	return strings.Split(r.IPs[0].Address, "/")[0]
}

func cniCmd(t *testing.T, n *testNode, command, container, netnsPath string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(n.dir, nodeagent.ConflistName))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	conf := list.Plugins[0]
	conf["cniVersion"], conf["name"] = list.CNIVersion, list.Name
	stdin, _ := json.Marshal(conf)
	cmd := n.ns.Command(filepath.Join(bins, "strait-cni"))
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + container, "CNI_NETNS=" + netnsPath, "CNI_IFNAME=eth0", "CNI_PATH=" + bins}
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		t.Errorf("%s %s on %s: %v\n%s", command, container, n.name, err, out)
	}
	return out
}
