package gossip

import (
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// Lossy is memberlist's UDP/TCP transport on a link that loses packets:
// for tests and benchmarks of gossip under loss, on loopback.
//
// Each packet sent is lost with the given probability. A stream is not
// cut (TCP retransmits), but a connection whose SYN is lost waits for the
// retransmission, a second on Linux, as it would on a real link.
type Lossy struct {
	*memberlist.NetTransport
	loss    atomic.Uint64 // math.Float64bits of the probability
	dropped atomic.Uint64
}

// synRetransmit is Linux's initial retransmission timeout for a SYN.
const synRetransmit = time.Second

// NewLossy listens on bind ("ip:port"; port 0 picks one) and loses the
// given fraction of the packets it sends.
func NewLossy(bind string, loss float64) (*Lossy, error) {
	host, port, err := splitHostPort(bind)
	if err != nil {
		return nil, fmt.Errorf("gossip: lossy transport %q: %w", bind, err)
	}
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{host}, BindPort: port, Logger: log.New(discard{}, "", 0),
	})
	if err != nil {
		return nil, fmt.Errorf("gossip: lossy transport on %s: %w", bind, err)
	}
	l := &Lossy{NetTransport: nt}
	l.SetLoss(loss)
	return l, nil
}

// Addr is where the transport listens.
func (l *Lossy) Addr() string {
	ip, port, _ := l.FinalAdvertiseAddr("", 0)
	return net.JoinHostPort(ip.String(), strconv.Itoa(port))
}

// SetLoss changes the probability of losing a packet.
func (l *Lossy) SetLoss(p float64) { l.loss.Store(uint64(p * 1e9)) }

// Dropped counts the packets lost so far.
func (l *Lossy) Dropped() uint64 { return l.dropped.Load() }

func (l *Lossy) lose() bool {
	p := float64(l.loss.Load()) / 1e9
	if p > 0 && rand.Float64() < p {
		l.dropped.Add(1)
		return true
	}
	return false
}

// WriteTo sends a packet, unless the link loses it.
func (l *Lossy) WriteTo(b []byte, addr string) (time.Time, error) {
	if l.lose() {
		return time.Now(), nil
	}
	return l.NetTransport.WriteTo(b, addr)
}

// WriteToAddress sends a packet, unless the link loses it.
func (l *Lossy) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if l.lose() {
		return time.Now(), nil
	}
	return l.NetTransport.WriteToAddress(b, a)
}

// DialTimeout connects, a second late when the SYN is lost.
func (l *Lossy) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	left, err := l.synLost(timeout)
	if err != nil {
		return nil, err
	}
	return l.NetTransport.DialTimeout(addr, left)
}

// DialAddressTimeout connects, a second late when the SYN is lost.
func (l *Lossy) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	left, err := l.synLost(timeout)
	if err != nil {
		return nil, err
	}
	return l.NetTransport.DialAddressTimeout(a, left)
}

// synLost waits out a lost SYN's retransmission, or fails as the dial
// would if the timeout is shorter. It returns the time left to connect.
func (l *Lossy) synLost(timeout time.Duration) (time.Duration, error) {
	if !l.lose() {
		return timeout, nil
	}
	if timeout <= synRetransmit {
		time.Sleep(timeout)
		return 0, errors.New("gossip: dial: i/o timeout (SYN lost)")
	}
	time.Sleep(synRetransmit)
	return timeout - synRetransmit, nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
