package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	gobgplog "github.com/osrg/gobgp/v3/pkg/log"
	"github.com/osrg/gobgp/v3/pkg/server"
	"google.golang.org/protobuf/types/known/anypb"
)

// Options of a Speaker.
type Options struct {
	Logger *slog.Logger
	// Restarting says the gateway comes back from a crash with its
	// forwarding state kept: peers are told so (the restart flag) and go
	// on using the routes they kept.
	Restarting bool
	// OnChange, when set, is called when a session comes up or goes down
	// or a learned route changes. It must not block.
	OnChange func()
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Speaker is the gateway's BGP speaker.
//
// gobgp's server loop has no way to stop; a Speaker is made once per
// process, and Stop ends its sessions and listeners, which leaves the loop
// idle.
type Speaker struct {
	srv  *server.BgpServer
	log  *slog.Logger
	opts Options

	mu sync.Mutex // guards the fields below
	// cfg is the configuration running, with defaults; zero when stopped.
	cfg     Config
	running bool
	started time.Time
	// policy is the filters' configuration last set.
	policy *api.SetPoliciesRequest
	// announced maps each announced prefix to its path's ID; wanted are
	// the prefixes last asked for.
	announced map[netip.Prefix][]byte
	wanted    []netip.Prefix
	// stopWatch ends the event watch.
	stopWatch context.CancelFunc
	// restarting is Options.Restarting until the first configuration is
	// in place.
	restarting bool
}

var ipv4Unicast = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// New makes a speaker; Configure starts it.
func New(o Options) *Speaker {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger.With("component", "bgp")
	srv := server.NewBgpServer(server.LoggerOption(slogAdapter{log}))
	go srv.Serve() // never returns; see Speaker
	return &Speaker{srv: srv, log: log, opts: o, announced: map[netip.Prefix][]byte{}, restarting: o.Restarting}
}

// Configure brings the speaker to c: starts BGP (again, when the ASN,
// router ID, port or timers change), adds, removes and replaces peers, and
// sets the filters, re-evaluating what was received and sent when they
// change.
func (s *Speaker) Configure(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c = c.WithDefaults()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running && !sameGlobal(s.cfg, c) {
		s.log.Info("bgp: restarting the speaker: its global settings changed", "asn", c.ASN, "routerID", c.RouterID)
		if err := s.stopLocked(ctx); err != nil {
			return err
		}
	}
	if !s.running {
		if err := s.startLocked(ctx, c); err != nil {
			return err
		}
	}
	pol := policies(c)
	if s.policy == nil || !equalPolicies(s.policy, pol) {
		if err := s.srv.SetPolicies(ctx, pol); err != nil {
			return fmt.Errorf("bgp: set filters: %w", err)
		}
		// gobgp's soft reset sends what the export filter newly lets
		// out, but no withdrawal of what it newly keeps in: those paths
		// are withdrawn here, and put back for the filter to hold.
		if s.policy != nil && !slices.Equal(s.cfg.Export, c.Export) {
			for p, id := range s.announced {
				if !exported(s.cfg.Export, p) || exported(c.Export, p) {
					continue
				}
				if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast, Uuid: id}); err != nil {
					return fmt.Errorf("bgp: withdraw %s: %w", p, err)
				}
				delete(s.announced, p)
			}
			defer s.reannounce(ctx)
		}
		if s.policy == nil {
			for _, a := range assignments() {
				if err := s.srv.SetPolicyAssignment(ctx, &api.SetPolicyAssignmentRequest{Assignment: a}); err != nil {
					return fmt.Errorf("bgp: apply filters: %w", err)
				}
			}
		} else {
			// Established sessions: re-filter what came in and went out.
			if err := s.srv.ResetPeer(ctx, &api.ResetPeerRequest{Address: "all", Soft: true, Direction: api.ResetPeerRequest_BOTH}); err != nil {
				s.log.Warn("bgp: re-applying the filters to established sessions", "err", err)
			}
		}
		s.policy = pol
	}
	old := map[netip.Addr]Peer{}
	for _, p := range s.cfg.Peers {
		old[p.Address] = p
	}
	for _, p := range c.Peers {
		if o, ok := old[p.Address]; ok && sameSession(s.cfg, c, o, p) {
			delete(old, p.Address)
			continue
		}
		if _, ok := old[p.Address]; ok {
			delete(old, p.Address)
			if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: p.Address.String()}); err != nil {
				return fmt.Errorf("bgp: replace peer %s: %w", p.Name, err)
			}
		}
		if err := s.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: s.peerOf(c, p)}); err != nil {
			return fmt.Errorf("bgp: add peer %s (%s): %w", p.Name, p.Address, err)
		}
	}
	for a, p := range old {
		if err := s.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			return fmt.Errorf("bgp: remove peer %s: %w", p.Name, err)
		}
	}
	s.cfg = c
	// Only the sessions of the first start come back from the crash; a
	// peer added later is new.
	s.restarting = false
	return nil
}

// StartedAt says when BGP last started; zero while stopped.
func (s *Speaker) StartedAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return time.Time{}
	}
	return s.started
}

// sameGlobal says whether a and b start BGP the same way; the rest is
// per peer.
func sameGlobal(a, b Config) bool {
	return a.ASN == b.ASN && a.RouterID == b.RouterID && a.ListenPort == b.ListenPort
}

// sameSession says whether a peer's session stays as it is from a to b:
// its name is only a description.
func sameSession(a, b Config, p, q Peer) bool {
	return p.Address == q.Address && p.ASN == q.ASN && p.Port == q.Port &&
		a.HoldTime == b.HoldTime && a.RestartTime == b.RestartTime
}

func equalPolicies(a, b *api.SetPoliciesRequest) bool {
	return a.String() == b.String()
}

// startLocked starts BGP with c's global settings; s.mu is held.
func (s *Speaker) startLocked(ctx context.Context, c Config) error {
	// IPv4 only: the mesh is, and gobgp would leave the IPv4 listener
	// open when the IPv6 one fails (IPv6 off), so that no start after
	// could bind the port again.
	g := &api.Global{Asn: c.ASN, RouterId: c.RouterID.String(), ListenPort: int32(c.ListenPort), ListenAddresses: []string{"0.0.0.0"}}
	if err := s.srv.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		s.srv.StopBgp(ctx, &api.StopBgpRequest{}) // close what it opened
		return fmt.Errorf("bgp: start (asn %d, router ID %s, port %d): %w", c.ASN, c.RouterID, c.ListenPort, err)
	}
	wctx, cancel := context.WithCancel(context.Background())
	req := &api.WatchEventRequest{
		Peer:  &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST}}},
	}
	if err := s.srv.WatchEvent(wctx, req, s.event); err != nil {
		cancel()
		s.srv.StopBgp(ctx, &api.StopBgpRequest{})
		return fmt.Errorf("bgp: watch: %w", err)
	}
	s.stopWatch = cancel
	s.running, s.started, s.policy = true, s.opts.Now(), nil
	s.announced = map[netip.Prefix][]byte{}
	return nil
}

// event is called by gobgp on a session's change of state or a change of
// best paths.
func (s *Speaker) event(r *api.WatchEventResponse) {
	if p := r.GetPeer(); p != nil && p.Type == api.WatchEventResponse_PeerEvent_STATE && p.Peer != nil && p.Peer.State != nil {
		st := p.Peer.State
		s.log.Info("bgp: session "+sessionState(st.SessionState), "peer", st.NeighborAddress, "asn", st.PeerAsn)
	}
	if s.opts.OnChange != nil {
		s.opts.OnChange()
	}
}

func (s *Speaker) peerOf(c Config, p Peer) *api.Peer {
	hold := uint64(c.HoldTime / time.Second)
	return &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, Description: p.Name},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: hold, KeepaliveInterval: max(1, hold/3), ConnectRetry: 3, IdleHoldTimeAfterReset: 1,
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port)},
		GracefulRestart: &api.GracefulRestart{
			Enabled:         true,
			RestartTime:     uint32(c.RestartTime / time.Second),
			LocalRestarting: s.restarting,
			DeferralTime:    uint32(c.RestartTime / time.Second),
		},
		AfiSafis: []*api.AfiSafi{{
			Config:            &api.AfiSafiConfig{Family: ipv4Unicast, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}},
		}},
	}
}

// Announce makes the announced prefixes exactly ps (the export filter
// still applies).
func (s *Speaker) Announce(ctx context.Context, ps []netip.Prefix) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return errors.New("bgp: not running")
	}
	want := map[netip.Prefix]bool{}
	var errs []error
	s.wanted = slices.Clone(ps)
	for _, p := range ps {
		p = p.Masked()
		want[p] = true
		if err := s.addLocked(ctx, p); err != nil {
			errs = append(errs, err)
		}
	}
	for p, id := range s.announced {
		if want[p] {
			continue
		}
		if err := s.srv.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast, Uuid: id}); err != nil {
			errs = append(errs, fmt.Errorf("bgp: withdraw %s: %w", p, err))
			continue
		}
		delete(s.announced, p)
	}
	return errors.Join(errs...)
}

// exported says whether export rules let p out.
func exported(rules []PrefixRule, p netip.Prefix) bool {
	return len(rules) == 0 || MatchesAny(rules, p)
}

// reannounce puts back the paths Configure withdrew; s.mu is held.
func (s *Speaker) reannounce(ctx context.Context) {
	for _, p := range s.wanted {
		if err := s.addLocked(ctx, p); err != nil {
			s.log.Warn("bgp: announcing again after a filter change", "prefix", p, "err", err)
		}
	}
}

// addLocked announces p unless it is announced already; s.mu is held.
func (s *Speaker) addLocked(ctx context.Context, p netip.Prefix) error {
	if _, ok := s.announced[p]; ok {
		return nil
	}
	path, err := localPath(p)
	if err != nil {
		return err
	}
	res, err := s.srv.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: path})
	if err != nil {
		return fmt.Errorf("bgp: announce %s: %w", p, err)
	}
	s.announced[p] = res.Uuid
	return nil
}

// localPath is a path to p originated here; gobgp puts the session's own
// address as next hop toward external peers.
func localPath(p netip.Prefix) (*api.Path, error) {
	nlri, err := anypb.New(&api.IPAddressPrefix{Prefix: p.Addr().String(), PrefixLen: uint32(p.Bits())})
	if err != nil {
		return nil, err
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0}) // IGP
	if err != nil {
		return nil, err
	}
	nh, err := anypb.New(&api.NextHopAttribute{NextHop: "0.0.0.0"})
	if err != nil {
		return nil, err
	}
	return &api.Path{Family: ipv4Unicast, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}

// Learned returns the best routes the peers announce that passed the
// import filter, sorted by prefix.
func (s *Speaker) Learned(ctx context.Context) ([]Route, error) {
	s.mu.Lock()
	running, names := s.running, peerNames(s.cfg)
	s.mu.Unlock()
	if !running {
		return nil, nil
	}
	var out []Route
	var bad error
	err := s.srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: ipv4Unicast}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if !p.Best || p.IsWithdraw {
				continue
			}
			from, err := netip.ParseAddr(p.NeighborIp)
			if err != nil || !from.IsValid() || from.IsUnspecified() {
				continue // originated here
			}
			r, err := routeOf(p)
			if err != nil {
				bad = err
				continue
			}
			r.Peer = names[from]
			if r.Peer == "" {
				r.Peer = from.String()
			}
			out = append(out, r)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: list routes: %w", err)
	}
	if bad != nil {
		s.log.Warn("bgp: a route could not be read", "err", bad)
	}
	slices.SortFunc(out, func(a, b Route) int { return comparePrefix(a.Prefix, b.Prefix) })
	return out, nil
}

func peerNames(c Config) map[netip.Addr]string {
	m := map[netip.Addr]string{}
	for _, p := range c.Peers {
		m[p.Address] = p.Name
	}
	return m
}

// routeOf reads a path's prefix and next hop.
func routeOf(p *api.Path) (Route, error) {
	var pfx api.IPAddressPrefix
	if err := p.Nlri.UnmarshalTo(&pfx); err != nil {
		return Route{}, fmt.Errorf("nlri: %w", err)
	}
	a, err := netip.ParseAddr(pfx.Prefix)
	if err != nil {
		return Route{}, fmt.Errorf("nlri %q: %w", pfx.Prefix, err)
	}
	r := Route{Prefix: netip.PrefixFrom(a, int(pfx.PrefixLen)).Masked(), Stale: p.Stale}
	// Only the next hop is read: decoding every attribute of every path
	// costs more than the rest of a pass (strait bench bgp).
	var nh api.NextHopAttribute
	var mp api.MpReachNLRIAttribute
	for _, an := range p.Pattrs {
		switch {
		case an.MessageIs(&nh):
			if err := an.UnmarshalTo(&nh); err == nil {
				r.NextHop, _ = netip.ParseAddr(nh.NextHop)
			}
		case an.MessageIs(&mp) && !r.NextHop.IsValid():
			if err := an.UnmarshalTo(&mp); err == nil && len(mp.NextHops) > 0 {
				r.NextHop, _ = netip.ParseAddr(mp.NextHops[0])
			}
		}
	}
	return r, nil
}

// PeerStatus is a session as the status shows it.
type PeerStatus struct {
	Name    string     `json:"name"`
	Address netip.Addr `json:"address"`
	ASN     uint32     `json:"asn"`
	// State is the session's: idle, connect, active, opensent,
	// openconfirm, established.
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// Received, Accepted and Advertised count IPv4 routes: received from
	// the peer, of those let through by the import filter, sent to it
	// through the export filter.
	Received   uint64 `json:"received"`
	Accepted   uint64 `json:"accepted"`
	Advertised uint64 `json:"advertised"`
	// GracefulRestart says both sides announced it; EndOfRIB that the
	// peer has sent all its routes since the session came up.
	GracefulRestart bool `json:"gracefulRestart"`
	EndOfRIB        bool `json:"endOfRIB"`
}

// Peers returns the sessions, in the configuration's order.
func (s *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	s.mu.Lock()
	cfg, running := s.cfg, s.running
	s.mu.Unlock()
	if !running {
		return nil, nil
	}
	got := map[netip.Addr]*api.Peer{}
	err := s.srv.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if a, err := netip.ParseAddr(p.GetConf().GetNeighborAddress()); err == nil {
			got[a] = p
		}
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: list peers: %w", err)
	}
	var out []PeerStatus
	for _, c := range cfg.Peers {
		ps := PeerStatus{Name: c.Name, Address: c.Address, ASN: c.ASN, State: "idle"}
		if p := got[c.Address]; p != nil {
			ps.State = sessionState(p.GetState().GetSessionState())
			if up := p.GetTimers().GetState().GetUptime(); up != nil && ps.State == "established" {
				ps.Since = up.AsTime()
			}
			for _, af := range p.AfiSafis {
				if af.GetConfig().GetFamily().GetAfi() != api.Family_AFI_IP || af.GetConfig().GetFamily().GetSafi() != api.Family_SAFI_UNICAST {
					continue
				}
				ps.Received = af.GetState().GetReceived()
				gr := af.GetMpGracefulRestart().GetState()
				ps.GracefulRestart = gr.GetEnabled() && gr.GetReceived() && gr.GetAdvertised()
				ps.EndOfRIB = gr.GetEndOfRibReceived()
			}
		}
		if ps.State == "established" {
			// gobgp's own counters do not see the global filters.
			ps.Accepted, ps.Advertised = s.count(ctx, api.TableType_GLOBAL, "", c.Address), s.count(ctx, api.TableType_ADJ_OUT, c.Address.String(), netip.Addr{})
		}
		out = append(out, ps)
	}
	return out, nil
}

// count counts the paths of a table: of the global table those from
// peer, of a peer's table all.
func (s *Speaker) count(ctx context.Context, tt api.TableType, name string, from netip.Addr) uint64 {
	var n uint64
	s.srv.ListPath(ctx, &api.ListPathRequest{TableType: tt, Name: name, Family: ipv4Unicast}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if p.IsWithdraw || p.Filtered {
				continue
			}
			if a, err := netip.ParseAddr(p.NeighborIp); from.IsValid() && (err != nil || a != from) {
				continue
			}
			n++
		}
	})
	return n
}

// Converged says the routes learned are complete: every peer's session is
// up and has sent all its routes (End-of-RIB, or a hold time up without
// graceful restart), or the restart time has passed since the start.
// Until then, a gateway keeps the routes it had.
func (s *Speaker) Converged(ctx context.Context) bool {
	s.mu.Lock()
	started, cfg, running := s.started, s.cfg, s.running
	s.mu.Unlock()
	if !running {
		return false
	}
	now := s.opts.Now()
	if now.Sub(started) >= cfg.RestartTime {
		return true
	}
	peers, err := s.Peers(ctx)
	if err != nil {
		return false
	}
	for _, p := range peers {
		if p.State != "established" {
			return false
		}
		if !p.EndOfRIB && (p.GracefulRestart || now.Sub(p.Since) < cfg.HoldTime/3) {
			return false
		}
	}
	return true
}

// Stop ends every session with a Cease notification, so that the peers
// withdraw the gateway's routes at once (a planned stop), and closes the
// listeners. A gateway that dies instead leaves its routes with the peers
// for the restart time.
func (s *Speaker) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked(ctx)
}

func (s *Speaker) stopLocked(ctx context.Context) error {
	if !s.running {
		return nil
	}
	s.stopWatch()
	s.running, s.cfg, s.policy = false, Config{}, nil
	s.announced = map[netip.Prefix][]byte{}
	if err := s.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		return fmt.Errorf("bgp: stop: %w", err)
	}
	return nil
}

func sessionState(st api.PeerState_SessionState) string {
	switch st {
	case api.PeerState_IDLE:
		return "idle"
	case api.PeerState_CONNECT:
		return "connect"
	case api.PeerState_ACTIVE:
		return "active"
	case api.PeerState_OPENSENT:
		return "opensent"
	case api.PeerState_OPENCONFIRM:
		return "openconfirm"
	case api.PeerState_ESTABLISHED:
		return "established"
	}
	return "unknown"
}

// slogAdapter hands gobgp's log lines to slog: its errors and warnings as
// warnings, the rest at debug level (sessions' changes are logged by the
// speaker itself).
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) attrs(f gobgplog.Fields) []any {
	out := make([]any, 0, 2*len(f))
	for k, v := range f {
		out = append(out, k, v)
	}
	return out
}

func (a slogAdapter) Panic(msg string, f gobgplog.Fields) {
	a.log.Error("gobgp: "+msg, a.attrs(f)...)
	panic(msg)
}
func (a slogAdapter) Fatal(msg string, f gobgplog.Fields) {
	a.log.Error("gobgp: "+msg, a.attrs(f)...)
}
func (a slogAdapter) Error(msg string, f gobgplog.Fields) { a.log.Warn("gobgp: "+msg, a.attrs(f)...) }
func (a slogAdapter) Warn(msg string, f gobgplog.Fields)  { a.log.Warn("gobgp: "+msg, a.attrs(f)...) }
func (a slogAdapter) Info(msg string, f gobgplog.Fields)  { a.log.Debug("gobgp: "+msg, a.attrs(f)...) }
func (a slogAdapter) Debug(msg string, f gobgplog.Fields) { a.log.Debug("gobgp: "+msg, a.attrs(f)...) }
func (a slogAdapter) SetLevel(gobgplog.LogLevel)          {}
func (a slogAdapter) GetLevel() gobgplog.LogLevel         { return gobgplog.DebugLevel }
