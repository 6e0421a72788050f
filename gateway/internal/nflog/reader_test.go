package nflog

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

var record = flag.Bool("record", false, "write the kernel's NFLOG messages seen by TestReadRealPackets to testdata/ (fuzz seeds)")

// rules logs, in the output hook, TCP and UDP to 127.0.0.2:9 and UDP to
// [::1]:9, and in the input hook UDP to 127.0.0.2:9 (the kernel stamps
// only packets it received, so that one carries NFULA_TIMESTAMP).
const rules = `
table inet strait_nflog_test {
	chain out {
		type filter hook output priority 0; policy accept;
		ip daddr 127.0.0.2 tcp dport 9 log group %[1]d prefix "strait-deny 42 "
		ip daddr 127.0.0.2 udp dport 9 log group %[1]d prefix "strait-deny 43 "
		ip6 daddr ::1 udp dport 9 log group %[1]d prefix "strait-deny 44 "
	}
	chain in {
		type filter hook input priority 0; policy accept;
		ip daddr 127.0.0.2 udp dport 9 log group %[1]d prefix "strait-in 45 "
	}
}
`

// lab is a fresh namespace with the logging rules for group.
type lab struct {
	ns netns.NS
	fd int // of the namespace, for Options.NetNS
}

func newLab(t *testing.T, group uint16) lab {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "nft")
	ns := nstest.New(t, "nflog")
	cmd := ns.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(fmt.Sprintf(rules, group))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	fd, err := ns.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fd.Close() })
	return lab{ns: ns, fd: int(fd)}
}

// sendUDP sends one datagram from src to dst inside the namespace.
func (l lab) sendUDP(t *testing.T, src, dst string) {
	t.Helper()
	err := l.ns.Do(func() error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(src)))
		if err != nil {
			return err
		}
		defer c.Close()
		// Unconnected, so the port unreachable that comes back is no
		// error.
		_, err = c.WriteToUDPAddrPort([]byte("strait"), netip.MustParseAddrPort(dst))
		return err
	})
	if err != nil {
		t.Fatalf("send UDP %s -> %s: %v", src, dst, err)
	}
}

// dialTCP sends a SYN from src to dst inside the namespace; nothing
// listens there, so the dial fails, which is fine.
func (l lab) dialTCP(t *testing.T, src, dst string) {
	t.Helper()
	err := l.ns.Do(func() error {
		d := net.Dialer{Timeout: 300 * time.Millisecond, LocalAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(src))}
		c, err := d.Dial("tcp", dst)
		if err == nil {
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// instances returns the NFLOG groups bound in the namespace, from the
// kernel's own table.
func (l lab) instances(t *testing.T) []string {
	t.Helper()
	out, err := l.ns.Command("cat", "/proc/net/netfilter/nfnetlink_log").CombinedOutput()
	if err != nil {
		t.Fatalf("read nfnetlink_log instances: %v: %s", err, out)
	}
	var groups []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			groups = append(groups, f[0])
		}
	}
	return groups
}

// readAll reads packets into a channel until the Reader is closed; the
// returned func waits for the reading goroutine and returns its error.
func readAll(r *Reader) (<-chan Packet, func() error) {
	ch := make(chan Packet, 1024)
	var wg sync.WaitGroup
	var err error
	wg.Go(func() {
		defer close(ch)
		for {
			var p Packet
			p, err = r.Read()
			if err != nil {
				return
			}
			ch <- p
		}
	})
	return ch, func() error { wg.Wait(); return err }
}

// checkNoLeak fails t unless the goroutine count drops back to before.
func checkNoLeak(t *testing.T, before int) {
	t.Helper()
	nstest.Eventually(t, 5*time.Second, "goroutines to end", func() error {
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

func TestReadRealPackets(t *testing.T) {
	const group = 7100
	l := newLab(t, group)
	// Packets from the output hook carry no kernel timestamp, so they
	// must get this clock's time; the input one gets the kernel's.
	clock := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	r, err := Open(group, Options{NetNS: l.fd, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := l.instances(t); !slices.Contains(got, fmt.Sprint(group)) {
		t.Fatalf("kernel lists NFLOG groups %v, want %d among them", got, group)
	}
	var (
		recMu    sync.Mutex
		recorded []netlink.Message
	)
	r.tap = func(m netlink.Message) {
		recMu.Lock()
		recorded = append(recorded, m)
		recMu.Unlock()
	}

	start := time.Now()
	l.dialTCP(t, "127.0.0.1:40001", "127.0.0.2:9")
	l.sendUDP(t, "127.0.0.1:40002", "127.0.0.2:9")
	l.sendUDP(t, "[::1]:40003", "[::1]:9")
	// Traffic the rules do not log: another port, another address.
	l.sendUDP(t, "127.0.0.1:40004", "127.0.0.2:10")
	l.sendUDP(t, "127.0.0.1:40005", "127.0.0.3:9")

	want := map[string]Packet{
		"strait-deny 42 ": {Src: ip("127.0.0.1"), Dst: ip("127.0.0.2"), Proto: 6, SrcPort: 40001, DstPort: 9, At: clock},
		"strait-deny 43 ": {Src: ip("127.0.0.1"), Dst: ip("127.0.0.2"), Proto: 17, SrcPort: 40002, DstPort: 9, At: clock},
		"strait-deny 44 ": {Src: ip("::1"), Dst: ip("::1"), Proto: 17, SrcPort: 40003, DstPort: 9, At: clock},
		"strait-in 45 ":   {Src: ip("127.0.0.1"), Dst: ip("127.0.0.2"), Proto: 17, SrcPort: 40002, DstPort: 9},
	}
	ch, wait := readAll(r)
	got := map[string]Packet{}
	timeout := time.After(10 * time.Second)
	for len(got) < len(want) {
		select {
		case p := <-ch:
			if _, dup := got[p.Prefix]; dup {
				t.Errorf("second packet with prefix %q: %+v", p.Prefix, p)
			}
			got[p.Prefix] = p
		case <-timeout:
			t.Fatalf("got %d of %d packets: %+v", len(got), len(want), got)
		}
	}
	end := time.Now()
	for prefix, w := range want {
		g := got[prefix]
		if prefix == "strait-in 45 " {
			// The kernel's timestamp: the wall clock, not ours.
			if g.At.Before(start.Add(-time.Second)) || g.At.After(end.Add(time.Second)) {
				t.Errorf("%q: At %s is not between %s and %s", prefix, g.At, start, end)
			}
			g.At = time.Time{}
		}
		w.Prefix = prefix
		if g != w {
			t.Errorf("%q:\n got  %+v\n want %+v", prefix, g, w)
		}
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := wait(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	for p := range ch {
		t.Errorf("unexpected packet: %+v", p)
	}
	if s := r.Stats(); s.Packets != uint64(len(want)) || s.Malformed != 0 || s.Dropped != 0 {
		t.Errorf("Stats = %+v, want %d packets and nothing else", s, len(want))
	}
	if got := l.instances(t); slices.Contains(got, fmt.Sprint(group)) {
		t.Errorf("kernel still lists group %d after Close: %v", group, got)
	}

	recMu.Lock()
	defer recMu.Unlock()
	for _, m := range recorded {
		t.Logf("kernel message type %#x flags %#x, %d bytes", uint16(m.Header.Type), uint16(m.Header.Flags), len(m.Data))
	}
	if *record {
		writeCaptured(t, recorded)
	}
}

// capturedNames names the testdata file of each rule's message.
var capturedNames = map[string]string{
	"strait-deny 42 ": "tcp4-output",
	"strait-deny 43 ": "udp4-output",
	"strait-deny 44 ": "udp6-output",
	"strait-in 45 ":   "udp4-input",
}

func writeCaptured(t *testing.T, msgs []netlink.Message) {
	t.Helper()
	for _, m := range msgs {
		if m.Header.Type != packetType {
			continue
		}
		p, err := parse(m.Data)
		if err != nil {
			t.Fatalf("recorded message does not parse: %v", err)
		}
		name, ok := capturedNames[p.Prefix]
		if !ok {
			t.Fatalf("recorded message with prefix %q", p.Prefix)
		}
		text := fmt.Sprintf("# NFULNL_MSG_PACKET body (nfgenmsg and NFULA attributes) from kernel %s,\n# recorded by go test -run TestReadRealPackets -record\n%s\n",
			kernelRelease(), hex.EncodeToString(m.Data))
		path := filepath.Join("testdata", name+".hex")
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
	}
}

func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func TestReadCountsOverrunsAndKeepsReading(t *testing.T) {
	const group = 7101
	l := newLab(t, group)
	// The smallest buffer, and one message per packet, so that a
	// burst overruns it while nobody reads.
	r, err := Open(group, Options{NetNS: l.fd, ReadBuffer: 4096, QueueThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	err = l.ns.Do(func() error {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40010})
		if err != nil {
			return err
		}
		defer c.Close()
		for range 200 {
			c.WriteToUDPAddrPort([]byte("x"), netip.MustParseAddrPort("127.0.0.2:9"))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ch, wait := readAll(r)
	nstest.Eventually(t, 5*time.Second, "an overrun counted", func() error {
		if s := r.Stats(); s.Dropped == 0 {
			return fmt.Errorf("stats %+v", s)
		}
		return nil
	})
	// After the overrun, Read goes on: a later packet arrives.
	l.sendUDP(t, "127.0.0.1:40011", "127.0.0.2:9")
	timeout := time.After(10 * time.Second)
	for found := false; !found; {
		select {
		case p := <-ch:
			found = p.SrcPort == 40011
		case <-timeout:
			t.Fatalf("no packet after the overrun; stats %+v", r.Stats())
		}
	}
	r.Close()
	if err := wait(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	s := r.Stats()
	t.Logf("stats %+v", s)
	if s.Malformed != 0 || s.Packets == 0 || s.Packets >= 2*200+1 {
		t.Errorf("stats %+v: want some packets but not all, none malformed", s)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	const group = 7102
	l := newLab(t, group)
	before := runtime.NumGoroutine()
	r, err := Open(group, Options{NetNS: l.fd})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := r.Read()
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond) // let Read block in recvmsg
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) || !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Read returned %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
	if _, err := r.Read(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: %v, want ErrClosed", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	checkNoLeak(t, before)
	// The group is free again.
	if got := l.instances(t); slices.Contains(got, fmt.Sprint(group)) {
		t.Errorf("kernel still lists group %d after Close: %v", group, got)
	}
	r2, err := Open(group, Options{NetNS: l.fd})
	if err != nil {
		t.Fatalf("reopen after Close: %v", err)
	}
	r2.Close()
}

func TestOpenGroupTaken(t *testing.T) {
	const group = 7103
	l := newLab(t, group)
	r, err := Open(group, Options{NetNS: l.fd})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := runtime.NumGoroutine()
	_, err = Open(group, Options{NetNS: l.fd})
	if err == nil || !strings.Contains(err.Error(), "group 7103") {
		t.Fatalf("second Open of the group: %v, want an error naming group 7103", err)
	}
	t.Log(err)
	checkNoLeak(t, before)
	// Another namespace has its own groups.
	l2 := newLab(t, group)
	r2, err := Open(group, Options{NetNS: l2.fd})
	if err != nil {
		t.Fatalf("same group in another namespace: %v", err)
	}
	r2.Close()
}

func TestRunStopsWithContext(t *testing.T) {
	const group = 7104
	l := newLab(t, group)
	before := runtime.NumGoroutine()
	r, err := Open(group, Options{NetNS: l.fd, QueueThreshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan Packet, 16)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, r, func(p Packet) { got <- p }) }()

	l.sendUDP(t, "127.0.0.1:40020", "127.0.0.2:9")
	for seen := 0; seen < 2; { // output and input rules both log it
		select {
		case p := <-got:
			if p.SrcPort != 40020 {
				t.Errorf("unexpected packet %+v", p)
			}
			seen++
		case <-time.After(10 * time.Second):
			t.Fatal("Run delivered no packet")
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancel: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := r.Read(); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Run: %v, want ErrClosed (Run closes the Reader)", err)
	}
	checkNoLeak(t, before)
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }
