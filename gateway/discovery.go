package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/dnsserver"
	"github.com/straitnet/strait/discovery/gossip"
	"github.com/straitnet/strait/discovery/kubepolicy"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/discovery/trustfile"
	"github.com/straitnet/strait/gateway/health"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/internal/atomicfile"
	"github.com/straitnet/strait/natpool"
)

// IdentityName is the identity file's name in the state directory, when
// the mesh file's discovery section names none.
const IdentityName = "identity.json"

// discovery is the gateway's part in the mesh's catalog: its gossip
// member, its DNS server, and its Kubernetes source. It exists when the
// mesh file has a discovery section at start.
type discovery struct {
	cat    *catalog.Catalog
	gossip *gossip.Gossip
	log    *slog.Logger
	// remembered is what the last run learned (DiscoveredName): its
	// sites stand in for the catalog's until gossip has had its time,
	// its exports for the informers' until they synced.
	remembered inputs
	// firstPeer is when gossip first showed another member alive.
	firstPeer time.Time
	// expires is when the identity's certificate runs out.
	expires time.Time
	// started is the section the gateway started with: what cannot change
	// without a restart (bind, DNS, CA, identity) is compared with it.
	started   meshconf.Discovery
	startedAt time.Time

	dns     *dnsserver.Server
	dnsPC   net.PacketConn // bound at start, served by the loop
	dnsLn   net.Listener
	kube    *kubesource.Source // nil without Kubernetes
	kubeRun context.CancelFunc
	// policy reads the cluster's strait.io objects; nil without
	// Kubernetes.
	policy *kubepolicy.Source

	mu sync.Mutex // guards the fields below
	// seeds and keys are the current section's.
	seeds   []string
	keys    [][]byte
	joinErr string
	// problems are why learned clusters or exports are left out, and
	// section changes that need a restart.
	problems []string
	// kubeErr is why the last sync with the cluster's API failed.
	kubeErr string
	// vips and conflicts are what the strait.io objects' status says
	// (the reconcile loop's last pass); policyProblems why objects are
	// left out.
	vips           map[string]netip.Addr
	conflicts      map[string]string
	policyProblems []string
	statusDirty    chan struct{}
}

// startDiscovery loads the identity and opens the gossip and DNS
// listeners. It checks that the identity is this site's: a certificate for
// another cluster or another block would have every peer refuse what this
// gateway publishes.
func startDiscovery(opts Options, d *meshconf.Discovery, me *meshconf.Site) (_ *discovery, err error) {
	path := d.Identity
	if path == "" {
		path = filepath.Join(opts.StateDir, IdentityName)
	}
	id, err := trustfile.LoadIdentity(path, d.CA, opts.Now())
	if err != nil {
		return nil, fmt.Errorf("discovery: identity: %w", err)
	}
	if id.Cert.Cluster != opts.Site {
		return nil, fmt.Errorf("discovery: identity %s certifies cluster %q, but this gateway is site %q", path, id.Cert.Cluster, opts.Site)
	}
	if id.Cert.Block != me.Block {
		return nil, fmt.Errorf("discovery: identity %s certifies block %s, but site %q (line %d) has block %s: "+
			"set the site's block to the certified one, or issue a certificate for %s", path, id.Cert.Block, me.Name, me.Line, me.Block, me.Block)
	}
	cat, err := catalog.New(catalog.Options{CA: d.CA, Identity: id, Now: opts.Now})
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	ds := &discovery{cat: cat, log: opts.Logger.With("component", "discovery", "site", opts.Site), started: *d, startedAt: time.Now(), seeds: d.Seeds, statusDirty: make(chan struct{}, 1), keys: d.GossipKeys, expires: id.Cert.NotAfter}
	defer func() {
		if err != nil {
			ds.close()
		}
	}()
	if d.DNS != "" {
		if ds.dns, err = dnsserver.New(dnsserver.Options{Logger: opts.Logger}); err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		if ds.dnsPC, err = net.ListenPacket("udp", d.DNS); err != nil {
			return nil, fmt.Errorf("discovery: DNS on udp %s: %w", d.DNS, err)
		}
		if ds.dnsLn, err = net.Listen("tcp", d.DNS); err != nil {
			return nil, fmt.Errorf("discovery: DNS on tcp %s: %w", d.DNS, err)
		}
		ds.dns.Update(cat.Snapshot())
	}
	ds.gossip, err = gossip.Start(gossip.Options{
		Catalog: cat, Bind: d.Bind, Advertise: d.AdvertiseAddr(me), Keys: d.GossipKeys, Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	if opts.Kube != nil {
		ds.kube, err = kubesource.New(kubesource.Options{Kube: opts.Kube.Kube, MCS: opts.Kube.MCS, Cluster: opts.Site, Logger: opts.Logger, Now: opts.Now})
		if err != nil {
			return nil, fmt.Errorf("discovery: %w", err)
		}
		if opts.Kube.Dynamic != nil {
			ds.policy, err = kubepolicy.New(kubepolicy.Options{Dynamic: opts.Kube.Dynamic, Cluster: opts.Site, Logger: opts.Logger, Now: opts.Now})
			if err != nil {
				return nil, fmt.Errorf("discovery: %w", err)
			}
		}
	}
	return ds, nil
}

// DiscoveredName is the file in the state directory that keeps what the
// gateway learned (sites, exports) across restarts.
const DiscoveredName = "discovered.json"

// settle is how long after first seeing another member the gateway keeps
// remembered sites the catalog has not shown again: anti-entropy brings
// every live cluster's record within a few rounds.
const settle = 2 * time.Minute

// inputs are the sites the catalog knows and the exports the cluster's API
// has; until gossip settles and the informers sync, what the last run
// learned fills in.
func (ds *discovery) inputs() inputs {
	snap := ds.cat.Snapshot()
	in := inputs{Learned: learned(snap)}
	ds.mu.Lock()
	if ds.firstPeer.IsZero() && ds.alive() > 1 {
		ds.firstPeer = time.Now()
	}
	settled := !ds.firstPeer.IsZero() && time.Since(ds.firstPeer) > settle
	remembered := ds.remembered
	ds.mu.Unlock()
	if !settled {
		for _, s := range remembered.Learned {
			if _, ok := snap.Clusters[s.Name]; !ok && s.Name != snap.Self {
				in.Learned = append(in.Learned, s)
			}
		}
		slices.SortFunc(in.Learned, func(a, b meshconf.Site) int { return strings.Compare(a.Name, b.Name) })
	}
	if ds.kube != nil {
		if ds.kube.Synced() {
			in.Exports = ds.kube.Exports()
		} else {
			in.Exports = remembered.Exports
		}
	}
	if ds.settled() {
		for _, name := range slices.Sorted(maps.Keys(snap.Clusters)) {
			if name != snap.Self && !snap.Alive[name] {
				in.Down = append(in.Down, name)
			}
		}
	}
	if ds.policy != nil {
		if ds.policy.Synced() {
			var problems []string
			in.GlobalServices, in.Policies, problems = ds.policy.Declared()
			ds.mu.Lock()
			ds.policyProblems = problems
			ds.mu.Unlock()
		} else {
			in.GlobalServices, in.Policies = remembered.GlobalServices, remembered.Policies
		}
	}
	return in
}

// loadInputs reads what the last run learned; none if there is no file.
// A file that does not decode stops the start, named: it is the only
// record of the peers and exports to keep while the mesh is relearned.
func loadInputs(path string) (inputs, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return inputs{}, nil
	}
	if err != nil {
		return inputs{}, err
	}
	var in inputs
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return inputs{}, fmt.Errorf("%s is damaged (%v): remove it to start from the mesh file alone and relearn the rest", path, err)
	}
	return in, nil
}

func saveInputs(path string, in inputs) error {
	return atomicfile.Write(path, in.encode(), 0o600, false)
}

// close leaves the mesh (telling the others, so that they need not find
// out by probing) and stops everything.
func (ds *discovery) close() {
	if ds.kubeRun != nil {
		ds.kubeRun()
	}
	if ds.gossip != nil {
		if err := ds.gossip.Leave(time.Second); err != nil {
			ds.log.Warn("leaving the mesh", "err", err)
		}
		ds.gossip.Shutdown()
	}
	if ds.dnsPC != nil {
		ds.dnsPC.Close()
	}
	if ds.dnsLn != nil {
		ds.dnsLn.Close()
	}
}

// run starts what runs alongside the reconcile loop, all stopped by ctx:
// the DNS server, the Kubernetes source and its syncer, the joiner, and
// the watcher that keeps DNS in line with the catalog. kick asks the loop
// for a pass.
func (ds *discovery) run(ctx context.Context, wg *sync.WaitGroup, kick func()) {
	if ds.dns != nil {
		wg.Go(func() {
			if err := ds.dns.Serve(ctx, ds.dnsPC, ds.dnsLn); err != nil {
				ds.log.Error("DNS server stopped", "err", err)
			}
		})
	}
	if ds.kube != nil {
		kctx, cancel := context.WithCancel(ctx)
		ds.kubeRun = cancel
		wg.Go(func() {
			if err := ds.kube.Run(kctx); err != nil && kctx.Err() == nil {
				ds.log.Error("Kubernetes source stopped", "err", err)
			}
		})
		wg.Go(func() { ds.kubeSync(ctx, kick) })
	}
	if ds.policy != nil {
		wg.Go(func() {
			if err := ds.policy.Run(ctx); err != nil && ctx.Err() == nil {
				ds.log.Error("strait.io object source stopped", "err", err)
			}
		})
		wg.Go(func() { ds.policySync(ctx, kick) })
	}
	wg.Go(func() { ds.joinLoop(ctx) })
	wg.Go(func() { ds.watch(ctx, kick) })
}

// watch follows the catalog: every change updates DNS at once, and a
// change of what the gateway programs from it asks for a pass: the sites
// (tunnel, translation), and the instances, health, global services,
// policies and egress addresses (load balancer, firewall). Tombstones past
// their time are dropped on the way.
func (ds *discovery) watch(ctx context.Context, kick func()) {
	var last uint64
	var sites string
	expire := time.NewTicker(time.Minute)
	defer expire.Stop()
	for {
		changed := ds.cat.Changed()
		snap := ds.cat.Snapshot()
		if snap.Generation != last || last == 0 {
			last = snap.Generation
			if ds.dns != nil {
				ds.dns.Update(snap)
			}
			if now := programmed(snap); now != sites {
				sites = now
				kick()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-expire.C:
			ds.cat.Expire()
		}
	}
}

// kubeSync keeps the cluster's ServiceImports and its ServiceExports'
// conditions in line with the catalog, on every change of either; the
// source's changes also ask for a pass (the exports changed). Failed
// writes are retried with backoff; until the informers have synced, the
// status says so.
func (ds *discovery) kubeSync(ctx context.Context, kick func()) {
	started := time.Now()
	backoff := time.Second
	var last uint64
	dirty := true
	for {
		catChanged, kubeChanged := ds.cat.Changed(), ds.kube.Changed()
		snap := ds.cat.Snapshot()
		if snap.Generation != last {
			last, dirty = snap.Generation, true
		}
		var retry <-chan time.Time
		switch {
		case !ds.kube.Synced():
			ds.setKubeErr(fmt.Sprintf("Kubernetes: the informers have not synced since %s (the MCS API's CRDs installed? RBAC?)", started.Format(time.RFC3339)), false)
			retry = time.After(time.Second)
		case dirty:
			err := errors.Join(ds.kube.SyncImports(ctx, snap), ds.kube.SyncExportStatus(ctx, snap))
			if err == nil {
				ds.setKubeErr("", false)
				dirty, backoff = false, time.Second
			} else if ctx.Err() == nil {
				ds.setKubeErr("syncing ServiceImports and export conditions: "+err.Error(), true)
				retry, backoff = time.After(backoff), min(2*backoff, 30*time.Second)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-catChanged:
		case <-kubeChanged:
			// Exports changed: their conditions, and the pass that
			// publishes them.
			dirty = true
			kick()
		case <-retry:
		}
	}
}

// policySync asks for a pass whenever the cluster's strait.io objects
// change, and keeps their status (Accepted, the VIP in use) in line with
// what the last pass made of them.
func (ds *discovery) policySync(ctx context.Context, kick func()) {
	backoff := time.Second
	for {
		changed := ds.policy.Changed()
		var retry <-chan time.Time
		if ds.policy.Synced() {
			ds.mu.Lock()
			vips, conflicts := ds.vips, ds.conflicts
			ds.mu.Unlock()
			if err := ds.policy.SyncStatus(ctx, vips, conflicts); err != nil && ctx.Err() == nil {
				ds.log.Warn("writing the status of strait.io objects; retrying", "err", err)
				retry, backoff = time.After(backoff), min(2*backoff, 30*time.Second)
			} else {
				backoff = time.Second
			}
		} else {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			kick()
		case <-ds.statusDirty:
		case <-retry:
		}
	}
}

// setPolicyStatus records what the strait.io objects' status should say;
// the status is written when it changed.
func (ds *discovery) setPolicyStatus(vips map[string]netip.Addr, conflicts map[string]string) {
	ds.mu.Lock()
	same := maps.Equal(vips, ds.vips) && maps.Equal(conflicts, ds.conflicts)
	ds.vips, ds.conflicts = vips, conflicts
	ds.mu.Unlock()
	if !same {
		select {
		case ds.statusDirty <- struct{}{}:
		default:
		}
	}
}

// setKubeErr records why the Kubernetes side is not in line, logging a
// new reason when log is set.
func (ds *discovery) setKubeErr(msg string, log bool) {
	ds.mu.Lock()
	prev := ds.kubeErr
	ds.kubeErr = msg
	ds.mu.Unlock()
	if log && msg != prev {
		ds.log.Error("Kubernetes sync failed; retrying", "err", msg)
	}
}

// joinLoop joins through the seeds while this gateway sees no other
// member, at start and whenever it finds itself alone; and every half
// minute it tries the gossip addresses of clusters the catalog knows but
// gossip does not see, which heals partitions that left two groups each
// thinking the other dead. Seeds are tried one at a time, so that a stop
// is not held up by a row of unreachable ones.
func (ds *discovery) joinLoop(ctx context.Context) {
	backoff := time.Second
	lastHeal := time.Now()
	for {
		ds.mu.Lock()
		seeds := slices.DeleteFunc(slices.Clone(ds.seeds), func(s string) bool { return s == ds.gossip.Addr() })
		ds.mu.Unlock()
		wait := 10 * time.Second
		switch {
		case len(seeds) > 0 && ds.alive() <= 1:
			err := ds.join(ctx, seeds)
			ds.mu.Lock()
			prev := ds.joinErr
			ds.joinErr = ""
			if err != nil {
				ds.joinErr = fmt.Sprintf("joining through %s: %v", strings.Join(seeds, ", "), err)
			}
			msg := ds.joinErr
			ds.mu.Unlock()
			if msg != "" {
				if msg != prev {
					ds.log.Warn("cannot join the mesh yet; retrying", "err", msg)
				}
				wait, backoff = backoff, min(2*backoff, 30*time.Second)
			} else {
				ds.log.Info("joined the mesh", "members", ds.alive())
				backoff = time.Second
			}
		case time.Since(lastHeal) > 30*time.Second:
			lastHeal = time.Now()
			snap := ds.cat.Snapshot()
			var lost []string
			for name, c := range snap.Clusters {
				if !snap.Alive[name] && c.Gossip != "" {
					lost = append(lost, c.Gossip)
				}
			}
			if len(lost) > 0 && ds.join(ctx, lost) == nil {
				ds.log.Info("rejoined members gossip had lost", "members", ds.alive())
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// join tries addrs one at a time until one lets this gateway see another
// member, or ctx ends.
func (ds *discovery) join(ctx context.Context, addrs []string) error {
	var errs []error
	for _, a := range addrs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if _, err := ds.gossip.Join([]string{a}); err != nil {
			errs = append(errs, err)
			continue
		}
		if ds.alive() > 1 {
			return nil
		}
	}
	if len(errs) == 0 {
		return errors.New("no other member answered")
	}
	return errors.Join(errs...)
}

// alive counts the members seen alive, this one included.
func (ds *discovery) alive() int {
	n := 0
	for _, m := range ds.gossip.Members() {
		if m.State == "alive" || m.State == "suspect" {
			n++
		}
	}
	return n
}

// programmed is what of a snapshot the gateway programs, as text to
// compare: everything but the generation.
func programmed(snap catalog.Snapshot) string {
	snap.Generation = 0
	b, _ := json.Marshal(snap)
	return string(b)
}

// configure takes a new valid discovery section: keys and seeds change at
// once; the rest needs a restart, said in the status.
func (ds *discovery) configure(d *meshconf.Discovery) {
	var restart []string
	if d == nil {
		restart = append(restart, "the discovery section was removed")
	} else {
		s := ds.started
		for _, c := range []struct {
			what    string
			changed bool
		}{
			{"ca", !s.CA.Equal(d.CA)}, {"identity", s.Identity != d.Identity}, {"bind", s.Bind != d.Bind},
			{"advertise", s.Advertise != d.Advertise}, {"dns", s.DNS != d.DNS}, {"region", s.Region != d.Region},
		} {
			if c.changed {
				restart = append(restart, "discovery."+c.what+" changed")
			}
		}
	}
	var problems []string
	for _, r := range restart {
		problems = append(problems, r+": restart the gateway to take it; running on the section it started with")
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	ds.problems = problems
	if d == nil {
		return
	}
	ds.seeds = d.Seeds
	if !slices.EqualFunc(ds.keys, d.GossipKeys, func(a, b []byte) bool { return string(a) == string(b) }) {
		if err := ds.gossip.SetKeys(d.GossipKeys); err != nil {
			ds.problems = append(ds.problems, fmt.Sprintf("gossip keys: %v", err))
			return
		}
		ds.keys = d.GossipKeys
		ds.log.Info("gossip keys changed", "keys", len(d.GossipKeys))
	}
}

// learned is the strait sites of the catalog, other than this one, as the
// mesh file would list them.
func learned(snap catalog.Snapshot) []meshconf.Site {
	var out []meshconf.Site
	for name, c := range snap.Clusters {
		if name == snap.Self {
			continue
		}
		key, err := wgtypes.ParseKey(c.PublicKey)
		if err != nil {
			continue // the catalog checks keys; never here
		}
		s := meshconf.Site{
			Name: name, PublicKey: key, Block: c.Block, CIDRs: c.CIDRs, Routable: c.Routable,
			ListenPort: meshconf.DefaultListenPort, PersistentKeepalive: meshconf.DefaultPersistentKeepalive,
		}
		if len(c.Endpoints) > 0 {
			s.Endpoint = c.Endpoints[0]
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b meshconf.Site) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// publish puts this cluster's record and its exported services in the
// catalog and gossips what changed. Services get the ingress addresses
// allocated to them; one without an address yet (an exhausted pool) is
// not published: nobody could reach it.
func (ds *discovery) publish(want desired, self *meshconf.Site, pub wgtypes.Key, lookup func(string) (netip.Addr, bool), mp meshDeclared) error {
	c := catalog.Cluster{
		Region: ds.started.Region, PublicKey: pub.String(), Gossip: ds.started.AdvertiseAddr(self),
		Block: self.Block, CIDRs: self.CIDRs, Routable: self.Routable,
	}
	if self.Endpoint != "" {
		c.Endpoints = []string{self.Endpoint}
	}
	if ip, ok := lookup(natpool.EgressDefaultKey()); ok {
		c.Egress = append(c.Egress, catalog.Egress{Addr: ip})
	}
	for _, r := range want.egressRules {
		if ip, ok := lookup(natpool.EgressRuleKey(r.Name)); ok {
			c.Egress = append(c.Egress, catalog.Egress{Addr: ip, Namespace: r.Namespace, Labels: r.Selector})
		}
	}
	var svcs []catalog.Service
	for _, s := range want.exports {
		if !s.Headless {
			addr, ok := lookup(natpool.IngressKey(s.Namespace, s.Name))
			if !ok {
				continue
			}
			s.Addr = addr
		}
		svcs = append(svcs, s)
	}
	svcs = withHealth(svcs, mp.health)
	rs, err := ds.cat.PublishAll(catalog.Local{Cluster: c, Services: svcs, GlobalServices: mp.globalServices, Policies: mp.policies})
	if err != nil {
		return fmt.Errorf("discovery: publish: %w", err)
	}
	if len(rs) > 0 {
		ds.gossip.Publish(rs)
		ds.log.Info("published", "records", len(rs), "services", len(svcs), "globalServices", len(mp.globalServices), "policies", len(mp.policies))
	}
	return nil
}

// meshDeclared is what this site publishes besides itself and its
// exports: its declarations of mesh policy, VIPs filled in, and the
// health of its instances of global services.
type meshDeclared struct {
	globalServices []meshpolicy.GlobalService
	policies       []meshpolicy.Policy
	health         map[string]health.Result
}

// settled says the catalog can be trusted to hold the mesh's policy: this
// gateway joined (a join exchanges whole catalogs), it has no seeds to join
// through, or it has tried long enough. Until then the load balancer and
// the firewall keep what the kernel holds from before a restart.
func (ds *discovery) settled() bool {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return !ds.firstPeer.IsZero() || len(ds.seeds) == 0 || time.Since(ds.startedAt) > settleTimeout
}

// settleTimeout is how long the gateway waits for a first peer before it
// programs the load balancer and firewall from what it alone knows.
const settleTimeout = 20 * time.Second

// takeDiscovery takes the discovery part of a new valid configuration;
// g.mu is held and g.wanted is still the previous one.
func (g *Gateway) takeDiscovery(want desired) {
	if !slices.Equal(want.problems, g.wanted.problems) {
		for _, p := range want.problems {
			if !slices.Contains(g.wanted.problems, p) {
				g.log.Warn("left out of the configuration", "why", p)
			}
		}
	}
	if g.disc != nil {
		g.disc.configure(want.discovery)
	}
}

// DiscoveryStatus is the gateway's view of the catalog and its gossip.
type DiscoveryStatus struct {
	Members []gossip.Member `json:"members"`
	Gossip  gossip.Stats    `json:"gossip"`
	Catalog catalog.Stats   `json:"catalog"`
	// Clusters are the clusters the catalog knows, this one included,
	// and whether gossip sees them alive.
	Clusters map[string]bool `json:"clusters"`
	// Services counts the exported services of every cluster.
	Services int               `json:"services"`
	DNS      *dnsserver.Stats  `json:"dns,omitempty"`
	Kube     *kubesource.Stats `json:"kubernetes,omitempty"`
	// IdentityExpires is when this cluster's certificate runs out: peers
	// refuse its records afterwards.
	IdentityExpires time.Time `json:"identityExpires"`
	Problems        []string  `json:"problems,omitempty"`
}

func (ds *discovery) status() *DiscoveryStatus {
	snap := ds.cat.Snapshot()
	st := &DiscoveryStatus{Members: ds.gossip.Members(), Gossip: ds.gossip.Stats(), Catalog: ds.cat.Stats(),
		Clusters: map[string]bool{}, Services: len(snap.Services)}
	for name := range snap.Clusters {
		st.Clusters[name] = snap.Alive[name]
	}
	if ds.dns != nil {
		s := ds.dns.Stats()
		st.DNS = &s
	}
	if ds.kube != nil {
		s := ds.kube.Stats()
		st.Kube = &s
	}
	st.IdentityExpires = ds.expires
	alive := ds.alive()
	ds.mu.Lock()
	defer ds.mu.Unlock()
	st.Problems = slices.Clone(ds.problems)
	if left := time.Until(ds.expires); left < 30*24*time.Hour {
		st.Problems = append(st.Problems, fmt.Sprintf("the identity's certificate expires at %s (in %s): issue a new one with `strait ca issue` and restart", ds.expires.Format(time.RFC3339), left.Round(time.Hour)))
	}
	st.Problems = append(st.Problems, ds.policyProblems...)
	joinErr := ds.joinErr
	if alive > 1 {
		joinErr = "" // another member joined this one: the failure is past
	}
	for _, e := range []string{joinErr, ds.kubeErr} {
		if e != "" {
			st.Problems = append(st.Problems, e)
		}
	}
	return st
}
