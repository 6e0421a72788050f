// Package health checks the backends of the gateway's load balancer: the
// gateway of each cluster checks its own instance of every global service
// the cluster exports (a TCP connect or an HTTP GET from the gateway's
// network namespace) and publishes the verdict in the catalog, so that the
// other gateways drop an unhealthy instance from their Maglev tables.
//
// The package owns the checks and their verdicts, not what is done with
// them: the gateway reads Results when OnChange fires and publishes them.
// The verdict logic (first check decides, then streaks flip) is a pure type
// tested with an injected clock; the rest is one goroutine per target.
package health

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// Target is one backend to check.
type Target struct {
	// Key identifies the target, e.g. "default/web"; Results is keyed by it.
	Key string
	// Addr is where to check.
	Addr netip.AddrPort
	// Check is how; Set fills in its defaults (meshpolicy.HealthCheck.WithDefaults).
	Check meshpolicy.HealthCheck
}

// Result is a target's current verdict.
type Result struct {
	Healthy bool
	// Checked is false until the first check completed: the state is
	// unknown and Healthy means nothing yet.
	Checked bool
	// Reason says why the target is unhealthy, as of its latest failed
	// check: one of the Reason constants or "HTTP <code>". It is short and
	// stable for one cause, because it is gossiped. Empty while healthy.
	Reason string
	// Since is when Healthy last changed, or the first verdict.
	Since time.Time
	// Failures and Successes are the current streaks; one of them is 0.
	Failures, Successes int
}

// Options configure a Checker. Zero fields take the defaults.
type Options struct {
	// Logger gets one line per change of a target's state, never one per
	// check; default discards.
	Logger *slog.Logger
	// Now is the clock of Result.Since; default time.Now.
	Now func() time.Time
	// Dial opens the checks' connections; default a net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// OnChange is called when a target's Healthy, Checked or Reason changes
	// as the result of a check (not when Set adds, removes or restarts a
	// target: the caller knows, and Results shows it as soon as Set
	// returns). It runs on a goroutine of the Checker, one call at a time,
	// never under the Checker's lock, so it may call Results or Set.
	// Changes that happen while it runs are coalesced into one more call;
	// a slow OnChange delays no check.
	OnChange func()
}

// Checker checks a set of targets, each on its own schedule.
type Checker struct {
	log      *slog.Logger
	now      func() time.Time
	dial     dialFunc
	onChange func()

	ctx    context.Context // canceled by Close; parent of every worker's
	cancel context.CancelFunc
	wg     sync.WaitGroup // the workers and the notifier
	notify chan struct{}  // capacity 1: a pending OnChange call

	mu      sync.Mutex // guards closed, workers and every worker's state
	closed  bool
	workers map[string]*worker
}

// worker checks one target until its context is canceled.
type worker struct {
	target Target // normalized; never changes: a changed target gets a new worker
	ctx    context.Context
	cancel context.CancelFunc
	state  verdict // guarded by Checker.mu
}

// New returns a Checker with no targets; Set gives it some.
func New(o Options) *Checker {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Checker{
		log:      o.Logger.With("component", "health"),
		now:      o.Now,
		dial:     o.Dial,
		onChange: o.OnChange,
		ctx:      ctx,
		cancel:   cancel,
		notify:   make(chan struct{}, 1),
		workers:  map[string]*worker{},
	}
	if c.onChange != nil {
		c.wg.Add(1)
		go c.notifier()
	}
	return c
}

// Set makes targets the ones checked: a new key starts (its first check at
// once), a key left out stops, and a key whose Addr or Check changed
// restarts from unknown. A key whose target did not change keeps its state
// and its schedule, so the caller may Set the full list on every update.
// Checks compare after defaults, so a zero field and its default are the
// same. If a key repeats, its last target counts. Set after Close does
// nothing.
func (c *Checker) Set(targets []Target) {
	want := make(map[string]Target, len(targets))
	for _, t := range targets {
		want[t.Key] = normalize(t)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	for key, w := range c.workers {
		if t, ok := want[key]; !ok || t != w.target {
			w.cancel()
			delete(c.workers, key)
		}
	}
	for key, t := range want {
		if _, ok := c.workers[key]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(c.ctx)
		w := &worker{
			target: t,
			ctx:    ctx,
			cancel: cancel,
			state:  newVerdict(t.Check.UnhealthyAfter, t.Check.HealthyAfter),
		}
		c.workers[key] = w
		c.wg.Add(1)
		go c.run(w)
	}
}

// Results returns every target's verdict by key.
func (c *Checker) Results() map[string]Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]Result, len(c.workers))
	for key, w := range c.workers {
		out[key] = w.state.result()
	}
	return out
}

// Result returns one target's verdict, and false if key is not a target.
func (c *Checker) Result(key string) (Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	w, ok := c.workers[key]
	if !ok {
		return Result{}, false
	}
	return w.state.result(), true
}

// Close stops every check, including those under way, and waits for the
// goroutines to return. Results keeps answering with the last verdicts.
func (c *Checker) Close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
}

// run checks w's target at once and then every interval, one check at a
// time: a check slower than the interval makes the next one late (the
// ticker drops the ticks it missed), never concurrent.
func (c *Checker) run(w *worker) {
	defer c.wg.Done()
	defer w.cancel()
	t := w.target
	tick := time.NewTicker(time.Duration(t.Check.Interval))
	defer tick.Stop()
	for {
		ctx, cancel := context.WithTimeout(w.ctx, time.Duration(t.Check.Timeout))
		ok, reason, err := probe(ctx, c.dial, t)
		cancel()
		c.record(w, ok, reason, err)
		select {
		case <-w.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// record feeds one outcome to w's verdict, unless w was stopped meanwhile:
// a check cut short by Set or Close says nothing about the target, and a
// removed or replaced target must not change what Results shows.
func (c *Checker) record(w *worker, ok bool, reason string, err error) {
	now := c.now()
	c.mu.Lock()
	if w.ctx.Err() != nil {
		c.mu.Unlock()
		return
	}
	changed := w.state.observe(ok, reason, now)
	r := w.state.result()
	c.mu.Unlock()
	if !changed {
		return
	}
	t := w.target
	attrs := []any{
		"target", t.Key, "addr", t.Addr, "protocol", t.Check.Protocol,
		"failures", r.Failures, "successes", r.Successes,
	}
	if r.Healthy {
		c.log.Info("backend healthy", attrs...)
	} else {
		attrs = append(attrs, "reason", r.Reason)
		if err != nil {
			attrs = append(attrs, "error", err)
		}
		c.log.Warn("backend unhealthy", attrs...)
	}
	if c.onChange != nil {
		select {
		case c.notify <- struct{}{}:
		default: // a call is already pending; it will see this change too
		}
	}
}

// notifier calls OnChange on its own goroutine, so that a slow OnChange
// delays no check and calls never overlap.
func (c *Checker) notifier() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-c.notify:
			c.onChange()
		}
	}
}
