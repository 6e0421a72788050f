package health

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// The checks in these tests run every 100ms against real sockets on
// 127.0.0.1. Waits are generous and deadline-based: the machine is shared,
// and a test asserts what happens, not how fast within a few milliseconds.
// For the same reason a check times out only after checkTimeout, longer
// than the interval (the checker allows it; meshpolicy's validation does
// not), except where a test is about timeouts: a loaded machine may stall
// a loopback answer past 100ms.
const (
	interval     = 100 * time.Millisecond
	checkTimeout = time.Second
	slack        = 10 * time.Second
)

// eventually polls cond until it returns nil, and fails the test with its
// last error if that does not happen within the time.
func eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%s: not within %s: %v", what, within, err)
}

func tcpTarget(key string, addr netip.AddrPort) Target {
	return Target{Key: key, Addr: addr, Check: meshpolicy.HealthCheck{
		Protocol: "TCP", Interval: meshpolicy.Duration(interval), Timeout: meshpolicy.Duration(checkTimeout)}}
}

func httpTarget(key string, addr netip.AddrPort, path string) Target {
	return Target{Key: key, Addr: addr, Check: meshpolicy.HealthCheck{
		Protocol: "HTTP", Path: path, Interval: meshpolicy.Duration(interval), Timeout: meshpolicy.Duration(checkTimeout)}}
}

// withTimeout gives t's check a timeout of its own.
func withTimeout(t Target, d time.Duration) Target {
	t.Check.Timeout = meshpolicy.Duration(d)
	return t
}

// tcpServer accepts connections on 127.0.0.1 and closes them, counting
// them.
type tcpServer struct {
	ln       net.Listener
	accepted atomic.Int64
	done     chan struct{}
}

func listenTCP(t *testing.T, addr string) *tcpServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	s := &tcpServer{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(s.Close)
	return s
}

func (s *tcpServer) Addr() netip.AddrPort { return netip.MustParseAddrPort(s.ln.Addr().String()) }

// Close stops listening: checks then see "connection refused".
func (s *tcpServer) Close() {
	s.ln.Close()
	<-s.done
}

// closedPort returns an address of 127.0.0.1 where nothing listens.
func closedPort(t *testing.T) netip.AddrPort {
	s := listenTCP(t, "127.0.0.1:0")
	s.Close()
	return s.Addr()
}

func newChecker(t *testing.T, o Options) *Checker {
	t.Helper()
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	c := New(o)
	t.Cleanup(c.Close)
	return c
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func want(c *Checker, key string, healthy bool, reason string) func() error {
	return func() error {
		r, ok := c.Result(key)
		switch {
		case !ok:
			return fmt.Errorf("%s is not a target", key)
		case !r.Checked || r.Healthy != healthy || r.Reason != reason:
			return fmt.Errorf("%s: %+v", key, r)
		}
		return nil
	}
}

func TestTCPDownAndUp(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	addr := srv.Addr()
	c := newChecker(t, Options{})
	c.Set([]Target{tcpTarget("default/web", addr)})
	eventually(t, slack, "first check says healthy", want(c, "default/web", true, ""))
	up, _ := c.Result("default/web")

	srv.Close()
	down := time.Now()
	// UnhealthyAfter 2 failures: out within interval*2 + timeout, plus slack.
	eventually(t, 2*interval+checkTimeout+slack, "unhealthy after the listener closed", want(c, "default/web", false, ReasonRefused))
	t.Logf("unhealthy %s after the listener closed", time.Since(down).Round(time.Millisecond))
	r, _ := c.Result("default/web")
	if r.Failures < 2 || !r.Since.After(up.Since) {
		t.Errorf("after going unhealthy: %+v; want 2 failures or more and Since after %s", r, up.Since)
	}
	// The reason is gossiped: it must hold still while the cause does.
	for range 5 {
		time.Sleep(interval)
		if r, _ := c.Result("default/web"); r.Healthy || r.Reason != ReasonRefused {
			t.Fatalf("while still refused: %+v", r)
		}
	}

	listenTCP(t, addr.String())
	eventually(t, 2*interval+slack, "healthy again", want(c, "default/web", true, ""))
	if r, _ := c.Result("default/web"); r.Successes < 2 {
		t.Errorf("healthy again with %d successes in a row, want HealthyAfter (2) or more", r.Successes)
	}
}

// TestTCPTimeout has a dialer that never connects: the check times out.
func TestTCPTimeout(t *testing.T) {
	c := newChecker(t, Options{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	c.Set([]Target{withTimeout(tcpTarget("blackhole", netip.MustParseAddrPort("192.0.2.1:80")), interval)})
	eventually(t, slack, "timeout", want(c, "blackhole", false, ReasonTimeout))
}

// rawServer runs handle on each connection it accepts, for servers that
// misbehave below HTTP.
func rawServer(t *testing.T, handle func(net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(c) })
		}
	})
	return netip.MustParseAddrPort(ln.Addr().String())
}

// readRequest reads one request's head from c.
func readRequest(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	http.ReadRequest(bufio.NewReader(c))
}

func TestHTTP(t *testing.T) {
	stop := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	mux.HandleFunc("/redirect", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/fail", http.StatusFound) })
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	})
	var host atomic.Value
	mux.HandleFunc("/host", func(w http.ResponseWriter, r *http.Request) {
		// Host must be the address checked, and the check must not keep
		// the connection.
		if r.Host != host.Load() || !r.Close {
			http.Error(w, fmt.Sprintf("Host %q, Connection close %v", r.Host, r.Close), http.StatusBadRequest)
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { close(stop); srv.Close() })
	addr := netip.MustParseAddrPort(ln.Addr().String())
	host.Store(addr.String())

	reset := rawServer(t, func(c net.Conn) {
		readRequest(c)
		c.(*net.TCPConn).SetLinger(0) // close with a RST
		c.Close()
	})
	closed := rawServer(t, func(c net.Conn) {
		readRequest(c)
		c.Close()
	})
	garbage := rawServer(t, func(c net.Conn) {
		readRequest(c)
		c.Write([]byte("SSH-2.0-OpenSSH_9.6\r\n"))
		c.Close()
	})

	c := newChecker(t, Options{})
	c.Set([]Target{
		httpTarget("ok", addr, "/ok"),
		httpTarget("fail", addr, "/fail"),
		httpTarget("redirect", addr, "/redirect"), // 3xx is healthy, not followed
		withTimeout(httpTarget("hang", addr, "/hang"), interval),
		httpTarget("host", addr, "/host"),
		httpTarget("notfound", addr, "/nothing"),
		httpTarget("refused", closedPort(t), "/"),
		httpTarget("reset", reset, "/"),
		httpTarget("closed", closed, "/"),
		httpTarget("garbage", garbage, "/"),
	})
	wants := []struct {
		key     string
		healthy bool
		reason  string
	}{
		{"ok", true, ""},
		{"fail", false, "HTTP 503"},
		{"redirect", true, ""},
		{"hang", false, ReasonTimeout},
		{"host", true, ""},
		{"notfound", false, "HTTP 404"},
		{"refused", false, ReasonRefused},
		{"reset", false, ReasonReset},
		{"closed", false, ReasonClosed},
		{"garbage", false, ReasonBadResponse},
	}
	for _, w := range wants {
		eventually(t, slack, w.key, want(c, w.key, w.healthy, w.reason))
	}
	// Several checks later the verdicts and reasons have not moved.
	eventually(t, slack, "several checks", func() error {
		if r, _ := c.Result("hang"); r.Failures < 4 {
			return fmt.Errorf("hang: %+v", r)
		}
		return nil
	})
	for _, w := range wants {
		if err := want(c, w.key, w.healthy, w.reason)(); err != nil {
			t.Errorf("later: %v", err)
		}
	}
}

func TestSet(t *testing.T) {
	a, b := listenTCP(t, "127.0.0.1:0"), listenTCP(t, "127.0.0.1:0")
	down := closedPort(t)
	c := newChecker(t, Options{})

	c.Set([]Target{tcpTarget("a", a.Addr())})
	eventually(t, slack, "a healthy", want(c, "a", true, ""))
	before, _ := c.Result("a")

	// Adding b leaves a as it was.
	c.Set([]Target{tcpTarget("a", a.Addr()), tcpTarget("b", down)})
	res := c.Results()
	if _, ok := res["b"]; len(res) != 2 || !ok || res["a"].Since != before.Since || !res["a"].Healthy {
		t.Fatalf("after adding b: %+v; want a as before (%+v) and b", res, before)
	}
	eventually(t, slack, "b unhealthy", want(c, "b", false, ReasonRefused))

	// Changing b's address restarts it from unknown. Its first check may
	// already be done when Set returns: then its verdict is newer than
	// Set, and healthy at once (the old state would still be unhealthy,
	// needing two successes).
	setAt := time.Now()
	c.Set([]Target{tcpTarget("a", a.Addr()), tcpTarget("b", b.Addr())})
	if r, _ := c.Result("b"); r.Checked && (!r.Healthy || r.Since.Before(setAt)) {
		t.Fatalf("right after b's address changed: %+v, want unknown or a fresh verdict", r)
	}
	eventually(t, slack, "b healthy at its new address", want(c, "b", true, ""))

	// So does changing its check.
	hc := tcpTarget("b", b.Addr())
	hc.Check.HealthyAfter = 5
	setAt = time.Now()
	c.Set([]Target{tcpTarget("a", a.Addr()), hc})
	if r, _ := c.Result("b"); r.Checked && r.Since.Before(setAt) {
		t.Fatalf("right after b's check changed: %+v, want unknown or a fresh verdict", r)
	}
	eventually(t, slack, "b healthy with its new check", want(c, "b", true, ""))

	// Removing a stops its checks.
	c.Set([]Target{hc})
	if _, ok := c.Result("a"); ok || len(c.Results()) != 1 {
		t.Fatalf("after removing a: %+v", c.Results())
	}
	time.Sleep(interval) // a check under way when a was removed may still connect
	n := a.accepted.Load()
	time.Sleep(5 * interval)
	if m := a.accepted.Load(); m != n {
		t.Errorf("a removed, yet checked %d more times", m-n)
	}

	// Adding a again starts from unknown.
	setAt = time.Now()
	c.Set([]Target{hc, tcpTarget("a", a.Addr())})
	if r, _ := c.Result("a"); r.Checked && r.Since.Before(setAt) {
		t.Fatalf("a added again: %+v, want unknown or a fresh verdict", r)
	}
	eventually(t, slack, "a healthy again", want(c, "a", true, ""))
}

// TestSetUnchanged checks that setting the same targets again, even written
// with their defaults spelled out, keeps their state and their schedule:
// the gateway sets the full list on every catalog update.
func TestSetUnchanged(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	c := newChecker(t, Options{})
	tg := tcpTarget("a", srv.Addr())
	c.Set([]Target{tg})
	eventually(t, slack, "healthy", want(c, "a", true, ""))
	before, _ := c.Result("a")

	spelled := tg
	spelled.Check = tg.Check.WithDefaults()
	n := srv.accepted.Load()
	for i := range 200 {
		if i%2 == 0 {
			c.Set([]Target{tg})
		} else {
			c.Set([]Target{spelled})
		}
	}
	// A restarted target would check at once, 200 times.
	if m := srv.accepted.Load(); m-n > 3 {
		t.Errorf("200 identical Sets caused %d checks", m-n)
	}
	if r, _ := c.Result("a"); !r.Checked || r.Since != before.Since || r.Successes < before.Successes {
		t.Errorf("after identical Sets: %+v, want the state of %+v kept", r, before)
	}
}

// TestSchedule checks that checks of one target never overlap and that a
// slow target does not hold up the others.
func TestSchedule(t *testing.T) {
	fast := listenTCP(t, "127.0.0.1:0")
	slow := netip.MustParseAddrPort("192.0.2.1:80")
	stuck := netip.MustParseAddrPort("192.0.2.2:80")
	var inFlight, maxInFlight, slowDials, stuckDials atomic.Int64
	dialer := &net.Dialer{}
	c := newChecker(t, Options{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		switch addr {
		case stuck.String():
			stuckDials.Add(1)
		case slow.String():
			slowDials.Add(1)
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
			}
		default:
			return dialer.DialContext(ctx, network, addr)
		}
		<-ctx.Done()
		return nil, ctx.Err()
	}})
	c.Set([]Target{
		// Each check takes 3 intervals: it runs into the next ones.
		withTimeout(tcpTarget("slow", slow), 3*interval),
		// One check takes a minute, longer than the test.
		withTimeout(tcpTarget("stuck", stuck), time.Minute),
		tcpTarget("fast", fast.Addr()),
	})

	eventually(t, slack, "fast target checked several times", func() error {
		if r, _ := c.Result("fast"); !r.Healthy || r.Successes < 5 {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
	if r, _ := c.Result("stuck"); r.Checked || stuckDials.Load() != 1 {
		t.Errorf("stuck target: %+v after %d dials; want one check under way", r, stuckDials.Load())
	}
	eventually(t, slack, "slow target checked several times", func() error {
		if n := slowDials.Load(); n < 4 {
			return fmt.Errorf("%d checks", n)
		}
		return nil
	})
	if m := maxInFlight.Load(); m != 1 {
		t.Errorf("%d checks of one target at once, want 1", m)
	}
	if r, _ := c.Result("slow"); r.Healthy || r.Reason != ReasonTimeout {
		t.Errorf("slow target: %+v, want unhealthy by timeout", r)
	}
}

func TestOnChange(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	changes := make(chan map[string]Result, 100)
	var c *Checker
	c = newChecker(t, Options{OnChange: func() {
		// Results from OnChange: it must not run under the lock.
		changes <- c.Results()
	}})
	next := func(what string, cond func(Result) bool) {
		t.Helper()
		deadline := time.After(slack)
		for {
			select {
			case res := <-changes:
				if cond(res["a"]) {
					return
				}
			case <-deadline:
				t.Fatalf("no OnChange call with %s within %s", what, slack)
			}
		}
	}

	c.Set([]Target{tcpTarget("a", srv.Addr())})
	next("a healthy", func(r Result) bool { return r.Checked && r.Healthy })
	// No change, no call: a few checks pass quietly.
	time.Sleep(5 * interval)
	if n := len(changes); n != 0 {
		t.Errorf("%d OnChange calls while nothing changed", n)
	}
	srv.Close()
	next("a unhealthy", func(r Result) bool { return r.Checked && !r.Healthy && r.Reason == ReasonRefused })
	listenTCP(t, srv.Addr().String())
	next("a healthy again", func(r Result) bool { return r.Checked && r.Healthy })
}

// lockedBuffer is a log destination written from the checker's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestLogOncePerChange(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	var buf lockedBuffer
	c := newChecker(t, Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))})
	c.Set([]Target{tcpTarget("default/web", srv.Addr())})
	eventually(t, slack, "10 checks", func() error {
		if r, _ := c.Result("default/web"); r.Successes < 10 {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
	srv.Close()
	eventually(t, slack, "unhealthy", want(c, "default/web", false, ReasonRefused))
	eventually(t, slack, "10 failures", func() error {
		if r, _ := c.Result("default/web"); r.Failures < 10 {
			return fmt.Errorf("%+v", r)
		}
		return nil
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d log lines over two changes and 20 checks, want 2:\n%s", len(lines), buf.String())
	}
	for i, w := range []string{"backend healthy", "backend unhealthy"} {
		for _, part := range []string{w, "component=health", "target=default/web", "addr=" + srv.Addr().String()} {
			if !strings.Contains(lines[i], part) {
				t.Errorf("log line %d %q lacks %q", i, lines[i], part)
			}
		}
	}
	if !strings.Contains(lines[1], `reason="connection refused"`) {
		t.Errorf("unhealthy line %q lacks the reason", lines[1])
	}
}

// ourGoroutines lists the stacks of goroutines the package started.
func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ours []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "created by github.com/straitnet/strait/gateway/health.(*Checker)") ||
			strings.Contains(g, "created by github.com/straitnet/strait/gateway/health.New") {
			ours = append(ours, g)
		}
	}
	return ours
}

// TestClose starts targets of every kind, some in the middle of a long
// check, and checks that Close cancels the checks, returns soon, and leaves
// no goroutine behind.
func TestClose(t *testing.T) {
	srv := listenTCP(t, "127.0.0.1:0")
	// A server that accepts and never answers; its connections are held
	// by the accepting goroutine so the test starts no goroutine per check.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	silentDone := make(chan struct{})
	go func() {
		defer close(silentDone)
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	t.Cleanup(func() { silent.Close(); <-silentDone })
	blackhole := netip.MustParseAddrPort("192.0.2.1:80")
	var dialing atomic.Int64
	dialer := &net.Dialer{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == blackhole.String() {
			dialing.Add(1)
			<-ctx.Done()
			return nil, ctx.Err()
		}
		return dialer.DialContext(ctx, network, addr)
	}

	runtime.GC()
	baseline := runtime.NumGoroutine()
	var calls atomic.Int64
	c := New(Options{Dial: dial, OnChange: func() { calls.Add(1) }})
	long := func(t Target) Target {
		t.Check.Interval = meshpolicy.Duration(time.Minute)
		t.Check.Timeout = meshpolicy.Duration(time.Minute)
		return t
	}
	c.Set([]Target{
		tcpTarget("tcp", srv.Addr()),
		httpTarget("http-refused", closedPort(t), "/"),
		long(httpTarget("http-silent", netip.MustParseAddrPort(silent.Addr().String()), "/")),
		long(tcpTarget("tcp-blackhole", blackhole)),
	})
	eventually(t, slack, "checks under way", func() error {
		if r, _ := c.Result("tcp"); !r.Checked || dialing.Load() == 0 {
			return errors.New("not yet")
		}
		if len(ourGoroutines()) != 5 {
			return fmt.Errorf("%d goroutines of the checker, want 4 workers and the notifier", len(ourGoroutines()))
		}
		return nil
	})

	start := time.Now()
	c.Close()
	if d := time.Since(start); d > slack {
		t.Errorf("Close took %s with checks of a minute under way", d)
	}
	// Close has waited for them; they may still be unwinding past
	// WaitGroup.Done.
	eventually(t, slack, "no goroutine of the checker after Close", func() error {
		if g := ourGoroutines(); len(g) != 0 {
			return fmt.Errorf("%d left:\n%s", len(g), strings.Join(g, "\n\n"))
		}
		return nil
	})
	eventually(t, slack, "goroutines back to the baseline", func() error {
		if n := runtime.NumGoroutine(); n > baseline {
			return fmt.Errorf("%d goroutines, %d before New", n, baseline)
		}
		return nil
	})
	res := c.Results()
	if len(res) != 4 || !res["tcp"].Healthy || res["tcp-blackhole"].Checked || res["http-silent"].Checked {
		t.Errorf("after Close, Results = %+v; want the last verdicts, the cut-short checks still unknown", res)
	}

	// Set after Close does nothing, and Close again is harmless.
	c.Set([]Target{tcpTarget("late", srv.Addr())})
	time.Sleep(interval)
	if _, ok := c.Result("late"); ok || len(ourGoroutines()) != 0 || runtime.NumGoroutine() > baseline {
		t.Errorf("Set after Close started something: %+v, %d goroutines", c.Results(), runtime.NumGoroutine())
	}
	c.Close()
}
