package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/straitnet/strait/gateway/bgp"
	"github.com/straitnet/strait/natpool"
)

// BGPRunningName marks, in the state directory, a gateway whose BGP
// speaker runs; a gateway that finds it at start did not stop cleanly,
// and restarts gracefully: its routers still forward on what it
// announced, and it keeps the routes it installed until theirs are back.
const BGPRunningName = "bgp.running"

// BGPStatus is the BGP speaker as the status shows it.
type BGPStatus struct {
	ASN      uint32           `json:"asn"`
	RouterID netip.Addr       `json:"routerID"`
	Peers    []bgp.PeerStatus `json:"peers"`
	// Announced are the prefixes offered to the peers (the export filter
	// decides what each gets: see the peers' advertised counts).
	Announced []netip.Prefix `json:"announced"`
	// Learned are the routes in use: installed in the kernel and added
	// to the site's CIDRs in the mesh. Refused were let through by the
	// import filter but would take addresses that are not the site's.
	Learned []bgp.Route   `json:"learned"`
	Refused []bgp.Refused `json:"refused,omitempty"`
	// Converged says the routes learned since the start are complete;
	// until then (a graceful restart) no installed route is removed.
	Converged bool `json:"converged"`
	// Restarting says the gateway came back from a crash and told its
	// peers so.
	Restarting bool   `json:"restarting,omitempty"`
	Error      string `json:"error,omitempty"`
}

// bgpState is the gateway's BGP speaker and the kernel routes it keeps.
// The loop owns it; the mutex guards what Status and the inputs read.
type bgpState struct {
	speaker    *bgp.Speaker
	routes     bgp.RouteTable
	marker     string
	restarting bool
	log        *slog.Logger

	mu        sync.Mutex
	running   bool
	status    BGPStatus
	accepted  []bgp.Route
	converged bool
	startedAt time.Time
	// remembered are the prefixes the last run learned (its saved
	// inputs): the site keeps them until its routes are complete again.
	remembered []netip.Prefix
}

// openBGP makes the speaker; it starts with the first configuration that
// has a bgp section.
func openBGP(stateDir string, log *slog.Logger, now func() time.Time, remembered []netip.Prefix, onChange func()) (*bgpState, error) {
	routes, err := bgp.NewKernelRoutes()
	if err != nil {
		return nil, err
	}
	marker := filepath.Join(stateDir, BGPRunningName)
	_, err = os.Stat(marker)
	restarting := err == nil
	return &bgpState{
		speaker:    bgp.New(bgp.Options{Logger: log, Restarting: restarting, OnChange: onChange, Now: now}),
		routes:     routes,
		marker:     marker,
		restarting: restarting,
		log:        log,
		remembered: remembered,
	}, nil
}

// prefixes are the learned prefixes the site adds to its CIDRs: those in
// use, and until the routes are complete again after a restart, also those
// the last run had.
func (b *bgpState) prefixes() []netip.Prefix {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	out := bgp.Prefixes(b.accepted)
	if !b.converged {
		for _, p := range b.remembered {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	slices.SortFunc(out, func(a, c netip.Prefix) int { return a.Addr().Compare(c.Addr())*64 + a.Bits() - c.Bits() })
	return out
}

// sync brings the speaker to the configuration: its peers and filters,
// what it announces, and the kernel routes of what it learned. It returns
// whether the prefixes in use changed (the site's CIDRs change with them).
func (b *bgpState) sync(ctx context.Context, c *bgp.Config, announce []netip.Prefix, reserved []bgp.Reserved) (bool, error) {
	before := b.prefixes()
	if c == nil {
		b.mu.Lock()
		running := b.running
		b.mu.Unlock()
		if !running {
			return false, nil
		}
		// The section is gone: withdraw, and remove the routes.
		err := errors.Join(b.speaker.Stop(ctx), b.stopped())
		_, rerr := bgp.SyncRoutes(b.routes, nil, true)
		b.mu.Lock()
		b.running, b.accepted, b.remembered, b.status = false, nil, nil, BGPStatus{}
		b.mu.Unlock()
		return len(before) > 0, errors.Join(err, rerr)
	}
	if err := b.speaker.Configure(ctx, *c); err != nil {
		b.setError(err)
		return false, err
	}
	b.mu.Lock()
	if !b.running {
		b.running = true
		if err := os.WriteFile(b.marker, nil, 0o600); err != nil {
			b.log.Warn("bgp: cannot mark the speaker running; a crash will not restart gracefully", "err", err)
		}
	}
	b.mu.Unlock()
	var errs []error
	if err := b.speaker.Announce(ctx, announce); err != nil {
		errs = append(errs, err)
	}
	learned, err := b.speaker.Learned(ctx)
	if err != nil {
		b.setError(err)
		return false, err
	}
	local, taken, err := takenRoutes(b.routes)
	if err != nil {
		errs = append(errs, err)
	}
	accepted, refused := bgp.Screen(learned, append(slices.Clone(reserved), taken...), local)
	converged := b.speaker.Converged(ctx)
	b.mu.Lock()
	if started := b.speaker.StartedAt(); started != b.startedAt {
		// BGP (re)started: until its routes are complete again, what was
		// installed stays.
		b.startedAt, b.converged = started, false
	}
	if converged && !b.converged {
		b.log.Info("bgp: routes complete; routes no peer announces any more are removed from now on", "learned", len(accepted))
	}
	b.converged = b.converged || converged
	prune := b.converged
	b.mu.Unlock()
	st, err := bgp.SyncRoutes(b.routes, accepted, prune)
	if err != nil {
		errs = append(errs, err)
	}
	if len(st.Failed) > 0 {
		// A route the kernel refuses is not the site's: the mesh must not
		// send its traffic here.
		accepted = slices.DeleteFunc(accepted, func(r bgp.Route) bool {
			if e := st.Failed[r.Prefix]; e != nil {
				refused = append(refused, bgp.Refused{Route: r, Reason: "the kernel refused the route: " + e.Error()})
				return true
			}
			return false
		})
	}
	if st.Added+st.Removed > 0 {
		b.log.Info("bgp: kernel routes updated", "added", st.Added, "removed", st.Removed, "learned", len(accepted))
	}
	peers, _ := b.speaker.Peers(ctx)
	b.mu.Lock()
	for _, r := range refused {
		if !slices.ContainsFunc(b.status.Refused, func(o bgp.Refused) bool { return o.Prefix == r.Prefix && o.Reason == r.Reason }) {
			b.log.Warn("bgp: refused a learned route", "prefix", r.Prefix, "peer", r.Peer, "reason", r.Reason)
		}
	}
	b.accepted = accepted
	b.status = BGPStatus{
		ASN: c.ASN, RouterID: c.RouterID, Peers: peers, Announced: announce,
		Learned: accepted, Refused: refused, Converged: b.converged, Restarting: b.restarting,
	}
	if err := errors.Join(errs...); err != nil {
		b.status.Error = err.Error()
	}
	b.mu.Unlock()
	return !slices.Equal(before, b.prefixes()), errors.Join(errs...)
}

func (b *bgpState) setError(err error) {
	b.mu.Lock()
	b.status.Error = err.Error()
	b.mu.Unlock()
}

// takenRoutes returns the host's own addresses (with their networks'
// lengths) and what learned routes may not take: the host's networks, and
// the prefixes of its other routes (a learned route to the same prefix
// would replace one; a more specific one is routing as usual).
func takenRoutes(t bgp.RouteTable) ([]netip.Prefix, []bgp.Reserved, error) {
	conn, err := t.Connected()
	if err != nil {
		return nil, nil, err
	}
	var out []bgp.Reserved
	for _, p := range conn {
		out = append(out, bgp.Reserved{Prefix: p.Masked(), What: "a network of the gateway's host"})
	}
	other, err := t.Foreign()
	if err != nil {
		return nil, nil, err
	}
	for _, p := range other {
		out = append(out, bgp.Reserved{Prefix: p, What: "the gateway's host", Exact: true})
	}
	return conn, out, nil
}

// stopped removes the running mark: the speaker stopped cleanly.
func (b *bgpState) stopped() error {
	if err := os.Remove(b.marker); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("bgp: %w", err)
	}
	return nil
}

// close ends the sessions with a notification, so that the routers
// withdraw the gateway's routes at once (a planned stop: the standby
// takes over, or the gateway is going away). The kernel routes stay, like
// the translation, for the restart.
func (b *bgpState) close() {
	b.mu.Lock()
	running := b.running
	b.mu.Unlock()
	if !running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.speaker.Stop(ctx); err != nil {
		b.log.Warn("bgp: stopping", "err", err)
	}
	if err := b.stopped(); err != nil {
		b.log.Warn("bgp: stopping", "err", err)
	}
}

// release closes the kernel handle.
func (b *bgpState) release() {
	if k, ok := b.routes.(*bgp.KernelRoutes); ok {
		k.Close()
	}
}

func (b *bgpState) statusOf() *BGPStatus {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.running && b.status.Error == "" {
		return nil
	}
	st := b.status
	return &st
}

// bgpAnnouncements are the prefixes the gateway offers its routers: its
// own block (its site's ingress addresses), everything the mesh routes
// through it (each peer's allowed IPs: blocks, real CIDRs routed as they
// are, the VIP range where a hub balances), and the VIPs it balances
// itself. Sorted, each once.
func bgpAnnouncements(want desired, vips []netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	add := func(p netip.Prefix) {
		p = p.Masked()
		if p.IsValid() && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	add(want.block)
	for _, p := range want.tunnel.Peers {
		for _, a := range p.AllowedIPs {
			add(a)
		}
	}
	for _, v := range vips {
		add(netip.PrefixFrom(v, 32))
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// bgpReserved are the ranges the site's routers may not claim: the
// mesh's global CIDR (every block is inside it) and VIP range, and every
// other site's CIDRs.
func bgpReserved(want desired) []bgp.Reserved {
	var out []bgp.Reserved
	if want.mesh != nil {
		out = append(out, bgp.Reserved{Prefix: want.mesh.GlobalCIDR, What: "the mesh's global CIDR"})
		for _, s := range want.mesh.Sites {
			if s.Name == want.self.Name {
				continue
			}
			for _, c := range s.CIDRs {
				out = append(out, bgp.Reserved{Prefix: c, What: s.Name + "'s CIDR"})
			}
		}
	}
	if want.lb != nil && want.lb.VIPRange.IsValid() {
		out = append(out, bgp.Reserved{Prefix: want.lb.VIPRange, What: "the VIP range"})
	}
	return out
}

// withBGPRoutes adds the learned prefixes to self's CIDRs (those not
// inside one already), so that the mesh routes them to this site.
func withBGPRoutes(cidrs, learned []netip.Prefix) []netip.Prefix {
	out := slices.Clone(cidrs)
	for _, p := range learned {
		if !slices.ContainsFunc(cidrs, func(c netip.Prefix) bool { return natpool.Contains(c, p) }) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// syncBGP runs the speaker for the configuration's bgp section: it starts
// it with the first section, announces and learns, and stops it (with
// withdrawals) when the section goes. A change of the prefixes learned
// asks for another pass, which puts them in the site's CIDRs.
func (g *Gateway) syncBGP(ctx context.Context, want desired) error {
	if g.bgp == nil {
		if want.bgp == nil {
			if !g.bgpSwept {
				g.bgpSwept = true
				return sweepBGP(g.opts.StateDir, g.log)
			}
			return nil
		}
		g.mu.Lock()
		remembered := g.inputs.BGPRoutes
		g.mu.Unlock()
		b, err := openBGP(g.opts.StateDir, g.opts.Logger, g.opts.Now, remembered, g.kicked)
		if err != nil {
			return err
		}
		g.mu.Lock()
		g.bgp = b // Status reads it
		g.mu.Unlock()
	}
	var vips []netip.Addr
	g.mu.Lock()
	if l := g.lbStatus; l != nil && (l.Hub == "" || l.Hub == g.opts.Site) {
		for _, s := range l.Services {
			if s.VIP.IsValid() {
				vips = append(vips, s.VIP)
			}
		}
	}
	g.mu.Unlock()
	changed, err := g.bgp.sync(ctx, want.bgp, bgpAnnouncements(want, vips), bgpReserved(want))
	if changed {
		g.kicked()
	}
	return err
}

// sweepBGP removes what a run with a bgp section left, when the
// configuration has none any more: the routes it installed and its mark.
func sweepBGP(stateDir string, log *slog.Logger) error {
	routes, err := bgp.NewKernelRoutes()
	if err != nil {
		return err
	}
	defer routes.Close()
	st, err := bgp.SyncRoutes(routes, nil, true)
	if st.Removed > 0 {
		log.Info("bgp: removed the routes an earlier run learned; the configuration has no bgp section", "removed", st.Removed)
	}
	if rerr := os.Remove(filepath.Join(stateDir, BGPRunningName)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}
