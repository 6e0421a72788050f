package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/catalog/catalogtest"
	"github.com/straitnet/strait/discovery/gossip"
)

func init() {
	register(Bench{
		Name: "gossip",
		Doc: "p99 time for a service change to reach every one of 100 gateways gossiping on loopback, " +
			"over links losing 5% of packets; also p50, the time until all see a crashed gateway down, and " +
			"false suspicions; against memberlist's default configuration carrying the change in node metadata",
		Flags: func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.Size, "members", 100, "gateways in the mesh")
			fs.IntVar(&c.Rounds, "changes", 50, "service changes timed")
			fs.BoolVar(&c.Quick, "quick", false, "skip the baseline on memberlist's WAN profile (its dead detection takes about a minute)")
		},
		Run: runGossip,
	})
}

// gossipLoss is the packet loss of every link in the benchmark.
const gossipLoss = 0.05

// spread is what one side of the benchmark measured.
type spread struct {
	converged time.Duration // from a cold start
	changes   []float64     // ms for each change to reach every member
	dead      []float64     // ms until every member saw a crashed one down
	// suspicions of live members (false ones) in window, from
	// convergence until the first crash.
	suspicions uint64
	window     time.Duration
	dropped    uint64
}

func runGossip(ctx context.Context, c Config) (Result, error) {
	n := c.Size
	if n == 0 {
		n = 100
	}
	if n < 3 {
		return Result{}, fmt.Errorf("bench gossip: %d members; want at least 3", n)
	}
	changes := max(c.Rounds, 1)
	c.logf("gossip: %d strait gateways (WAN profile), %d changes, %.0f%% loss", n, changes, gossipLoss*100)
	ours, err := measureStrait(ctx, c, n, changes)
	if err != nil {
		return Result{}, err
	}
	c.logf("gossip: %d memberlist nodes, default LAN configuration, change in node metadata", n)
	lan, err := measureMetadata(ctx, c, memberlist.DefaultLANConfig, n, changes)
	if err != nil {
		return Result{}, err
	}
	res := Result{
		Bench: "gossip", Value: percentile(ours.changes, 0.99), Unit: "ms",
		Baseline:      "memberlist default LAN config, change in node metadata (p99 ms)",
		BaselineValue: percentile(lan.changes, 0.99),
		Extra: map[string]any{
			"members": n, "changes": changes, "loss": gossipLoss, "crashes": crashes,
			"p50_ms": round(percentile(ours.changes, 0.50)), "dead_ms": median(ours.dead), "dead_max_ms": slices.Max(ours.dead),
			"false_suspicions": ours.suspicions, "suspicion_window_s": round(ours.window.Seconds()),
			"cold_start_converged_s": round(ours.converged.Seconds()),
			"baseline_p50_ms":        round(percentile(lan.changes, 0.50)), "baseline_dead_ms": median(lan.dead),
			"baseline_false_suspicions": lan.suspicions,
			"targets":                   "p99 < 500 ms; dead < 3000 ms; no false suspicion at 5% loss",
		},
	}
	if c.Quick {
		res.Extra["baseline_wan_dead_ms"] = "skipped (-quick)"
		return res, nil
	}
	c.logf("gossip: %d memberlist nodes, default WAN configuration: dead detection", n)
	wan, err := measureMetadata(ctx, c, memberlist.DefaultWANConfig, n, 0)
	if err != nil {
		return Result{}, err
	}
	res.Extra["baseline_wan_dead_ms"] = median(wan.dead)
	return res, nil
}

func gossipKey() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
}

// measureStrait runs n gateways' gossip as strait ships it (WAN profile,
// encrypted), then times changes and a crash.
func measureStrait(ctx context.Context, c Config, n, changes int) (spread, error) {
	m, err := catalogtest.NewMesh()
	if err != nil {
		return spread{}, err
	}
	key := gossipKey()
	quiet := slog.New(slog.DiscardHandler)
	type gw struct {
		name  string
		block netip.Prefix
		cat   *catalog.Catalog
		g     *gossip.Gossip
		tr    *gossip.Lossy
	}
	gws := make([]*gw, n)
	defer func() {
		for _, w := range gws {
			if w != nil && w.g != nil {
				w.g.Shutdown()
			}
		}
	}()
	for i := range n {
		w := &gw{name: fmt.Sprintf("cluster-%03d", i), block: catalogtest.Block(i)}
		if w.cat, err = m.Catalog(w.name, i); err != nil {
			return spread{}, err
		}
		if w.tr, err = gossip.NewLossy("127.0.0.1:0", 0); err != nil {
			return spread{}, err
		}
		w.g, err = gossip.Start(gossip.Options{Catalog: w.cat, Bind: "127.0.0.1:0", Keys: [][]byte{key}, Transport: w.tr, Logger: quiet})
		if err != nil {
			w.tr.Shutdown()
			return spread{}, err
		}
		gws[i] = w
		rs, err := w.cat.Publish(catalogtest.Cluster(w.block), nil)
		if err != nil {
			return spread{}, err
		}
		w.g.Publish(rs)
		if i > 0 {
			if _, err := w.g.Join([]string{gws[0].g.Addr()}); err != nil {
				return spread{}, err
			}
		}
	}
	start := time.Now()
	for _, w := range gws {
		w.tr.SetLoss(gossipLoss)
	}
	// Joining 100 members in a second is a storm no mesh sees in
	// practice: broadcasts die out among the few members some had heard
	// of yet, and anti-entropy repairs them within a few of its rounds.
	if err := waitAll(ctx, 3*time.Minute, len(gws), func(i int) bool { return len(gws[i].cat.Snapshot().Clusters) == n }); err != nil {
		return spread{}, fmt.Errorf("bench gossip: catalogs never converged: %w", err)
	}
	var out spread
	out.converged = time.Since(start)
	c.logf("gossip: %d catalogs converged in %v; watching for suspicions for %v", n, out.converged.Round(time.Millisecond), c.window())
	suspicions := func() uint64 {
		var s uint64
		for _, w := range gws {
			s += w.g.Stats().Suspicions
		}
		return s
	}
	before := suspicions()
	if err := sleep(ctx, c.window()); err != nil {
		return spread{}, err
	}
	for k := range changes {
		w := gws[(k*7+1)%n]
		addr := w.block.Addr().Next()
		svc := catalogtest.Service("bench", fmt.Sprintf("svc-%d", k), addr, 1)
		key := catalog.Key{Kind: catalog.KindService, Owner: w.name, Name: "bench/" + svc.Name}
		t0 := time.Now()
		rs, err := w.cat.Publish(catalogtest.Cluster(w.block), []catalog.Service{svc})
		if err != nil {
			return spread{}, err
		}
		w.g.Publish(rs)
		done, err := arrivals(ctx, 30*time.Second, len(gws), func(i int) (<-chan struct{}, bool) {
			ch := gws[i].cat.Changed()
			r, ok := gws[i].cat.Get(key)
			return ch, ok && !r.Deleted
		})
		if err != nil {
			return spread{}, fmt.Errorf("bench gossip: change %d: %w", k, err)
		}
		out.changes = append(out.changes, float64(done.Sub(t0).Microseconds())/1000)
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return spread{}, err
		}
	}
	out.suspicions = suspicions() - before
	out.window = time.Since(start) - out.converged
	// Crashes: no leave message, so every member must find out itself.
	alive := slices.Clone(gws)
	for range crashes {
		i := len(alive) / 2
		victim := alive[i]
		alive = slices.Delete(alive, i, i+1)
		t0 := time.Now()
		victim.g.Shutdown()
		done, err := arrivals(ctx, 2*time.Minute, len(alive), func(i int) (<-chan struct{}, bool) {
			ch := alive[i].cat.Changed()
			return ch, !alive[i].cat.Alive(victim.name)
		})
		if err != nil {
			return spread{}, fmt.Errorf("bench gossip: crash: %w", err)
		}
		out.dead = append(out.dead, float64(done.Sub(t0).Milliseconds()))
		if err := sleep(ctx, 2*time.Second); err != nil {
			return spread{}, err
		}
	}
	for _, w := range gws {
		out.dropped += w.tr.Dropped()
	}
	c.logf("gossip: strait p50 %.1f ms, p99 %.1f ms, dead %v ms, false suspicions %d in %v, packets lost %d",
		percentile(out.changes, 0.50), percentile(out.changes, 0.99), out.dead, out.suspicions, out.window.Round(time.Second), out.dropped)
	return out, nil
}

// crashes is how many gateways each side crashes, one after the other.
const crashes = 3

// window is how long loss runs before changes are timed, suspicions
// counted throughout.
func (c Config) window() time.Duration {
	if c.Quick {
		return 3 * time.Second
	}
	return 30 * time.Second
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// arrivals waits until cond holds for each of n members, woken by the
// channel cond returns with its answer (closed at the member's next
// change), and returns when the last one got there.
func arrivals(ctx context.Context, timeout time.Duration, n int, cond func(i int) (<-chan struct{}, bool)) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		last time.Time
		miss int
	)
	for i := range n {
		wg.Go(func() {
			for {
				ch, ok := cond(i)
				if ok {
					now := time.Now()
					mu.Lock()
					if now.After(last) {
						last = now
					}
					mu.Unlock()
					return
				}
				select {
				case <-ch:
				case <-ctx.Done():
					mu.Lock()
					miss++
					mu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	if miss > 0 {
		return time.Time{}, fmt.Errorf("%d of %d members did not get there in %v", miss, n, timeout)
	}
	return last, nil
}

// waitAll polls cond for every member until all hold.
func waitAll(ctx context.Context, timeout time.Duration, n int, cond func(i int) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		ok := 0
		for i := range n {
			if cond(i) {
				ok++
			}
		}
		if ok == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d after %v", ok, n, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// metaNode is a member of the baseline: memberlist as configured, with
// the change carried in its node metadata.
type metaNode struct {
	name string
	ml   *memberlist.Memberlist
	tr   *gossip.Lossy
	w    *metaWatch
	me   int

	mu   sync.Mutex
	meta []byte
}

func (d *metaNode) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.meta)
}
func (d *metaNode) NotifyMsg([]byte)                           {}
func (d *metaNode) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *metaNode) LocalState(join bool) []byte                { return nil }
func (d *metaNode) MergeRemoteState(buf []byte, join bool)     {}

func (d *metaNode) NotifyJoin(n *memberlist.Node)   { d.w.saw(d.me, n, false) }
func (d *metaNode) NotifyUpdate(n *memberlist.Node) { d.w.saw(d.me, n, false) }
func (d *metaNode) NotifyLeave(n *memberlist.Node)  { d.w.saw(d.me, n, true) }

// metaWatch collects, for the change being timed, when each member saw it.
type metaWatch struct {
	mu     sync.Mutex
	node   string // whose change
	meta   string // the change, or "" for a death
	seen   []bool
	left   int
	last   time.Time
	done   chan struct{}
	suspic uint64
}

// expect starts timing a change of member me (or its death): every other
// of the n members must see it.
func (w *metaWatch) expect(n, me int, node, meta string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.node, w.meta, w.seen, w.left, w.done = node, meta, make([]bool, n), n-1, make(chan struct{})
	w.seen[me] = true
	return w.done
}

func (w *metaWatch) saw(me int, n *memberlist.Node, gone bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done == nil || n.Name != w.node || w.seen[me] {
		return
	}
	if (w.meta == "") != gone || (!gone && string(n.Meta) != w.meta) {
		return
	}
	w.seen[me] = true
	w.last = time.Now()
	if w.left--; w.left == 0 {
		close(w.done)
	}
}

// suspectCounter counts memberlist's own suspicions from its log.
type suspectCounter struct{ w *metaWatch }

func (s suspectCounter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("Suspect ")) && bytes.Contains(p, []byte("has failed")) {
		s.w.mu.Lock()
		s.w.suspic++
		s.w.mu.Unlock()
	}
	return len(p), nil
}

// measureMetadata runs the baseline: n memberlist nodes with a stock
// configuration, no encryption, the change carried in node metadata
// (UpdateNode), over the same lossy links; changes == 0 times only a crash.
func measureMetadata(ctx context.Context, c Config, config func() *memberlist.Config, n, changes int) (spread, error) {
	w := &metaWatch{}
	nodes := make([]*metaNode, n)
	defer func() {
		for _, d := range nodes {
			if d != nil && d.ml != nil {
				d.ml.Shutdown()
			}
		}
	}()
	for i := range n {
		d := &metaNode{name: fmt.Sprintf("node-%03d", i), w: w, me: i, meta: []byte("v0")}
		tr, err := gossip.NewLossy("127.0.0.1:0", 0)
		if err != nil {
			return spread{}, err
		}
		d.tr = tr
		cfg := config()
		cfg.Name = d.name
		cfg.Transport = tr
		cfg.Delegate = d
		cfg.Events = d
		cfg.Logger = log.New(suspectCounter{w}, "", 0)
		if d.ml, err = memberlist.Create(cfg); err != nil {
			tr.Shutdown()
			return spread{}, fmt.Errorf("bench gossip: baseline node %d: %w", i, err)
		}
		nodes[i] = d
		if i > 0 {
			a := nodes[0].ml.LocalNode()
			if _, err := d.ml.Join([]string{fmt.Sprintf("%s:%d", a.Addr, a.Port)}); err != nil {
				return spread{}, fmt.Errorf("bench gossip: baseline join: %w", err)
			}
		}
	}
	start := time.Now()
	if err := waitAll(ctx, 3*time.Minute, n, func(i int) bool { return nodes[i].ml.NumMembers() == n }); err != nil {
		return spread{}, fmt.Errorf("bench gossip: baseline membership never converged: %w", err)
	}
	var out spread
	out.converged = time.Since(start)
	for _, d := range nodes {
		d.tr.SetLoss(gossipLoss)
	}
	w.mu.Lock()
	before := w.suspic
	w.mu.Unlock()
	if err := sleep(ctx, c.window()); err != nil {
		return spread{}, err
	}
	for k := range changes {
		d := nodes[(k*7+1)%n]
		meta := fmt.Sprintf("v%d", k+1)
		done := w.expect(n, d.me, d.name, meta)
		d.mu.Lock()
		d.meta = []byte(meta)
		d.mu.Unlock()
		t0 := time.Now()
		if err := d.ml.UpdateNode(10 * time.Second); err != nil {
			return spread{}, fmt.Errorf("bench gossip: baseline update: %w", err)
		}
		if err := waitDone(ctx, done, 60*time.Second); err != nil {
			return spread{}, fmt.Errorf("bench gossip: baseline change %d: %w", k, err)
		}
		w.mu.Lock()
		out.changes = append(out.changes, float64(w.last.Sub(t0).Microseconds())/1000)
		w.mu.Unlock()
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return spread{}, err
		}
	}
	w.mu.Lock()
	out.suspicions = w.suspic - before
	w.mu.Unlock()
	out.window = time.Since(start) - out.converged
	for k := range crashes {
		if changes == 0 && k > 0 {
			break // the WAN profile's one crash takes a minute
		}
		victim := nodes[n/2+k]
		done := w.expect(n, victim.me, victim.name, "")
		// The earlier victims are gone: nobody waits on them.
		w.mu.Lock()
		for j := range k {
			if !w.seen[n/2+j] {
				w.seen[n/2+j] = true
				w.left--
			}
		}
		w.mu.Unlock()
		t0 := time.Now()
		victim.ml.Shutdown()
		if err := waitDone(ctx, done, 3*time.Minute); err != nil {
			return spread{}, fmt.Errorf("bench gossip: baseline crash: %w", err)
		}
		w.mu.Lock()
		out.dead = append(out.dead, float64(w.last.Sub(t0).Milliseconds()))
		w.mu.Unlock()
		if err := sleep(ctx, 2*time.Second); err != nil {
			return spread{}, err
		}
	}
	for _, d := range nodes {
		out.dropped += d.tr.Dropped()
	}
	c.logf("gossip: baseline p50 %.1f ms, p99 %.1f ms, dead %v ms, false suspicions %d in %v",
		percentile(out.changes, 0.50), percentile(out.changes, 0.99), out.dead, out.suspicions, out.window.Round(time.Second))
	return out, nil
}

func waitDone(ctx context.Context, done <-chan struct{}, timeout time.Duration) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return errors.New("timed out")
	}
}
