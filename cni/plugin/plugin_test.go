package plugin_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strait-cni-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "strait-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/straitnet/strait/cmd/strait-cni").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building strait-cni: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is a node's namespace with the plugin's configuration.
type node struct {
	t     *testing.T
	ns    netns.NS
	conf  map[string]any
	state string // the agent's state file
}

func newNS(t *testing.T, role string) netns.NS {
	t.Helper()
	return nstest.New(t, "cni-"+role)
}

func newNode(t *testing.T, cidrs ...string) *node {
	t.Helper()
	nstest.RequireRoot(t)
	dir := t.TempDir()
	n := &node{t: t, ns: newNS(t, "node"), state: filepath.Join(dir, "agent.json")}
	n.conf = map[string]any{"cniVersion": "1.1.0", "name": "strait", "type": "strait-cni", "mtu": 1400,
		"podCIDRs": cidrs, "dataDir": filepath.Join(dir, "data"), "agentState": n.state}
	n.agent(true, "")
	// A node has an address of its own: the source of what it sends pods.
	for _, args := range [][]string{{"ip", "addr", "add", "172.31.0.11/32", "dev", "lo"}} {
		if out, err := n.ns.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	return n
}

func (n *node) agent(ready bool, reason string) {
	data, _ := json.Marshal(plugin.AgentState{Ready: ready, Reason: reason, Since: time.Now()})
	if err := os.WriteFile(n.state, data, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// cniErr is the spec's error object.
type cniErr struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details"`
}

// run runs the plugin in the node's namespace as a runtime would.
func (n *node) run(cmd, container, netnsPath, ifName string, conf map[string]any) ([]byte, *cniErr) {
	n.t.Helper()
	if conf == nil {
		conf = n.conf
	}
	stdin, _ := json.Marshal(conf)
	c := n.ns.Command(bin)
	c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + container, "CNI_NETNS=" + netnsPath, "CNI_IFNAME=" + ifName, "CNI_PATH=/nonexistent"}
	c.Stdin = bytes.NewReader(stdin)
	var out, stderr bytes.Buffer
	c.Stdout, c.Stderr = &out, &stderr
	if err := c.Run(); err != nil {
		var e cniErr
		if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
			n.t.Fatalf("%s: %v, and stdout is no error object: %q (stderr %q)", cmd, err, out.String(), stderr.String())
		}
		return out.Bytes(), &e
	}
	return out.Bytes(), nil
}

func path(ns netns.NS) string { return "/run/netns/" + ns.Name }

type result struct {
	CNIVersion string `json:"cniVersion"`
	Interfaces []struct {
		Name    string `json:"name"`
		Mac     string `json:"mac"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address   string `json:"address"`
		Gateway   string `json:"gateway"`
		Interface int    `json:"interface"`
	} `json:"ips"`
}

func (n *node) add(container string, pod netns.NS, ifName string) result {
	n.t.Helper()
	out, e := n.run("ADD", container, path(pod), ifName, nil)
	if e != nil {
		n.t.Fatalf("ADD %s: %+v", container, *e)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		n.t.Fatalf("ADD result %q: %v", out, err)
	}
	return r
}

func (n *node) sh(ns netns.NS, args ...string) (string, error) {
	out, err := ns.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

func TestAddCheckDel(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.0.1.0/24")
	pod := newNS(t, "pod")
	r := n.add("c1", pod, "eth0")
	if r.CNIVersion != "1.1.0" || len(r.IPs) != 1 || len(r.Interfaces) != 2 || r.Interfaces[1].Sandbox != path(pod) {
		t.Fatalf("result %+v", r)
	}
	ip := netip.MustParsePrefix(r.IPs[0].Address)
	if ip.Bits() != 32 || !netip.MustParsePrefix("10.0.1.0/24").Contains(ip.Addr()) || r.IPs[0].Gateway != "169.254.1.1" {
		t.Fatalf("pod address %s via %s", r.IPs[0].Address, r.IPs[0].Gateway)
	}
	if host := plugin.HostVeth("c1", "eth0"); r.Interfaces[0].Name != host {
		t.Errorf("host side %s, want %s", r.Interfaces[0].Name, host)
	}
	// The node reaches the pod, and the pod answers through its gateway.
	if out, err := n.sh(n.ns, "ping", "-c1", "-W2", ip.Addr().String()); err != nil {
		t.Fatalf("node to pod: %v\n%s", err, out)
	}
	if out, _ := n.sh(pod, "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1400") {
		t.Errorf("pod MTU: %s", out)
	}
	if _, e := n.run("CHECK", "c1", path(pod), "eth0", nil); e != nil {
		t.Fatalf("CHECK of what ADD made: %+v", *e)
	}
	// CHECK holds the runtime's memory of ADD against the allocation.
	withPrev := func(addr string) map[string]any {
		c := map[string]any{}
		for k, v := range n.conf {
			c[k] = v
		}
		c["prevResult"] = map[string]any{"cniVersion": "1.1.0",
			"interfaces": []map[string]any{{"name": r.Interfaces[0].Name}, {"name": "eth0", "sandbox": path(pod)}},
			"ips":        []map[string]any{{"address": addr, "interface": 1}}}
		return c
	}
	if _, e := n.run("CHECK", "c1", path(pod), "eth0", withPrev(r.IPs[0].Address)); e != nil {
		t.Fatalf("CHECK with the right prevResult: %+v", *e)
	}
	if _, e := n.run("CHECK", "c1", path(pod), "eth0", withPrev("10.0.1.99/32")); e == nil || !strings.Contains(e.Details, "prevResult gives eth0 addresses [10.0.1.99]") {
		t.Fatalf("CHECK with another address in prevResult: %+v", e)
	}
	// A repeated ADD fails and leaves the live pod as it was.
	if _, e := n.run("ADD", "c1", path(pod), "eth0", nil); e == nil || !strings.Contains(e.Msg, "already has eth0") {
		t.Fatalf("second ADD: %+v", e)
	}
	if _, e := n.run("CHECK", "c1", path(pod), "eth0", nil); e != nil {
		t.Fatalf("CHECK after a repeated ADD: %+v", *e)
	}
	// A second network with its own default route is refused, whole.
	if _, e := n.run("ADD", "c1b", path(pod), "eth1", nil); e == nil || !strings.Contains(e.Details, "already has a default route") {
		t.Fatalf("ADD of a second interface: %+v", e)
	}
	if out, _ := n.sh(pod, "ip", "link"); strings.Contains(out, "eth1") {
		t.Errorf("the refused ADD left eth1:\n%s", out)
	}
	// CHECK finds a removed route.
	if out, err := n.sh(n.ns, "ip", "route", "del", ip.String()); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if _, e := n.run("CHECK", "c1", path(pod), "eth0", nil); e == nil || !strings.Contains(e.Details, "no route to "+ip.String()) {
		t.Fatalf("CHECK after the host route went: %+v, want it named", e)
	}
	if _, e := n.run("DEL", "c1", path(pod), "eth0", nil); e != nil {
		t.Fatalf("DEL: %+v", *e)
	}
	if out, _ := n.sh(n.ns, "ip", "link"); strings.Contains(out, plugin.HostVeth("c1", "eth0")) {
		t.Errorf("DEL left the host veth:\n%s", out)
	}
	// Again, and with the namespace gone: still fine.
	if _, e := n.run("DEL", "c1", path(pod), "eth0", nil); e != nil {
		t.Fatalf("second DEL: %+v", *e)
	}
	if _, e := n.run("DEL", "c-unknown", "/run/netns/gone", "eth0", nil); e != nil {
		t.Fatalf("DEL of an unknown container in a gone namespace: %+v", *e)
	}
	// The freed address is not handed out again at once.
	r2 := n.add("c2", pod, "eth0")
	if r2.IPs[0].Address == r.IPs[0].Address {
		t.Errorf("a just-freed address came back at once: %s", r2.IPs[0].Address)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.0.2.0/30")
	pod := newNS(t, "pod")
	conf := func(k string, v any) map[string]any {
		c := map[string]any{}
		for a, b := range n.conf {
			c[a] = b
		}
		c[k] = v
		return c
	}
	for _, tt := range []struct {
		name, cmd, netns string
		conf             map[string]any
		code             uint
		want             string
	}{
		{"unknown cniVersion", "ADD", path(pod), conf("cniVersion", "9.9.9"), 1, "9.9.9"},
		{"netns missing", "ADD", "/run/netns/strait-no-such-ns", nil, 4, "strait-no-such-ns"},
		{"bad podCIDRs", "ADD", path(pod), conf("podCIDRs", []string{"10.0.2.1/24"}), 7, "not a masked prefix"},
		{"two IPv4 pod CIDRs", "ADD", path(pod), conf("podCIDRs", []string{"10.0.2.0/24", "10.0.3.0/24"}), 7, "second of its family"},
		{"no podCIDRs", "ADD", path(pod), conf("podCIDRs", []string{}), 11, "no podCIDRs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, e := n.run(tt.cmd, "c-"+strings.ReplaceAll(tt.name, " ", "-"), tt.netns, "eth0", tt.conf)
			if e == nil || e.Code != tt.code || !strings.Contains(e.Msg+" "+e.Details, tt.want) {
				t.Fatalf("got %+v, want code %d naming %q", e, tt.code, tt.want)
			}
		})
	}
	// Malformed stdin and missing variables, straight to the binary.
	c := n.ns.Command(bin)
	c.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=x", "CNI_NETNS=" + path(pod), "CNI_IFNAME=eth0", "CNI_PATH=/x"}
	c.Stdin = strings.NewReader("{not json")
	out, _ := c.Output()
	if !bytes.Contains(out, []byte(`"code": 6`)) && !bytes.Contains(out, []byte(`"code":6`)) {
		t.Errorf("malformed stdin: %s, want code 6", out)
	}
	c = n.ns.Command(bin)
	c.Env = []string{"CNI_COMMAND=ADD", "CNI_NETNS=" + path(pod), "CNI_IFNAME=eth0", "CNI_PATH=/x"}
	c.Stdin = strings.NewReader(`{"cniVersion":"1.1.0","name":"x","type":"strait-cni"}`)
	out, _ = c.Output()
	if !bytes.Contains(out, []byte("CNI_CONTAINERID")) {
		t.Errorf("missing CNI_CONTAINERID: %s", out)
	}

	// Not ready: ADD says why, STATUS too.
	os.Remove(n.state)
	if _, e := n.run("ADD", "c-nr", path(pod), "eth0", nil); e == nil || e.Code != 11 || !strings.Contains(e.Details, "strait-agent is not running") {
		t.Fatalf("ADD without the agent: %+v", e)
	}
	n.agent(false, "no route to the gateway 172.31.0.1 yet")
	if _, e := n.run("STATUS", "", "", "", nil); e == nil || e.Code != 50 || !strings.Contains(e.Details, "no route to the gateway") {
		t.Fatalf("STATUS while not ready: %+v", e)
	}
	n.agent(true, "")
	if _, e := n.run("STATUS", "", "", "", nil); e != nil {
		t.Fatalf("STATUS when ready: %+v", *e)
	}

	// An exhausted /30 (two addresses): the third ADD fails and leaves
	// nothing behind.
	n.add("a", newNS(t, "pa"), "eth0")
	n.add("b", newNS(t, "pb"), "eth0")
	pc := newNS(t, "pc")
	_, e := n.run("ADD", "c", path(pc), "eth0", nil)
	if e == nil || e.Code != 11 || !strings.Contains(e.Details, "10.0.2.0/30") {
		t.Fatalf("ADD on an exhausted range: %+v", e)
	}
	if out, _ := n.sh(n.ns, "ip", "link"); strings.Contains(out, plugin.HostVeth("c", "eth0")) {
		t.Errorf("a failed ADD left its veth:\n%s", out)
	}
	if out, _ := n.sh(pc, "ip", "link"); strings.Contains(out, "eth0") {
		t.Errorf("a failed ADD left the pod's end:\n%s", out)
	}
}

func TestGC(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.0.3.0/24")
	pod := newNS(t, "pod")
	pod2 := newNS(t, "pod2")
	n.add("keep", pod, "eth0")
	leaked := n.add("leak", pod2, "eth1")
	gc := map[string]any{}
	for k, v := range n.conf {
		gc[k] = v
	}
	gc["cni.dev/valid-attachments"] = []map[string]string{{"containerID": "keep", "ifname": "eth0"}}
	if _, e := n.run("GC", "", "", "", gc); e != nil {
		t.Fatalf("GC: %+v", *e)
	}
	out, _ := n.sh(n.ns, "ip", "link")
	if strings.Contains(out, plugin.HostVeth("leak", "eth1")) || !strings.Contains(out, plugin.HostVeth("keep", "eth0")) {
		t.Errorf("after GC:\n%s", out)
	}
	if _, e := n.run("CHECK", "leak", path(pod2), "eth1", nil); e == nil || e.Code != 3 {
		t.Errorf("CHECK of a collected container: %+v, want code 3", e)
	}
	if _, e := n.run("CHECK", "keep", path(pod), "eth0", nil); e != nil {
		t.Errorf("CHECK of the kept one: %+v", *e)
	}
	_ = leaked
}

func TestParallelAdds(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.0.4.0/24")
	const count = 100
	pods := make([]netns.NS, count)
	for i := range pods {
		pods[i] = newNS(t, fmt.Sprintf("p%d", i))
	}
	addrs := make([]string, count)
	errs := make([]*cniErr, count)
	var wg sync.WaitGroup
	for i := range count {
		wg.Go(func() {
			out, e := n.run("ADD", fmt.Sprintf("p%d", i), path(pods[i]), "eth0", nil)
			errs[i] = e
			if e == nil {
				var r result
				json.Unmarshal(out, &r)
				if len(r.IPs) == 1 {
					addrs[i] = r.IPs[0].Address
				}
			}
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for i, a := range addrs {
		if errs[i] != nil {
			t.Fatalf("ADD %d: %+v", i, *errs[i])
		}
		if a == "" {
			t.Fatalf("ADD %d reported no address", i)
		}
		if j, dup := seen[a]; dup {
			t.Fatalf("%s went to both %d and %d", a, j, i)
		}
		seen[a] = i
	}
}

func TestDualStack(t *testing.T) {
	t.Parallel()
	n := newNode(t, "10.0.6.0/24", "fd00:6::/120")
	if out, err := n.sh(n.ns, "ip", "-6", "addr", "add", "fd00:ffff::11/128", "dev", "lo"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	pod := newNS(t, "pod")
	r := n.add("c6", pod, "eth0")
	if len(r.IPs) != 2 {
		t.Fatalf("dual stack gave %d addresses: %+v", len(r.IPs), r.IPs)
	}
	v6 := netip.MustParsePrefix(r.IPs[1].Address)
	if v6.Bits() != 128 || !netip.MustParsePrefix("fd00:6::/120").Contains(v6.Addr()) || r.IPs[1].Gateway != "fe80::1" {
		t.Fatalf("IPv6 address %s via %s", r.IPs[1].Address, r.IPs[1].Gateway)
	}
	if out, _ := n.sh(pod, "ip", "-6", "route"); !strings.Contains(out, "default via fe80::1 dev eth0") {
		t.Errorf("pod's IPv6 routes:\n%s", out)
	}
	// The node reaches the pod over IPv6 too.
	var out string
	var err error
	for range 10 { // neighbour discovery of the pod's address
		if out, err = n.sh(n.ns, "ping", "-6", "-c1", "-W1", v6.Addr().String()); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("node to pod over IPv6: %v\n%s", err, out)
	}
	if _, e := n.run("CHECK", "c6", path(pod), "eth0", nil); e != nil {
		t.Fatalf("CHECK: %+v", *e)
	}
}
