package plugin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// referencePlugins is where Debian's containernetworking-plugins live.
const referencePlugins = "/usr/lib/cni"

// nsExec is libcni's plugin runner, but every plugin runs inside ns, as
// on a node whose runtime runs in the node's namespace (libcni itself
// execs plugins in the caller's), with PATH set to path.
type nsExec struct {
	ns   netns.NS
	path string
	version.PluginDecoder
}

func (e *nsExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	c := exec.CommandContext(ctx, "ip", "netns", "exec", e.ns.Name, pluginPath)
	c.Env = append(slices.DeleteFunc(slices.Clone(environ), func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }), "PATH="+e.path)
	c.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		// As invoke.RawExec: the spec's error object, or what explains it.
		var e types.Error
		if jerr := json.Unmarshal(stdout.Bytes(), &e); jerr != nil || e.Code == 0 {
			return nil, fmt.Errorf("%s: %v: stdout %q, stderr %q", filepath.Base(pluginPath), err, stdout.String(), stderr.String())
		}
		return nil, &e
	}
	return stdout.Bytes(), nil
}

func (e *nsExec) FindInPath(name string, paths []string) (string, error) {
	return invoke.FindInPath(name, paths)
}

// TestChainWithReferencePlugins runs strait-cni first in a conflist with
// the reference portmap and bandwidth plugins, through libcni as a
// runtime does, everything inside a node's namespace.
func TestChainWithReferencePlugins(t *testing.T) {
	t.Parallel()
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "iptables", "iptables-save", "ip6tables-save", "tc")
	for _, p := range []string{"portmap", "bandwidth"} {
		if _, err := os.Stat(filepath.Join(referencePlugins, p)); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("the reference plugin %s is missing (containernetworking-plugins): %v", p, err)
			}
			t.Skipf("the reference plugin %s is missing (containernetworking-plugins)", p)
		}
	}
	n := newNode(t, "10.0.5.0/24")
	pod := newNS(t, "pod")

	// The plugins' PATH has iptables but no ip6tables, as on an IPv4-only
	// node: portmap 1.1.x's CHECK looks for the pod's IPv4 rules in
	// ip6tables too whenever ip6tables' nat table works, so it fails for
	// every pod (containernetworking/plugins#819); only portmap runs
	// programs.
	pathDir := t.TempDir()
	iptables, _ := exec.LookPath("iptables")
	if err := os.Symlink(iptables, filepath.Join(pathDir, "iptables")); err != nil {
		t.Fatal(err)
	}

	strait := map[string]any{}
	for k, v := range n.conf {
		if k != "cniVersion" && k != "name" {
			strait[k] = v
		}
	}
	conflist, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "strait", "plugins": []any{
		strait,
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}},
	}})
	list, err := libcni.NetworkConfFromBytes(conflist)
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(bin), referencePlugins}, t.TempDir(), &nsExec{ns: n.ns, path: pathDir})
	container := "chain-" + nstest.RunID()
	rt := &libcni.RuntimeConf{ContainerID: container, NetNS: path(pod), IfName: "eth0",
		CapabilityArgs: map[string]any{
			"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}},
			// Bits per second and bits.
			"bandwidth": map[string]any{"ingressRate": 100_000_000, "ingressBurst": 8_000_000,
				"egressRate": 100_000_000, "egressBurst": 8_000_000},
		}}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sh := func(ns netns.NS, args ...string) string {
		t.Helper()
		out, err := n.sh(ns, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
		return out
	}

	raw, err := cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD of the chain: %v", err)
	}
	added := true
	t.Cleanup(func() {
		if added {
			cni.DelNetworkList(context.Background(), list, rt)
		}
	})
	res, err := current.NewResultFromResult(raw)
	if err != nil {
		t.Fatal(err)
	}
	// strait-cni's host and pod ends, then bandwidth's ifb.
	host := plugin.HostVeth(container, "eth0")
	if raw.Version() != "1.0.0" || len(res.IPs) != 1 || len(res.Interfaces) != 3 || res.Interfaces[0].Name != host ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != path(pod) || res.Interfaces[2].Sandbox != "" {
		t.Fatalf("the chain's result: %s", mustJSON(raw))
	}
	podIP, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
	if !netip.MustParsePrefix("10.0.5.0/24").Contains(podIP) {
		t.Fatalf("pod address %s is not strait's", res.IPs[0].Address.String())
	}
	if out := sh(pod, "ip", "-4", "addr", "show", "eth0"); !strings.Contains(out, podIP.String()+"/32") {
		t.Fatalf("the pod lacks %s:\n%s", podIP, out)
	}

	// portmap: the node's 8080 reaches the pod's 80. The node dials its own
	// address on lo (127.0.0.1 would need route_localnet and masquerade).
	var ln net.Listener
	if err := pod.Do(func() (err error) { ln, err = net.Listen("tcp", ":80"); return }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "pod %s, from %s\n", c.LocalAddr(), c.RemoteAddr())
			c.Close()
		}
	}()
	dial := func() (string, error) {
		var c net.Conn
		if err := n.ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", "172.31.0.11:8080", 5*time.Second); return }); err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		return string(b), err
	}
	// The pod sees the node's own address: DNAT, no masquerade.
	got, err := dial()
	if want := fmt.Sprintf("pod %s:80, from 172.31.0.11:", podIP); err != nil || !strings.HasPrefix(got, want) {
		t.Fatalf("node 172.31.0.11:8080 to the pod: %q, %v; want %q...", got, err, want)
	}
	if nat := sh(n.ns, "iptables-save", "-t", "nat"); !strings.Contains(nat, container) || !strings.Contains(nat, "CNI-DN-") {
		t.Fatalf("portmap's rules are not in the node's namespace:\n%s", nat)
	}

	// bandwidth: tbf on the host veth (towards the pod), and what the pod
	// sends goes through tbf on an ifb.
	if out := sh(n.ns, "tc", "qdisc", "show", "dev", host); !strings.Contains(out, "qdisc tbf") || !strings.Contains(out, "qdisc ingress") {
		t.Fatalf("qdiscs of %s:\n%s", host, out)
	}
	ifb := res.Interfaces[2].Name
	if ifbs := strings.Fields(sh(n.ns, "sh", "-c", "ip -o link show type ifb | awk -F': ' '{print $2}'")); len(ifbs) != 1 || ifbs[0] != ifb {
		t.Fatalf("ifb devices in the node: %q, want bandwidth's %s", ifbs, ifb)
	}
	if out := sh(n.ns, "tc", "qdisc", "show", "dev", ifb); !strings.Contains(out, "qdisc tbf") {
		t.Fatalf("qdiscs of %s:\n%s", ifb, out)
	}

	// All of it is the node's: nothing in the root namespace.
	noneInRoot := func(when string) {
		t.Helper()
		for _, args := range [][]string{{"ip", "link"}, {"iptables-save"}, {"ip6tables-save"}} {
			out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
			for _, s := range []string{host, ifb, container} {
				if strings.Contains(string(out), s) {
					t.Errorf("%s: %s in the root namespace (%v):\n%s", when, s, args, out)
				}
			}
		}
	}
	noneInRoot("after ADD")

	if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("CHECK of the chain: %v", err)
	}
	// strait-cni's CHECK, given the chain's prevResult, still finds a
	// missing host route.
	sh(n.ns, "ip", "route", "del", podIP.String()+"/32")
	if err := cni.CheckNetworkList(ctx, list, rt); err == nil || !strings.Contains(err.Error(), "no route to "+podIP.String()) {
		t.Fatalf("CHECK of the chain without the host route: %v, want it named", err)
	}

	if err := cni.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("DEL of the chain: %v", err)
	}
	added = false
	if links := sh(n.ns, "ip", "link"); strings.Contains(links, host) || strings.Contains(links, ifb) {
		t.Errorf("DEL left links in the node:\n%s", links)
	}
	if out := sh(pod, "ip", "link"); strings.Contains(out, "eth0") {
		t.Errorf("DEL left the pod's eth0:\n%s", out)
	}
	if nat := sh(n.ns, "iptables-save", "-t", "nat"); strings.Contains(nat, container) || strings.Contains(nat, "CNI-DN-") {
		t.Errorf("DEL left portmap's rules:\n%s", nat)
	}
	if got, err := dial(); err == nil {
		t.Errorf("8080 still reaches the pod after DEL: %q", got)
	}
	// Again, with nothing cached: still fine.
	if err := cni.DelNetworkList(ctx, list, rt); err != nil {
		t.Fatalf("second DEL of the chain: %v", err)
	}
	noneInRoot("after DEL")
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
