package dnsserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/catalog"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}

// serverSnapshot is testSnapshot with services that make large replies:
// a headless service of 200 endpoints, and one exported by 8 clusters.
func serverSnapshot() catalog.Snapshot {
	snap := testSnapshot()
	big := catalog.Service{Namespace: "big", Name: "many", Headless: true, Ready: 200}
	for i := range 200 {
		big.Endpoints = append(big.Endpoints, catalog.Endpoint{Hostname: fmt.Sprintf("e%d", i), Addr: netip.AddrFrom4([4]byte{242, 0, 2, byte(i + 1)})})
	}
	snap.Services = append(snap.Services, catalog.ClusterService{Cluster: "a", Service: big})
	for i := range 8 {
		c := fmt.Sprintf("w%02d", i)
		snap.Alive[c] = true
		snap.Services = append(snap.Services, catalog.ClusterService{Cluster: c, Service: catalog.Service{
			Namespace: "big", Name: "wide", Addr: netip.AddrFrom4([4]byte{242, byte(10 + i), 128, 1}), Ready: 1,
			Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 80}},
		}})
	}
	return snap
}

// startServer runs a server on an ephemeral port of 127.0.0.1 until the
// test ends, and returns it and its address.
func startServer(t *testing.T, opts Options, snap *catalog.Snapshot) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if snap != nil {
		s.Update(*snap)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("ListenAndServe: %v", err)
		}
	})
	return s, waitAddr(t, s, errc)
}

// waitAddr waits until s serves, and returns its address.
func waitAddr(t *testing.T, s *Server, errc <-chan error) string {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		if addrs := s.Addrs(); len(addrs) == 2 {
			if addrs[0].String() != addrs[1].String() {
				t.Fatalf("udp and tcp on different addresses: %v", addrs)
			}
			return addrs[0].String()
		}
		select {
		case err := <-errc:
			t.Fatalf("ListenAndServe: %v", err)
		case <-deadline:
			t.Fatal("server did not start")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func exchange(t *testing.T, network, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %v: %v", network, m.Question, err)
	}
	return r
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// eventually waits for cond, which counters updated in other goroutines
// reach soon.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestServeUDPAndTCP(t *testing.T) {
	snap := serverSnapshot()
	s, addr := startServer(t, Options{TTL: 5 * time.Second, NegativeTTL: 7 * time.Second,
		NameServerAddrs: []netip.Addr{ip("242.0.0.53")}}, &snap)
	for _, tt := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string
		soa    bool // the SOA in the authority section
		extra  []string
	}{
		{name: "web.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{
			"web.shop.svc.clusterset.local. 5 IN A 242.0.128.1", "web.shop.svc.clusterset.local. 5 IN A 242.1.128.1"}},
		{name: "Web.SHOP.svc.clusterSet.local.", qtype: dns.TypeA, answer: []string{
			"web.shop.svc.clusterset.local. 5 IN A 242.0.128.1", "web.shop.svc.clusterset.local. 5 IN A 242.1.128.1"}},
		{name: "web.shop.svc.clusterset.local.", qtype: dns.TypeAAAA, soa: true},
		{name: "db.shop.svc.clusterset.local.", qtype: dns.TypeA, soa: true},
		{name: "a.db.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"a.db.shop.svc.clusterset.local. 5 IN A 242.0.128.2"}},
		{name: "c.web.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"c.web.shop.svc.clusterset.local. 5 IN A 242.2.128.1"}},
		{name: "_http._tcp.web.shop.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
			"_http._tcp.web.shop.svc.clusterset.local. 5 IN SRV 0 50 80 a.web.shop.svc.clusterset.local.",
			"_http._tcp.web.shop.svc.clusterset.local. 5 IN SRV 0 50 8080 b.web.shop.svc.clusterset.local.",
		}, extra: []string{"a.web.shop.svc.clusterset.local. 5 IN A 242.0.128.1", "b.web.shop.svc.clusterset.local. 5 IN A 242.1.128.1"}},
		{name: "kafka-0.a.kafka.data.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"kafka-0.a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.10"}},
		{name: "nope.shop.svc.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, soa: true},
		{name: "shop.svc.clusterset.local.", qtype: dns.TypeA, soa: true},
		{name: "svc.clusterset.local.", qtype: dns.TypeA, soa: true},
		{name: "clusterset.local.", qtype: dns.TypeSOA, answer: []string{
			"clusterset.local. 7 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 42 7200 1800 86400 7"}},
		{name: "clusterset.local.", qtype: dns.TypeNS, answer: []string{"clusterset.local. 5 IN NS ns.dns.clusterset.local."},
			extra: []string{"ns.dns.clusterset.local. 5 IN A 242.0.0.53"}},
		{name: "example.com.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "web.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
	} {
		for _, network := range []string{"udp", "tcp"} {
			t.Run(network+"/"+tt.name+"/"+dns.TypeToString[tt.qtype], func(t *testing.T) {
				q := query(tt.name, tt.qtype)
				r := exchange(t, network, addr, q)
				if r.Rcode != tt.rcode {
					t.Errorf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
				}
				if r.Id != q.Id || !r.Response || len(r.Question) != 1 || r.Question[0] != q.Question[0] {
					t.Errorf("reply does not match the query: %v", r)
				}
				if wantAA := tt.rcode != dns.RcodeRefused; r.Authoritative != wantAA {
					t.Errorf("AA %v, want %v", r.Authoritative, wantAA)
				}
				if r.Truncated {
					t.Error("truncated")
				}
				if got := render(r.Answer); !slices.Equal(got, tt.answer) {
					t.Errorf("answer:\n got  %q\n want %q", got, tt.answer)
				}
				if got := render(r.Extra); !slices.Equal(got, tt.extra) {
					t.Errorf("additional:\n got  %q\n want %q", got, tt.extra)
				}
				if tt.soa {
					soa, ok := onlySOA(r.Ns)
					if !ok || soa.Hdr.Ttl != 7 || soa.Minttl != 7 || soa.Hdr.Name != DefaultZone {
						t.Errorf("authority %v, want the zone's SOA with a negative TTL of 7", r.Ns)
					}
				} else if len(r.Ns) != 0 {
					t.Errorf("authority %v, want none", r.Ns)
				}
			})
		}
	}
	st := s.Stats()
	t.Logf("stats %+v", st)
	if st.Queries != st.Answers+st.NXDomain+st.NoData+st.Refused+st.FormErr+st.NotImp+st.ServFail {
		t.Errorf("outcomes do not add up to the queries: %+v", st)
	}
	if st.Answers == 0 || st.NXDomain != 2 || st.Refused != 4 || st.NoData != 8 {
		t.Errorf("stats %+v", st)
	}
}

func onlySOA(rrs []dns.RR) (*dns.SOA, bool) {
	if len(rrs) != 1 {
		return nil, false
	}
	soa, ok := rrs[0].(*dns.SOA)
	return soa, ok
}

func TestTruncation(t *testing.T) {
	snap := serverSnapshot()
	s, addr := startServer(t, Options{}, &snap)
	edns := func(m *dns.Msg, size uint16) *dns.Msg { m.SetEdns0(size, false); return m }
	const many = "many.big.svc.clusterset.local."
	const wide = "_http._tcp.wide.big.svc.clusterset.local."
	for _, tt := range []struct {
		name      string
		network   string
		q         *dns.Msg
		tc        bool
		answers   int // -1: fewer than all
		extras    int // -1: fewer than all (OPT aside)
		maxLength int
	}{
		// 200 A records are about 3,300 bytes: over UDP, the client
		// gets what fits and TC, and retries over TCP.
		{"udp plain", "udp", query(many, dns.TypeA), true, -1, 0, dns.MinMsgSize},
		{"udp edns 4096", "udp", edns(query(many, dns.TypeA), 4096), true, -1, 0, maxUDPPayload},
		{"udp edns 100", "udp", edns(query(many, dns.TypeA), 100), true, -1, 0, dns.MinMsgSize},
		{"tcp", "tcp", query(many, dns.TypeA), false, 200, 0, dns.MaxMsgSize},
		// 8 SRV fit in 512 bytes but not their targets' addresses:
		// those are left out, without TC (RFC 2181 9).
		{"udp srv", "udp", query(wide, dns.TypeSRV), false, 8, -1, dns.MinMsgSize},
		{"udp srv edns", "udp", edns(query(wide, dns.TypeSRV), 1232), false, 8, 8, maxUDPPayload},
		{"tcp srv", "tcp", query(wide, dns.TypeSRV), false, 8, 8, dns.MaxMsgSize},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &dns.Client{Net: tt.network, Timeout: 2 * time.Second, UDPSize: dns.MaxMsgSize}
			r, _, err := c.Exchange(tt.q, addr)
			if err != nil {
				t.Fatal(err)
			}
			r.Compress = true // as the server packed it
			b, err := r.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > tt.maxLength {
				t.Errorf("reply of %d bytes, more than %d", len(b), tt.maxLength)
			}
			if r.Truncated != tt.tc {
				t.Errorf("TC %v, want %v", r.Truncated, tt.tc)
			}
			extras := len(r.Extra)
			if r.IsEdns0() != nil {
				extras--
			}
			if opt := r.IsEdns0(); (opt != nil) != (tt.q.IsEdns0() != nil) || (opt != nil && opt.UDPSize() != maxUDPPayload) {
				t.Errorf("reply OPT %v for query OPT %v", opt, tt.q.IsEdns0())
			}
			check := func(what string, got, want, all int) {
				if (want >= 0 && got != want) || (want < 0 && (got >= all || got == 0)) {
					t.Errorf("%d %s, want %d (-1: some but not all %d)", got, what, want, all)
				}
			}
			all := 200
			if tt.q.Question[0].Qtype == dns.TypeSRV {
				all = 8
			}
			check("answers", len(r.Answer), tt.answers, all)
			check("extras", extras, tt.extras, 8)
		})
	}
	if st := s.Stats(); st.Truncated != 3 {
		t.Errorf("%d replies counted as truncated, want 3", st.Truncated)
	}
}

func TestEDNS(t *testing.T) {
	snap := serverSnapshot()
	_, addr := startServer(t, Options{}, &snap)
	q := query("web.shop.svc.clusterset.local.", dns.TypeA)
	q.SetEdns0(1232, false)
	r := exchange(t, "udp", addr, q)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 || r.IsEdns0() == nil {
		t.Errorf("EDNS query: %v", r)
	}
	q.IsEdns0().SetVersion(1)
	r = exchange(t, "udp", addr, q)
	if r.Rcode != dns.RcodeBadVers || len(r.Answer) != 0 || r.IsEdns0() == nil {
		t.Errorf("EDNS version 1: got %v, want BADVERS with an OPT", r)
	}
}

// rawExchange sends b as one datagram and returns the reply, or nil if
// none comes within wait.
func rawExchange(t *testing.T, addr string, b []byte, wait time.Duration) *dns.Msg {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, dns.MaxMsgSize)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return r
}

func pack(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFormErr(t *testing.T) {
	snap := serverSnapshot()
	s, addr := startServer(t, Options{}, &snap)
	none := &dns.Msg{MsgHdr: dns.MsgHdr{Id: 7}}
	two := query("web.shop.svc.clusterset.local.", dns.TypeA)
	two.Question = append(two.Question, dns.Question{Name: "db.shop.svc.clusterset.local.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	update := query("clusterset.local.", dns.TypeSOA)
	update.Opcode = dns.OpcodeUpdate
	notify := query("clusterset.local.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	for _, tt := range []struct {
		name  string
		m     *dns.Msg
		rcode int
	}{
		{"no question", none, dns.RcodeFormatError},
		{"two questions", two, dns.RcodeFormatError},
		{"update", update, dns.RcodeNotImplemented},
		{"notify", notify, dns.RcodeNotImplemented},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Over the network, dns.Server's accept function refuses the
			// first three before the handler sees them; the handler
			// refuses them too when it is given them some other way.
			r := rawExchange(t, addr, pack(t, tt.m), 2*time.Second)
			if r == nil || r.Rcode != tt.rcode || r.Id != tt.m.Id {
				t.Errorf("over UDP: %v, want %s", r, dns.RcodeToString[tt.rcode])
			}
			rec := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
			s.ServeDNS(rec, tt.m)
			if len(rec.msgs) != 1 || rec.msgs[0].Rcode != tt.rcode {
				t.Errorf("handler: %v, want %s", rec.msgs, dns.RcodeToString[tt.rcode])
			}
		})
	}
	if st := s.Stats(); st.FormErr != 4 || st.NotImp != 4 {
		t.Errorf("stats %+v, want 4 FORMERR and 4 NOTIMP", st)
	}
}

func TestMalformedAndOversized(t *testing.T) {
	snap := serverSnapshot()
	s, addr := startServer(t, Options{}, &snap)
	good := pack(t, query("web.shop.svc.clusterset.local.", dns.TypeA))
	resp := query("web.shop.svc.clusterset.local.", dns.TypeA)
	resp.Response = true
	// A header promising a question that is not there: miekg/dns reads
	// it as a message cut short, so the handler gets no question, and
	// answers FORMERR.
	noQuestion := slices.Clone(good[:12])
	for _, tt := range []struct {
		name  string
		b     []byte
		reply bool // a FORMERR reply
	}{
		{"empty", []byte{}, false},
		{"short", []byte{1, 2, 3}, false},
		{"header only", noQuestion, true},
		{"cut question", good[:len(good)-3], true},
		// QR set: what is not a query gets no reply.
		{"garbage", slices.Repeat([]byte{0xff}, 40), false},
		{"a response", pack(t, resp), false},
		{"oversized", append(slices.Clone(good), make([]byte, 8000)...), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			wait := 2 * time.Second
			if !tt.reply {
				wait = 100 * time.Millisecond
			}
			r := rawExchange(t, addr, tt.b, wait)
			if (r != nil) != tt.reply || (r != nil && r.Rcode != dns.RcodeFormatError) {
				t.Errorf("reply %v, want one: %v (FORMERR)", r, tt.reply)
			}
		})
	}
	// Over TCP: a frame longer than any query closes the connection;
	// garbage in a frame gets nothing; neither stops the server.
	for i, frame := range [][]byte{make([]byte, maxQuerySize+1), slices.Repeat([]byte{0xff}, 40)} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		out := binary.BigEndian.AppendUint16(nil, uint16(len(frame)))
		if _, err := c.Write(append(out, frame...)); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err := io.Copy(io.Discard, c); n != 0 || isTimeout(err) {
				t.Errorf("after an oversized frame: %d bytes, %v; want the connection closed", n, err)
			}
		}
		c.Close()
	}
	// The server still answers, over both.
	for _, network := range []string{"udp", "tcp"} {
		r := exchange(t, network, addr, query("web.shop.svc.clusterset.local.", dns.TypeA))
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
			t.Errorf("%s after the bad packets: %v", network, r)
		}
	}
	eventually(t, "the bad packets are counted", func() bool {
		st := s.Stats()
		return st.Oversized == 2 && st.Malformed == 6
	})
	if st := s.Stats(); st.Queries != 3 || st.Answers != 2 || st.FormErr != 1 || st.Panics != 0 {
		t.Errorf("stats %+v: the bad packets counted as queries", st)
	}
}

func TestUpdate(t *testing.T) {
	s, addr := startServer(t, Options{}, nil)
	name := "web.shop.svc.clusterset.local."
	if r := exchange(t, "udp", addr, query(name, dns.TypeA)); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("before the first snapshot: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	snap := testSnapshot()
	s.Update(snap)
	if r := exchange(t, "udp", addr, query(name, dns.TypeA)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Errorf("after: %v", r)
	}
	// cluster b goes down: its instance leaves the service's answer,
	// but still answers by name.
	snap.Alive["b"] = false
	s.Update(snap)
	if r := exchange(t, "udp", addr, query(name, dns.TypeA)); !slices.Equal(render(r.Answer), []string{"web.shop.svc.clusterset.local. 5 IN A 242.0.128.1"}) {
		t.Errorf("b down: %v", r.Answer)
	}
	if r := exchange(t, "udp", addr, query("b."+name, dns.TypeA)); len(r.Answer) != 1 {
		t.Errorf("b down, b by name: %v", r.Answer)
	}
	s.Update(catalog.Snapshot{})
	if r := exchange(t, "udp", addr, query(name, dns.TypeA)); r.Rcode != dns.RcodeNameError {
		t.Errorf("empty catalog: %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}
}

func TestConcurrentQueriesAndUpdates(t *testing.T) {
	// Replies share the index's records and pack them concurrently while
	// updates replace the index: the race detector watches.
	snap := serverSnapshot()
	s, addr := startServer(t, Options{}, &snap)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			snap.Generation = uint64(i)
			s.Update(snap)
		}
	})
	names := []string{"web.shop.svc.clusterset.local.", "_http._tcp.wide.big.svc.clusterset.local.", "many.big.svc.clusterset.local."}
	var qwg sync.WaitGroup
	for g := range 8 {
		qwg.Go(func() {
			network := []string{"udp", "tcp"}[g%2]
			c := &dns.Client{Net: network, Timeout: 2 * time.Second}
			for i := range 50 {
				q := query(names[i%len(names)], []uint16{dns.TypeA, dns.TypeSRV}[i%2])
				q.SetEdns0(1232, false)
				r, _, err := c.Exchange(q, addr)
				if err != nil {
					t.Error(err)
					return
				}
				if r.Rcode != dns.RcodeSuccess {
					t.Errorf("%v: %s", q.Question, dns.RcodeToString[r.Rcode])
				}
			}
		})
	}
	qwg.Wait()
	cancel()
	wg.Wait()
}

// serverGoroutines are the stacks of goroutines running the server's or
// miekg/dns's code.
func serverGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/miekg/dns.") || strings.Contains(g, "dnsserver.(*") {
			out = append(out, g)
		}
	}
	return out
}

func TestLifecycle(t *testing.T) {
	before := runtime.NumGoroutine()
	snap := serverSnapshot()
	s, err := New(Options{Logger: testLogger(t), MaxTCPConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	s.Update(snap)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.ListenAndServe(ctx, "127.0.0.1:0") }()
	addr := waitAddr(t, s, errc)
	for _, network := range []string{"udp", "tcp"} {
		exchange(t, network, addr, query("web.shop.svc.clusterset.local.", dns.TypeA))
	}
	// Left open when the server stops: an idle connection, one in the
	// middle of a frame, and one waiting for a slot beyond MaxTCPConns.
	var conns []net.Conn
	for _, b := range [][]byte{nil, {0, 100, 1, 2}, nil} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(b)
		conns = append(conns, c)
	}
	time.Sleep(50 * time.Millisecond) // let the server take them up
	if n := len(serverGoroutines()); n == 0 {
		t.Fatal("no server goroutine found: the leak check would see nothing")
	}

	cancel()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("ListenAndServe: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ListenAndServe did not return after its context ended")
	}
	if a := s.Addrs(); len(a) != 0 {
		t.Errorf("still listed as serving on %v", a)
	}
	// The connections were closed by the server.
	for i, c := range conns[:2] {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Errorf("connection %d still open: %v", i, err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := serverGoroutines()
		if len(left) == 0 && runtime.NumGoroutine() <= before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines (%d before); the server's:\n%s", runtime.NumGoroutine(), before, strings.Join(left, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Both sockets were released: the same port binds again.
	pc, ln, err := listen(context.Background(), addr)
	if err != nil {
		t.Fatalf("the port is still taken: %v", err)
	}
	pc.Close()
	ln.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestServeErrors(t *testing.T) {
	s, err := New(Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(context.Background(), nil, nil); !errors.Is(err, errNoListener) {
		t.Errorf("Serve(nil, nil) = %v", err)
	}
	for _, addr := range []string{"nonsense", "127.0.0.1:99999", "192.0.2.1:0"} {
		err := s.ListenAndServe(context.Background(), addr)
		if err == nil || !strings.HasPrefix(err.Error(), "dnsserver: ") {
			t.Errorf("ListenAndServe(%q) = %v", addr, err)
		}
	}
	// A port taken for TCP is an error naming it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := s.ListenAndServe(context.Background(), ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "tcp") {
		t.Errorf("ListenAndServe on a taken port = %v", err)
	}
}

func TestOptions(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts Options
		err  string // "" for none
		zone string
	}{
		{"defaults", Options{}, "", "clusterset.local."},
		{"zone normalized", Options{Zone: "Mesh.Example"}, "", "mesh.example."},
		{"bad zone", Options{Zone: "a..b"}, "zone", ""},
		{"TTL not whole seconds", Options{TTL: 1500 * time.Millisecond}, "TTL", ""},
		{"TTL negative", Options{TTL: -time.Second}, "TTL", ""},
		{"negative TTL too short", Options{NegativeTTL: time.Millisecond}, "negative TTL", ""},
		{"IPv6 name server", Options{NameServerAddrs: []netip.Addr{ip("fd00::53")}}, "IPv4", ""},
		{"negative MaxTCPConns", Options{MaxTCPConns: -1}, "MaxTCPConns", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.opts)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Errorf("error %v, want one about %s", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.cfg.zone != tt.zone || s.cfg.ttl != 5 || s.cfg.negTTL != 5 || s.opts.MaxTCPConns != 256 || s.cfg.ns != "ns.dns."+tt.zone {
				t.Errorf("config %+v, options %+v", s.cfg, s.opts)
			}
		})
	}
}

func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := newLimitListener(inner, 1)
	defer l.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first := <-accepted
	select {
	case <-accepted:
		t.Fatal("a second connection was accepted beyond the limit")
	case <-time.After(100 * time.Millisecond):
	}
	first.Close()
	first.Close() // twice gives back one slot, not two
	second := <-accepted
	if second == nil {
		t.Fatal("the second connection was not accepted after the first closed")
	}
	// Close unblocks an Accept waiting for a slot.
	l.Close()
	if _, ok := <-accepted; ok {
		t.Error("accepted after Close")
	}
	second.Close()
}

// recorder is a dns.ResponseWriter that keeps what is written.
type recorder struct {
	remote net.Addr
	msgs   []*dns.Msg
}

func (r *recorder) LocalAddr() net.Addr  { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error {
	r.msgs = append(r.msgs, m)
	return nil
}
func (r *recorder) Write(b []byte) (int, error) {
	return 0, errors.New("recorder: raw writes unsupported")
}
func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}

var _ dns.ResponseWriter = (*recorder)(nil)
