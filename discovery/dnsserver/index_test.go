package dnsserver

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/catalog"
)

var testConfig = indexConfig{zone: DefaultZone, ttl: 5, negTTL: 7, ns: "ns.dns." + DefaultZone,
	nsAddrs: []netip.Addr{netip.MustParseAddr("242.0.0.53")}}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// testSnapshot is a mesh of three clusters, c dead, exporting:
//   - shop/web from a (2 ready), b (1 ready) and c (dead), named ports
//     http and grpc;
//   - shop/db from a with nothing ready;
//   - shop/dns from a, a UDP port;
//   - data/kafka, headless, from a (three endpoints, one without a
//     hostname) and b (one, not ready) and c (dead);
//   - entries that cannot be named in DNS.
func testSnapshot() catalog.Snapshot {
	http := catalog.Port{Name: "http", Protocol: "TCP", Port: 80}
	return catalog.Snapshot{
		Generation: 42,
		Self:       "a",
		Alive:      map[string]bool{"a": true, "b": true, "c": false},
		Services: []catalog.ClusterService{
			{Cluster: "a", Service: catalog.Service{Namespace: "data", Name: "kafka", Headless: true, Ready: 3,
				Ports: []catalog.Port{{Name: "broker", Protocol: "TCP", Port: 9092}},
				Endpoints: []catalog.Endpoint{
					{Hostname: "kafka-1", Addr: ip("242.0.1.11")},
					{Hostname: "kafka-0", Addr: ip("242.0.1.10")},
					{Addr: ip("242.0.1.12")},
				}}},
			{Cluster: "b", Service: catalog.Service{Namespace: "data", Name: "kafka", Headless: true, Ready: 0,
				Ports:     []catalog.Port{{Name: "broker", Protocol: "TCP", Port: 9092}},
				Endpoints: []catalog.Endpoint{{Hostname: "kafka-0", Addr: ip("242.1.1.10")}}}},
			{Cluster: "c", Service: catalog.Service{Namespace: "data", Name: "kafka", Headless: true, Ready: 1,
				Ports:     []catalog.Port{{Name: "broker", Protocol: "TCP", Port: 9092}},
				Endpoints: []catalog.Endpoint{{Hostname: "kafka-0", Addr: ip("242.2.1.10")}}}},
			{Cluster: "a", Service: catalog.Service{Namespace: "shop", Name: "db", Addr: ip("242.0.128.2"), Ready: 0,
				Ports: []catalog.Port{{Name: "pg", Protocol: "TCP", Port: 5432}}}},
			{Cluster: "a", Service: catalog.Service{Namespace: "shop", Name: "dns", Addr: ip("242.0.128.3"), Ready: 1,
				Ports: []catalog.Port{{Name: "dns", Protocol: "UDP", Port: 53}, {Protocol: "TCP", Port: 53}}}},
			{Cluster: "a", Service: catalog.Service{Namespace: "shop", Name: "web", Addr: ip("242.0.128.1"), Ready: 2,
				Ports: []catalog.Port{http, {Name: "grpc", Protocol: "TCP", Port: 9090}}}},
			{Cluster: "b", Service: catalog.Service{Namespace: "shop", Name: "web", Addr: ip("242.1.128.1"), Ready: 1,
				Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 8080}}}},
			{Cluster: "c", Service: catalog.Service{Namespace: "shop", Name: "web", Addr: ip("242.2.128.1"), Ready: 3,
				Ports: []catalog.Port{http}}},
			{Cluster: "a", Service: catalog.Service{Namespace: "Bad_NS", Name: "x", Addr: ip("242.0.128.9"), Ready: 1}},
		},
	}
}

// render writes records as one line each, their fields separated by
// single spaces.
func render(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

const soaLine = "clusterset.local. 7 IN SOA ns.dns.clusterset.local. hostmaster.clusterset.local. 42 7200 1800 86400 7"

func TestLookup(t *testing.T) {
	ix := buildIndex(testSnapshot(), testConfig)
	nx := []string{soaLine}
	for _, tt := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string
		ns     []string
		extra  []string
	}{
		// A service: every ready instance of a live cluster, sorted.
		{name: "web.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{
			"web.shop.svc.clusterset.local. 5 IN A 242.0.128.1",
			"web.shop.svc.clusterset.local. 5 IN A 242.1.128.1",
		}},
		{name: "WEB.Shop.SVC.ClusterSet.LOCAL.", qtype: dns.TypeA, answer: []string{
			"web.shop.svc.clusterset.local. 5 IN A 242.0.128.1",
			"web.shop.svc.clusterset.local. 5 IN A 242.1.128.1",
		}},
		{name: "web.shop.svc.clusterset.local", qtype: dns.TypeA, answer: []string{
			"web.shop.svc.clusterset.local. 5 IN A 242.0.128.1",
			"web.shop.svc.clusterset.local. 5 IN A 242.1.128.1",
		}},
		{name: "web.shop.svc.clusterset.local.", qtype: dns.TypeAAAA, ns: nx},
		{name: "web.shop.svc.clusterset.local.", qtype: dns.TypeTXT, ns: nx},
		// Nothing ready: the name exists, without addresses.
		{name: "db.shop.svc.clusterset.local.", qtype: dns.TypeA, ns: nx},
		// One cluster's instance, ready or not, alive or not.
		{name: "a.db.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"a.db.shop.svc.clusterset.local. 5 IN A 242.0.128.2"}},
		{name: "b.web.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"b.web.shop.svc.clusterset.local. 5 IN A 242.1.128.1"}},
		{name: "c.web.shop.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"c.web.shop.svc.clusterset.local. 5 IN A 242.2.128.1"}},
		{name: "d.web.shop.svc.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		{name: "a.web.shop.svc.clusterset.local.", qtype: dns.TypeAAAA, ns: nx},
		// SRV: one per serving instance with the port, targets' A in
		// the additional section.
		{name: "_http._tcp.web.shop.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
			"_http._tcp.web.shop.svc.clusterset.local. 5 IN SRV 0 50 80 a.web.shop.svc.clusterset.local.",
			"_http._tcp.web.shop.svc.clusterset.local. 5 IN SRV 0 50 8080 b.web.shop.svc.clusterset.local.",
		}, extra: []string{
			"a.web.shop.svc.clusterset.local. 5 IN A 242.0.128.1",
			"b.web.shop.svc.clusterset.local. 5 IN A 242.1.128.1",
		}},
		{name: "_grpc._tcp.web.shop.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
			"_grpc._tcp.web.shop.svc.clusterset.local. 5 IN SRV 0 100 9090 a.web.shop.svc.clusterset.local.",
		}, extra: []string{"a.web.shop.svc.clusterset.local. 5 IN A 242.0.128.1"}},
		{name: "_dns._udp.dns.shop.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
			"_dns._udp.dns.shop.svc.clusterset.local. 5 IN SRV 0 100 53 a.dns.shop.svc.clusterset.local.",
		}, extra: []string{"a.dns.shop.svc.clusterset.local. 5 IN A 242.0.128.3"}},
		{name: "_dns._tcp.dns.shop.svc.clusterset.local.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError, ns: nx},
		{name: "_http._udp.web.shop.svc.clusterset.local.", qtype: dns.TypeSRV, rcode: dns.RcodeNameError, ns: nx},
		{name: "_http._tcp.web.shop.svc.clusterset.local.", qtype: dns.TypeA, ns: nx},
		{name: "_tcp.web.shop.svc.clusterset.local.", qtype: dns.TypeSRV, ns: nx},
		{name: "_pg._tcp.db.shop.svc.clusterset.local.", qtype: dns.TypeSRV, ns: nx},
		{name: "web.shop.svc.clusterset.local.", qtype: dns.TypeSRV, ns: nx},
		// Headless: endpoints of the serving instances; per cluster;
		// per hostname.
		{name: "kafka.data.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{
			"kafka.data.svc.clusterset.local. 5 IN A 242.0.1.10",
			"kafka.data.svc.clusterset.local. 5 IN A 242.0.1.11",
			"kafka.data.svc.clusterset.local. 5 IN A 242.0.1.12",
		}},
		{name: "a.kafka.data.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{
			"a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.10",
			"a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.11",
			"a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.12",
		}},
		{name: "b.kafka.data.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"b.kafka.data.svc.clusterset.local. 5 IN A 242.1.1.10"}},
		{name: "kafka-1.a.kafka.data.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"kafka-1.a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.11"}},
		{name: "kafka-0.c.kafka.data.svc.clusterset.local.", qtype: dns.TypeA, answer: []string{"kafka-0.c.kafka.data.svc.clusterset.local. 5 IN A 242.2.1.10"}},
		{name: "kafka-2.a.kafka.data.svc.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		{name: "_broker._tcp.kafka.data.svc.clusterset.local.", qtype: dns.TypeSRV, answer: []string{
			"_broker._tcp.kafka.data.svc.clusterset.local. 5 IN SRV 0 100 9092 a.kafka.data.svc.clusterset.local.",
		}, extra: []string{
			"a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.10",
			"a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.11",
			"a.kafka.data.svc.clusterset.local. 5 IN A 242.0.1.12",
		}},
		// Empty non-terminals and the apex.
		{name: "shop.svc.clusterset.local.", qtype: dns.TypeA, ns: nx},
		{name: "svc.clusterset.local.", qtype: dns.TypeA, ns: nx},
		{name: "clusterset.local.", qtype: dns.TypeA, ns: nx},
		{name: "clusterset.local.", qtype: dns.TypeSOA, answer: []string{soaLine}},
		{name: "clusterset.local.", qtype: dns.TypeNS, answer: []string{"clusterset.local. 5 IN NS ns.dns.clusterset.local."},
			extra: []string{"ns.dns.clusterset.local. 5 IN A 242.0.0.53"}},
		{name: "ns.dns.clusterset.local.", qtype: dns.TypeA, answer: []string{"ns.dns.clusterset.local. 5 IN A 242.0.0.53"}},
		{name: "dns.clusterset.local.", qtype: dns.TypeA, ns: nx},
		{name: "svc.clusterset.local.", qtype: dns.TypeSOA, ns: nx},
		{name: "clusterset.local.", qtype: dns.TypeANY, answer: []string{soaLine, "clusterset.local. 5 IN NS ns.dns.clusterset.local."}},
		// What does not exist.
		{name: "other.shop.svc.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		{name: "web.other.svc.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		{name: "web.shop.pod.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		{name: "x.bad_ns.svc.clusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		{name: `web\.shop.svc.clusterset.local.`, qtype: dns.TypeA, rcode: dns.RcodeNameError, ns: nx},
		// Outside the zone.
		{name: "web.shop.svc.cluster.local.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "xclusterset.local.", qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: `web.shop.svc.clusterset\.local.`, qtype: dns.TypeA, rcode: dns.RcodeRefused},
		{name: "local.", qtype: dns.TypeSOA, rcode: dns.RcodeRefused},
		{name: ".", qtype: dns.TypeNS, rcode: dns.RcodeRefused},
	} {
		t.Run(tt.name+"/"+dns.TypeToString[tt.qtype], func(t *testing.T) {
			res := ix.lookup(tt.name, tt.qtype)
			if res.rcode != tt.rcode {
				t.Errorf("rcode %s, want %s", dns.RcodeToString[res.rcode], dns.RcodeToString[tt.rcode])
			}
			for _, sec := range []struct {
				name      string
				got, want []string
			}{{"answer", render(res.answer), tt.answer}, {"authority", render(res.ns), tt.ns}, {"additional", render(res.extra), tt.extra}} {
				if !slices.Equal(sec.got, sec.want) {
					t.Errorf("%s:\n got  %q\n want %q", sec.name, sec.got, sec.want)
				}
			}
		})
	}
	if len(ix.skipped) != 1 || !strings.Contains(ix.skipped[0], "Bad_NS") {
		t.Errorf("skipped %q, want the one entry of namespace Bad_NS", ix.skipped)
	}
}

func TestIndexSlicesHaveNoSpareCapacity(t *testing.T) {
	// Responses append to what the index gives them: the index's slices
	// must make append copy, or concurrent replies would write into
	// each other's records.
	ix := buildIndex(testSnapshot(), testConfig)
	check := func(what string, rrs []dns.RR) {
		if cap(rrs) != len(rrs) {
			t.Errorf("%s: len %d, cap %d", what, len(rrs), cap(rrs))
		}
	}
	for rel, n := range ix.names {
		check(rel+" A", n.a)
		check(rel+" SRV", n.srv)
		check(rel+" SRV extra", n.srvExtra)
	}
	check("SOA", ix.soa)
	check("NS", ix.ns)
	check("NS glue", ix.nsGlue)
}

func TestIndexOptions(t *testing.T) {
	snap := catalog.Snapshot{Alive: map[string]bool{"a": true}, Services: []catalog.ClusterService{
		{Cluster: "a", Service: catalog.Service{Namespace: "ns", Name: "svc", Addr: ip("242.0.128.1"), Ready: 1}},
	}}
	for _, tt := range []struct {
		name  string
		cfg   indexConfig
		qname string
		want  string
	}{
		{"another zone", indexConfig{zone: "mesh.example.", ttl: 30, negTTL: 60, ns: "ns.dns.mesh.example."},
			"SVC.ns.svc.mesh.example.", "svc.ns.svc.mesh.example. 30 IN A 242.0.128.1"},
		{"root zone", indexConfig{zone: ".", ttl: 1, negTTL: 1, ns: "ns.dns."},
			"svc.ns.svc.", "svc.ns.svc. 1 IN A 242.0.128.1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ix := buildIndex(snap, tt.cfg)
			res := ix.lookup(tt.qname, dns.TypeA)
			if got := render(res.answer); len(got) != 1 || got[0] != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			res = ix.lookup("nothing."+tt.cfg.zone, dns.TypeA)
			soa := res.ns[0].(*dns.SOA)
			if res.rcode != dns.RcodeNameError || soa.Minttl != tt.cfg.negTTL || soa.Hdr.Ttl != tt.cfg.negTTL {
				t.Errorf("negative answer %s %v", dns.RcodeToString[res.rcode], res.ns)
			}
		})
	}
}

func TestIndexLongNames(t *testing.T) {
	// Names longer than DNS carries (255 octets) are left out, and said
	// to be: a whole instance if its own name is too long, else only an
	// endpoint's hostname.
	l63 := strings.Repeat("x", 63)
	cfg := indexConfig{zone: strings.Repeat("z", 60) + ".example.", ttl: 5, negTTL: 5, ns: "ns.example."}
	snap := catalog.Snapshot{Alive: map[string]bool{l63: true, "a": true}, Services: []catalog.ClusterService{
		{Cluster: l63, Service: catalog.Service{Namespace: l63, Name: l63, Addr: ip("242.0.128.1"), Ready: 1}},
		{Cluster: "a", Service: catalog.Service{Namespace: l63, Name: l63, Headless: true, Ready: 1,
			Endpoints: []catalog.Endpoint{{Hostname: l63, Addr: ip("242.0.1.1")}}}},
	}}
	ix := buildIndex(snap, cfg)
	if len(ix.skipped) != 2 || ix.services != 1 {
		t.Errorf("skipped %q, %d services indexed", ix.skipped, ix.services)
	}
	for rel := range ix.names {
		if fq := cfg.fqdn(rel); len(fq) > 254 {
			t.Errorf("name %s is %d long", fq, len(fq))
		}
	}
	res := ix.lookup(l63+"."+l63+".svc."+cfg.zone, dns.TypeA)
	if got := reRender(res.answer); !slices.Equal(got, []string{"A 242.0.1.1"}) {
		t.Errorf("the service's answer is %q", got)
	}
}

// TestLookupAgainstReference checks the index against a slow, obviously
// correct reading of the rules on random meshes: it parses the question
// and scans the snapshot.
func TestLookupAgainstReference(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	clusters := []string{"a", "b", "c"}
	names := []string{"x", "y", "z"}
	for round := range 200 {
		snap := catalog.Snapshot{Alive: map[string]bool{}}
		for _, c := range clusters {
			snap.Alive[c] = rng.IntN(3) > 0
		}
		for _, ns := range names[:2] {
			for _, svc := range names {
				for ci, c := range clusters {
					if rng.IntN(2) == 0 {
						continue
					}
					s := catalog.Service{Namespace: ns, Name: svc, Ready: rng.IntN(3), Headless: rng.IntN(3) == 0}
					if s.Headless {
						for e := range rng.IntN(4) {
							ep := catalog.Endpoint{Addr: netip.AddrFrom4([4]byte{242, byte(ci), byte(rng.IntN(3)), byte(1 + e)})}
							if rng.IntN(3) > 0 {
								ep.Hostname = names[rng.IntN(len(names))]
							}
							s.Endpoints = append(s.Endpoints, ep)
						}
					} else {
						s.Addr = netip.AddrFrom4([4]byte{242, byte(ci), 128, byte(1 + rng.IntN(3))})
					}
					for range rng.IntN(3) {
						s.Ports = append(s.Ports, catalog.Port{Name: names[rng.IntN(len(names))],
							Protocol: []string{"TCP", "UDP"}[rng.IntN(2)], Port: uint16(1 + rng.IntN(3))})
					}
					snap.Services = append(snap.Services, catalog.ClusterService{Cluster: c, Service: s})
				}
			}
		}
		ix := buildIndex(snap, testConfig)
		// Every name of the right shape over the labels in use, and some
		// of the wrong shape.
		var qnames []string
		for _, ns := range names {
			qnames = append(qnames, ns+".svc")
			for _, svc := range names {
				base := svc + "." + ns + ".svc"
				qnames = append(qnames, base, "_tcp."+base, "_udp."+base)
				for _, p := range names {
					qnames = append(qnames, "_"+p+"._tcp."+base, "_"+p+"._udp."+base)
				}
				for _, c := range append(clusters, "d") {
					qnames = append(qnames, c+"."+base)
					for _, h := range names {
						qnames = append(qnames, h+"."+c+"."+base)
					}
				}
			}
		}
		qnames = append(qnames, "", "svc", "pod", "x.y.pod")
		for _, q := range qnames {
			for _, qtype := range []uint16{dns.TypeA, dns.TypeSRV} {
				got := ix.lookup(testConfig.fqdn(q), qtype)
				wantRcode, want := reference(snap, q, qtype)
				gotAnswer := reRender(got.answer)
				if got.rcode != wantRcode || !slices.Equal(gotAnswer, want) {
					t.Fatalf("round %d: %s %s: got %s %q, want %s %q\nsnapshot %+v", round, q, dns.TypeToString[qtype],
						dns.RcodeToString[got.rcode], gotAnswer, dns.RcodeToString[wantRcode], want, snap)
				}
				if wantRcode == dns.RcodeNameError || len(want) == 0 {
					if len(got.ns) != 1 || got.ns[0].Header().Rrtype != dns.TypeSOA {
						t.Fatalf("round %d: %s: negative answer without the SOA: %v", round, q, got.ns)
					}
				}
			}
		}
	}
}

// reRender is an answer as the reference writes it: "A addr" or "SRV
// port target", sorted.
func reRender(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, "A "+rr.A.String())
		case *dns.SRV:
			out = append(out, fmt.Sprintf("SRV %d %s", rr.Port, strings.TrimSuffix(rr.Target, "."+testConfig.zone)))
		}
	}
	slices.Sort(out)
	return out
}

// reference answers a question (relative to the zone) by reading the
// rules straight off the snapshot.
func reference(snap catalog.Snapshot, q string, qtype uint16) (int, []string) {
	labels := strings.Split(q, ".")
	if q == "" {
		labels = nil
	}
	exists := false
	set := map[string]bool{}
	add := func(s string) { set[s] = true }
	addrsOf := func(s catalog.ClusterService) []netip.Addr {
		if !s.Headless {
			return []netip.Addr{s.Addr}
		}
		var out []netip.Addr
		for _, e := range s.Endpoints {
			out = append(out, e.Addr)
		}
		return out
	}
	serving := func(s catalog.ClusterService) bool { return s.Ready > 0 && snap.Alive[s.Cluster] }
	n := len(labels)
	switch {
	case n == 0: // the apex: SOA and NS only
		return dns.RcodeSuccess, nil
	case labels[n-1] != "svc":
		return dns.RcodeNameError, nil
	}
	for _, s := range snap.Services {
		switch n {
		case 1: // svc
			exists = true
		case 2: // <ns>.svc
			exists = exists || labels[0] == s.Namespace
		case 3: // <svc>.<ns>.svc
			if labels[0] == s.Name && labels[1] == s.Namespace {
				exists = true
				if serving(s) && qtype == dns.TypeA {
					for _, a := range addrsOf(s) {
						add("A " + a.String())
					}
				}
			}
		case 4: // <cluster>.<svc>.<ns>.svc or _<proto>.<svc>.<ns>.svc
			if labels[1] != s.Name || labels[2] != s.Namespace {
				continue
			}
			if labels[0] == s.Cluster {
				exists = true
				if qtype == dns.TypeA {
					for _, a := range addrsOf(s) {
						add("A " + a.String())
					}
				}
			}
			for _, p := range s.Ports {
				if p.Name != "" && labels[0] == "_"+strings.ToLower(p.Protocol) {
					exists = true
				}
			}
		case 5: // <host>.<cluster>.<svc>.<ns>.svc or _<port>._<proto>.<svc>.<ns>.svc
			if labels[2] != s.Name || labels[3] != s.Namespace {
				continue
			}
			if labels[1] == s.Cluster && s.Headless {
				for _, e := range s.Endpoints {
					if e.Hostname != "" && e.Hostname == labels[0] {
						exists = true
						if qtype == dns.TypeA {
							add("A " + e.Addr.String())
						}
					}
				}
			}
			for _, p := range s.Ports {
				if p.Name != "" && labels[0] == "_"+p.Name && labels[1] == "_"+strings.ToLower(p.Protocol) {
					exists = true
					if serving(s) && qtype == dns.TypeSRV {
						add(fmt.Sprintf("SRV %d %s.%s.%s.svc", p.Port, s.Cluster, s.Name, s.Namespace))
					}
				}
			}
		}
	}
	if n == 1 {
		exists = true
	}
	if !exists {
		return dns.RcodeNameError, nil
	}
	var out []string
	for s := range set {
		out = append(out, s)
	}
	slices.Sort(out)
	return dns.RcodeSuccess, out
}
