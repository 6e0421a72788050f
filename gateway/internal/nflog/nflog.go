// Package nflog reads the packets that the gateway firewall logs through
// NFLOG (nftables' `log group N prefix "..."`), so that the gateway can
// write each sampled denial as one structured log line.
//
// A Reader owns one netlink socket bound to one NFLOG group in one network
// namespace. The kernel's message format is in
// include/uapi/linux/netfilter/nfnetlink_log.h; parse turns one message
// into a Packet and is a pure function, fuzzed, because its input comes
// from a socket.
package nflog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// ErrClosed is what Read returns once the Reader is closed. It matches
// net.ErrClosed too.
var ErrClosed = fmt.Errorf("nflog: reader closed: %w", net.ErrClosed)

// Packet is one logged packet.
type Packet struct {
	Prefix   string     // as given to `log prefix`, trailing NUL removed
	Src, Dst netip.Addr // from the IP header of the payload
	Proto    uint8      // IP protocol; for IPv6, of the header after the extension headers
	// SrcPort and DstPort are the TCP or UDP ports; 0 for other protocols
	// and for fragments after the first.
	SrcPort, DstPort uint16
	At               time.Time // NFULA_TIMESTAMP if present, else receive time
}

// LogValue makes a Packet one group of fields in a log line:
// log.Info("firewall deny", "packet", p).
func (p Packet) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("prefix", p.Prefix),
		slog.String("src", p.Src.String()),
		slog.String("dst", p.Dst.String()),
		slog.Int("proto", int(p.Proto)),
		slog.Int("sport", int(p.SrcPort)),
		slog.Int("dport", int(p.DstPort)),
		slog.Time("at", p.At),
	)
}

// Stats counts what a Reader has received.
type Stats struct {
	Packets   uint64 // messages turned into Packets
	Malformed uint64 // messages skipped because they did not parse
	// Dropped counts receive buffer overruns (ENOBUFS): the kernel found
	// the socket's buffer full, and each overrun lost one or more
	// messages.
	Dropped uint64
}

// Options configure Open. The zero value is valid.
type Options struct {
	// NetNS is an open file descriptor of the network namespace to read
	// in. 0 (the default) means the calling thread's namespace.
	NetNS int
	// CopyRange is how many bytes of each packet, from its IP header on,
	// the kernel copies. Default 128; at least 64, enough for an IPv4
	// header with options and the ports after it.
	CopyRange int
	// ReadBuffer is the socket's receive buffer in bytes. Default 1 MiB,
	// room for thousands of packets of a burst.
	ReadBuffer int
	// QueueThreshold is how many packets the kernel may gather before it
	// sends them in one batch; default 16. 1 sends each at once. A rule's
	// own `queue-threshold` takes precedence.
	QueueThreshold int
	// FlushTimeout is how long the kernel holds a batch that is not full;
	// default 100ms, between 10ms and 1m, in steps of 10ms (rounded up).
	FlushTimeout time.Duration
	// Now is the clock that stamps packets the kernel sends without a
	// timestamp; default time.Now.
	Now func() time.Time
	// Logger gets a debug line for each skipped message; default none.
	Logger *slog.Logger
}

const (
	defaultCopyRange      = 128
	minCopyRange          = 64
	maxCopyRange          = 0xffff - 4 // NFULNL_COPY_RANGE_MAX: the payload attribute must fit its 16-bit length
	defaultReadBuffer     = 1 << 20
	defaultQueueThreshold = 16
	defaultFlushTimeout   = 100 * time.Millisecond
	flushTimeoutUnit      = 10 * time.Millisecond // the kernel counts hundredths of a second
)

// withDefaults fills in defaults and checks the options: the one place
// that validates them.
func (o Options) withDefaults() (Options, error) {
	if o.NetNS < 0 {
		return o, fmt.Errorf("nflog: NetNS %d is not a file descriptor", o.NetNS)
	}
	if o.CopyRange == 0 {
		o.CopyRange = defaultCopyRange
	}
	if o.CopyRange < minCopyRange || o.CopyRange > maxCopyRange {
		return o, fmt.Errorf("nflog: CopyRange %d is not between %d and %d bytes", o.CopyRange, minCopyRange, maxCopyRange)
	}
	if o.ReadBuffer == 0 {
		o.ReadBuffer = defaultReadBuffer
	}
	if o.ReadBuffer < 4096 || o.ReadBuffer > 1<<30 {
		return o, fmt.Errorf("nflog: ReadBuffer %d is not between 4 KiB and 1 GiB", o.ReadBuffer)
	}
	if o.QueueThreshold == 0 {
		o.QueueThreshold = defaultQueueThreshold
	}
	if o.QueueThreshold < 1 || o.QueueThreshold > 1<<16 {
		return o, fmt.Errorf("nflog: QueueThreshold %d is not between 1 and 65536 packets", o.QueueThreshold)
	}
	if o.FlushTimeout == 0 {
		o.FlushTimeout = defaultFlushTimeout
	}
	if o.FlushTimeout < flushTimeoutUnit || o.FlushTimeout > time.Minute {
		return o, fmt.Errorf("nflog: FlushTimeout %s is not between %s and 1m", o.FlushTimeout, flushTimeoutUnit)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o, nil
}

func (o Options) groupConfig() groupConfig {
	return groupConfig{
		copyRange: uint32(o.CopyRange),
		qthresh:   uint32(o.QueueThreshold),
		timeout:   uint32((o.FlushTimeout + flushTimeoutUnit - 1) / flushTimeoutUnit),
	}
}

// Reader receives the packets of one NFLOG group.
type Reader struct {
	conn  *netlink.Conn
	group uint16
	now   func() time.Time
	log   *slog.Logger

	readMu  sync.Mutex // serializes Read; guards pending, next and tap
	pending []Packet   // parsed from the last batch, not yet returned
	next    int        // index of the next Packet in pending to return
	tap     func(netlink.Message)

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error // set once by closeOnce

	packets, malformed, dropped atomic.Uint64
}

// Open binds to group in the current network namespace (or, with
// Options.NetNS set to an fd, that one), asking for the first CopyRange
// bytes of each packet. Binding needs CAP_NET_ADMIN in the namespace, and
// a group takes one reader per namespace.
func Open(group uint16, o Options) (_ *Reader, err error) {
	o, err = o.withDefaults()
	if err != nil {
		return nil, err
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: o.NetNS})
	if err != nil {
		return nil, fmt.Errorf("nflog: group %d: open netfilter netlink socket: %w", group, err)
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	if err := setReadBuffer(conn, o.ReadBuffer); err != nil {
		return nil, fmt.Errorf("nflog: group %d: receive buffer of %d bytes: %w", group, o.ReadBuffer, err)
	}
	r := &Reader{
		conn:  conn,
		group: group,
		now:   o.Now,
		log:   o.Logger.With("component", "nflog", "group", group),
	}
	if err := r.bind(o.groupConfig()); err != nil {
		return nil, err
	}
	return r, nil
}

// setReadBuffer sizes the receive buffer with SO_RCVBUFFORCE, which may
// exceed net.core.rmem_max (a few hundred KiB by default, too little for
// a burst) and needs CAP_NET_ADMIN, which binding needs anyway; without
// it, SO_RCVBUF gets what rmem_max allows.
func setReadBuffer(c *netlink.Conn, n int) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
		if serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// bind sends the bind request and waits for its acknowledgement. Packets
// may come first, once the kernel has made the instance: they are kept
// for Read rather than mistaken for the reply.
func (r *Reader) bind(c groupConfig) error {
	req, err := bindMessage(r.group, c)
	if err != nil {
		return err
	}
	req, err = r.conn.Send(req)
	if err != nil {
		return fmt.Errorf("nflog: bind group %d: %w", r.group, err)
	}
	for {
		msgs, err := r.conn.Receive()
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("nflog: bind group %d: %w (another socket in this namespace has the group, or the process lacks CAP_NET_ADMIN)", r.group, err)
		}
		if err != nil {
			// Also for ENOBUFS, which could have lost the
			// acknowledgement: failing beats waiting forever.
			return fmt.Errorf("nflog: bind group %d: %w", r.group, err)
		}
		acked := false
		now := r.now()
		for _, m := range msgs {
			if m.Header.Type == netlink.Error && m.Header.Sequence == req.Header.Sequence {
				acked = true // errno 0; Receive returns the others as errors
				continue
			}
			r.handle(m, now)
		}
		if acked {
			return nil
		}
	}
}

// Read blocks for the next packet; it returns ErrClosed after Close.
// Malformed messages are skipped and counted (Stats), never returned as
// packets, and receive buffer overruns are counted and read past.
func (r *Reader) Read() (Packet, error) {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	for r.next == len(r.pending) {
		r.pending, r.next = r.pending[:0], 0
		if r.closed.Load() {
			return Packet{}, ErrClosed
		}
		msgs, err := r.conn.Receive()
		if err != nil {
			if r.closed.Load() {
				return Packet{}, ErrClosed
			}
			if errors.Is(err, unix.ENOBUFS) {
				r.dropped.Add(1)
				continue
			}
			return Packet{}, fmt.Errorf("nflog: group %d: %w", r.group, err)
		}
		now := r.now()
		for _, m := range msgs {
			r.handle(m, now)
		}
	}
	if r.closed.Load() {
		return Packet{}, ErrClosed
	}
	p := r.pending[r.next]
	r.next++
	return p, nil
}

// handle turns one received message into a pending Packet, or counts why
// not. now stamps packets without a kernel timestamp.
func (r *Reader) handle(m netlink.Message, now time.Time) {
	if r.tap != nil {
		r.tap(m)
	}
	switch m.Header.Type {
	case packetType:
		p, err := parse(m.Data)
		if err != nil {
			r.malformed.Add(1)
			r.log.Debug("skipped malformed NFLOG message", "err", err)
			return
		}
		if p.At.IsZero() {
			p.At = now
		}
		r.packets.Add(1)
		r.pending = append(r.pending, p)
	case netlink.Done, netlink.Noop, netlink.Error:
		// The end of a batch, or an acknowledgement: no packet.
		// (Receive returns an Error with an errno as an error.)
	default:
		r.malformed.Add(1)
		r.log.Debug("skipped NFLOG message of unexpected type", "type", uint16(m.Header.Type))
	}
}

// Stats returns the counts so far.
func (r *Reader) Stats() Stats {
	return Stats{
		Packets:   r.packets.Load(),
		Malformed: r.malformed.Load(),
		Dropped:   r.dropped.Load(),
	}
}

// Close unbinds the group and closes the socket; a blocked Read returns
// ErrClosed. Close may be called more than once, and concurrently with
// Read.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		// Unbinding is a courtesy: closing the socket releases the
		// group too. So its failure is only worth a debug line.
		if m, err := unbindMessage(r.group); err == nil {
			if _, err := r.conn.Send(m); err != nil {
				r.log.Debug("unbind failed; closing the socket releases the group", "err", err)
			}
		}
		if err := r.conn.Close(); err != nil {
			r.closeErr = fmt.Errorf("nflog: group %d: close: %w", r.group, err)
		}
	})
	return r.closeErr
}

// Run reads until ctx ends, calling fn for each packet; it is the body of
// the gateway's logging goroutine. Run owns r: it closes r when ctx ends
// or Read fails, and returns nil in the first case and Read's error in
// the second. fn runs on Run's goroutine, so a slow fn shows up as
// Stats().Dropped.
func Run(ctx context.Context, r *Reader, fn func(Packet)) error {
	defer r.Close()
	stop := context.AfterFunc(ctx, func() { r.Close() })
	defer stop()
	for {
		p, err := r.Read()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		fn(p)
	}
}
