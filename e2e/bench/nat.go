package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/gateway/nat"
)

func init() {
	register(Bench{
		Name: "nat-sync",
		Doc: "one incremental change with 10,000 services programmed, against rewriting the table for it; " +
			"also 10,000 services and 1,000 egress entries from empty, against nft -f of the same table",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Rounds, "rounds", 50, "incremental changes measured (and a fifth as many full rewrites)")
		},
		Run: runNATSync,
	})
	register(Bench{
		Name: "nat-lookup",
		Doc: "TCP connection latency through a gateway with 10,000 service mappings against 10; " +
			"also the 10,000 as a linear chain of rules, as iptables-based translators do it",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Rounds, "rounds", 10, "rounds, each measuring every setup in turn")
		},
		Run: runNATLookup,
	})
}

// manyServices returns n service mappings on distinct addresses, and the
// egress entries of m pods.
func manyServices(n, m int) nat.Program {
	p := nat.Program{Tunnel: "tun0", EgressPods: map[netip.Addr]netip.Addr{},
		EgressNets: []nat.EgressNet{{Source: netip.MustParsePrefix("10.0.0.0/16"), As: netip.MustParseAddr("242.1.1.1")}},
		Translated: []netip.Prefix{netip.MustParsePrefix("242.0.0.0/16")}}
	for i := range n {
		p.Services = append(p.Services, nat.Service{Addr: serviceAddr(i), Proto: 6, Port: 80,
			Backend: netip.MustParseAddr("10.0.1.10"), BackendPort: 8080})
	}
	for i := range m {
		p.EgressPods[netip.AddrFrom4([4]byte{10, 0, byte(2 + i/250), byte(1 + i%250)})] = netip.AddrFrom4([4]byte{242, 1, 2, byte(1 + i%200)})
	}
	return p
}

// serviceAddr is the i-th service address: 242.1.128.1 onwards, skipping
// .0 and .255 as the allocator does.
func serviceAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{242, 1, byte(128 + i/250), byte(1 + i%250)})
}

func runNATSync(ctx context.Context, c Config) (Result, error) {
	ns, err := netns.Add(netns.Prefix + runID("bn") + "-sync")
	if err != nil {
		return Result{}, err
	}
	defer netns.Delete(ns.Name)
	fd, err := ns.Open()
	if err != nil {
		return Result{}, err
	}
	defer fd.Close()
	tab, err := nat.New(nftables.WithNetNSFd(int(fd)))
	if err != nil {
		return Result{}, err
	}
	defer tab.Close()
	prog := manyServices(10000, 1000)

	// From empty, five times: the table removed, the whole program written.
	var fromEmpty []float64
	for range 5 {
		if err := tab.Remove(); err != nil {
			return Result{}, err
		}
		start := time.Now()
		if _, err := tab.Sync(prog); err != nil {
			return Result{}, err
		}
		fromEmpty = append(fromEmpty, ms(time.Since(start)))
	}
	ok, err := tab.Verify()
	if err != nil || !ok {
		return Result{}, fmt.Errorf("bench nat-sync: the table does not hold what was written (%v)", err)
	}
	c.logf("from empty: %.1f ms (10,000 services, 1,000 egress entries)", median(fromEmpty))

	// The same table by nft -f, the reference tool.
	nftMS, err := nftLoad(ns, prog)
	if err != nil {
		return Result{}, err
	}
	c.logf("nft -f of the same table: %.1f ms", nftMS)

	// One change with 10,000 present: a service added, then removed.
	rounds := max(c.Rounds, 10)
	extra := nat.Service{Addr: serviceAddr(10000), Proto: 6, Port: 443, Backend: netip.MustParseAddr("10.0.1.11"), BackendPort: 8443}
	var inc []float64
	for i := range rounds {
		next := prog
		if i%2 == 0 {
			next.Services = append(slices.Clone(prog.Services), extra)
		}
		start := time.Now()
		st, err := tab.Sync(next)
		if err != nil {
			return Result{}, err
		}
		inc = append(inc, ms(time.Since(start)))
		if st.Full || st.Added+st.Removed != 2 {
			return Result{}, fmt.Errorf("bench nat-sync: a one-service change did %+v", st)
		}
	}
	// The same change as a whole rewrite: what a translator without
	// element diffs does.
	var rewrite []float64
	for i := range max(rounds/5, 5) {
		next := prog
		if i%2 == 0 {
			next.Services = append(slices.Clone(prog.Services), extra)
		}
		tab.Forget()
		start := time.Now()
		if _, err := tab.Sync(next); err != nil {
			return Result{}, err
		}
		rewrite = append(rewrite, ms(time.Since(start)))
	}
	c.logf("one change: %.2f ms incremental, %.1f ms as a rewrite", median(inc), median(rewrite))
	return Result{
		Bench:         "nat-sync",
		Value:         median(inc),
		Unit:          "ms",
		Baseline:      "the same one-service change as a whole-table rewrite, 10,000 services present",
		BaselineValue: median(rewrite),
		Extra: map[string]any{
			"incremental_p99_ms":    round(percentile(inc, 0.99)),
			"from_empty_ms":         round(median(fromEmpty)),
			"from_empty_nft_cli_ms": round(nftMS),
			"from_empty_target_ms":  1000,
			"incremental_target_ms": 20,
			"services":              10000,
			"egress_entries":        1000,
			"incremental_changes":   rounds,
		},
	}, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// nftLoad writes the program's table as nft text and times `nft -f` on it
// (the table created anew), median of three.
func nftLoad(ns netns.NS, p nat.Program) (float64, error) {
	var b strings.Builder
	b.WriteString("table ip bench_nft {\n map services {\n  type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n  elements = {\n")
	for i, s := range p.Services {
		sep := ","
		if i == len(p.Services)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "   %s . tcp . %d : %s . %d%s\n", s.Addr, s.Port, s.Backend, s.BackendPort, sep)
	}
	b.WriteString("  }\n }\n map egress_by_pod {\n  type ipv4_addr : ipv4_addr\n  elements = {\n")
	i := 0
	for pod, as := range p.EgressPods {
		sep := ","
		if i == len(p.EgressPods)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "   %s : %s%s\n", pod, as, sep)
		i++
	}
	b.WriteString("  }\n }\n chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n" +
		"  iifname \"tun0\" dnat ip to ip daddr . meta l4proto . th dport map @services\n }\n}\n")
	file, err := os.CreateTemp("", "strait-bench-*.nft")
	if err != nil {
		return 0, err
	}
	defer os.Remove(file.Name())
	if _, err := file.WriteString(b.String()); err != nil {
		return 0, err
	}
	file.Close()
	var times []float64
	for range 3 {
		ns.Command("nft", "delete", "table", "ip", "bench_nft").Run()
		start := time.Now()
		if out, err := ns.Command("nft", "-f", file.Name()).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("bench nat-sync: nft -f: %v: %s", err, out)
		}
		times = append(times, ms(time.Since(start)))
	}
	ns.Command("nft", "delete", "table", "ip", "bench_nft").Run()
	return median(times), nil
}

// lookupSetup is one client — gateway — server triple whose gateway
// translates with one kind of table.
type lookupSetup struct {
	name   string
	client netns.NS
	target netip.AddrPort
	stop   func()
	lat    []float64 // microseconds
}

func runNATLookup(ctx context.Context, c Config) (Result, error) {
	run := runID("bl")
	type spec struct {
		name   string
		n      int
		linear bool
	}
	specs := []spec{{"maps-10", 10, false}, {"maps-10000", 10000, false}, {"linear-10000", 10000, true}}
	var setups []*lookupSetup
	defer func() {
		for _, s := range setups {
			s.stop()
		}
	}()
	for i, sp := range specs {
		s, err := newLookupSetup(run, i, sp.name, sp.n, sp.linear)
		if err != nil {
			return Result{}, err
		}
		setups = append(setups, s)
		c.logf("%s: ready, connecting to %s", sp.name, s.target)
	}
	rounds := max(c.Rounds, 1)
	const perRound = 400
	for r := range rounds {
		for k := range setups {
			s := setups[(k+r)%len(setups)]
			lat, err := connectLatencies(ctx, s.client, s.target, perRound)
			if err != nil {
				return Result{}, fmt.Errorf("bench nat-lookup: %s: %w", s.name, err)
			}
			s.lat = append(s.lat, lat...)
			c.logf("round %d: %-12s median %.1f µs", r+1, s.name, median(lat))
		}
	}
	small, big, linear := setups[0], setups[1], setups[2]
	return Result{
		Bench:         "nat-lookup",
		Value:         median(big.lat),
		Unit:          "µs",
		Baseline:      "TCP connect through the same gateway with 10 service mappings in the map",
		BaselineValue: median(small.lat),
		Extra: map[string]any{
			"maps_10000_p99_us":      round(percentile(big.lat, 0.99)),
			"linear_chain_10000_us":  round(median(linear.lat)),
			"linear_chain_10000_p99": round(percentile(linear.lat, 0.99)),
			"linear_vs_maps_10":      round(median(linear.lat) / median(small.lat)),
			"linear_vs_maps_10000":   round(median(linear.lat) / median(big.lat)),
			"connections_per_setup":  len(big.lat),
			"target_ratio_at_most":   1.1,
			"connect_to":             "the last of the 10,000 mappings (the worst case of a linear chain)",
		},
	}, nil
}

// newLookupSetup builds client — gateway — server: client 10.9.0.2 on
// "tun0" of the gateway (10.9.0.1), server 10.0.1.10 on "lan0" (10.0.1.1).
// The gateway DNATs n service addresses on port 80 to the server's 8080,
// by the strait table or by a linear chain; the client connects to the
// last one.
func newLookupSetup(run string, i int, name string, n int, linear bool) (_ *lookupSetup, err error) {
	t, err := newTriple(run, i)
	if err != nil {
		return nil, err
	}
	s := &lookupSetup{name: name, stop: t.stop}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	gw, server := t.gw, t.server
	prog := manyServices(n, 0)
	if linear {
		if err := linearChain(gw, prog); err != nil {
			return nil, err
		}
	} else {
		fd, err := gw.Open()
		if err != nil {
			return nil, err
		}
		tab, err := nat.New(nftables.WithNetNSFd(int(fd)))
		fd.Close()
		if err != nil {
			return nil, err
		}
		_, err = tab.Sync(prog)
		tab.Close()
		if err != nil {
			return nil, err
		}
	}
	// The server: accept and close, in the server's namespace.
	stopServer, err := acceptAndClose(server, ":8080")
	if err != nil {
		return nil, err
	}
	stopNS := s.stop
	s.stop = func() { stopServer(); stopNS() }
	s.client = t.client
	s.target = netip.AddrPortFrom(prog.Services[len(prog.Services)-1].Addr, 80)
	return s, nil
}

// triple is client — gateway — server: client 10.9.0.2 on "tun0" of the
// gateway (10.9.0.1), server 10.0.1.10 on "lan0" (10.0.1.1), each with a
// default route through the gateway, which forwards.
type triple struct {
	client, gw, server netns.NS
	stop               func()
}

func newTriple(run string, i int) (_ *triple, err error) {
	prefix := fmt.Sprintf("%s%s-%d", netns.Prefix, run, i)
	var made []string
	t := &triple{stop: func() {}}
	t.stop = func() {
		for _, ns := range made {
			netns.Delete(ns)
		}
	}
	defer func() {
		if err != nil {
			t.stop()
		}
	}()
	var nss [3]netns.NS
	for k, role := range []string{"client", "gw", "server"} {
		if nss[k], err = netns.Add(prefix + "-" + role); err != nil {
			return nil, err
		}
		made = append(made, nss[k].Name)
	}
	t.client, t.gw, t.server = nss[0], nss[1], nss[2]
	if err := t.gw.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	for _, l := range []struct {
		a       netns.NS
		aName   string
		aAddr   string
		b       netns.NS
		bName   string
		bAddr   string
		defGwIn netns.NS
		defGw   string
	}{
		{t.client, "eth0", "10.9.0.2/24", t.gw, "tun0", "10.9.0.1/24", t.client, "10.9.0.1"},
		{t.server, "eth0", "10.0.1.10/24", t.gw, "lan0", "10.0.1.1/24", t.server, "10.0.1.1"},
	} {
		if err := vethPair(l.a, l.aName, l.aAddr, l.b, l.bName, l.bAddr); err != nil {
			return nil, err
		}
		h, err := l.defGwIn.Handle()
		if err != nil {
			return nil, err
		}
		err = h.RouteAdd(&netlink.Route{Gw: net.ParseIP(l.defGw)})
		h.Close()
		if err != nil {
			return nil, err
		}
	}
	return t, nil
}

// acceptAndClose serves TCP on addr inside ns: every connection is
// accepted and closed. It returns the function that stops it.
func acceptAndClose(ns netns.NS, addr string) (func(), error) {
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return func() { ln.Close() }, nil
}

func vethPair(a netns.NS, aName, aAddr string, b netns.NS, bName, bAddr string) error {
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
		return fmt.Errorf("bench: veth %s/%s: %w", a.Name, aName, err)
	}
	for _, e := range []struct {
		h    *netlink.Handle
		name string
		addr string
	}{{ha, aName, aAddr}, {hb, bName, bAddr}} {
		l, err := e.h.LinkByName(e.name)
		if err != nil {
			return err
		}
		ad, _ := netlink.ParseAddr(e.addr)
		if err := e.h.AddrAdd(l, ad); err != nil {
			return err
		}
		if err := e.h.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// linearChain loads the mappings as one DNAT rule each, in order, as
// iptables-based translators do (a chain of "-d ADDR -p tcp --dport 80 -j
// DNAT" rules).
func linearChain(ns netns.NS, p nat.Program) error {
	var b strings.Builder
	b.WriteString("table ip bench_linear {\n chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n")
	for _, s := range p.Services {
		fmt.Fprintf(&b, "  iifname \"tun0\" ip daddr %s tcp dport %d dnat to %s:%d\n", s.Addr, s.Port, s.Backend, s.BackendPort)
	}
	b.WriteString(" }\n}\n")
	return loadNft(ns, b.String())
}

// loadNft loads a ruleset with `nft -f` inside ns: the baseline of the
// linear chains.
func loadNft(ns netns.NS, ruleset string) error {
	dir, err := os.MkdirTemp("", "strait-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "linear.nft")
	if err := os.WriteFile(path, []byte(ruleset), 0o600); err != nil {
		return err
	}
	if out, err := ns.Command("nft", "-f", path).CombinedOutput(); err != nil {
		return fmt.Errorf("bench: load a linear chain: %v: %s", err, out)
	}
	return nil
}

// connectLatencies opens n TCP connections from inside ns to target one
// after another and returns how long each connect took, in microseconds:
// one SYN, SYN-ACK round through the gateway, whose translation is looked
// up for each new connection.
func connectLatencies(ctx context.Context, ns netns.NS, target netip.AddrPort, n int) ([]float64, error) {
	var out []float64
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: time.Second}
		for i := 0; i < n; i++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			start := time.Now()
			c, err := d.DialContext(ctx, "tcp4", target.String())
			took := time.Since(start)
			if err != nil {
				return err
			}
			// Close from this side with a reset: no TIME_WAIT piles up
			// over thousands of connections.
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
			out = append(out, float64(took)/float64(time.Microsecond))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("no connection")
	}
	return out, nil
}
