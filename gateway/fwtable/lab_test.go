package fwtable

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// The lab: a client that stands for the mesh, a gateway whose interface
// toward the client plays the tunnel, and a server that stands for the
// site's backends.
//
//	client 242.1.0.1-6, 242.2.0.1-2, 10.50.0.1 ──(mesh0)── gw ──(site0)── server 10.96.0.1, 10.96.0.2
const tunnel = "mesh0"

// clientAddrs are the client's addresses: cloud-a's egress addresses,
// cloud-b's, and a pod of a cluster on a real path.
var clientAddrs = []string{"242.1.0.1", "242.1.0.2", "242.1.0.3", "242.1.0.4", "242.1.0.5", "242.1.0.6", "242.2.0.1", "242.2.0.2", "10.50.0.1"}

// tcpTargets and udpTargets are what the server listens on.
var (
	tcpTargets = []string{"10.96.0.1:8080", "10.96.0.2:8443", "10.96.0.1:9000", "10.96.0.2:8080", "10.96.0.2:9000"}
	udpTargets = []string{"10.96.0.1:5353", "10.96.0.2:5353"}
)

type lab struct {
	client, gw, server netns.NS
	tab                *Table
}

func newLab(t *testing.T) *lab {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "nft", "conntrack")
	l := &lab{client: nstest.New(t, "fwc"), gw: nstest.New(t, "fwg"), server: nstest.New(t, "fws")}
	var clientNets []string
	for _, a := range clientAddrs {
		clientNets = append(clientNets, a+"/24")
	}
	must(t, veth(l.gw, tunnel, []string{"242.1.0.254/24", "242.2.0.254/24", "10.50.0.254/24"}, l.client, "eth0", clientNets))
	must(t, veth(l.gw, "site0", []string{"10.96.0.254/24"}, l.server, "eth0", []string{"10.96.0.1/24", "10.96.0.2/24"}))
	must(t, defaultRoute(l.client, "242.1.0.254"))
	must(t, defaultRoute(l.server, "10.96.0.254"))
	must(t, l.gw.Sysctl("net/ipv4/ip_forward", "1"))
	// The kernel sends a host about one ICMP error a second (burst 6):
	// the tests refuse more UDP than that.
	must(t, l.gw.Sysctl("net/ipv4/icmp_ratelimit", "0"))
	l.serve(t, tcpTargets, udpTargets)
	// Before any table: the links come up and the neighbours are known,
	// so that no first packet is lost (and counted twice on its retry).
	// UDP: conntrack starts with the table, and would take the last
	// packets of a TCP connection closed before it for new connections.
	for _, src := range clientAddrs {
		nstest.Eventually(t, 5*time.Second, "the lab's paths", func() error { return l.udp(src, dns) })
	}
	l.tab = newTable(t, l.gw)
	return l
}

func newTable(t testing.TB, ns netns.NS) *Table {
	t.Helper()
	fd, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	tab, err := New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tab.Close() })
	return tab
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// veth joins a and b by a veth pair with the given addresses, up.
func veth(a netns.NS, aName string, aAddrs []string, b netns.NS, bName string, bAddrs []string) error {
	ha, err := a.Handle()
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := b.Handle()
	if err != nil {
		return err
	}
	defer hb.Close()
	fd, err := b.Open()
	if err != nil {
		return err
	}
	defer fd.Close()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(int(fd))}); err != nil {
		return fmt.Errorf("veth %s: %w", aName, err)
	}
	for _, side := range []struct {
		h     *netlink.Handle
		name  string
		addrs []string
	}{{ha, aName, aAddrs}, {hb, bName, bAddrs}} {
		link, err := side.h.LinkByName(side.name)
		if err != nil {
			return err
		}
		for _, s := range side.addrs {
			ad, err := netlink.ParseAddr(s)
			if err != nil {
				return err
			}
			if err := side.h.AddrAdd(link, ad); err != nil {
				return fmt.Errorf("address %s on %s: %w", s, side.name, err)
			}
		}
		if err := side.h.LinkSetUp(link); err != nil {
			return err
		}
	}
	return nil
}

func defaultRoute(ns netns.NS, gw string) error {
	h, err := ns.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw)}); err != nil {
		return fmt.Errorf("%s: default route via %s: %w", ns.Name, gw, err)
	}
	return nil
}

// servers are echo servers in the server namespace, stopped with the test.
type servers struct {
	wg  sync.WaitGroup
	mu  sync.Mutex
	all []io.Closer
}

func (s *servers) track(c io.Closer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all = append(s.all, c)
}

func (s *servers) close() {
	s.mu.Lock()
	for _, c := range s.all {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// serve starts echo servers on the TCP and UDP addresses inside the
// server namespace: TCP echoes lines, UDP datagrams.
func (l *lab) serve(t *testing.T, tcp, udp []string) {
	t.Helper()
	s := &servers{}
	t.Cleanup(s.close)
	for _, addr := range tcp {
		var ln net.Listener
		must(t, l.server.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }))
		s.track(ln)
		s.wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				s.track(c)
				s.wg.Go(func() {
					defer c.Close()
					r := bufio.NewReader(c)
					for {
						line, err := r.ReadString('\n')
						if err != nil {
							return
						}
						if _, err := c.Write([]byte(line)); err != nil {
							return
						}
					}
				})
			}
		})
	}
	for _, addr := range udp {
		var pc net.PacketConn
		must(t, l.server.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }))
		s.track(pc)
		s.wg.Go(func() {
			buf := make([]byte, 1500)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				pc.WriteTo(buf[:n], from)
			}
		})
	}
}

// conn is a TCP connection from the client namespace.
type conn struct {
	net.Conn
	r *bufio.Reader
}

// dial opens a TCP connection from src to dst inside the client namespace.
func (l *lab) dial(src, dst string) (*conn, error) {
	var c net.Conn
	err := l.client.Do(func() (err error) {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err = d.Dial("tcp", dst)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, r: bufio.NewReader(c)}, nil
}

// echo sends a line and reads it back.
func (c *conn) echo(line string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(line + "\n")); err != nil {
		return err
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// tcp opens a connection, echoes a line and closes: nil if the firewall
// lets it through.
func (l *lab) tcp(src, dst string) error {
	c, err := l.dial(src, dst)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.echo("hello")
}

// udp sends a datagram from src to dst and waits for its echo.
func (l *lab) udp(src, dst string) error {
	var c net.Conn
	err := l.client.Do(func() (err error) {
		d := net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(src)}}
		c, err = d.Dial("udp", dst)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		return err
	}
	buf := make([]byte, 16)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != "ping" {
		return fmt.Errorf("udp echo %q", buf[:n])
	}
	return nil
}

// expect checks how the firewall treated a connection: "allow" (it went
// through), "reset" (TCP refused at once, not a timeout), "prohibited"
// (ICMP admin-prohibited: no route to host).
func expect(t *testing.T, what, want string, do func() error) {
	t.Helper()
	start := time.Now()
	err := do()
	took := time.Since(start)
	switch want {
	case "allow":
		if err != nil {
			t.Errorf("%s: want it allowed: %v", what, err)
		}
	case "reset":
		if !errors.Is(err, syscall.ECONNREFUSED) || took > time.Second {
			t.Errorf("%s: want a reset at once; got %v after %s", what, err, took)
		}
	case "prohibited":
		if !errors.Is(err, syscall.EHOSTUNREACH) || took > time.Second {
			t.Errorf("%s: want ICMP admin-prohibited at once; got %v after %s", what, err, took)
		}
	default:
		t.Fatalf("expect %q?", want)
	}
}

func (l *lab) nft(t *testing.T, args ...string) string {
	t.Helper()
	out, err := l.gw.Command("nft", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
