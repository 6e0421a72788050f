// Package wanemu emulates the WAN of strait's lab: latency, jitter and loss
// on each site's access link to the WAN router.
//
// tc netem would do this in the kernel, but the kernels strait's lab runs on
// do not all have it (this one has neither netem nor fq). So the router's
// nftables rules hand the packets of impaired links to NFQUEUE (the
// xtables target through nft_compat), and the emulator holds each packet's
// verdict for the link's delay, or drops it. Links without impairment get
// no rule: their packets never leave the kernel, at full speed.
package wanemu

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"time"
)

// Link is one site's access link as seen from the WAN router. Impairments
// apply in each direction, so a packet from site A to site B is delayed by
// A's latency and B's.
type Link struct {
	Site string `json:"site"`
	// Iface is the router's interface toward the site.
	Iface string `json:"iface"`
	// Queue is the NFQUEUE number of traffic from the site; Queue+1 is
	// the one of traffic to it.
	Queue   uint16        `json:"queue"`
	Latency time.Duration `json:"latency"`
	Jitter  time.Duration `json:"jitter"`
	// Loss is the share of packets dropped, in percent.
	Loss float64 `json:"loss"`
}

// Impaired reports whether the link delays or drops anything.
func (l Link) Impaired() bool { return l.Latency > 0 || l.Jitter > 0 || l.Loss > 0 }

// decide draws the fate of one packet: dropped, or held for delay.
func (l Link) decide(r *rand.Rand) (drop bool, delay time.Duration) {
	if l.Loss > 0 && r.Float64()*100 < l.Loss {
		return true, 0
	}
	delay = l.Latency
	if l.Jitter > 0 {
		delay += time.Duration((r.Float64()*2 - 1) * float64(l.Jitter))
	}
	return false, max(delay, 0)
}

// Config is every link of the WAN.
type Config struct {
	Links []Link `json:"links"`
}

// Validate checks a configuration.
func (c Config) Validate() error {
	seen := map[uint16]string{}
	for _, l := range c.Links {
		if l.Loss < 0 || l.Loss > 100 {
			return fmt.Errorf("wanemu: link %s: loss %g%% is not between 0 and 100", l.Site, l.Loss)
		}
		if l.Latency < 0 || l.Jitter < 0 || l.Latency > time.Minute || l.Jitter > time.Minute {
			return fmt.Errorf("wanemu: link %s: latency %s and jitter %s must lie between 0 and 1m", l.Site, l.Latency, l.Jitter)
		}
		for _, q := range []uint16{l.Queue, l.Queue + 1} {
			if s, dup := seen[q]; dup {
				return fmt.Errorf("wanemu: links %s and %s share queue %d", s, l.Site, q)
			}
			seen[q] = l.Site
		}
	}
	return nil
}

// Stats counts what the emulator did.
type Stats struct {
	Held, Dropped, Released uint64
}

// Emulator holds packets of impaired links for their delay.
type Emulator struct {
	log  *slog.Logger
	sock *queueSocket
	nums []uint16

	// rulesMu serialises Update against Run's teardown: they share the
	// nftables connection, and no rule may be installed once Run stopped.
	rulesMu sync.Mutex
	rules   *rules
	stopped bool

	mu      sync.Mutex // guards the fields below
	byQueue map[uint16]queueLink
	rng     *rand.Rand
	pending verdictHeap
	stats   Stats
	wake    chan struct{} // a new packet may be due before the one awaited
}

// queueLink is a link's impairment in one direction.
type queueLink struct {
	Link
	dir string // "from" or "to" the site
}

// New binds the queues of every link of cfg (the set of links is fixed for
// the emulator's life; their impairments may change) and installs the
// rules. seed makes drops and jitter reproducible.
func New(cfg Config, seed uint64, log *slog.Logger) (_ *Emulator, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Emulator{log: log, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), wake: make(chan struct{}, 1)}
	for _, l := range cfg.Links {
		e.nums = append(e.nums, l.Queue, l.Queue+1)
	}
	if e.sock, err = openQueues(e.nums, 20000); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			e.sock.close(e.nums)
		}
	}()
	if e.rules, err = newRules(); err != nil {
		return nil, err
	}
	if err := e.Update(cfg); err != nil {
		e.rules.close()
		return nil, err
	}
	return e, nil
}

// Update changes the links' impairments. Links must be the ones New had.
func (e *Emulator) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	by := map[uint16]queueLink{}
	for _, l := range cfg.Links {
		by[l.Queue] = queueLink{l, "from"}
		by[l.Queue+1] = queueLink{l, "to"}
	}
	for q := range by {
		found := false
		for _, n := range e.nums {
			found = found || n == q
		}
		if !found {
			return fmt.Errorf("wanemu: queue %d of link %s was not bound at start", q, by[q].Site)
		}
	}
	e.rulesMu.Lock()
	defer e.rulesMu.Unlock()
	if e.stopped {
		return errors.New("wanemu: the emulator has stopped")
	}
	e.mu.Lock()
	e.byQueue = by
	e.mu.Unlock()
	// Rules last: packets of a newly impaired link meet their queue bound.
	return e.rules.apply(cfg.Links)
}

// Stats returns the counters.
func (e *Emulator) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats
}

// Run holds and releases packets until ctx ends, then removes its rules
// (traffic flows unimpaired) and releases what it holds.
func (e *Emulator) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.release(ctx)
	}()
	buf := make([]byte, 64<<10)
	var err error
	for ctx.Err() == nil {
		var pkts []queued
		pkts, err = e.sock.read(buf)
		if err != nil {
			break
		}
		for _, p := range pkts {
			e.hold(p)
		}
	}
	wg.Wait()
	e.rulesMu.Lock()
	e.stopped = true
	rerr := e.rules.remove()
	e.rules.close()
	e.rulesMu.Unlock()
	e.mu.Lock()
	for _, v := range e.pending {
		e.sock.verdict(v.queue, v.id, verdictAccept)
	}
	e.pending = nil
	e.mu.Unlock()
	e.sock.close(e.nums)
	if err != nil {
		return err
	}
	return rerr
}

// hold decides a packet's fate and schedules its verdict.
func (e *Emulator) hold(p queued) {
	e.mu.Lock()
	l, ok := e.byQueue[p.queue]
	if !ok {
		e.mu.Unlock()
		e.sock.verdict(p.queue, p.id, verdictAccept)
		return
	}
	drop, delay := l.decide(e.rng)
	if drop {
		e.stats.Dropped++
		e.mu.Unlock()
		e.sock.verdict(p.queue, p.id, verdictDrop)
		return
	}
	e.stats.Held++
	due := time.Now().Add(delay)
	first := len(e.pending) == 0 || due.Before(e.pending[0].due)
	heap.Push(&e.pending, pendingVerdict{due: due, queue: p.queue, id: p.id})
	e.mu.Unlock()
	if first {
		select {
		case e.wake <- struct{}{}:
		default:
		}
	}
}

// release sends the verdicts of held packets as they come due.
func (e *Emulator) release(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		e.mu.Lock()
		now := time.Now()
		var due []pendingVerdict
		for len(e.pending) > 0 && !e.pending[0].due.After(now) {
			due = append(due, heap.Pop(&e.pending).(pendingVerdict))
		}
		wait := time.Hour
		if len(e.pending) > 0 {
			wait = e.pending[0].due.Sub(now)
		}
		e.stats.Released += uint64(len(due))
		e.mu.Unlock()
		for _, v := range due {
			if err := e.sock.verdict(v.queue, v.id, verdictAccept); err != nil {
				e.log.Warn("verdict failed", "queue", v.queue, "err", err)
			}
		}
		if len(due) > 0 {
			continue
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-e.wake:
			if !t.Stop() {
				<-t.C
			}
		case <-t.C:
		}
	}
}

type pendingVerdict struct {
	due   time.Time
	queue uint16
	id    uint32
}

// verdictHeap orders held packets by when they are due.
type verdictHeap []pendingVerdict

func (h verdictHeap) Len() int           { return len(h) }
func (h verdictHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h verdictHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *verdictHeap) Push(x any)        { *h = append(*h, x.(pendingVerdict)) }
func (h *verdictHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}

// File is the emulator's configuration file, written by the lab.
type File struct {
	// Generation counts changes; the emulator reports the one it applied.
	Generation int    `json:"generation"`
	Config     Config `json:"config"`
}

// Daemon runs the emulator from the configuration file at path until ctx
// ends, applying changes to the file as they appear, and records the
// generation it applied in path+".applied".
func Daemon(ctx context.Context, path string, log *slog.Logger) error {
	f, data, err := readFile(path)
	if err != nil {
		return err
	}
	e, err := New(f.Config, uint64(time.Now().UnixNano()), log)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".applied", []byte(strconv.Itoa(f.Generation)), 0o644); err != nil {
		return err
	}
	log.Info("WAN emulator running", "links", len(f.Config.Links), "generation", f.Generation)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // the watcher stops with Run, whyever Run returns
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			nf, ndata, err := readFile(path)
			if err != nil || bytes.Equal(ndata, data) {
				continue
			}
			data = ndata
			if err := e.Update(nf.Config); err != nil {
				log.Error("WAN change refused", "generation", nf.Generation, "err", err)
				continue
			}
			os.WriteFile(path+".applied", []byte(strconv.Itoa(nf.Generation)), 0o644)
			log.Info("WAN changed", "generation", nf.Generation)
		}
	}()
	return e.Run(ctx)
}

func readFile(path string) (File, []byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return File{}, nil, fmt.Errorf("wanemu: %w", err)
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return File{}, nil, fmt.Errorf("wanemu: %s: %w", path, err)
	}
	return f, data, nil
}

// Applied returns the generation the emulator behind path last applied.
func Applied(path string) (int, error) {
	data, err := os.ReadFile(path + ".applied")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(string(data))
}
