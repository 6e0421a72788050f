// Package dnsserver answers the Kubernetes Multi-Cluster Services names,
// <svc>.<ns>.svc.clusterset.local and the names below it, from the
// catalog: it is how a pod in any cluster finds an exported service in
// all of them. Each cluster's CoreDNS forwards the zone to its gateway,
// where this server runs (deploy/coredns).
//
// The server owns one thing, an immutable index built from a catalog
// snapshot (index.go, a pure function), swapped atomically on every
// change; queries are lock-free map lookups whose cost does not grow with
// the number of services. The network side is github.com/miekg/dns over
// UDP and TCP, hardened against what the network may send: malformed and
// oversized packets are counted and dropped (or answered FORMERR), TCP
// connections are bounded, replies are truncated to what the client can
// take.
package dnsserver

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/gateway/ratelog"
)

// DefaultZone is the Multi-Cluster Services API's zone.
const DefaultZone = "clusterset.local."

// Limits on packets. A query is one question and a few EDNS options: 4096
// bytes is far more than any needs, and anything larger is not a query.
// Replies over UDP stay within 1232 bytes, the size DNS Flag Day 2020
// settled on to avoid IP fragmentation, whatever the client advertises;
// larger ones are truncated and the client retries over TCP.
const (
	maxQuerySize  = 4096
	maxUDPPayload = 1232
)

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	// Zone is the zone served; default DefaultZone. Names outside it
	// are refused: the server is no resolver.
	Zone string
	// TTL of answers, in whole seconds; default 5s. Short, because
	// readiness and clusters' liveness change within seconds and a
	// cached answer cannot be recalled.
	TTL time.Duration
	// NegativeTTL is how long resolvers may cache that a name or type
	// does not exist (the SOA's minimum, RFC 2308), in whole seconds;
	// default 5s, so that a service exported a moment later resolves a
	// moment later.
	NegativeTTL time.Duration
	// NameServer is the name in the zone's NS and SOA records; default
	// "ns.dns." followed by the zone.
	NameServer string
	// NameServerAddrs are the A records of NameServer when it lies in
	// the zone (the gateway's DNS addresses), returned as glue with the
	// NS records. IPv4 only, as the mesh is. Default none: the name
	// exists without addresses.
	NameServerAddrs []netip.Addr
	// MaxTCPConns bounds the TCP connections served at once; default
	// 256. Beyond it new connections wait in the kernel's backlog rather
	// than use up file descriptors and goroutines.
	MaxTCPConns int
	// Logger receives the server's logs, tagged component=dnsserver;
	// default slog.Default(). Anything logged per packet is rate
	// limited.
	Logger *slog.Logger
	// Now is the clock of the log's rate limiter and of index build
	// timings; default time.Now.
	Now func() time.Time
}

// config validates the options, fills in the defaults and returns what
// indexes are built with.
func (o *Options) config() (indexConfig, error) {
	if o.Zone == "" {
		o.Zone = DefaultZone
	}
	if _, ok := dns.IsDomainName(o.Zone); !ok {
		return indexConfig{}, fmt.Errorf("dnsserver: zone %q is not a domain name", o.Zone)
	}
	o.Zone = strings.ToLower(dns.Fqdn(o.Zone))
	if o.NameServer == "" {
		o.NameServer = "ns.dns." + o.Zone
		if o.Zone == "." {
			o.NameServer = "ns.dns."
		}
	}
	if _, ok := dns.IsDomainName(o.NameServer); !ok {
		return indexConfig{}, fmt.Errorf("dnsserver: name server %q is not a domain name", o.NameServer)
	}
	o.NameServer = strings.ToLower(dns.Fqdn(o.NameServer))
	for _, a := range o.NameServerAddrs {
		if !a.Is4() {
			return indexConfig{}, fmt.Errorf("dnsserver: name server address %s is not IPv4", a)
		}
	}
	if o.TTL == 0 {
		o.TTL = 5 * time.Second
	}
	if o.NegativeTTL == 0 {
		o.NegativeTTL = 5 * time.Second
	}
	ttl, err := seconds("TTL", o.TTL)
	if err != nil {
		return indexConfig{}, err
	}
	negTTL, err := seconds("negative TTL", o.NegativeTTL)
	if err != nil {
		return indexConfig{}, err
	}
	if o.MaxTCPConns == 0 {
		o.MaxTCPConns = 256
	}
	if o.MaxTCPConns < 0 {
		return indexConfig{}, fmt.Errorf("dnsserver: MaxTCPConns %d is negative", o.MaxTCPConns)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return indexConfig{zone: o.Zone, ttl: ttl, negTTL: negTTL, ns: o.NameServer, nsAddrs: o.NameServerAddrs}, nil
}

// seconds is a TTL as DNS carries it: whole seconds, at least one, at most
// 2^31-1 (RFC 2181).
func seconds(what string, d time.Duration) (uint32, error) {
	if d < time.Second || d%time.Second != 0 || d/time.Second > 1<<31-1 {
		return 0, fmt.Errorf("dnsserver: %s %s is not a whole number of seconds from 1s to 2^31-1s", what, d)
	}
	return uint32(d / time.Second), nil
}

// Server answers the zone from the last snapshot it was given. Its
// methods are safe for concurrent use.
type Server struct {
	opts Options
	cfg  indexConfig
	log  *slog.Logger
	lim  *ratelog.Limiter

	// idx is the current index; nil until the first Update.
	idx atomic.Pointer[index]
	st  counters

	updateMu sync.Mutex // serializes Update, so the last call wins
	// last is the last snapshot, and vips the range of VIPs answered for
	// global services; guarded by updateMu.
	last catalog.Snapshot
	vips netip.Prefix

	mu     sync.Mutex            // guards addrs and nextID
	addrs  map[uint64][]net.Addr // by Serve call
	nextID uint64
}

// New makes a server. It answers SERVFAIL until the first Update: with no
// catalog yet, saying that a service does not exist would be a lie that
// resolvers cache.
func New(opts Options) (*Server, error) {
	cfg, err := opts.config()
	if err != nil {
		return nil, err
	}
	return &Server{
		opts: opts, cfg: cfg,
		log:   opts.Logger.With("component", "dnsserver"),
		lim:   ratelog.New(time.Minute, 5, opts.Now),
		addrs: map[uint64][]net.Addr{},
	}, nil
}

// Update makes the server answer from snap from now on. Queries being
// answered finish with the index they started with. Calls are serialized;
// the last one wins.
func (s *Server) Update(snap catalog.Snapshot) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	s.last = snap
	s.rebuild()
}

// SetVIPRange has the server answer a global service's name with its VIP
// when the VIP lies in p: where the gateway balances global services.
// The zero prefix answers the instances' addresses, as without global
// services.
func (s *Server) SetVIPRange(p netip.Prefix) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	if p == s.vips {
		return
	}
	s.vips = p
	if s.last.Generation != 0 || s.idx.Load() != nil {
		s.rebuild()
	}
}

// rebuild indexes the last snapshot; updateMu is held.
func (s *Server) rebuild() {
	snap := s.last
	start := s.opts.Now()
	cfg := s.cfg
	cfg.vips = s.vips
	ix := buildIndex(snap, cfg)
	s.idx.Store(ix)
	s.log.Debug("index rebuilt", "generation", snap.Generation, "services", ix.services,
		"names", len(ix.names), "took", s.opts.Now().Sub(start))
	if len(ix.skipped) > 0 {
		// The same bad entry stays in every snapshot until its owner
		// fixes it: limited like anything per packet.
		s.logLimited(slog.LevelWarn, "skipped", "catalog entries left out of DNS",
			"count", len(ix.skipped), "first", ix.skipped[0])
	}
}

// Stats counts what the server did, for metrics and status. Every query
// handled counts once in Queries and, a panic aside, once in exactly one
// of Answers, NXDomain, NoData, Refused, FormErr, NotImp or ServFail.
type Stats struct {
	Queries  uint64 `json:"queries"`  // every query that got an outcome below
	Answers  uint64 `json:"answers"`  // NOERROR with answers
	NXDomain uint64 `json:"nxdomain"` // names under the zone that do not exist
	NoData   uint64 `json:"nodata"`   // names that exist without the type asked
	Refused  uint64 `json:"refused"`  // names outside the zone, zone transfers, other classes
	FormErr  uint64 `json:"formerr"`  // not one question, records no query carries, unknown EDNS version
	NotImp   uint64 `json:"notimp"`   // opcodes other than QUERY
	ServFail uint64 `json:"servfail"` // no snapshot yet
	// Truncated counts UDP replies that lost answers to the client's size.
	Truncated uint64 `json:"truncated"`
	// Malformed counts packets that did not parse (answered FORMERR if
	// their header did, else dropped), and responses sent to the server
	// (dropped: answering them could loop or reflect). Neither counts in
	// Queries.
	Malformed uint64 `json:"malformed"`
	// Oversized counts packets dropped for being larger than any query
	// (4096 bytes); over TCP, their connection is closed.
	Oversized uint64 `json:"oversized"`
	// WriteErrors counts replies the socket refused (the client gone).
	WriteErrors uint64 `json:"writeErrors"`
	// Panics counts bugs: replies that failed while being built, and
	// were answered SERVFAIL instead of taking the gateway down.
	Panics uint64 `json:"panics"`
}

type counters struct {
	queries, answers, nxdomain, nodata, refused, formerr, notimp, servfail atomic.Uint64
	truncated, malformed, oversized, writeErrors, panics                   atomic.Uint64
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	c := &s.st
	return Stats{
		Queries: c.queries.Load(), Answers: c.answers.Load(), NXDomain: c.nxdomain.Load(), NoData: c.nodata.Load(),
		Refused: c.refused.Load(), FormErr: c.formerr.Load(), NotImp: c.notimp.Load(), ServFail: c.servfail.Load(),
		Truncated: c.truncated.Load(), Malformed: c.malformed.Load(), Oversized: c.oversized.Load(),
		WriteErrors: c.writeErrors.Load(), Panics: c.panics.Load(),
	}
}

// ServeDNS answers one query; it implements dns.Handler, so the server
// can also sit behind another dns.Server or mux.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	defer func() {
		// A bug in building a reply must not take the gateway down
		// with it: the query fails, the bug is counted and logged.
		if v := recover(); v != nil {
			s.st.panics.Add(1)
			s.logLimited(slog.LevelError, "panic", "panic answering a query", "panic", v, "stack", string(debug.Stack()))
			if r != nil {
				m := new(dns.Msg)
				m.SetRcode(r, dns.RcodeServerFailure)
				w.WriteMsg(m)
			}
		}
	}()
	_, tcp := w.RemoteAddr().(*net.TCPAddr)
	m := s.reply(r, tcp)
	if m == nil {
		return
	}
	if err := w.WriteMsg(m); err != nil {
		s.st.writeErrors.Add(1)
		s.logLimited(slog.LevelDebug, "write", "reply not sent", "client", w.RemoteAddr(), "err", err)
	}
}

// reply builds the reply to r, or nil if r gets none.
func (s *Server) reply(r *dns.Msg, tcp bool) *dns.Msg {
	if r == nil || r.Response {
		// Answering a response could loop between two servers, or
		// reflect traffic at whoever forged the source.
		s.st.malformed.Add(1)
		return nil
	}
	s.st.queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	reqOpt := r.IsEdns0()
	switch {
	case r.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
	case len(r.Question) != 1:
		m.Question = nil
		m.Rcode = dns.RcodeFormatError
	case reqOpt != nil && reqOpt.Version() != 0:
		m.Rcode = dns.RcodeBadVers
	default:
		s.answer(m, r.Question[0])
	}
	s.count(m)

	size := dns.MinMsgSize
	switch {
	case tcp:
		size = dns.MaxMsgSize
	case reqOpt != nil:
		size = min(max(int(reqOpt.UDPSize()), dns.MinMsgSize), maxUDPPayload)
	}
	if reqOpt != nil {
		opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		opt.SetUDPSize(maxUDPPayload)
		m.Extra = append(m.Extra, opt)
	}
	nAnswer, nNs := len(m.Answer), len(m.Ns)
	m.Truncate(size)
	if len(m.Answer) < nAnswer || len(m.Ns) < nNs {
		s.st.truncated.Add(1)
	} else {
		// Only additional records were left out: they are not
		// required (RFC 2181 9), the answer stands without a retry
		// over TCP.
		m.Truncated = false
	}
	return m
}

// answer fills in m's reply to q.
func (s *Server) answer(m *dns.Msg, q dns.Question) {
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		m.Rcode = dns.RcodeRefused
		return
	}
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		// Nothing needs the zone whole; at 10,000 services it is
		// large, and it would list every service to anyone asking.
		m.Rcode = dns.RcodeRefused
		return
	}
	ix := s.idx.Load()
	if ix == nil {
		m.Rcode = dns.RcodeServerFailure
		return
	}
	res := ix.lookup(q.Name, q.Qtype)
	m.Rcode = res.rcode
	if res.rcode == dns.RcodeRefused {
		return
	}
	m.Authoritative = true
	m.Answer, m.Ns = res.answer, res.ns
	if len(res.extra) > 0 {
		// A fresh slice: the OPT record is appended to it, and the
		// index's slices are shared.
		m.Extra = append(make([]dns.RR, 0, len(res.extra)+1), res.extra...)
	}
}

// count counts m's outcome.
func (s *Server) count(m *dns.Msg) {
	c := &s.st
	switch m.Rcode {
	case dns.RcodeSuccess:
		if len(m.Answer) > 0 {
			c.answers.Add(1)
		} else {
			c.nodata.Add(1)
		}
	case dns.RcodeNameError:
		c.nxdomain.Add(1)
	case dns.RcodeRefused:
		c.refused.Add(1)
	case dns.RcodeFormatError, dns.RcodeBadVers:
		c.formerr.Add(1)
	case dns.RcodeNotImplemented:
		c.notimp.Add(1)
	default:
		c.servfail.Add(1)
	}
}

// logLimited logs at most a few messages per key and minute, since its
// callers run per packet and the network decides how often.
func (s *Server) logLimited(level slog.Level, key, msg string, args ...any) {
	if !s.log.Enabled(context.Background(), level) {
		return
	}
	ok, suppressed := s.lim.Allow(key)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	s.log.Log(context.Background(), level, msg, args...)
}
