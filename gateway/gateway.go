// Package gateway is strait's per-site gateway: it keeps the site's
// WireGuard device, its peers and routes, its address allocations and its
// translation in line with the mesh configuration and the site file, and
// serves its status.
//
// One reconciler owns the host's state. At start it needs valid files and
// a trustworthy allocation store; afterwards a file that fails to parse or
// to validate is refused and reported, and the gateway keeps running on the
// last good configuration. Allocations are saved before they are
// programmed. Each pass also repairs drift: a peer someone removed by hand,
// a flushed or edited nftables table.
package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/lbtable"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/siteconf"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/gateway/wgkey"
	"github.com/straitnet/strait/natpool"
)

// Options configure a gateway. Zero values take the documented defaults.
type Options struct {
	// Site is this gateway's site name in the mesh configuration. Required.
	Site string
	// MeshFile is the mesh configuration. Required.
	MeshFile string
	// SiteFile is this site's pools, services, egress rules and pods;
	// empty means default pools and nothing exported.
	SiteFile string
	// StateDir holds the private key, the allocations and the status
	// socket; default /var/lib/strait.
	StateDir string
	// Interface is the WireGuard device; default strait0.
	Interface string
	// WireGuard picks the implementation; default auto.
	WireGuard tunnel.Mode
	// WireGuardGo is the binary for WireGuard mode wireguard-go.
	WireGuardGo string
	// MTU of the tunnel; 0 derives it from the underlay.
	MTU int
	// Interval is how often the gateway looks for changed files and
	// repairs drift; default 2s.
	Interval time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Store keeps the allocations; default a natpool.FileStore of
	// AllocationsName in StateDir.
	Store natpool.Store
	// MetricsAddr is where the gateway serves Prometheus metrics
	// (/metrics, "host:port"); empty: nowhere.
	MetricsAddr string
	// Kube, when set, is the cluster's API: with a discovery section in
	// the mesh file, the gateway exports what ServiceExports name and
	// keeps ServiceImports of what other clusters export.
	Kube *KubeClients
}

// KubeClients are the clients of the cluster's API the gateway uses.
type KubeClients struct {
	Kube kubernetes.Interface
	MCS  mcsclient.Interface
	// Dynamic reads strait.io's GlobalService and FirewallPolicy
	// objects; nil: the cluster declares none.
	Dynamic dynamic.Interface
}

// DefaultStateDir is where a gateway keeps its key, allocations and socket.
const DefaultStateDir = "/var/lib/strait"

// Names of the gateway's files in its state directory.
const (
	SocketName      = "gateway.sock"
	AllocationsName = "allocations.json"
)

func (o *Options) setDefaults() error {
	if o.Site == "" {
		return errors.New("gateway: no site given (--site)")
	}
	if o.MeshFile == "" {
		return errors.New("gateway: no mesh configuration given (--mesh)")
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Interface == "" {
		o.Interface = "strait0"
	}
	if o.WireGuard == "" {
		o.WireGuard = tunnel.ModeAuto
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// engine is what the gateway needs of the tunnel engine.
type engine interface {
	Apply(context.Context, tunnel.Config) error
	Status() (tunnel.Status, error)
	Implementation() tunnel.Mode
	Close() error
}

// natTable is what the gateway needs of the NAT table.
type natTable interface {
	Sync(nat.Program) (nat.SyncStats, error)
	Verify() (bool, error)
	Close() error
}

var (
	_ engine   = (*tunnel.Engine)(nil)
	_ natTable = (*nat.Table)(nil)
)

// Gateway is a running gateway.
type Gateway struct {
	opts   Options
	log    *slog.Logger
	key    wgtypes.Key
	engine engine
	nat    natTable
	store  natpool.Store
	// disc is the gateway's part in the catalog, if the mesh file had a
	// discovery section at start.
	disc *discovery
	// kick asks the loop for a pass at once (the catalog or the
	// cluster's exports changed).
	kick chan struct{}

	mu sync.Mutex // guards the fields below
	// wanted is the last valid configuration read from the files;
	// current is the last one applied in full, what the host runs on.
	// They differ while applying wanted fails.
	wanted, current         desired
	wantedHash, currentHash string
	appliedAt               time.Time
	// alloc holds the allocations, as saved in store.
	alloc *natpool.Allocator
	// allocErrs are the requests the last allocation could not serve.
	allocErrs []string
	// prog is the translation last programmed.
	prog nat.Program
	// seenHash is the file content last looked at, good or bad, and
	// seenErr why it was refused, if it was.
	seenHash string
	seenErr  Problem
	// inputs are those of the wanted configuration, saved in
	// DiscoveredName as they change.
	inputs inputs
	// configErr says why the files' content is refused; applyErr why the
	// last pass failed to bring the host to the wanted configuration.
	configErr, applyErr Problem
	drifts              int
	ready               bool
	// publishErr says why the last publication in the catalog failed.
	publishErr string

	// lb and fw are the load balancer and the mesh firewall; nil where
	// the gateway runs without them (tests). The loop owns them.
	lb *balancer
	fw *fwState
	// lbStatus, fwStatus and meshProblems are the last pass's results.
	lbStatus *LBStatus
	fwStatus *FirewallStatus
	// bgp is the BGP speaker, once a configuration has a bgp section;
	// the loop owns it. bgpSwept says leftovers of an earlier run were
	// looked for.
	bgp          *bgpState
	bgpSwept     bool
	meshProblems []string
	// lastDeclared is what the last pass declared; remembered other
	// clusters' declarations as last seen (the loop's).
	lastDeclared meshDeclared
	remembered   *declarations
}

// Problem is an error the gateway reports in its status until it clears.
type Problem struct {
	Msg string    `json:"message,omitempty"`
	At  time.Time `json:"at,omitzero"`
}

// Keygen makes the gateway's private key in stateDir if there is none and
// returns its public key.
func Keygen(stateDir string) (wgtypes.Key, bool, error) {
	k, created, err := wgkey.LoadOrCreate(filepath.Join(stateDir, wgkey.FileName))
	if err != nil {
		return wgtypes.Key{}, false, err
	}
	return k.PublicKey(), created, nil
}

// Run starts the gateway and keeps it reconciled until ctx ends. A value on
// reload makes it read its files at once (SIGHUP).
func Run(ctx context.Context, opts Options, reload <-chan struct{}) error {
	g, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	defer g.Close()
	return g.Loop(ctx, reload)
}

// Start loads the key, the files and the allocations, opens the device and
// applies the configuration. Any failure here stops the start: there is no
// last good configuration yet, and allocations that cannot be trusted must
// not be replaced by new ones under live traffic.
func Start(ctx context.Context, opts Options) (*Gateway, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	log := opts.Logger.With("component", "gateway", "site", opts.Site)
	key, created, err := wgkey.LoadOrCreate(filepath.Join(opts.StateDir, wgkey.FileName))
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if created {
		log.Info("generated a private key", "publicKey", key.PublicKey().String())
	}
	want, h, err := readConfig(opts, key)
	if err != nil {
		return nil, fmt.Errorf("gateway: configuration refused:\n%w", err)
	}
	var disc *discovery
	var in inputs
	if want.discovery != nil {
		// What the last run learned, so that a restart does not drop
		// peers and exports until gossip and the informers are back.
		if in, err = loadInputs(filepath.Join(opts.StateDir, DiscoveredName)); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
		if want, h, err = parseConfig(opts, key, want.meshData, want.siteData, in); err != nil {
			return nil, fmt.Errorf("gateway: configuration refused:\n%w", err)
		}
		if disc, err = startDiscovery(opts, want.discovery, &want.self); err != nil {
			return nil, fmt.Errorf("gateway: %w", err)
		}
		disc.remembered = in
	}
	var decl *declarations
	if disc != nil {
		if decl, err = loadDeclarations(filepath.Join(opts.StateDir, DeclarationsName)); err != nil {
			disc.close()
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	store := opts.Store
	if store == nil {
		store = &natpool.FileStore{Path: filepath.Join(opts.StateDir, AllocationsName), Site: opts.Site, Now: opts.Now}
	}
	eng, err := tunnel.Open(tunnel.Options{
		Interface: opts.Interface, Mode: opts.WireGuard, WireGuardGo: opts.WireGuardGo, Logger: opts.Logger,
	})
	if err != nil {
		if disc != nil {
			disc.close()
		}
		return nil, fmt.Errorf("gateway: %w", err)
	}
	tab, err := nat.New()
	if err != nil {
		eng.Close()
		if disc != nil {
			disc.close()
		}
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := newGateway(opts, log, key, eng, tab, store)
	g.disc, g.inputs, g.remembered = disc, in, decl
	if want.bgp != nil {
		if g.bgp, err = openBGP(opts.StateDir, opts.Logger, opts.Now, in.BGPRoutes, g.kicked); err != nil {
			g.Close()
			return nil, fmt.Errorf("gateway: %w", err)
		}
	}
	if err := g.openMeshTables(); err != nil {
		g.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := g.start(ctx, want, h); err != nil {
		g.Close()
		return nil, err
	}
	log.Info("gateway started", "interface", opts.Interface, "implementation", eng.Implementation(),
		"peers", len(want.tunnel.Peers), "services", len(want.services), "config", short(h))
	return g, nil
}

func newGateway(opts Options, log *slog.Logger, key wgtypes.Key, eng engine, tab natTable, store natpool.Store) *Gateway {
	return &Gateway{opts: opts, log: log, key: key, engine: eng, nat: tab, store: store, kick: make(chan struct{}, 1)}
}

// readConfig reads and derives both files, and hashes their contents.
func readConfig(opts Options, key wgtypes.Key) (desired, string, error) {
	meshData, siteData, err := readFiles(opts)
	if err != nil {
		return desired{}, "", err
	}
	return parseConfig(opts, key, meshData, siteData, inputs{})
}

// inputs are what a configuration derives from besides the files: the
// sites the catalog knows and the services the cluster exports.
type inputs struct {
	Learned []meshconf.Site     `json:"learned,omitempty"`
	Exports []kubesource.Export `json:"exports,omitempty"`
	// GlobalServices and Policies are what the cluster's strait.io
	// objects declare.
	GlobalServices []meshpolicy.GlobalService `json:"globalServices,omitempty"`
	Policies       []meshpolicy.Policy        `json:"policies,omitempty"`
	// Down are the clusters the catalog knows that gossip sees down,
	// once it has settled: a hub among them is not routed to.
	Down []string `json:"down,omitempty"`
	// BGPRoutes are the prefixes learned from the site's routers: they
	// join the site's CIDRs.
	BGPRoutes []netip.Prefix `json:"bgpRoutes,omitempty"`
}

// currentInputs returns the current inputs: the catalog's and the
// cluster's with discovery, the routes learned by BGP.
func (g *Gateway) currentInputs() inputs {
	var in inputs
	if g.disc != nil {
		in = g.disc.inputs()
	}
	in.BGPRoutes = g.bgp.prefixes()
	return in
}

func (in inputs) encode() []byte {
	b, _ := json.Marshal(in)
	return b
}

func readFiles(opts Options) (mesh, site []byte, err error) {
	if mesh, err = os.ReadFile(opts.MeshFile); err != nil {
		return nil, nil, err
	}
	if opts.SiteFile != "" {
		if site, err = os.ReadFile(opts.SiteFile); err != nil {
			return nil, nil, err
		}
	}
	return mesh, site, nil
}

func parseConfig(opts Options, key wgtypes.Key, meshData, siteData []byte, in inputs) (desired, string, error) {
	h := hash(meshData, siteData, in.encode())
	m, err := meshconf.Parse(opts.MeshFile, meshData)
	if err != nil {
		return desired{}, h, err
	}
	var problems []string
	if m.Discovery != nil || len(in.Learned) > 0 {
		// Also after the section is removed: the gateway keeps
		// gossiping until it restarts, and its peers with it.
		m, problems = m.WithLearned(in.Learned)
	}
	if lb := m.LoadBalancer; lb != nil && lb.Hub != "" && lb.Hub != opts.Site && slices.Contains(in.Down, lb.Hub) {
		// The hub is down: balance this site's clients meanwhile, as
		// every gateway does without a hub.
		local := *lb
		local.Hub = ""
		m.LoadBalancer = &local
		problems = append(problems, fmt.Sprintf("loadBalancer.hub %s is down: this gateway balances for its own site's clients until it is back", lb.Hub))
	}
	if me, ok := m.Site(opts.Site); ok && len(in.BGPRoutes) > 0 {
		me.CIDRs = withBGPRoutes(me.CIDRs, in.BGPRoutes)
		if m.Discovery == nil {
			problems = append(problems, "prefixes learned by BGP reach the other gateways through the catalog only, and the mesh file has no discovery section: "+
				"list them in this site's cidrs in the other gateways' mesh files")
		}
	}
	sc := siteconf.Empty()
	if opts.SiteFile != "" {
		if sc, err = siteconf.Parse(opts.SiteFile, siteData); err != nil {
			return desired{}, h, err
		}
	}
	want, err := derive(m, sc, opts.Site, key, opts.Interface, opts.MTU)
	if err != nil {
		return desired{}, h, fmt.Errorf("%s: %w", opts.MeshFile, err)
	}
	want.problems = append(problems, want.problems...)
	addExports(&want, in.Exports)
	addDeclared(&want, in)
	want.meshData, want.siteData = meshData, siteData
	return want, h, nil
}

// start loads the allocations, allocates and applies the first
// configuration; all of it must succeed.
func (g *Gateway) start(ctx context.Context, want desired, h string) error {
	st, err := g.store.Load()
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	alloc, err := natpool.NewAllocator(want.block, want.pools, st, want.holdDown, g.opts.Now)
	if err != nil {
		return fmt.Errorf("gateway: allocations in %s: %w", g.store.Where(), err)
	}
	g.mu.Lock()
	g.alloc = alloc
	g.mu.Unlock()
	if err := g.allocate(want); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	prog, err := g.apply(ctx, want)
	if err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	// The site's declarations too: a start that published none would
	// withdraw them from the whole mesh until the first pass.
	if err := g.publish(want, g.declare(want)); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.wanted, g.wantedHash, g.current, g.currentHash, g.seenHash = want, h, want, h, hash(want.meshData, want.siteData)
	g.prog, g.appliedAt, g.ready = prog, g.opts.Now(), true
	return nil
}

// Close stops the device. The NAT table stays: conntrack and the table keep
// established flows translated while the gateway restarts.
func (g *Gateway) Close() error {
	if g.bgp != nil {
		g.bgp.close()
		g.bgp.release()
	}
	if g.disc != nil {
		g.disc.close()
	}
	if g.lb != nil {
		g.lb.close()
	}
	var fwErr error
	if g.fw != nil {
		fwErr = g.fw.close()
	}
	return errors.Join(g.nat.Close(), g.engine.Close(), fwErr)
}

// openMeshTables opens the load balancer's and the firewall's tables and
// the VIP store; the tables are written by the first pass that has
// something for them.
func (g *Gateway) openMeshTables() error {
	lbTab, err := lbtable.New(lbtable.Options{})
	if err != nil {
		return err
	}
	if g.lb, err = newBalancer(g.opts.StateDir, g.opts.Site, g.opts.Now, lbTab, g.opts.Logger, g.kicked); err != nil {
		lbTab.Close()
		return err
	}
	g.fw, err = openFirewall()
	return err
}

// publish puts this site and its exports in the catalog, with the
// addresses allocated; nothing without discovery.
func (g *Gateway) publish(want desired, mp meshDeclared) error {
	if g.disc == nil {
		return nil
	}
	lookup := func(k string) (netip.Addr, bool) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.alloc.Lookup(k)
	}
	err := g.disc.publish(want, &want.self, g.key.PublicKey(), lookup, mp)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.publishErr = ""
	if err != nil {
		g.publishErr = err.Error()
	}
	return err
}

// kicked asks the loop for a pass; a pass already asked for is enough.
func (g *Gateway) kicked() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Loop reconciles until ctx ends: on every tick and every reload it reads
// the files, applies them if they changed and are valid, and repairs drift.
func (g *Gateway) Loop(ctx context.Context, reload <-chan struct{}) error {
	srv, err := serveStatus(g, filepath.Join(g.opts.StateDir, SocketName), g.log)
	if err != nil {
		return err
	}
	defer srv.Close()
	if g.opts.MetricsAddr != "" {
		ms, err := serveMetrics(g, g.opts.MetricsAddr, g.log)
		if err != nil {
			return err
		}
		defer ms.Close()
	}
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
	}()
	if g.disc != nil {
		g.disc.run(ctx, &wg, g.kicked)
	}
	if g.fw != nil {
		wg.Go(func() { g.logDenies(ctx) })
	}
	t := time.NewTicker(g.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			g.log.Info("gateway stopping")
			return nil
		case <-reload:
			g.log.Info("reload requested")
		case <-g.kick:
		case <-t.C:
		}
		g.reconcile(ctx)
	}
}

// reconcile is one pass of the loop: read the files, allocate what they
// ask for, bring the tunnel and the table to it, and only then call it
// current. Each step is tried whatever the others do: a tunnel that cannot
// be configured (a port taken) or allocations that cannot be saved must
// not leave a flushed table unrepaired. Without new allocations, the
// table is programmed from the ones that are saved.
func (g *Gateway) reconcile(ctx context.Context) {
	want, h := g.next()
	allocErr := g.allocate(want)
	engineErr := g.engine.Apply(ctx, want.tunnel)
	prog, natErr := g.syncNAT(want)
	mp := g.declare(want)
	var pubErr error
	if natErr == nil {
		// Published only once translated: an address in DNS and at the
		// peers must lead somewhere.
		pubErr = g.publish(want, mp)
	}
	lbErr, fwErr := g.syncMesh(want)
	bgpErr := g.syncBGP(ctx, want)
	err := errors.Join(allocErr, engineErr, natErr, pubErr, lbErr, fwErr, bgpErr)
	g.mu.Lock()
	defer g.mu.Unlock()
	if natErr == nil {
		g.prog = prog
	}
	if err != nil {
		if err.Error() != g.applyErr.Msg {
			g.log.Error("applying the configuration failed; retrying", "config", short(h), "running", short(g.currentHash), "err", err)
		}
		g.applyErr = Problem{Msg: err.Error(), At: g.opts.Now()}
		return
	}
	if g.applyErr.Msg != "" {
		g.log.Info("configuration applied after failures", "config", short(h))
	}
	g.applyErr = Problem{}
	if h != g.currentHash {
		g.current, g.currentHash, g.appliedAt = want, h, g.opts.Now()
		g.log.Info("configuration applied", "config", short(h), "peers", len(want.tunnel.Peers), "services", len(want.services))
	}
}

// next reads the files and returns the configuration to reconcile to:
// theirs with the current inputs, if they are valid, else the last valid
// files' with the current inputs (a refused edit must not stop the gateway
// from following the mesh).
func (g *Gateway) next() (desired, string) {
	meshData, siteData, err := readFiles(g.opts)
	in := g.currentInputs()
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.refuse(Problem{Msg: fmt.Sprintf("%v; keeping the last good configuration", err), At: g.opts.Now()})
		return g.rebuild(in)
	}
	fh := hash(meshData, siteData)
	if fh == g.seenHash && g.seenErr.Msg != "" {
		g.configErr = g.seenErr // refused before; said so then
		return g.rebuild(in)
	}
	g.seenHash = fh
	h := hash(meshData, siteData, in.encode())
	if h == g.wantedHash {
		// Unchanged, or back to it after a bad edit.
		g.seenErr, g.configErr = Problem{}, Problem{}
		return g.wanted, g.wantedHash
	}
	want, _, err := parseConfig(g.opts, g.key, meshData, siteData, in)
	if err != nil {
		g.seenErr = Problem{Msg: err.Error(), At: g.opts.Now()}
		g.refuse(g.seenErr)
		return g.rebuild(in)
	}
	g.seenErr, g.configErr = Problem{}, Problem{}
	g.accept(want, h, in)
	return want, h
}

// rebuild derives the wanted configuration's files anew with the current
// inputs; g.mu is held.
func (g *Gateway) rebuild(in inputs) (desired, string) {
	h := hash(g.wanted.meshData, g.wanted.siteData, in.encode())
	if h == g.wantedHash {
		return g.wanted, g.wantedHash
	}
	want, _, err := parseConfig(g.opts, g.key, g.wanted.meshData, g.wanted.siteData, in)
	if err != nil {
		return g.wanted, g.wantedHash // they were valid; inputs never make them invalid
	}
	g.accept(want, h, in)
	return want, h
}

// accept makes want the wanted configuration and saves its inputs if they
// changed; g.mu is held.
func (g *Gateway) accept(want desired, h string, in inputs) {
	g.takeDiscovery(want)
	g.log.Info("configuration changed", "config", short(h), "peers", len(want.tunnel.Peers), "services", len(want.services))
	g.wanted, g.wantedHash = want, h
	if g.disc != nil && !bytes.Equal(in.encode(), g.inputs.encode()) {
		if err := saveInputs(filepath.Join(g.opts.StateDir, DiscoveredName), in); err != nil {
			g.log.Warn("saving what was learned", "err", err)
		}
		g.inputs = in
	}
}

// refuse records a refused configuration; it is logged once per message.
func (g *Gateway) refuse(p Problem) {
	if p.Msg != g.configErr.Msg {
		g.log.Error("configuration refused; running on the last good one", "running", short(g.currentHash), "err", p.Msg)
	}
	g.configErr = p
}

// allocate serves the configuration's requests on a copy of the
// allocations and saves the copy durably before it takes its place: an
// address is never programmed before it is on disk. Requests that cannot
// be served (an exhausted pool) are reported, not fatal; a failed save
// keeps the allocations as they were.
func (g *Gateway) allocate(want desired) error {
	g.mu.Lock()
	st := g.alloc.State()
	g.mu.Unlock()
	next, err := natpool.NewAllocator(want.block, want.pools, st, want.holdDown, g.opts.Now)
	if err != nil {
		return fmt.Errorf("allocations: %w", err)
	}
	changed, errs := next.Sync(want.requests)
	if changed {
		if err := g.store.Save(next.State()); err != nil {
			return fmt.Errorf("saving allocations to %s: %w", g.store.Where(), err)
		}
	}
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, m := range msgs {
		if !contains(g.allocErrs, m) {
			g.log.Error("allocation failed", "err", m)
		}
	}
	g.alloc, g.allocErrs = next, msgs
	return nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// apply brings the device and the NAT table to want with the current
// allocations; both are idempotent and touch only what differs.
func (g *Gateway) apply(ctx context.Context, want desired) (nat.Program, error) {
	if err := g.engine.Apply(ctx, want.tunnel); err != nil {
		return nat.Program{}, err
	}
	return g.syncNAT(want)
}

// syncNAT programs the table for want with the current allocations. A
// table that drifted from what was programmed is rewritten whole.
func (g *Gateway) syncNAT(want desired) (nat.Program, error) {
	g.mu.Lock()
	prog := program(want, g.alloc.Lookup)
	programmed := g.ready
	g.mu.Unlock()
	if programmed {
		ok, err := g.nat.Verify()
		if err != nil {
			return nat.Program{}, err
		}
		if !ok {
			g.mu.Lock()
			g.drifts++
			g.mu.Unlock()
			g.log.Warn("NAT table drifted from what was programmed; rewriting it", "table", nat.TableName)
		}
	}
	st, err := g.nat.Sync(prog)
	if err != nil {
		return nat.Program{}, err
	}
	if st.Full || st.Added+st.Removed > 0 {
		g.log.Info("NAT table programmed", "table", nat.TableName, "whole", st.Full, "added", st.Added, "removed", st.Removed,
			"services", st.ServiceElements, "egressPods", st.EgressPodEntries)
	}
	return prog, nil
}

func hash(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		sum := sha256.Sum256(bytes.TrimSpace(p))
		h.Write(sum[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
