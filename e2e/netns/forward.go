package netns

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Forwarder carries TCP connections made to an address inside a namespace
// to the same address outside it (where the test process runs): how a
// process in a lab namespace reaches a server the test started on
// loopback, such as a kube-apiserver, without any route between the two.
type Forwarder struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// Forward listens on addr ("127.0.0.1:6443") inside ns and forwards every
// connection to addr outside, until Close.
func Forward(ns NS, addr string) (*Forwarder, error) {
	f := &Forwarder{target: addr, conns: map[net.Conn]bool{}}
	err := ns.Do(func() error {
		var err error
		f.ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	f.wg.Go(f.accept)
	return f, nil
}

func (f *Forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.pipe(c) })
	}
}

func (f *Forwarder) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = true
	return true
}

func (f *Forwarder) pipe(in net.Conn) {
	if !f.track(in) {
		return
	}
	out, err := net.DialTimeout("tcp", f.target, 5*time.Second)
	if err != nil {
		in.Close()
		f.mu.Lock()
		delete(f.conns, in)
		f.mu.Unlock()
		return
	}
	if !f.track(out) {
		in.Close()
		return
	}
	var wg sync.WaitGroup
	copyHalf := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}
	wg.Go(func() { copyHalf(out, in) })
	copyHalf(in, out)
	wg.Wait()
	in.Close()
	out.Close()
	f.mu.Lock()
	delete(f.conns, in)
	delete(f.conns, out)
	f.mu.Unlock()
}

// Close stops listening, cuts every forwarded connection and waits for
// the forwarder's goroutines.
func (f *Forwarder) Close() error {
	err := f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
