package dnsserver

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/meshpolicy"
)

// indexConfig is what an index takes from the server's options.
type indexConfig struct {
	zone    string // lowercase and fully qualified
	ttl     uint32 // of answers, in seconds
	negTTL  uint32 // of negative answers (the SOA's minimum and TTL)
	ns      string // the name server's name, lowercase and fully qualified
	nsAddrs []netip.Addr
	// vips, when valid, is the VIP range: a global service's name
	// answers its VIP inside it, instead of its instances.
	vips netip.Prefix
}

// index is everything the server answers from. It is built once per
// snapshot and never changed afterwards, so that queries read it without
// locks while Update builds the next one. Every answer is precomputed:
// a query costs one map lookup, whatever the number of services.
//
// The record slices are shared by every response built from them: they
// are clipped (no spare capacity), so that appending to one, as truncation
// and EDNS do, copies it rather than writing into what others read.
type index struct {
	zone string
	// names are every name that exists in the zone, empty non-terminals
	// included, by their lowercase form relative to the zone without the
	// trailing dot ("" is the apex, "svc" holds the services).
	names  map[string]*node
	soa    []dns.RR
	ns     []dns.RR
	nsGlue []dns.RR
	// skipped says which catalog entries could not be named in DNS (names
	// that are not DNS labels, or too long together), for the log.
	skipped []string
	// services counts the cluster services indexed.
	services int
}

// node is the data of one name.
type node struct {
	a        []dns.RR
	srv      []dns.RR
	srvExtra []dns.RR // the A records of the SRV targets
}

// result is an index's answer to a question.
type result struct {
	rcode  int
	answer []dns.RR
	ns     []dns.RR
	extra  []dns.RR
}

// SOA timers: nothing transfers this zone, so they only need to be sane
// for tools that display them (CoreDNS's kubernetes plugin uses the same).
const (
	soaRefresh = 7200
	soaRetry   = 1800
	soaExpire  = 86400
)

// builder accumulates addresses and SRV targets per name before they
// become records.
type builder struct {
	cfg   indexConfig
	names map[string]*pending
}

type pending struct {
	addrs []netip.Addr
	srvs  []srvTarget
}

type srvTarget struct {
	rel  string // the target's name relative to the zone
	port uint16
}

// touch makes rel and every name above it exist: a name with data makes
// its ancestors empty non-terminals, which answer NODATA, not NXDOMAIN.
func (b *builder) touch(rel string) *pending {
	p := b.names[rel]
	if p != nil {
		return p
	}
	p = &pending{}
	b.names[rel] = p
	for r := rel; r != ""; {
		_, parent, _ := strings.Cut(r, ".")
		if _, ok := b.names[parent]; ok {
			break
		}
		b.names[parent] = &pending{}
		r = parent
	}
	return p
}

// fqdn is the absolute name of rel.
func (c indexConfig) fqdn(rel string) string {
	switch {
	case rel == "":
		return c.zone
	case c.zone == ".":
		return rel + "."
	}
	return rel + "." + c.zone
}

// fits says whether rel, made absolute, is a name DNS can carry: 255
// octets on the wire, 254 characters written out for names like ours that
// need no escapes.
func (c indexConfig) fits(rel string) bool {
	return len(c.fqdn(rel)) <= 254
}

// buildIndex makes the index of a snapshot. It is a pure function of its
// arguments.
//
// Per cluster service ns/svc of cluster c:
//   - <c>.<svc>.<ns>.svc answers the instance's address, or its endpoints
//     if it is headless, whatever its readiness and its cluster's state:
//     whoever names a cluster asks for that cluster;
//   - <host>.<c>.<svc>.<ns>.svc answers a headless endpoint by hostname;
//   - <svc>.<ns>.svc answers the same addresses, for the instances that
//     can serve: Ready > 0 and their cluster alive;
//   - _<port>._<proto>.<svc>.<ns>.svc has one SRV per such instance with
//     that named port, whose target is <c>.<svc>.<ns>.svc.
//
// Each instance answers as what it is: the MCS API settles a service that
// is headless in one cluster and not in another by the oldest export,
// which the catalog does not carry.
func buildIndex(snap catalog.Snapshot, cfg indexConfig) *index {
	b := &builder{cfg: cfg, names: map[string]*pending{}}
	b.touch("svc")
	ix := &index{zone: cfg.zone}
	if rel, ok := relative(cfg.zone, cfg.ns); ok && !strings.Contains(rel, `\`) {
		p := b.touch(rel)
		for _, a := range cfg.nsAddrs {
			if a.Is4() {
				p.addrs = append(p.addrs, a)
			}
		}
	}
	for _, cs := range snap.Services {
		if !validLabel(cs.Namespace) || !validLabel(cs.Name) || !validLabel(cs.Cluster) {
			ix.skipped = append(ix.skipped, fmt.Sprintf("%s/%s of cluster %q: not DNS labels", cs.Namespace, cs.Name, cs.Cluster))
			continue
		}
		svcRel := cs.Name + "." + cs.Namespace + ".svc"
		clusterRel := cs.Cluster + "." + svcRel
		if !cfg.fits(clusterRel) {
			ix.skipped = append(ix.skipped, fmt.Sprintf("%s/%s of cluster %s: name too long", cs.Namespace, cs.Name, cs.Cluster))
			continue
		}
		ix.services++
		svc := b.touch(svcRel)
		inst := b.touch(clusterRel)
		var addrs []netip.Addr
		if cs.Headless {
			for _, e := range cs.Endpoints {
				if !e.Addr.Is4() {
					continue
				}
				addrs = append(addrs, e.Addr)
				if e.Hostname == "" {
					continue
				}
				hostRel := e.Hostname + "." + clusterRel
				if !validLabel(e.Hostname) || !cfg.fits(hostRel) {
					ix.skipped = append(ix.skipped, fmt.Sprintf("%s/%s of cluster %s: endpoint hostname %q", cs.Namespace, cs.Name, cs.Cluster, e.Hostname))
					continue
				}
				host := b.touch(hostRel)
				host.addrs = append(host.addrs, e.Addr)
			}
		} else if cs.Addr.Is4() {
			addrs = append(addrs, cs.Addr)
		}
		inst.addrs = append(inst.addrs, addrs...)
		serving := cs.Serving() && snap.Alive[cs.Cluster]
		if serving {
			svc.addrs = append(svc.addrs, addrs...)
		}
		for _, p := range cs.Ports {
			proto := strings.ToLower(cmp.Or(p.Protocol, "TCP"))
			if p.Name == "" || p.Port == 0 || (proto != "tcp" && proto != "udp" && proto != "sctp") {
				continue
			}
			srvRel := "_" + p.Name + "._" + proto + "." + svcRel
			if !validLabel(p.Name) || !cfg.fits(srvRel) {
				ix.skipped = append(ix.skipped, fmt.Sprintf("%s/%s of cluster %s: port name %q", cs.Namespace, cs.Name, cs.Cluster, p.Name))
				continue
			}
			// The name exists as soon as some instance has the port,
			// serving or not: NODATA, not NXDOMAIN, while none serves.
			srv := b.touch(srvRel)
			if serving {
				srv.srvs = append(srv.srvs, srvTarget{rel: clusterRel, port: p.Port})
			}
		}
	}
	if cfg.vips.IsValid() {
		for _, g := range meshpolicy.Merge(snap.GlobalServices, nil).Services {
			svcRel := g.Name + "." + g.Namespace + ".svc"
			if !cfg.vips.Contains(g.VIP) || !validLabel(g.Namespace) || !validLabel(g.Name) || !cfg.fits(svcRel) {
				continue
			}
			// One address, balanced by the gateway, instead of the
			// instances': clients need no failover of their own.
			b.touch(svcRel).addrs = []netip.Addr{g.VIP}
		}
	}

	ix.names = make(map[string]*node, len(b.names))
	for rel, p := range b.names {
		n := &node{}
		if len(p.addrs) > 0 {
			n.a = aRecords(cfg.fqdn(rel), cfg.ttl, p.addrs)
		}
		ix.names[rel] = n
	}
	// SRV records last: their additional section is their targets' A
	// records, built above.
	for rel, p := range b.names {
		if len(p.srvs) == 0 {
			continue
		}
		slices.SortFunc(p.srvs, func(x, y srvTarget) int {
			return cmp.Or(cmp.Compare(x.rel, y.rel), cmp.Compare(x.port, y.port))
		})
		p.srvs = slices.Compact(p.srvs)
		// Equal weights at one priority share the load evenly (RFC
		// 2782); 100 split between them keeps the figure readable.
		weight := uint16(max(1, 100/len(p.srvs)))
		n := ix.names[rel]
		owner := cfg.fqdn(rel)
		var extra []dns.RR
		for i, t := range p.srvs {
			n.srv = append(n.srv, &dns.SRV{
				Hdr:      dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: cfg.ttl},
				Priority: 0, Weight: weight, Port: t.port, Target: cfg.fqdn(t.rel),
			})
			if i == 0 || p.srvs[i-1].rel != t.rel {
				extra = append(extra, ix.names[t.rel].a...)
			}
		}
		n.srv = slices.Clip(n.srv)
		n.srvExtra = slices.Clip(extra)
	}

	ix.soa = []dns.RR{&dns.SOA{
		Hdr: dns.RR_Header{Name: cfg.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: cfg.negTTL},
		Ns:  cfg.ns, Mbox: cfg.fqdn("hostmaster"),
		// Serials are 32 bits; nothing transfers the zone, so a
		// wrap is harmless.
		Serial:  uint32(snap.Generation),
		Refresh: soaRefresh, Retry: soaRetry, Expire: soaExpire, Minttl: cfg.negTTL,
	}}
	ix.ns = []dns.RR{&dns.NS{
		Hdr: dns.RR_Header{Name: cfg.zone, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: cfg.ttl},
		Ns:  cfg.ns,
	}}
	if rel, ok := relative(cfg.zone, cfg.ns); ok {
		if n := ix.names[rel]; n != nil {
			ix.nsGlue = n.a
		}
	}
	return ix
}

// aRecords are the A records of owner for addrs, sorted and without
// duplicates (an RRset is a set, RFC 2181).
func aRecords(owner string, ttl uint32, addrs []netip.Addr) []dns.RR {
	addrs = slices.Clone(addrs)
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	rrs := make([]dns.RR, len(addrs))
	for i, a := range addrs {
		rrs[i] = &dns.A{
			Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
			A:   a.AsSlice(),
		}
	}
	return rrs
}

// lookup answers a question for name, in any case, fully qualified or not.
func (ix *index) lookup(name string, qtype uint16) result {
	rel, ok := relative(ix.zone, name)
	if !ok {
		return result{rcode: dns.RcodeRefused}
	}
	n := ix.names[rel]
	if n == nil {
		return result{rcode: dns.RcodeNameError, ns: ix.soa}
	}
	var answer, extra []dns.RR
	switch qtype {
	case dns.TypeA:
		answer = n.a
	case dns.TypeSRV:
		answer, extra = n.srv, n.srvExtra
	case dns.TypeSOA:
		if rel == "" {
			answer = ix.soa
		}
	case dns.TypeNS:
		if rel == "" {
			answer, extra = ix.ns, ix.nsGlue
		}
	case dns.TypeANY:
		// Everything the name has; no additional section, which keeps
		// the answer as small as ANY can be (RFC 8482 allows less).
		answer = slices.Concat(n.a, n.srv)
		if rel == "" {
			answer = slices.Concat(ix.soa, ix.ns, answer)
		}
	}
	if len(answer) == 0 {
		return result{rcode: dns.RcodeSuccess, ns: ix.soa}
	}
	return result{rcode: dns.RcodeSuccess, answer: answer, extra: extra}
}

// relative returns name, lowercased, relative to zone without the
// trailing dot, and whether name lies in zone at all. zone is lowercase
// and fully qualified.
//
// Names that went through the wire have their special bytes escaped
// ("\.", "\DDD"); none of the index's names has any, so such a name only
// needs to be placed in or out of the zone, label by label, and comes
// back as something no index holds.
func relative(zone, name string) (string, bool) {
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	name = strings.ToLower(name)
	if strings.IndexByte(name, '\\') >= 0 {
		return name, dns.IsSubDomain(zone, name)
	}
	switch {
	case name == zone:
		return "", true
	case zone == ".":
		return name[:len(name)-1], true
	case len(name) > len(zone) && strings.HasSuffix(name, zone) && name[len(name)-len(zone)-1] == '.':
		return name[:len(name)-len(zone)-1], true
	}
	return "", false
}

// validLabel is a name the catalog allows for clusters, namespaces,
// services, ports and hostnames: a lowercase DNS label (RFC 1123).
func validLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}
