package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Serve runs the lab server of one host until ctx ends: every TCP
// connection and every UDP datagram on port gets one line back naming the
// host and the address it saw the client at, which shows the translation
// on the way.
func Serve(ctx context.Context, name string, port int, log *slog.Logger) error {
	addr := fmt.Sprintf(":%d", port)
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return fmt.Errorf("lab serve: %w", err)
	}
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		ln.Close()
		return fmt.Errorf("lab serve: %w", err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
		pc.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(reply(name, pc.LocalAddr(), from)), from)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				io.WriteString(c, reply(name, c.LocalAddr(), c.RemoteAddr()))
			}()
		}
	}()
	log.Info("lab server listening", "name", name, "port", port)
	wg.Wait()
	return nil
}

func reply(name string, local, peer net.Addr) string {
	return fmt.Sprintf("strait-lab name=%s local=%s peer=%s\n", name, local, peer)
}

// Reply is what a lab server answered.
type Reply struct {
	Name string
	// Peer is the address the server saw the client at; Local the
	// server's own, where the connection reached it.
	Peer  netip.AddrPort
	Local netip.AddrPort
}

func parseReply(line string) (Reply, error) {
	var r Reply
	if !strings.HasPrefix(line, "strait-lab ") {
		return r, fmt.Errorf("not a lab server reply: %q", line)
	}
	for _, f := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "name":
			r.Name = v
		case "peer", "local":
			ap, err := netip.ParseAddrPort(v)
			if err != nil {
				return r, fmt.Errorf("reply %q: %w", line, err)
			}
			if k == "peer" {
				r.Peer = ap
			} else {
				r.Local = ap
			}
		}
	}
	return r, nil
}

// Request asks the lab server at dst over "tcp" or "udp", from inside host.
func Request(ctx context.Context, from Host, dst netip.AddrPort, network string, timeout time.Duration) (Reply, error) {
	var conn net.Conn
	err := from.Namespace().Do(func() error {
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, network+"4", dst.String())
		conn = c
		return err
	})
	if err != nil {
		return Reply{}, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if network == "udp" {
		if _, err := conn.Write([]byte("hello\n")); err != nil {
			return Reply{}, err
		}
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return Reply{}, err
	}
	return parseReply(line)
}

// Ping sends one ICMP echo from inside host to dst, from the address src
// (the kernel's choice if invalid), and waits for the reply.
func Ping(from Host, src, dst netip.Addr, timeout time.Duration) (time.Duration, error) {
	bind := "0.0.0.0"
	if src.IsValid() {
		bind = src.String()
	}
	var c *icmp.PacketConn
	err := from.Namespace().Do(func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", bind)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ping: %w", err)
	}
	defer c.Close()
	id, seq := rand.IntN(0xffff), rand.IntN(0xffff)
	msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("strait-lab")}}
	wire, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if _, err := c.WriteTo(wire, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return 0, fmt.Errorf("ping %s: %w", dst, err)
	}
	c.SetReadDeadline(start.Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return 0, fmt.Errorf("ping %s: no reply within %s", dst, timeout)
			}
			return 0, fmt.Errorf("ping %s: %w", dst, err)
		}
		m, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || m.Type != ipv4.ICMPTypeEchoReply {
			continue // raw sockets see every ICMP packet of the namespace
		}
		e, ok := m.Body.(*icmp.Echo)
		if !ok || e.ID != id || e.Seq != seq || peer.String() != dst.String() {
			continue
		}
		return time.Since(start), nil
	}
}

// Cell is one pair of the connectivity matrix.
type Cell struct {
	From, To string
	Target   netip.Addr // the address From used for To
	TCP      error
	ICMP     error
	SeenAs   netip.Addr // the source address To saw
	Want     netip.Addr // the source address To should see
	RTT      time.Duration
}

// OK reports whether both TCP and ICMP got through, and To saw From at the
// address the address plan says.
func (c Cell) OK() bool { return c.TCP == nil && c.ICMP == nil && c.SeenAs == c.Want }

// Matrix sends real traffic between every ordered pair of pods and plain
// hosts: a TCP connection to the lab server and an ICMP echo, each tried a
// few times (the first packets to a peer wait for a WireGuard handshake).
func (l *Lab) Matrix(ctx context.Context) []Cell {
	eps := l.Endpoints()
	var cells []Cell
	for _, a := range eps {
		for _, b := range eps {
			if a.Name != b.Name {
				cells = append(cells, Cell{From: a.Name, To: b.Name, Target: l.Topology.Target(a, b), Want: l.Topology.SeenAs(a, b)})
			}
		}
	}
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range cells {
		wg.Add(1)
		sem <- struct{}{}
		go func(c *Cell) {
			defer wg.Done()
			defer func() { <-sem }()
			from := l.MustHost(c.From)
			for range 3 {
				r, err := Request(ctx, from, netip.AddrPortFrom(c.Target, ServePort), "tcp", time.Second)
				c.TCP = err
				if err == nil {
					c.SeenAs = r.Peer.Addr()
					break
				}
			}
			for range 3 {
				c.RTT, c.ICMP = Ping(from, netip.Addr{}, c.Target, time.Second)
				if c.ICMP == nil {
					break
				}
			}
		}(&cells[i])
	}
	wg.Wait()
	return cells
}

// PrintMatrix writes the matrix as a table: rows send, columns receive.
func PrintMatrix(w io.Writer, hosts []Host, cells []Cell) {
	eps := Endpoints(hosts)
	idx := map[[2]string]Cell{}
	for _, c := range cells {
		idx[[2]string{c.From, c.To}] = c
	}
	width := 8
	for _, h := range eps {
		width = max(width, len(h.Name)+2)
	}
	fmt.Fprintf(w, "%-*s", width, "from \\ to")
	for _, h := range eps {
		fmt.Fprintf(w, "%-*s", width, h.Name)
	}
	fmt.Fprintln(w)
	for _, a := range eps {
		fmt.Fprintf(w, "%-*s", width, a.Name)
		for _, b := range eps {
			c, ok := idx[[2]string{a.Name, b.Name}]
			s := "-"
			switch {
			case !ok:
			case c.OK():
				s = "ok"
			case c.TCP == nil && c.ICMP == nil:
				s = "FAIL(src)"
			case c.TCP != nil && c.ICMP != nil:
				s = "FAIL"
			case c.TCP != nil:
				s = "FAIL(tcp)"
			default:
				s = "FAIL(icmp)"
			}
			fmt.Fprintf(w, "%-*s", width, s)
		}
		fmt.Fprintln(w)
	}
}

// PrintPaths writes, for each pair, the address used and the source the
// receiver saw: the translation made visible.
func PrintPaths(w io.Writer, cells []Cell) {
	for _, c := range cells {
		status := "ok"
		switch {
		case c.TCP != nil || c.ICMP != nil:
			status = "FAILED: " + errors.Join(c.TCP, c.ICMP).Error()
		case !c.OK():
			status = fmt.Sprintf("FAILED: seen as %s, want %s", c.SeenAs, c.Want)
		}
		seen := "-"
		if c.SeenAs.IsValid() {
			seen = c.SeenAs.String()
		}
		fmt.Fprintf(w, "  %-14s -> %-14s via %-15s seen as %-15s rtt %-8s %s\n",
			c.From, c.To, c.Target, seen, c.RTT.Round(10*time.Microsecond), strings.ReplaceAll(status, "\n", "; "))
	}
}
