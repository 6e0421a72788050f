package dnsserver

import (
	"log/slog"
	"net"
	"testing"

	"github.com/miekg/dns"
)

// FuzzServeDNS gives the handler whatever parses as a DNS message, as
// dns.Server would, and checks that it neither panics nor writes a reply
// that does not pack, does not match the query, or exceeds what the
// transport carries.
func FuzzServeDNS(f *testing.F) {
	seed := func(name string, qtype uint16, edns bool) {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns {
			m.SetEdns0(4096, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, false)
		f.Add(b, true)
	}
	seed("web.shop.svc.clusterset.local.", dns.TypeA, false)
	seed("MANY.big.svc.clusterset.local.", dns.TypeA, false)
	seed("many.big.svc.clusterset.local.", dns.TypeA, true)
	seed("_http._tcp.wide.big.svc.clusterset.local.", dns.TypeSRV, false)
	seed("kafka-0.a.kafka.data.svc.clusterset.local.", dns.TypeA, true)
	seed("clusterset.local.", dns.TypeANY, true)
	seed("clusterset.local.", dns.TypeNS, false)
	seed("nothing.svc.clusterset.local.", dns.TypeAAAA, false)
	seed("example.com.", dns.TypeA, false)
	seed(`we\.b.shop.svc.clusterset.local.`, dns.TypeA, false)
	f.Add([]byte{}, false)
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}, false)

	// No logging: only (*T) methods may be used while fuzzing, and the
	// counters say what matters.
	s, err := New(Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	s.Update(serverSnapshot())
	udp := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}

	f.Fuzz(func(t *testing.T, b []byte, overTCP bool) {
		q := new(dns.Msg)
		if err := q.Unpack(b); err != nil {
			return // dns.Server drops it, or answers FORMERR itself
		}
		rec := &recorder{remote: udp}
		if overTCP {
			rec.remote = tcp
		}
		s.ServeDNS(rec, q)
		if st := s.Stats(); st.Panics != 0 {
			t.Fatalf("the handler panicked on %v", q)
		}
		if q.Response {
			if len(rec.msgs) != 0 {
				t.Fatalf("replied to a response: %v", rec.msgs)
			}
			return
		}
		if len(rec.msgs) != 1 {
			t.Fatalf("%d replies, want 1", len(rec.msgs))
		}
		r := rec.msgs[0]
		out, err := r.Pack()
		if err != nil {
			t.Fatalf("reply does not pack: %v\n%v", err, r)
		}
		limit := dns.MaxMsgSize
		if !overTCP {
			limit = dns.MinMsgSize
			if opt := q.IsEdns0(); opt != nil {
				limit = min(max(int(opt.UDPSize()), dns.MinMsgSize), maxUDPPayload)
			}
		}
		if len(out) > limit {
			t.Fatalf("reply of %d bytes over a limit of %d", len(out), limit)
		}
		if !r.Response || r.Id != q.Id {
			t.Fatalf("reply is not a response to the query: %v", r)
		}
		if len(q.Question) == 1 && q.Opcode == dns.OpcodeQuery && len(r.Question) == 1 && r.Question[0] != q.Question[0] {
			t.Fatalf("question %v answered as %v", q.Question[0], r.Question[0])
		}
		if r.Rcode == dns.RcodeSuccess {
			for _, rr := range append(append([]dns.RR{}, r.Answer...), r.Ns...) {
				if !dns.IsSubDomain(DefaultZone, rr.Header().Name) {
					t.Fatalf("answered %v from outside the zone", rr)
				}
			}
		}
	})
}
