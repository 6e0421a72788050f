package lbtable

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway/lb"
)

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

// rig is a gateway namespace between a client, a backend behind the
// "tunnel" link and a backend on a second LAN link.
type rig struct {
	gw, cli, remote, local netns.NS
	tab                    *Table
	tunnel                 string
}

func sh(t *testing.T, ns netns.NS, cmds ...string) {
	t.Helper()
	for _, c := range cmds {
		f := strings.Fields(c)
		if out, err := ns.Command(f[0], f[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %s: %v\n%s", ns.Name, c, err, out)
		}
	}
}

func newRig(t *testing.T) *rig {
	nstest.RequireCommands(t, "ip", "nft")
	r := &rig{gw: nstest.New(t, "lbgw"), cli: nstest.New(t, "lbcli"), remote: nstest.New(t, "lbrem"), local: nstest.New(t, "lbloc"), tunnel: "tun" + nstest.RunID()}
	id := nstest.RunID()
	link := func(peer netns.NS, gwName, peerName, gwAddr, peerAddr string) {
		sh(t, r.gw, fmt.Sprintf("ip link add %s type veth peer name %s", gwName, peerName),
			fmt.Sprintf("ip link set %s netns %s", peerName, peer.Name),
			fmt.Sprintf("ip addr add %s dev %s", gwAddr, gwName), "ip link set "+gwName+" up")
		sh(t, peer, fmt.Sprintf("ip addr add %s dev %s", peerAddr, peerName), "ip link set "+peerName+" up",
			"ip link set lo up", "ip route add default via "+strings.Split(gwAddr, "/")[0])
	}
	link(r.cli, "c"+id, "p0", "10.9.1.1/24", "10.9.1.2/24")
	link(r.remote, r.tunnel, "p0", "10.9.2.1/24", "10.9.2.2/24")
	link(r.local, "l"+id, "p0", "10.9.4.1/24", "10.9.4.2/24")
	sh(t, r.gw, "ip link set lo up", "sysctl -qw net.ipv4.ip_forward=1",
		// The VIP range leads somewhere, as the mesh's route does at a gateway.
		"ip route add 242.255.0.0/24 dev "+r.tunnel)
	fd, err := r.gw.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	if r.tab, err = New(Options{NetNS: int(fd)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.tab.Close() })
	serve(t, r.remote, "10.9.2.2:8080", "remote")
	serve(t, r.local, "10.9.4.2:8081", "local")
	return r
}

// serve answers every connection with its name and the address it sees
// the client at, then echoes lines until the client closes.
func serve(t *testing.T, ns netns.NS, addr, name string) {
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", name, c.RemoteAddr().(*net.TCPAddr).IP)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					fmt.Fprintf(c, "%s %s\n", name, sc.Text())
				}
			}()
		}
	}()
}

// conn is a client connection to the VIP.
type conn struct {
	c  net.Conn
	rd *bufio.Reader
}

func (r *rig) dial(t *testing.T) (*conn, string, error) {
	var c net.Conn
	err := r.cli.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", "242.255.0.10:80", 2*time.Second)
		return err
	})
	if err != nil {
		return nil, "", err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	rd := bufio.NewReader(c)
	line, err := rd.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", err
	}
	return &conn{c, rd}, strings.TrimSpace(line), nil
}

func (c *conn) echo(s string) (string, error) {
	c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(c.c, s); err != nil {
		return "", err
	}
	line, err := c.rd.ReadString('\n')
	return strings.TrimSpace(line), err
}

// plan balances the VIP over the two backends, with the given health.
func (r *rig) program(t *testing.T, ids *IDs, remoteOK, localOK bool) (Program, []lb.Service) {
	t.Helper()
	tcp80 := lb.PortKey{Proto: 6, Port: 80}
	in := lb.Input{Self: "here", TableSize: 4099, VIPRange: netip.MustParsePrefix("242.255.0.0/24"),
		Services: []meshpolicy.DeclaredService{{Owner: "here", GlobalService: meshpolicy.GlobalService{
			Namespace: "default", Name: "web", VIP: a("242.255.0.10"), Locality: meshpolicy.LocalityNone}}},
		Instances: map[string][]lb.Instance{"default/web": {
			{Cluster: "there", Addr: a("10.9.2.2"), Ports: map[lb.PortKey]uint16{tcp80: 8080}, Ready: 1, Healthy: remoteOK},
			{Cluster: "here", Addr: a("10.9.4.2"), Ports: map[lb.PortKey]uint16{tcp80: 8081}, Ready: 1, Healthy: localOK},
		}}}
	svcs, _, err := lb.Plan(in)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Compile(r.tunnel, in.VIPRange, in.TableSize, svcs, ids)
	if err != nil {
		t.Fatal(err)
	}
	return p, svcs
}

// verified fails the test if Verify finds drift where there is none.
func (r *rig) verified(t *testing.T) {
	t.Helper()
	if ok, err := r.tab.Verify(); !ok || err != nil {
		t.Fatalf("Verify right after Sync: drift reported (%v)", err)
	}
}

func TestBalanceFailOverRefuse(t *testing.T) {
	r := newRig(t)
	var ids IDs
	p, svcs := r.program(t, &ids, true, true)
	st, err := r.tab.Sync(p)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full {
		t.Fatalf("first sync not whole: %+v", st)
	}
	out, _ := r.gw.Command("nft", "list", "table", "ip", TableName).CombinedOutput()
	if !strings.Contains(string(out), "goto port") {
		t.Fatalf("nft cannot list the table:\n%s", out)
	}
	r.verified(t)

	// Connections spread over both backends; the local one sees the
	// gateway (masquerade), the remote one, behind the tunnel, the client.
	seen := map[string]int{}
	var held, heldLocal *conn
	for range 40 {
		c, hello, err := r.dial(t)
		if err != nil {
			t.Fatalf("dial VIP: %v", err)
		}
		seen[hello]++
		if strings.HasPrefix(hello, "remote") && held == nil {
			held = c
			continue
		}
		if strings.HasPrefix(hello, "local") && heldLocal == nil {
			heldLocal = c
			continue
		}
		c.c.Close()
	}
	t.Logf("40 connections: %v", seen)
	if seen["remote 10.9.1.2"] == 0 || seen["local 10.9.4.1"] == 0 || len(seen) != 2 {
		t.Fatalf("want connections at both backends, the remote one seeing the client 10.9.1.2 and the local one the gateway 10.9.4.1: %v", seen)
	}

	// The local backend fails: new connections all go to the remote one,
	// and the held connection to the remote one keeps going.
	p2, svcs2 := r.program(t, &ids, true, false)
	st, err = r.tab.Sync(p2)
	if err != nil {
		t.Fatal(err)
	}
	if st.Full || st.Added == 0 {
		t.Fatalf("health change not applied as a difference: %+v", st)
	}
	gone := lb.Gone(svcs, svcs2)
	if len(gone) != 1 || gone[0].Backend != a("10.9.4.2") {
		t.Fatalf("gone = %v, want the local backend", gone)
	}
	n, err := r.tab.Flush(gone)
	if err != nil {
		t.Fatal(err)
	}
	if n < 1 {
		t.Fatalf("flushed %d conntrack entries; the connection held to the local backend had one", n)
	}
	r.verified(t)
	for range 20 {
		c, hello, err := r.dial(t)
		if err != nil {
			t.Fatal(err)
		}
		c.c.Close()
		if !strings.HasPrefix(hello, "remote") {
			t.Fatalf("a new connection reached %q after the local backend failed", hello)
		}
	}
	if got, err := held.echo("still"); err != nil || got != "remote still" {
		t.Fatalf("held connection to the remote backend: %q, %v", got, err)
	}
	// The one held to the failed backend has no translation left: its
	// next segment is a new connection's first, which the new backend
	// resets.
	if got, err := heldLocal.echo("still"); err == nil {
		t.Fatalf("the connection held to the failed local backend still answers: %q", got)
	}

	// Nothing serves: TCP is refused at once with a reset.
	p3, _ := r.program(t, &ids, false, false)
	if _, err := r.tab.Sync(p3); err != nil {
		t.Fatal(err)
	}
	r.verified(t)
	start := time.Now()
	_, _, err = r.dial(t)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial with no backend: %v, want connection refused", err)
	}
	t.Logf("refused in %s", time.Since(start))
	cs, err := r.tab.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cs[ctrRefused].Packets == 0 || cs[ctrBalanced].Packets < 60 {
		t.Fatalf("counters %+v: want 60+ balanced and some refused", cs)
	}

	// The port comes back: its chain is added without a rewrite.
	if st, err := r.tab.Sync(p); err != nil || st.Full {
		t.Fatalf("a VIP port back: %+v %v, want it added as a difference", st, err)
	}
	r.verified(t)
	if _, hello, err := r.dial(t); err != nil || hello == "" {
		t.Fatalf("after the port came back: %q %v", hello, err)
	}
	// Drift: a flushed table is found and rewritten whole.
	sh(t, r.gw, "nft flush table ip "+TableName)
	if ok, _ := r.tab.Verify(); ok {
		t.Fatal("Verify missed a flushed table")
	}
	if st, err := r.tab.Sync(p); err != nil || !st.Full {
		t.Fatalf("sync after drift: %+v %v", st, err)
	}
	if _, hello, err := r.dial(t); err != nil || hello == "" {
		t.Fatalf("after repair: %q %v", hello, err)
	}
}
