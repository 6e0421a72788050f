package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func prefixesOf(t *testing.T, s *Speaker) []netip.Prefix {
	t.Helper()
	rs, err := s.Learned(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return Prefixes(rs)
}

func wantPrefixes(got []netip.Prefix, want ...string) error {
	var w []netip.Prefix
	for _, s := range want {
		w = append(w, netip.MustParsePrefix(s))
	}
	if !slices.Equal(got, w) {
		return fmt.Errorf("learned %v, want %v", got, w)
	}
	return nil
}

// Two speakers in one process over loopback: the gateway's, which only
// connects, and a router's, which listens on a free port. The filters
// apply both ways, change at run time, and a planned stop withdraws.
func TestSpeakersFilterBothWays(t *testing.T) {
	ctx := context.Background()
	port := freePort(t)
	lo := netip.MustParseAddr("127.0.0.1")
	gw := New(Options{})
	router := New(Options{})
	gwCfg := Config{
		ASN: 64512, RouterID: netip.MustParseAddr("10.255.0.1"), ListenPort: -1, HoldTime: 3 * time.Second,
		Peers:  []Peer{{Name: "router", Address: lo, ASN: 64513, Port: uint16(port)}},
		Import: []PrefixRule{{Prefix: netip.MustParsePrefix("172.16.0.0/12"), MaxLength: 24}},
		Export: []PrefixRule{{Prefix: netip.MustParsePrefix("242.0.0.0/8"), MaxLength: 32}},
	}
	routerCfg := Config{
		ASN: 64513, RouterID: netip.MustParseAddr("10.255.0.2"), ListenPort: port, HoldTime: 3 * time.Second,
		Peers:  []Peer{{Name: "gateway", Address: lo, ASN: 64512, Port: 1}}, // port 1: it never connects itself
		Import: []PrefixRule{{Prefix: netip.MustParsePrefix("0.0.0.0/0"), MaxLength: 32}},
	}
	if err := router.Configure(ctx, routerCfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { router.Stop(ctx) })
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gw.Stop(ctx) })
	if err := router.Announce(ctx, []netip.Prefix{
		netip.MustParsePrefix("172.16.10.0/24"),
		netip.MustParsePrefix("172.16.99.128/25"), // longer than the import filter's 24
		netip.MustParsePrefix("10.1.0.0/16"),      // outside it
	}); err != nil {
		t.Fatal(err)
	}
	if err := gw.Announce(ctx, []netip.Prefix{
		netip.MustParsePrefix("242.0.0.0/16"),
		netip.MustParsePrefix("242.255.0.187/32"),
		netip.MustParsePrefix("10.2.0.0/16"), // outside the export filter
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the gateway learns what its import filter lets through", func() error {
		return wantPrefixes(prefixesOf(t, gw), "172.16.10.0/24")
	})
	eventually(t, "the router learns what the export filter lets through", func() error {
		return wantPrefixes(prefixesOf(t, router), "242.0.0.0/16", "242.255.0.187/32")
	})
	rs, _ := gw.Learned(ctx)
	if rs[0].NextHop != lo || rs[0].Peer != "router" {
		t.Errorf("learned %+v, want next hop %s from router", rs[0], lo)
	}
	eventually(t, "the session's counters and capabilities", func() error {
		ps, err := gw.Peers(ctx)
		if err != nil {
			return err
		}
		p := ps[0]
		if p.State != "established" || p.Received != 3 || p.Accepted != 1 || p.Advertised != 2 || !p.GracefulRestart || p.Since.IsZero() {
			return fmt.Errorf("%+v", p)
		}
		if !gw.Converged(ctx) {
			return fmt.Errorf("not converged with %+v", p)
		}
		return nil
	})

	// A withdrawal, and a wider import filter at run time.
	if err := gw.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	gwCfg.Import = append(gwCfg.Import, PrefixRule{Prefix: netip.MustParsePrefix("10.0.0.0/8"), MaxLength: 16})
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the withdrawal reaches the router", func() error {
		return wantPrefixes(prefixesOf(t, router), "242.0.0.0/16")
	})
	eventually(t, "the wider filter takes what was received before", func() error {
		return wantPrefixes(prefixesOf(t, gw), "10.1.0.0/16", "172.16.10.0/24")
	})

	// Narrower filters at run time, both ways.
	gwCfg.Import = gwCfg.Import[:1]
	gwCfg.Export = []PrefixRule{{Prefix: netip.MustParsePrefix("242.0.0.0/16")}}
	if err := gw.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16"), netip.MustParsePrefix("242.1.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router gets the second announcement", func() error {
		return wantPrefixes(prefixesOf(t, router), "242.0.0.0/16", "242.1.0.0/16")
	})
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the narrower export filter withdraws", func() error {
		return wantPrefixes(prefixesOf(t, router), "242.0.0.0/16")
	})
	eventually(t, "the narrower import filter drops", func() error {
		return wantPrefixes(prefixesOf(t, gw), "172.16.10.0/24")
	})
	gwCfg.Export = nil
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no export filter lets all out again", func() error {
		return wantPrefixes(prefixesOf(t, router), "242.0.0.0/16", "242.1.0.0/16")
	})

	// A planned stop withdraws the gateway's routes at once.
	if err := gw.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the router withdraws the stopped gateway's routes", func() error {
		return wantPrefixes(prefixesOf(t, router))
	})
	if rs, err := gw.Learned(ctx); err != nil || rs != nil {
		t.Errorf("a stopped speaker learned %v, %v", rs, err)
	}
	// And it starts again.
	if err := gw.Configure(ctx, gwCfg); err != nil {
		t.Fatal(err)
	}
	if err := gw.Announce(ctx, []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16")}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the restarted gateway's routes", func() error {
		return wantPrefixes(prefixesOf(t, router), "242.0.0.0/16")
	})
}

func TestConfigureRefusesInvalid(t *testing.T) {
	s := New(Options{})
	err := s.Configure(context.Background(), Config{ASN: 1, RouterID: netip.MustParseAddr("10.0.0.1")})
	if err == nil || err.Error() != "bgp: peers: at least one is required" {
		t.Fatalf("got %v", err)
	}
}
