package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/dnsserver"
)

func init() {
	register(Bench{
		Name: "dns",
		Doc: "queries per second of the clusterset.local DNS server with 10,000 services loaded, dnsperf over UDP on " +
			"loopback, against a minimal miekg/dns server answering one fixed A record; also p99 latencies, and 10 services. " +
			"Every query is checked for the right records first, and every query measured must be answered with records",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.DurationVar(&c.Duration, "duration", 5*time.Second, "length of one dnsperf run")
			fs.IntVar(&c.Rounds, "rounds", 3, "rounds, each running dnsperf against every server in turn; medians count")
			fs.IntVar(&c.Size, "services", dnsDefaultServices, "services loaded")
			fs.BoolVar(&c.Quick, "quick", false, "skip the comparison with 10 services loaded")
		},
		Run: runDNS,
	})
}

// dnsDefaultServices is the scale measured unless told otherwise, and
// dnsMaxServices the most dnsSnapshot can address.
const (
	dnsDefaultServices = 10000
	dnsMaxServices     = 32000
)

// dnsSetup is one server that dnsperf measures.
type dnsSetup struct {
	name    string
	addr    netip.AddrPort
	queries string // dnsperf's input file
	// want is the answer expected to a line of the query file, as
	// dnsAnswer writes it.
	want func(line string) string
	// stats are the server's counters; nil for the baseline, which
	// has none.
	stats func() dnsserver.Stats
	stop  func()
	qps   []float64
	lat   []float64 // microseconds, every response of every round
	lost  int       // queries dnsperf never got an answer to, every round
}

// dnsQueryMix says what the query files hold, for the result line.
const dnsQueryMix = "A SVC.NS, A CLUSTER.SVC.NS and SRV _http._tcp.SVC.NS of every service " +
	"(each exported by 2 of 3 clusters), shuffled"

// dnsOutstanding is how many queries dnsperf keeps in flight (its
// default, pinned): enough to saturate either server, so that latencies
// are those of a server at its limit.
const dnsOutstanding = 100

func runDNS(ctx context.Context, c Config) (Result, error) {
	if _, err := exec.LookPath("dnsperf"); err != nil {
		return Result{}, errors.New("bench dns: dnsperf is missing (Debian's dnsperf package: apt-get install dnsperf)")
	}
	n := cmp.Or(c.Size, dnsDefaultServices)
	if n < 1 || n > dnsMaxServices {
		return Result{}, fmt.Errorf("bench dns: %d services; want 1 to %d", n, dnsMaxServices)
	}
	secs := max(c.Duration.Seconds(), 1)
	rounds := max(c.Rounds, 1)
	dir, err := os.MkdirTemp("", "strait-bench-dns")
	if err != nil {
		return Result{}, fmt.Errorf("bench dns: %w", err)
	}
	defer os.RemoveAll(dir)
	seed := uint64(time.Now().UnixNano())
	c.logf("query order seed %d", seed)

	var setups []*dnsSetup
	defer func() {
		for _, s := range setups {
			s.stop()
		}
	}()
	sizes := []int{n, 10}
	if c.Quick {
		sizes = sizes[:1]
	}
	for _, size := range sizes {
		s, err := startStraitDNS(ctx, c, dir, size, seed)
		if err != nil {
			return Result{}, err
		}
		setups = append(setups, s)
	}
	big := setups[0]
	// The baseline answers anything: it gets the big server's queries.
	base, err := startFixedDNS(big.queries)
	if err != nil {
		return Result{}, err
	}
	setups = append(setups, base)
	checked := 0
	for _, s := range setups {
		k, err := checkDNS(ctx, s)
		if err != nil {
			return Result{}, err
		}
		c.logf("%s: all %d queries answered as expected", s.name, k)
		if s == big {
			checked = k
		}
	}

	// Warm up, unmeasured: heaps, caches and socket buffers of every
	// side reach their steady state before any round counts.
	out := filepath.Join(dir, "dnsperf.out")
	for _, s := range setups {
		if _, err := runDNSPerf(ctx, s, 1, out); err != nil {
			return Result{}, err
		}
	}
	for r := range rounds {
		for k := range setups {
			// Rotate who goes first, so that drift of the machine
			// during the run hits every server alike.
			s := setups[(k+r)%len(setups)]
			res, err := runDNSPerf(ctx, s, secs, out)
			if err != nil {
				return Result{}, err
			}
			s.qps = append(s.qps, res.qps)
			s.lat = append(s.lat, res.lat...)
			s.lost += res.lost
			c.logf("round %d: %-13s %8.0f queries/s, p99 %6.0f µs, %d lost", r+1, s.name, res.qps, percentile(res.lat, 0.99), res.lost)
		}
	}
	res := Result{
		Bench:         "dns",
		Value:         median(big.qps),
		Unit:          "queries/s",
		Baseline:      "a minimal miekg/dns server answering every query with one fixed A record (the framework's ceiling)",
		BaselineValue: median(base.qps),
		Extra: map[string]any{
			"p99_latency_us":          round(percentile(big.lat, 0.99)),
			"baseline_p99_latency_us": round(percentile(base.lat, 0.99)),
			"lost_queries":            big.lost,
			"baseline_lost_queries":   base.lost,
			"services":                n,
			"queries":                 dnsQueryMix,
			"queries_checked":         checked,
			"dnsperf_seconds":         secs,
			"outstanding_queries":     dnsOutstanding,
			"rounds":                  rounds,
		},
	}
	if c.Quick {
		res.Extra["qps_10_services"] = "skipped (-quick)"
	} else {
		small := setups[1]
		res.Extra["qps_10_services"] = round(median(small.qps))
		res.Extra["p99_latency_10_services_us"] = round(percentile(small.lat, 0.99))
	}
	return res, nil
}

var dnsClusters = []string{"cloud-a", "cloud-b", "onprem"}

// dnsSnapshot is a catalog of n services, each exported by two of three
// live clusters with a named port, as a gateway's catalog holds them.
func dnsSnapshot(n int) catalog.Snapshot {
	snap := catalog.Snapshot{Generation: 1, Self: dnsClusters[0], Alive: map[string]bool{}}
	for _, c := range dnsClusters {
		snap.Alive[c] = true
	}
	for i := range n {
		for k := range 2 {
			ci := (i + k) % len(dnsClusters)
			snap.Services = append(snap.Services, catalog.ClusterService{Cluster: dnsClusters[ci], Service: catalog.Service{
				Namespace: fmt.Sprintf("ns-%d", i/100), Name: fmt.Sprintf("svc-%d", i%100),
				Addr:  netip.AddrFrom4([4]byte{242, byte(ci), byte(128 + i/250), byte(1 + i%250)}),
				Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 80}}, Ready: 1,
			}})
		}
	}
	slices.SortFunc(snap.Services, func(a, b catalog.ClusterService) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Cluster, b.Cluster))
	})
	return snap
}

// dnsExpected is what a correct server answers to the queries of snap,
// by query line ("NAME TYPE", dnsperf's input), as dnsAnswer writes it.
// It follows the MCS API's names from snap alone, not from the server's
// index, so that the server's answers are checked rather than echoed:
// per service, three queries:
//   - A of SVC.NS: the addresses of both of its clusters;
//   - A of CLUSTER.SVC.NS, for its first cluster: that cluster's address;
//   - SRV of _http._tcp.SVC.NS: port 80 on the name of each cluster's
//     instance, with their addresses as additional records.
//
// Every service of dnsSnapshot is ready in live clusters.
func dnsExpected(snap catalog.Snapshot) map[string]string {
	want := map[string]string{}
	for rest := snap.Services; len(rest) > 0; {
		// The clusters of one service, adjacent in a snapshot.
		k := 1
		for k < len(rest) && rest[k].Namespace == rest[0].Namespace && rest[k].Name == rest[0].Name {
			k++
		}
		svc := rest[:k]
		rest = rest[k:]
		base := svc[0].Name + "." + svc[0].Namespace + ".svc." + dnsserver.DefaultZone
		srvName := "_http._tcp." + base
		var all, srvs, extra []string
		for _, cs := range svc {
			inst := cs.Cluster + "." + base
			all = append(all, dnsRecord(base, "A", cs.Addr.String()))
			srvs = append(srvs, dnsRecord(srvName, "SRV", inst, "80"))
			extra = append(extra, dnsRecord(inst, "A", cs.Addr.String()))
		}
		want[strings.TrimSuffix(base, ".")+" A"] = dnsAnswerOf("NOERROR", all, nil)
		want[strings.TrimSuffix(svc[0].Cluster+"."+base, ".")+" A"] = dnsAnswerOf("NOERROR", extra[:1], nil)
		want[strings.TrimSuffix(srvName, ".")+" SRV"] = dnsAnswerOf("NOERROR", srvs, extra)
	}
	return want
}

// dnsRecord writes one record as dnsAnswer compares them.
func dnsRecord(owner, typ string, data ...string) string {
	return strings.Join(append([]string{strings.ToLower(dns.Fqdn(owner)), typ}, data...), " ")
}

// dnsAnswerOf writes a reply as dnsAnswer compares them: its rcode, its
// answer records and its additional records, each sorted.
func dnsAnswerOf(rcode string, answer, extra []string) string {
	answer, extra = slices.Sorted(slices.Values(answer)), slices.Sorted(slices.Values(extra))
	return rcode + " [" + strings.Join(answer, ", ") + "] additional [" + strings.Join(extra, ", ") + "]"
}

// dnsAnswer writes what matters of a reply, to compare with dnsExpected:
// TTLs, SRV priorities and weights, and the OPT record are left out.
func dnsAnswer(m *dns.Msg) string {
	rr := func(rrs []dns.RR) []string {
		var out []string
		for _, r := range rrs {
			h := r.Header()
			switch r := r.(type) {
			case *dns.OPT:
			case *dns.A:
				out = append(out, dnsRecord(h.Name, "A", r.A.String()))
			case *dns.SRV:
				out = append(out, dnsRecord(h.Name, "SRV", strings.ToLower(r.Target), strconv.Itoa(int(r.Port))))
			default:
				out = append(out, dnsRecord(h.Name, dns.TypeToString[h.Rrtype]))
			}
		}
		return out
	}
	return dnsAnswerOf(dns.RcodeToString[m.Rcode], rr(m.Answer), rr(m.Extra))
}

// writeDNSQueries writes dnsperf's input: the lines of want, in an order
// shuffled by seed.
func writeDNSQueries(path string, want map[string]string, seed uint64) error {
	lines := slices.Sorted(maps.Keys(want))
	rand.New(rand.NewPCG(seed, 1)).Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("bench dns: %w", err)
	}
	return nil
}

// startStraitDNS serves n services with strait's server on a loopback
// UDP port.
func startStraitDNS(ctx context.Context, c Config, dir string, n int, seed uint64) (*dnsSetup, error) {
	name := fmt.Sprintf("strait-%d", n)
	snap := dnsSnapshot(n)
	want := dnsExpected(snap)
	s := &dnsSetup{name: name, queries: filepath.Join(dir, name+".txt"), want: func(line string) string { return want[line] }}
	if err := writeDNSQueries(s.queries, want, seed); err != nil {
		return nil, err
	}
	logw := c.Log
	if logw == nil {
		logw = io.Discard
	}
	srv, err := dnsserver.New(dnsserver.Options{Logger: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return nil, fmt.Errorf("bench dns: %w", err)
	}
	s.stats = srv.Stats
	start := time.Now()
	srv.Update(snap)
	c.logf("%s: index of %d cluster services built in %s", name, len(snap.Services), time.Since(start).Round(time.Microsecond))
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench dns: %w", err)
	}
	s.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, pc, nil) }()
	s.stop = func() {
		cancel()
		if err := <-done; err != nil {
			c.logf("%s: %v", name, err)
		}
	}
	return s, nil
}

// dnsFixedAddr is the baseline's one answer.
var dnsFixedAddr = netip.AddrFrom4([4]byte{242, 0, 128, 1})

// startFixedDNS is the baseline: miekg/dns answering every question with
// the same A record, with nothing to look up.
func startFixedDNS(queries string) (*dnsSetup, error) {
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench dns: %w", err)
	}
	a := dnsFixedAddr.AsSlice()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: a}}
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan error, 1)
	go func() { done <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-done:
		pc.Close()
		return nil, fmt.Errorf("bench dns: baseline server: %w", err)
	}
	return &dnsSetup{
		name: "fixed-answer", addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), queries: queries,
		want: func(line string) string {
			name, _, _ := strings.Cut(line, " ")
			return dnsAnswerOf("NOERROR", []string{dnsRecord(name, "A", dnsFixedAddr.String())}, nil)
		},
		stop: func() { srv.Shutdown(); <-done },
	}, nil
}

// checkDNS asks a server every query of its file, one at a time from a
// few clients, and wants each answered with exactly the records expected:
// a server that answered quickly with errors, nothing or the wrong
// addresses would measure nothing. It returns the number of queries
// checked.
func checkDNS(ctx context.Context, s *dnsSetup) (int, error) {
	b, err := os.ReadFile(s.queries)
	if err != nil {
		return 0, fmt.Errorf("bench dns: %w", err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	const workers = 4
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel() // the other clients stop
	}
	for w := range workers {
		wg.Go(func() {
			cl := &dns.Client{Timeout: 2 * time.Second}
			conn, err := cl.DialContext(ctx, s.addr.String())
			if err != nil {
				fail(fmt.Errorf("bench dns: %s: %w", s.name, err))
				return
			}
			defer conn.Close()
			for i := w; i < len(lines); i += workers {
				if ctx.Err() != nil {
					fail(ctx.Err())
					return
				}
				line := lines[i]
				name, typ, _ := strings.Cut(line, " ")
				m := new(dns.Msg)
				m.SetQuestion(dns.Fqdn(name), dns.StringToType[typ])
				r, _, err := cl.ExchangeWithConnContext(ctx, m, conn)
				if err != nil {
					fail(fmt.Errorf("bench dns: %s: %s: %w", s.name, line, err))
					return
				}
				if got, want := dnsAnswer(r), s.want(line); got != want {
					fail(fmt.Errorf("bench dns: %s: %s: answered %s, want %s", s.name, line, got, want))
					return
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return len(lines), nil
}

// dnsPerfResult is what one dnsperf run measured.
type dnsPerfResult struct {
	qps  float64
	lat  []float64 // microseconds
	lost int
}

// runDNSPerf runs dnsperf against s for secs seconds. Verbose mode
// reports every response's latency, from which percentiles come (this
// dnsperf has no histogram option). Its output goes to the file out,
// read once dnsperf is done, so that nothing but the server under test
// runs in this process while dnsperf measures; writing it costs dnsperf
// the same for every server measured.
//
// dnsperf only sees rcodes: a strait server's counters must show that
// every query it got was answered with records (checkDNS has checked
// which), none with an error, NODATA or truncated.
func runDNSPerf(ctx context.Context, s *dnsSetup, secs float64, out string) (dnsPerfResult, error) {
	f, err := os.Create(out)
	if err != nil {
		return dnsPerfResult{}, fmt.Errorf("bench dns: %w", err)
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "dnsperf", "-s", s.addr.Addr().String(), "-p", strconv.Itoa(int(s.addr.Port())),
		"-d", s.queries, "-l", strconv.FormatFloat(secs, 'f', -1, 64), "-q", strconv.Itoa(dnsOutstanding), "-v")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = f, &stderr
	var before dnsserver.Stats
	if s.stats != nil {
		before = s.stats()
	}
	if err := cmd.Run(); err != nil {
		return dnsPerfResult{}, fmt.Errorf("bench dns: dnsperf against %s: %v: %s", s.name, err, strings.TrimSpace(stderr.String()))
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return dnsPerfResult{}, fmt.Errorf("bench dns: %w", err)
	}
	var res dnsPerfResult
	sent, completed := -1, -1
	rcodes := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		// "> NOERROR name type 0.000123" for a response.
		if fs := strings.Fields(line); len(fs) >= 4 && fs[0] == ">" {
			if len(fs) == 5 {
				if v, err := strconv.ParseFloat(fs[4], 64); err == nil {
					rcodes[fs[1]]++
					res.lat = append(res.lat, v*1e6)
				}
			}
			continue
		}
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		// "  Queries sent:         195952", "  Queries completed:    195952 (100.00%)"
		first, _, _ := strings.Cut(strings.TrimSpace(v), " ")
		switch k {
		case "Queries per second":
			res.qps, _ = strconv.ParseFloat(first, 64)
		case "Queries sent":
			sent, _ = strconv.Atoi(first)
		case "Queries completed":
			completed, _ = strconv.Atoi(first)
		case "Queries lost":
			res.lost, _ = strconv.Atoi(first)
		}
	}
	if err := sc.Err(); err != nil {
		return dnsPerfResult{}, fmt.Errorf("bench dns: dnsperf's output: %w", err)
	}
	if res.qps == 0 || len(res.lat) == 0 || completed != len(res.lat) {
		return dnsPerfResult{}, fmt.Errorf("bench dns: dnsperf against %s measured nothing (%d responses, %d completed): %s",
			s.name, len(res.lat), completed, strings.TrimSpace(stderr.String()))
	}
	if n := rcodes["NOERROR"]; n < len(res.lat) {
		delete(rcodes, "NOERROR")
		return dnsPerfResult{}, fmt.Errorf("bench dns: %s answered %d of %d queries with something else than NOERROR: %v", s.name, len(res.lat)-n, len(res.lat), rcodes)
	}
	// Lost queries count in no figure, but a server dropping many would
	// be measured on what it chose to answer.
	if res.lost*100 > sent {
		return dnsPerfResult{}, fmt.Errorf("bench dns: %s lost %d of %d queries", s.name, res.lost, sent)
	}
	if s.stats != nil {
		after := s.stats()
		answered := after.Answers - before.Answers
		var bad []string
		for _, d := range []struct {
			what          string
			before, after uint64
		}{
			{"nxdomain", before.NXDomain, after.NXDomain}, {"nodata", before.NoData, after.NoData},
			{"refused", before.Refused, after.Refused}, {"formerr", before.FormErr, after.FormErr},
			{"notimp", before.NotImp, after.NotImp}, {"servfail", before.ServFail, after.ServFail},
			{"truncated", before.Truncated, after.Truncated}, {"malformed", before.Malformed, after.Malformed},
			{"oversized", before.Oversized, after.Oversized}, {"panics", before.Panics, after.Panics},
			{"write errors", before.WriteErrors, after.WriteErrors},
		} {
			if d.after != d.before {
				bad = append(bad, fmt.Sprintf("%d %s", d.after-d.before, d.what))
			}
		}
		if len(bad) > 0 || answered < uint64(completed) {
			return dnsPerfResult{}, fmt.Errorf("bench dns: %s answered %d queries with records of %d dnsperf completed; also %s",
				s.name, answered, completed, cmp.Or(strings.Join(bad, ", "), "nothing else"))
		}
	}
	return res, nil
}
