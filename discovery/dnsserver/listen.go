package dnsserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// shutdownWait bounds how long stopping waits for queries in flight.
// Replies are built from memory in microseconds and TCP reads are cut
// short by the shutdown, so this is only reached if something is wrong.
const shutdownWait = 5 * time.Second

// ListenAndServe serves UDP and TCP on addr ("host:port"; port 0 picks a
// port free for both) until ctx ends, then stops everything it started
// and returns nil. An error means it could not listen, or a listener
// failed while serving.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	pc, ln, err := listen(ctx, addr)
	if err != nil {
		return err
	}
	return s.Serve(ctx, pc, ln)
}

// listen binds UDP and TCP to the same address. With port 0, the kernel
// picks the UDP port, which may be taken for TCP: another is tried then.
func listen(ctx context.Context, addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("dnsserver: listen address %q: %w", addr, err)
	}
	anyPort := port == "0" || port == ""
	var lc net.ListenConfig
	for range 20 {
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dnsserver: listen on udp %s: %w", addr, err)
		}
		tcpAddr := addr
		if anyPort {
			tcpAddr = net.JoinHostPort(host, strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port))
		}
		ln, err := lc.Listen(ctx, "tcp", tcpAddr)
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if !anyPort || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, fmt.Errorf("dnsserver: listen on tcp %s: %w", tcpAddr, err)
		}
	}
	return nil, nil, fmt.Errorf("dnsserver: no port on %s is free for both udp and tcp", host)
}

// errNoListener is returned by Serve given nothing to serve on.
var errNoListener = errors.New("dnsserver: no packet conn and no listener to serve on")

// transport is one of the dns.Servers of a Serve call.
type transport struct {
	name    string
	addr    net.Addr
	srv     *dns.Server
	started chan struct{} // closed once it serves
	done    chan struct{} // closed when ActivateAndServe has returned
	err     error         // what it returned; read after done
}

// Serve serves UDP on pc and TCP on ln (either may be nil) until ctx
// ends, then stops every goroutine it started, closes pc and ln, and
// returns nil. It returns an error if a transport fails to start or stops
// on its own. Serve may be called several times, on different sockets.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn, ln net.Listener) error {
	if pc == nil && ln == nil {
		return errNoListener
	}
	if pc != nil {
		defer pc.Close()
	}
	if ln != nil {
		defer ln.Close()
	}
	var ts []*transport
	if pc != nil {
		ts = append(ts, &transport{name: "udp", addr: pc.LocalAddr(), srv: &dns.Server{
			PacketConn: pc,
			// One byte more than a query may have: a datagram that
			// fills the buffer was cut short, and is oversized.
			UDPSize: maxQuerySize + 1,
		}})
	}
	if ln != nil {
		ts = append(ts, &transport{name: "tcp", addr: ln.Addr(), srv: &dns.Server{
			Listener: newLimitListener(ln, s.opts.MaxTCPConns),
		}})
	}
	anyDone := make(chan struct{})
	var anyDoneOnce sync.Once
	for _, t := range ts {
		t.started, t.done = make(chan struct{}), make(chan struct{})
		t.srv.Handler = s
		t.srv.MsgAcceptFunc = s.accept
		t.srv.MsgInvalidFunc = s.invalid
		t.srv.DecorateReader = s.decorateReader
		t.srv.NotifyStartedFunc = func() { close(t.started) }
		go func() {
			t.err = t.srv.ActivateAndServe()
			close(t.done)
			anyDoneOnce.Do(func() { close(anyDone) })
		}()
	}
	// Wait until each has started or failed: a dns.Server cannot be
	// shut down before it has started.
	ok := true
	for _, t := range ts {
		select {
		case <-t.started:
		case <-t.done:
			ok = false
		}
	}
	if ok {
		addrs := make([]net.Addr, len(ts))
		for i, t := range ts {
			addrs[i] = t.addr
		}
		s.mu.Lock()
		s.nextID++
		id := s.nextID
		s.addrs[id] = addrs
		s.mu.Unlock()
		defer func() {
			s.mu.Lock()
			delete(s.addrs, id)
			s.mu.Unlock()
		}()
		s.log.Info("serving", "zone", s.cfg.zone, "addrs", fmt.Sprint(addrs))
		select {
		case <-ctx.Done():
		case <-anyDone:
		}
	}

	// Whatever stopped first, stop the rest, then wait for them all.
	var stopped *transport
	for _, t := range ts {
		select {
		case <-t.done:
			stopped = cmp.Or(stopped, t)
			continue
		default:
		}
		sctx, cancel := context.WithTimeout(context.Background(), shutdownWait)
		if err := t.srv.ShutdownContext(sctx); err != nil {
			s.log.Warn("shutdown", "transport", t.name, "err", err)
		}
		cancel()
		<-t.done
	}
	if stopped != nil {
		err := stopped.err
		if err == nil {
			err = errors.New("stopped on its own")
		}
		return fmt.Errorf("dnsserver: %s on %s: %w", stopped.name, stopped.addr, err)
	}
	return nil
}

// Addrs lists the addresses the server is serving on, for status and for
// tests that listen on port 0.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for _, a := range s.addrs {
		out = append(out, a...)
	}
	slices.SortFunc(out, func(a, b net.Addr) int {
		return cmp.Or(cmp.Compare(a.Network(), b.Network()), cmp.Compare(a.String(), b.String()))
	})
	return out
}

// accept is the dns.Server's first look at a packet, its header: it
// refuses what has not exactly one question and other opcodes than QUERY
// and NOTIFY (dns.DefaultMsgAcceptFunc), and counts what it refuses.
func (s *Server) accept(h dns.Header) dns.MsgAcceptAction {
	action := dns.DefaultMsgAcceptFunc(h)
	switch action {
	case dns.MsgReject:
		s.st.queries.Add(1)
		s.st.formerr.Add(1)
	case dns.MsgRejectNotImplemented:
		s.st.queries.Add(1)
		s.st.notimp.Add(1)
	case dns.MsgIgnore:
		s.st.malformed.Add(1)
	}
	return action
}

// invalid counts a packet that did not parse.
func (s *Server) invalid(m []byte, err error) {
	s.st.malformed.Add(1)
	s.logLimited(slog.LevelDebug, "malformed", "malformed packet", "bytes", len(m), "err", err)
}

// errOversized is what the size-limiting reader returns for an oversized
// packet. It is temporary, as a net.Error, so that dns.Server drops the
// packet and keeps serving rather than stopping.
var errOversized error = oversizedError{}

type oversizedError struct{}

func (oversizedError) Error() string   { return "dnsserver: packet exceeds the largest query" }
func (oversizedError) Timeout() bool   { return false }
func (oversizedError) Temporary() bool { return true }

var _ net.Error = oversizedError{}

// decorateReader wraps dns.Server's reader with the size limit.
func (s *Server) decorateReader(r dns.Reader) dns.Reader { return &limitReader{Reader: r, s: s} }

// limitReader drops oversized packets: over UDP the datagram, over TCP
// the connection, since a stream's framing cannot be trusted after it.
type limitReader struct {
	dns.Reader
	s *Server
}

func (r *limitReader) oversized(n int, network string) error {
	r.s.st.oversized.Add(1)
	r.s.logLimited(slog.LevelDebug, "oversized", "oversized packet dropped", "bytes", n, "network", network)
	return errOversized
}

func (r *limitReader) ReadUDP(conn *net.UDPConn, timeout time.Duration) ([]byte, *dns.SessionUDP, error) {
	m, sess, err := r.Reader.ReadUDP(conn, timeout)
	if err == nil && len(m) > maxQuerySize {
		return nil, nil, r.oversized(len(m), "udp")
	}
	return m, sess, err
}

func (r *limitReader) ReadTCP(conn net.Conn, timeout time.Duration) ([]byte, error) {
	m, err := r.Reader.ReadTCP(conn, timeout)
	if err == nil && len(m) > maxQuerySize {
		return nil, r.oversized(len(m), "tcp")
	}
	return m, err
}

// ReadPacketConn serves packet conns that are not UDP sockets.
func (r *limitReader) ReadPacketConn(conn net.PacketConn, timeout time.Duration) ([]byte, net.Addr, error) {
	pr, ok := r.Reader.(dns.PacketConnReader)
	if !ok {
		return nil, nil, errors.New("dnsserver: the reader cannot read packet conns")
	}
	m, addr, err := pr.ReadPacketConn(conn, timeout)
	if err == nil && len(m) > maxQuerySize {
		return nil, nil, r.oversized(len(m), conn.LocalAddr().Network())
	}
	return m, addr, err
}

// limitListener bounds the connections accepted and not yet closed.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newLimitListener(l net.Listener, n int) *limitListener {
	return &limitListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, l: l}, nil
}

// Close unblocks an Accept waiting for a slot.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// limitConn gives its slot back when closed.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { <-c.l.sem })
	return err
}
