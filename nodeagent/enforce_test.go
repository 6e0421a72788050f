package nodeagent_test

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/nodeagent"
	"github.com/straitnet/strait/nodeagent/policy"
)

// podPair makes a node with two pods through strait-cni, and a TCP
// server on ports 80 and 443 in the second.
func podPair(t *testing.T) (node *testNode, a, b netip.Addr, aNS, bNS netns.NS) {
	t.Helper()
	node = &testNode{name: "pn", ns: nstest.New(t, "pn"), dir: t.TempDir()}
	if out, err := node.ns.Command("ip", "addr", "add", "172.31.0.11/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if err := node.ns.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	state, _ := json.Marshal(plugin.AgentState{Ready: true, Since: time.Now()})
	os.WriteFile(filepath.Join(node.dir, "agent.json"), state, 0o644)
	conf := nodeagent.Conflist("1.1.0", []netip.Prefix{netip.MustParsePrefix("10.0.7.0/24")}, 1500,
		filepath.Join(node.dir, "ipam"), filepath.Join(node.dir, "agent.json"), nil)
	os.WriteFile(filepath.Join(node.dir, nodeagent.ConflistName), conf, 0o644)
	aNS, bNS = nstest.New(t, "pa"), nstest.New(t, "pb")
	a = netip.MustParseAddr(addPodAs(t, node, aNS, "ca"))
	b = netip.MustParseAddr(addPodAs(t, node, bNS, "cb"))
	for _, port := range []string{"80", "443"} {
		var ln net.Listener
		if err := bNS.Do(func() (err error) { ln, err = net.Listen("tcp", ":"+port); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
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
	}
	return node, a, b, aNS, bNS
}

func addPodAs(t *testing.T, n *testNode, pod netns.NS, container string) string {
	t.Helper()
	out := cniCmd(t, n, "ADD", container, "/run/netns/"+pod.Name)
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &r); err != nil || len(r.IPs) == 0 {
		t.Fatalf("ADD %s: %s %v", container, out, err)
	}
	return netip.MustParsePrefix(r.IPs[0].Address).Addr().String()
}

// connects says whether from reaches to:port and gets the server's reply.
func connects(from netns.NS, to netip.Addr, port uint16) bool {
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(to, port).String(), 700*time.Millisecond)
		return err
	}); err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 2)
	_, err := c.Read(buf)
	return err == nil && string(buf) == "hi"
}

func TestEnforcerDropsWhatPolicyDenies(t *testing.T) {
	nstest.RequireRoot(t)
	node, a, b, aNS, _ := podPair(t)
	e, err := nodeagent.NewEnforcer("")
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	for c, ip := range map[string]netip.Addr{"ca": a, "cb": b} {
		if err := node.ns.Do(func() error { return e.Attach(plugin.HostVeth(c, "eth0"), ip) }); err != nil {
			t.Fatal(err)
		}
	}
	ingressA := policy.PodDir{Pod: a, Dir: policy.Ingress}
	ingressB := policy.PodDir{Pod: b, Dir: policy.Ingress}
	egressB := policy.PodDir{Pod: b, Dir: policy.Egress}
	egressA := policy.PodDir{Pod: a, Dir: policy.Egress}
	tcp := func(lo, hi uint16) policy.PortSet {
		return policy.PortSet{Ranges: []policy.PortRange{{Proto: 6, Lo: lo, Hi: hi}}}
	}
	steps := []struct {
		name      string
		prog      policy.Program
		p80, p443 bool
	}{
		{"no policy", policy.Program{}, true, true},
		{"b admits a on 80 only, and b may send nothing itself (replies pass)", policy.Program{
			Enforced: map[policy.PodDir]bool{ingressB: true, egressB: true},
			Entries:  map[policy.Entry]policy.PortSet{{Pod: b, Dir: policy.Ingress, Peer: netip.PrefixFrom(a, 32)}: tcp(80, 80)},
		}, true, false},
		{"ipBlock except: the pods' /24 on any port, except a", policy.Program{
			Enforced: map[policy.PodDir]bool{ingressB: true},
			Entries: map[policy.Entry]policy.PortSet{
				{Pod: b, Dir: policy.Ingress, Peer: netip.MustParsePrefix("10.0.7.0/24")}: {Any: true},
				{Pod: b, Dir: policy.Ingress, Peer: netip.PrefixFrom(a, 32)}:              {},
			},
		}, false, false},
		{"a range 400-500 from the /24", policy.Program{
			Enforced: map[policy.PodDir]bool{ingressB: true},
			Entries:  map[policy.Entry]policy.PortSet{{Pod: b, Dir: policy.Ingress, Peer: netip.MustParsePrefix("10.0.7.0/24")}: tcp(400, 500)},
		}, false, true},
		{"default deny egress of a", policy.Program{Enforced: map[policy.PodDir]bool{egressA: true}}, false, false},
		{"default deny ingress of a: replies to its own connections still come", policy.Program{Enforced: map[policy.PodDir]bool{ingressA: true}}, true, true},
		{"everything allowed again", policy.Program{}, true, true},
	}
	for _, s := range steps {
		if _, err := e.Sync(s.prog); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := connects(aNS, b, 80); got != s.p80 {
			t.Errorf("%s: a to b:80 connects=%v, want %v", s.name, got, s.p80)
		}
		if got := connects(aNS, b, 443); got != s.p443 {
			t.Errorf("%s: a to b:443 connects=%v, want %v", s.name, got, s.p443)
		}
	}
	// A pod sending from an address that is not its own is dropped, with
	// or without policy: it could neither pass as another pod nor plant
	// conntrack entries.
	if out, err := aNS.Command("ip", "addr", "add", "10.0.7.200/32", "dev", "eth0").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if connectsFrom(aNS, netip.MustParseAddr("10.0.7.200"), b, 80) {
		t.Error("a pod reached b from a spoofed source address")
	}
	c, err := e.Counters()
	if err != nil || c.Denied == 0 || c.Allowed == 0 || c.Tracked == 0 || c.Spoofed == 0 {
		t.Errorf("counters %+v %v: every kind of verdict happened", c, err)
	}
}

// connectsFrom is connects with the client bound to src.
func connectsFrom(from netns.NS, src, to netip.Addr, port uint16) bool {
	var c net.Conn
	if err := from.Do(func() (err error) {
		d := net.Dialer{Timeout: 700 * time.Millisecond, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		c, err = d.Dial("tcp", netip.AddrPortFrom(to, port).String())
		return err
	}); err != nil {
		return false
	}
	c.Close()
	return true
}

// TestEnforcementOutlivesTheAgent pins the maps and attachments: an
// enforcer that goes leaves its pods enforced, and the next one takes
// them over, entries and all.
func TestEnforcementOutlivesTheAgent(t *testing.T) {
	nstest.RequireRoot(t)
	node, a, b, aNS, _ := podPair(t)
	pin := t.TempDir()
	if err := unix.Mount("bpf", pin, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("a bpffs for the test: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(pin, unix.MNT_DETACH) })
	dir := filepath.Join(pin, "strait")

	e1, err := nodeagent.NewEnforcer(dir)
	if err != nil {
		t.Fatal(err)
	}
	for c, ip := range map[string]netip.Addr{"ca": a, "cb": b} {
		if err := node.ns.Do(func() error { return e1.Attach(plugin.HostVeth(c, "eth0"), ip) }); err != nil {
			t.Fatal(err)
		}
	}
	deny80 := policy.Program{
		Enforced: map[policy.PodDir]bool{{Pod: b, Dir: policy.Ingress}: true},
		Entries: map[policy.Entry]policy.PortSet{{Pod: b, Dir: policy.Ingress, Peer: netip.PrefixFrom(a, 32)}: {
			Ranges: []policy.PortRange{{Proto: 6, Lo: 443, Hi: 443}}}},
	}
	if _, err := e1.Sync(deny80); err != nil {
		t.Fatal(err)
	}
	if connects(aNS, b, 80) || !connects(aNS, b, 443) {
		t.Fatal("the policy does not hold before the restart")
	}
	// The agent goes: the pods stay enforced.
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	if connects(aNS, b, 80) || !connects(aNS, b, 443) {
		t.Error("the policy lapsed with the agent gone")
	}
	// The next agent takes over: nothing to write for the same policy,
	// and a change applies.
	e2, err := nodeagent.NewEnforcer(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Remove()
	if got := e2.Attached(); len(got) != 2 {
		t.Errorf("the new enforcer took over %v, want both veths", got)
	}
	if st, err := e2.Sync(deny80); err != nil || st.Updated+st.Deleted != 0 {
		t.Errorf("syncing the same policy after the restart: %+v %v, want nothing to write", st, err)
	}
	if connects(aNS, b, 80) {
		t.Error("the policy lapsed across the restart")
	}
	if _, err := e2.Sync(policy.Program{}); err != nil {
		t.Fatal(err)
	}
	if !connects(aNS, b, 80) {
		t.Error("the new enforcer's change did not apply")
	}
}
