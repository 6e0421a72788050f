// Package gossip spreads the catalog between gateways with
// hashicorp/memberlist: encrypted gossip, failure detection, and full-state
// push/pull as anti-entropy.
//
// Every record a gateway learns that is news to it, it passes on
// (epidemic broadcast): memberlist retransmits a broadcast only a few times
// from the node that queued it, which alone would leave most of a large
// mesh to hear of a change only at the next push/pull. Records too large
// for a UDP packet go to a few members over TCP instead. Members that
// memberlist declares dead are marked down in the catalog; their records
// stay until their owner tombstones them.
package gossip

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/gateway/ratelog"
)

// Profiles of timing. WAN is the default: sites are tens of milliseconds
// apart and links lose packets.
const (
	ProfileWAN   = "wan"
	ProfileLocal = "local" // one host (tests): fast failure detection on loopback
)

// Options configure gossip. Zero values take the documented defaults.
type Options struct {
	Catalog *catalog.Catalog
	// Name is the member's name: its cluster's.
	Name string
	// Bind is the address to listen on, "ip:port"; default "0.0.0.0:7946".
	Bind string
	// Advertise is the address others reach this member at, if not Bind.
	Advertise string
	// Keys encrypt gossip (AES-128/192/256: 16, 24 or 32 bytes); the
	// first is the one messages are sent with, all are tried on receipt.
	// At least one is required.
	Keys [][]byte
	// Profile picks the timing; default ProfileWAN.
	Profile string
	// Transport replaces memberlist's UDP/TCP transport (tests and
	// benchmarks that lose packets on purpose).
	Transport memberlist.Transport
	// Tune adjusts memberlist's configuration last (benchmarks).
	Tune   func(*memberlist.Config)
	Logger *slog.Logger
}

// Gossip is a running member.
type Gossip struct {
	opts Options
	ml   *memberlist.Memberlist
	q    *memberlist.TransmitLimitedQueue
	kr   *memberlist.Keyring
	log  *slog.Logger
	lim  *ratelog.Limiter

	repairs    chan repair
	stop       chan struct{} // closed at shutdown
	repairDone chan struct{} // closed when repairLoop returns
	stopOnce   sync.Once

	mu    sync.Mutex // guards stats
	stats Stats
	// members counts the members alive (joins less leaves, this one
	// included), read by the queue's retransmit limit; memberlist calls
	// the events before Create returns, so they cannot ask it.
	members atomic.Int32
}

// Stats counts what gossip saw.
type Stats struct {
	Received   uint64 `json:"received"`   // records received
	Passed     uint64 `json:"passed"`     // records passed on (news)
	Malformed  uint64 `json:"malformed"`  // messages that were not records
	Rejected   uint64 `json:"rejected"`   // records the catalog refused
	Large      uint64 `json:"large"`      // records sent over TCP for their size
	WrongKey   uint64 `json:"wrongKey"`   // packets no key could decrypt
	Suspicions uint64 `json:"suspicions"` // members suspected of failure
	Dead       uint64 `json:"dead"`       // members declared dead (or gone)
	// Repairs counts anti-entropy exchanges that found records to send,
	// RepairBytes what they sent.
	Repairs     uint64 `json:"repairs"`
	RepairBytes uint64 `json:"repairBytes"`
}

// Message types on the wire: one byte, then the payload.
const (
	msgRecord = 'r' // one encoded record
	msgBatch  = 'b' // records of an anti-entropy repair (JSON batch)
)

// Start joins nothing yet: it creates the member and its listeners. Join
// with seeds afterwards.
func Start(opts Options) (_ *Gossip, err error) {
	if opts.Catalog == nil {
		return nil, errors.New("gossip: no catalog")
	}
	if opts.Name == "" {
		opts.Name = opts.Catalog.Self()
	}
	if opts.Bind == "" {
		opts.Bind = "0.0.0.0:7946"
	}
	if opts.Profile == "" {
		opts.Profile = ProfileWAN
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if len(opts.Keys) == 0 {
		return nil, errors.New("gossip: no encryption key: gossip between sites must be encrypted")
	}
	for i, k := range opts.Keys {
		if l := len(k); l != 16 && l != 24 && l != 32 {
			return nil, fmt.Errorf("gossip: key %d is %d bytes; want 16, 24 or 32", i, l)
		}
	}
	kr, err := memberlist.NewKeyring(opts.Keys, opts.Keys[0])
	if err != nil {
		return nil, fmt.Errorf("gossip: keyring: %w", err)
	}
	g := &Gossip{opts: opts, kr: kr, log: opts.Logger.With("component", "gossip"), lim: ratelog.New(time.Minute, 3, time.Now)}
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	g.q = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(max(g.members.Load(), 1)) },
		RetransmitMult: cfg.RetransmitMult,
	}
	g.repairs, g.stop, g.repairDone = make(chan repair, 64), make(chan struct{}), make(chan struct{})
	if g.ml, err = memberlist.Create(cfg); err != nil {
		return nil, fmt.Errorf("gossip: start on %s: %w", opts.Bind, err)
	}
	go g.repairLoop()
	return g, nil
}

// config is memberlist's configuration for the profile.
func (g *Gossip) config() (*memberlist.Config, error) {
	o := g.opts
	var cfg *memberlist.Config
	switch o.Profile {
	case ProfileWAN:
		cfg = memberlist.DefaultWANConfig()
		// memberlist's WAN defaults (a 5s probe interval, suspicion for
		// six of them) take about a minute to declare a gateway dead,
		// for links across continents. Gateways sit tens of milliseconds
		// apart, and a dead one black-holes its cluster's traffic until
		// peers stop routing to it: probe every 300ms and suspect for
		// 3×log10(N) probe intervals (1.8 s for 100 gateways). Loss is
		// survived by asking five others to probe (one lost packet fails a
		// direct probe, all five indirect ones failing together is rare)
		// and by the TCP fallback, not by waiting long.
		cfg.ProbeInterval = 300 * time.Millisecond
		cfg.ProbeTimeout = 150 * time.Millisecond
		cfg.IndirectChecks = 5
		cfg.SuspicionMult = 3
		cfg.GossipInterval = 100 * time.Millisecond
		cfg.GossipNodes = 4
		// Anti-entropy exchanges digests, a few dozen bytes per cluster,
		// so it can run often: it is what repairs a broadcast that died
		// out (one pushed while members were still joining, say).
		// memberlist stretches the interval in larger meshes (×3 at 100).
		cfg.PushPullInterval = 10 * time.Second
		cfg.TCPTimeout = 5 * time.Second
	case ProfileLocal:
		cfg = memberlist.DefaultLocalConfig()
		cfg.ProbeInterval = 200 * time.Millisecond
		cfg.ProbeTimeout = 100 * time.Millisecond
		cfg.GossipInterval = 50 * time.Millisecond
		cfg.PushPullInterval = 5 * time.Second
	default:
		return nil, fmt.Errorf("gossip: unknown profile %q (want %s or %s)", o.Profile, ProfileWAN, ProfileLocal)
	}
	host, port, err := splitHostPort(o.Bind)
	if err != nil {
		return nil, fmt.Errorf("gossip: bind %q: %w", o.Bind, err)
	}
	cfg.Name = o.Name
	cfg.BindAddr, cfg.BindPort = host, port
	cfg.AdvertisePort = port
	if o.Advertise != "" {
		ah, ap, err := splitHostPort(o.Advertise)
		if err != nil {
			return nil, fmt.Errorf("gossip: advertise %q: %w", o.Advertise, err)
		}
		cfg.AdvertiseAddr, cfg.AdvertisePort = ah, ap
	}
	cfg.Keyring = g.kr
	cfg.SecretKey = nil
	cfg.GossipVerifyIncoming, cfg.GossipVerifyOutgoing = true, true
	// No compression: records are mostly keys and signatures, which do
	// not compress, and compressing every packet delays probes (measured:
	// 100 members in one process with compression suspected each other
	// under a 150 ms probe timeout; without, none did).
	cfg.EnableCompression = false
	cfg.Delegate = (*delegate)(g)
	cfg.Events = (*events)(g)
	cfg.Logger = log.New(&logSink{g: g}, "", 0)
	if o.Transport != nil {
		cfg.Transport = o.Transport
	}
	if o.Tune != nil {
		o.Tune(cfg)
	}
	return cfg, nil
}

func splitHostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("port %q", p)
	}
	return h, port, nil
}

// Join contacts the seeds ("host:port"); one answering is enough.
func (g *Gossip) Join(seeds []string) (int, error) {
	n, err := g.ml.Join(seeds)
	if err != nil && n == 0 {
		return 0, fmt.Errorf("gossip: join %s: %w", strings.Join(seeds, ", "), err)
	}
	// The state exchanged on joining is not passed on (see receive), so
	// this member's own records go out now, as news.
	for _, r := range g.opts.Catalog.Records() {
		if r.Owner == g.opts.Name {
			g.broadcast(r, true)
		}
	}
	return n, nil
}

// Publish passes this cluster's new records on.
func (g *Gossip) Publish(rs []catalog.Record) {
	for _, r := range rs {
		g.broadcast(r, true)
	}
}

// pushFanout is how many members a record that is news goes to at once,
// before gossip rounds repeat it: each member passes news on once, so a
// change reaches N members in about log(N)/log(pushFanout+1) hops, not
// log(N) gossip intervals.
const pushFanout = 3

// broadcast passes a record on: pushed at once to a few members (when
// push), and queued to ride the next gossip rounds, which repeat it a few
// times and so carry it past lost packets. Records too large for a packet
// go over TCP to a few members instead.
func (g *Gossip) broadcast(r catalog.Record, push bool) {
	b, err := r.Encode()
	if err != nil {
		return
	}
	msg := append([]byte{msgRecord}, b...)
	// memberlist compounds messages into packets of UDPBufferSize (1400
	// for the WAN profile) with a few bytes of framing each.
	if len(msg) > maxPacketMsg {
		g.count(func(s *Stats) { s.Large++ })
		g.sendTo(3, func(n *memberlist.Node) error { return g.ml.SendReliable(n, msg) })
		return
	}
	if push {
		g.sendTo(pushFanout, func(n *memberlist.Node) error { return g.ml.SendBestEffort(n, msg) })
	}
	g.q.QueueBroadcast(&broadcast{key: r.Key.String(), msg: msg})
}

// maxPacketMsg is the largest message sent in a UDP packet.
const maxPacketMsg = 1200

// sendTo sends to up to n random live members other than this one.
func (g *Gossip) sendTo(n int, send func(*memberlist.Node) error) {
	members := g.ml.Members()
	rand.Shuffle(len(members), func(i, j int) { members[i], members[j] = members[j], members[i] })
	sent := 0
	for _, m := range members {
		if sent == n {
			return
		}
		if m.Name == g.opts.Name || m.State != memberlist.StateAlive {
			continue
		}
		if err := send(m); err != nil {
			g.warn("send", "gossip send failed", "member", m.Name, "err", err)
			continue
		}
		sent++
	}
}

// Members returns the members memberlist knows, alive or not.
func (g *Gossip) Members() []Member {
	var out []Member
	for _, n := range g.ml.Members() {
		out = append(out, Member{Name: n.Name, Addr: n.Address(), State: stateName(n.State)})
	}
	return out
}

// Member is one gateway as gossip sees it.
type Member struct {
	Name  string `json:"name"`
	Addr  string `json:"addr"`
	State string `json:"state"`
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	}
	return "unknown"
}

// Addr is where this member listens.
func (g *Gossip) Addr() string {
	n := g.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// SetKeys makes the keyring hold exactly keys, the first primary, without
// a pause: for a rotation, add the new key everywhere, then make it first
// everywhere, then remove the old one.
func (g *Gossip) SetKeys(keys [][]byte) error {
	if len(keys) == 0 {
		return errors.New("gossip: no encryption key")
	}
	for _, k := range keys {
		if err := g.kr.AddKey(k); err != nil {
			return fmt.Errorf("gossip: add key: %w", err)
		}
	}
	if err := g.kr.UseKey(keys[0]); err != nil {
		return fmt.Errorf("gossip: use key: %w", err)
	}
	for _, k := range g.kr.GetKeys() {
		keep := false
		for _, w := range keys {
			keep = keep || bytes.Equal(k, w)
		}
		if !keep {
			if err := g.kr.RemoveKey(k); err != nil {
				return fmt.Errorf("gossip: remove key: %w", err)
			}
		}
	}
	return nil
}

// Stats returns the counters.
func (g *Gossip) Stats() Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stats
}

func (g *Gossip) count(f func(*Stats)) {
	g.mu.Lock()
	f(&g.stats)
	g.mu.Unlock()
}

// Leave tells the others this member goes, then stops it.
func (g *Gossip) Leave(timeout time.Duration) error {
	err := g.ml.Leave(timeout)
	return errors.Join(err, g.Shutdown())
}

// Shutdown stops the member without telling anyone (as a crash would).
func (g *Gossip) Shutdown() error {
	err := g.ml.Shutdown()
	g.stopOnce.Do(func() { close(g.stop) })
	<-g.repairDone
	return err
}

// How a record arrived, which decides how it is passed on.
type via int

const (
	viaMessage   via = iota // a broadcast: news is pushed on at once
	viaState                // periodic anti-entropy: news is queued for gossip
	viaJoinState            // the state of the member joined: not passed on
)

// receive handles one record from the wire. A member that joins learns
// the whole catalog from the one it joined through; the others already
// have it, so it is not passed on. News found in a periodic exchange means
// some member missed a broadcast, which others may have missed too: it
// rides the gossip rounds, without the immediate push of a broadcast.
func (g *Gossip) receive(b []byte, how via) {
	r, err := catalog.Decode(b)
	if err != nil {
		g.count(func(s *Stats) { s.Malformed++ })
		g.warn("malformed", "gossip message refused", "err", err)
		return
	}
	g.count(func(s *Stats) { s.Received++ })
	pass, err := g.opts.Catalog.Merge(r)
	if err != nil {
		g.count(func(s *Stats) { s.Rejected++ })
		g.warn("rejected:"+r.Owner, "record refused", "key", r.Key.String(), "err", err)
		return
	}
	if pass == nil {
		return
	}
	g.count(func(s *Stats) { s.Passed++ })
	switch {
	case pass.Owner == g.opts.Name:
		// A previous life's record superseded: everyone must hear.
		g.broadcast(*pass, true)
	case how == viaMessage:
		g.broadcast(*pass, true)
	case how == viaState:
		g.broadcast(*pass, false)
	}
}

// warn logs, at most a few times a minute per kind: a member that keeps
// sending junk must not flood the log.
func (g *Gossip) warn(kind, msg string, args ...any) {
	if ok, suppressed := g.lim.Allow(kind); ok {
		if suppressed > 0 {
			args = append(args, "suppressed", suppressed)
		}
		g.log.Warn(msg, args...)
	}
}

// delegate is memberlist's view of the gateway.
type delegate Gossip

func (d *delegate) NodeMeta(limit int) []byte { return nil }

func (d *delegate) NotifyMsg(b []byte) {
	g := (*Gossip)(d)
	switch {
	case len(b) > 0 && b[0] == msgRecord:
		g.receive(bytes.Clone(b[1:]), viaMessage)
	case len(b) > 0 && b[0] == msgBatch:
		var bt batch
		if err := json.Unmarshal(b[1:], &bt); err != nil {
			g.count(func(s *Stats) { s.Malformed++ })
			g.warn("malformed", "anti-entropy batch refused", "err", err)
			return
		}
		how := viaState
		if bt.Join {
			how = viaJoinState
		}
		for _, r := range bt.Records {
			g.receive(r, how)
		}
	default:
		g.count(func(s *Stats) { s.Malformed++ })
		g.warn("malformed", "gossip message of unknown type refused", "bytes", len(b))
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.q.GetBroadcasts(overhead, limit)
}

// LocalState is this member's side of anti-entropy: not its records but
// the digest of them (a sum per owner, see catalog.OwnerSum), a few dozen
// bytes per cluster however many services it exports.
func (d *delegate) LocalState(join bool) []byte {
	g := (*Gossip)(d)
	b, err := json.Marshal(state{From: g.opts.Name, Digest: g.opts.Catalog.Digest()})
	if err != nil {
		g.warn("state", "cannot encode the catalog's digest for anti-entropy", "err", err)
		return nil
	}
	return b
}

// state is what members exchange in push/pull.
type state struct {
	From   string         `json:"from"`
	Digest catalog.Digest `json:"digest"`
}

// MergeRemoteState compares the other side's digest with this catalog's,
// and sends it the records of every owner whose sums differ. The other
// side does the same, so after one exchange both hold the newer of every
// record either had.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	g := (*Gossip)(d)
	var st state
	if err := json.Unmarshal(buf, &st); err != nil || st.From == "" {
		g.count(func(s *Stats) { s.Malformed++ })
		g.warn("malformed-state", "anti-entropy state refused", "err", err)
		return
	}
	mine := g.opts.Catalog.Digest()
	var owners []string
	for o, sum := range mine {
		if st.Digest[o] != sum {
			owners = append(owners, o)
		}
	}
	if len(owners) == 0 {
		return
	}
	g.count(func(s *Stats) { s.Repairs++ })
	select {
	case g.repairs <- repair{to: st.From, owners: owners, join: join}:
	default:
		g.warn("repair-queue", "anti-entropy repair dropped: too many pending", "to", st.From)
	}
}

// repair is a batch of records to send to a member that lacks them.
type repair struct {
	to     string
	owners []string
	join   bool
}

// repairLoop sends repairs, off memberlist's push/pull path: a large
// catalog must not hold up the exchange (or the join) that found the
// difference.
func (g *Gossip) repairLoop() {
	defer close(g.repairDone)
	for {
		select {
		case <-g.stop:
			return
		case r := <-g.repairs:
			if err := g.sendRepair(r); err != nil {
				g.warn("repair:"+r.to, "anti-entropy repair failed", "to", r.to, "err", err)
			}
		}
	}
}

// maxBatch bounds a batch message; a catalog larger than that goes in
// several.
const maxBatch = 1 << 20

func (g *Gossip) sendRepair(r repair) error {
	var to *memberlist.Node
	for _, n := range g.ml.Members() {
		if n.Name == r.to {
			to = n
		}
	}
	if to == nil {
		return errors.New("no longer a member")
	}
	var raws []json.RawMessage
	size := 0
	flush := func() error {
		if len(raws) == 0 {
			return nil
		}
		b, err := json.Marshal(batch{Join: r.join, Records: raws})
		if err != nil {
			return err
		}
		raws, size = nil, 0
		g.count(func(s *Stats) { s.RepairBytes += uint64(len(b)) })
		return g.ml.SendReliable(to, append([]byte{msgBatch}, b...))
	}
	for _, rec := range g.opts.Catalog.RecordsOf(r.owners...) {
		b, err := rec.Encode()
		if err != nil {
			continue
		}
		if size+len(b) > maxBatch {
			if err := flush(); err != nil {
				return err
			}
		}
		raws = append(raws, b)
		size += len(b)
	}
	return flush()
}

// batch carries records of an anti-entropy repair.
type batch struct {
	Join    bool              `json:"join,omitempty"`
	Records []json.RawMessage `json:"records"`
}

// events is memberlist's news of members.
type events Gossip

func (e *events) NotifyJoin(n *memberlist.Node) {
	g := (*Gossip)(e)
	g.members.Add(1)
	g.opts.Catalog.SetAlive(n.Name, true)
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	g := (*Gossip)(e)
	g.members.Add(-1)
	g.count(func(s *Stats) { s.Dead++ })
	g.opts.Catalog.SetAlive(n.Name, false)
}

func (e *events) NotifyUpdate(n *memberlist.Node) {}

// broadcast is a queued record; a newer record of the same key replaces it.
type broadcast struct {
	key string
	msg []byte
}

func (b *broadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*broadcast)
	return ok && ob.key == b.key
}
func (b *broadcast) Name() string { return b.key }
func (b *broadcast) Message() []byte {
	return b.msg
}
func (b *broadcast) Finished() {}

// logSink turns memberlist's log lines into counters and rate-limited
// structured logs.
type logSink struct{ g *Gossip }

func (s *logSink) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	g := s.g
	switch {
	case strings.Contains(line, "decrypt"), strings.Contains(line, "No installed keys"):
		g.count(func(st *Stats) { st.WrongKey++ })
		g.warn("wrongkey", "gossip from a member without this mesh's key refused", "memberlist", line)
	case strings.Contains(line, "Suspect ") && strings.Contains(line, "has failed"):
		g.count(func(st *Stats) { st.Suspicions++ })
		g.warn("suspect", "member suspected of failure", "memberlist", line)
	case strings.Contains(line, "[ERR]"), strings.Contains(line, "[WARN]"):
		g.warn(firstWords(line), "memberlist", "line", line)
	default:
		if g.log.Enabled(context.Background(), slog.LevelDebug) {
			g.log.Debug("memberlist", "line", line)
		}
	}
	return len(p), nil
}

// firstWords keys the rate limiter by the kind of message, not its
// variable parts.
func firstWords(s string) string {
	f := strings.Fields(s)
	if len(f) > 4 {
		f = f[:4]
	}
	return strings.Join(f, " ")
}

var _ io.Writer = (*logSink)(nil)
