package wanemu

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// router builds a — r — b: two hosts on either side of a router, the
// router's interfaces named "a" and "b", and returns the namespaces.
func router(t *testing.T) (a, r, b netns.NS) {
	nstest.RequireCommands(t, "ping")
	a, r, b = nstest.New(t, "a"), nstest.New(t, "r"), nstest.New(t, "b")
	for i, side := range []netns.NS{a, b} {
		name := []string{"a", "b"}[i]
		h, err := side.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		fd, err := r.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer fd.Close()
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: name, PeerNamespace: netlink.NsFd(int(fd))}); err != nil {
			t.Fatal(err)
		}
		hr, err := r.Handle()
		if err != nil {
			t.Fatal(err)
		}
		defer hr.Close()
		for _, x := range []struct {
			h    *netlink.Handle
			dev  string
			addr string
		}{{h, "eth0", fmt.Sprintf("198.18.%d.2/24", i)}, {hr, name, fmt.Sprintf("198.18.%d.1/24", i)}} {
			l, err := x.h.LinkByName(x.dev)
			if err != nil {
				t.Fatal(err)
			}
			ad, _ := netlink.ParseAddr(x.addr)
			if err := x.h.AddrAdd(l, ad); err != nil {
				t.Fatal(err)
			}
			if err := x.h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		gw, _ := netlink.ParseAddr(fmt.Sprintf("198.18.%d.1/32", i))
		if err := h.RouteAdd(&netlink.Route{Gw: gw.IP}); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	return a, r, b
}

// start runs an emulator inside r for the test.
func start(t *testing.T, r netns.NS, cfg Config) *Emulator {
	var e *Emulator
	err := r.Do(func() error {
		var err error
		e, err = New(cfg, 42, slog.Default())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return e
}

// ping pings b from a n times and returns the packets received and the
// average RTT.
func ping(t *testing.T, a netns.NS, n int, interval string) (int, time.Duration) {
	out, _ := a.Command("ping", "-n", "-q", "-c", strconv.Itoa(n), "-i", interval, "-W", "2", "198.18.1.2").CombinedOutput()
	m := regexp.MustCompile(`(\d+) received`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("ping output:\n%s", out)
	}
	got, _ := strconv.Atoi(m[1])
	var avg time.Duration
	if r := regexp.MustCompile(`= [\d.]+/([\d.]+)/`).FindStringSubmatch(string(out)); r != nil {
		ms, _ := strconv.ParseFloat(r[1], 64)
		avg = time.Duration(ms * float64(time.Millisecond))
	}
	return got, avg
}

func TestLatency(t *testing.T) {
	a, r, _ := router(t)
	links := []Link{{Site: "a", Iface: "a", Queue: 0}, {Site: "b", Iface: "b", Queue: 2}}
	got, base := ping(t, a, 5, "0.05")
	if got != 5 || base > 20*time.Millisecond {
		t.Fatalf("before the emulator: %d of 5, rtt %s", got, base)
	}
	links[0].Latency = 30 * time.Millisecond // a: 30ms each way
	links[1].Latency = 10 * time.Millisecond // b: 10ms each way
	e := start(t, r, Config{Links: links})
	got, rtt := ping(t, a, 10, "0.05")
	// Request: 30 leaving a + 10 reaching b; reply: 10 + 30.
	if got != 10 || rtt < 80*time.Millisecond || rtt > 80*time.Millisecond+base+15*time.Millisecond {
		t.Errorf("with latency a 30ms, b 10ms: %d of 10 replies, rtt %s; want all, about 80ms", got, rtt)
	}
	if st := e.Stats(); st.Held < 40 || st.Dropped != 0 {
		t.Errorf("stats %+v: want every packet held four times", st)
	}
	// Remove the impairment at run time: back to kernel speed.
	links[0].Latency, links[1].Latency = 0, 0
	if err := e.Update(Config{Links: links}); err != nil {
		t.Fatal(err)
	}
	held := e.Stats().Held
	if got, rtt := ping(t, a, 5, "0.05"); got != 5 || rtt > 20*time.Millisecond {
		t.Errorf("after removing the impairment: %d of 5, rtt %s", got, rtt)
	}
	if e.Stats().Held != held {
		t.Error("packets still pass the emulator after the impairment was removed")
	}
}

func TestLoss(t *testing.T) {
	a, r, _ := router(t)
	links := []Link{{Site: "a", Iface: "a", Queue: 0, Loss: 30}, {Site: "b", Iface: "b", Queue: 2}}
	e := start(t, r, Config{Links: links})
	// Each round trip crosses a's link twice: 0.7 × 0.7 = 49% get through.
	got, _ := ping(t, a, 300, "0.005")
	if got < 110 || got > 185 {
		t.Errorf("30%% loss each way on a: %d of 300 replies, want about 147", got)
	}
	if st := e.Stats(); st.Dropped == 0 {
		t.Errorf("stats %+v: nothing dropped", st)
	}
	// A cut link: nothing passes.
	links[0].Loss = 100
	if err := e.Update(Config{Links: links}); err != nil {
		t.Fatal(err)
	}
	if got, _ := ping(t, a, 5, "0.05"); got != 0 {
		t.Errorf("cut link: %d of 5 replies", got)
	}
}

func TestStopLeavesTrafficFlowing(t *testing.T) {
	a, r, _ := router(t)
	var e *Emulator
	if err := r.Do(func() (err error) {
		e, err = New(Config{Links: []Link{{Site: "a", Iface: "a", Queue: 0, Latency: 50 * time.Millisecond}}}, 1, slog.Default())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	if got, rtt := ping(t, a, 2, "0.1"); got != 2 || rtt < 100*time.Millisecond {
		t.Fatalf("impaired: %d, %s", got, rtt)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, rtt := ping(t, a, 3, "0.05"); got != 3 || rtt > 20*time.Millisecond {
		t.Errorf("after the emulator stopped: %d of 3, rtt %s; want the table gone and traffic at full speed", got, rtt)
	}
	out, _ := r.Command("nft", "list", "tables").CombinedOutput()
	if regexp.MustCompile(`table ip wan`).Match(out) {
		t.Errorf("table left behind:\n%s", out)
	}
}
