package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/dnsserver"
	"github.com/straitnet/strait/discovery/gossip"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/discovery/trustfile"
	"github.com/straitnet/strait/gateway/meshconf"
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
	// started is the section the gateway started with: what cannot change
	// without a restart (bind, DNS, CA, identity) is compared with it.
	started meshconf.Discovery

	dns     *dnsserver.Server
	dnsPC   net.PacketConn // bound at start, served by the loop
	dnsLn   net.Listener
	kube    *kubesource.Source // nil without Kubernetes
	kubeRun context.CancelFunc

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
	ds := &discovery{cat: cat, log: opts.Logger.With("component", "discovery", "site", opts.Site), started: *d, seeds: d.Seeds, keys: d.GossipKeys}
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
	}
	return ds, nil
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
// the DNS server, the Kubernetes source, the joiner and the watcher that
// keeps DNS and the cluster's ServiceImports in line with the catalog.
// kick asks the loop for a pass.
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
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-ds.kube.Changed():
					kick()
				}
			}
		})
	}
	wg.Go(func() { ds.joinLoop(ctx) })
	wg.Go(func() { ds.watch(ctx, kick) })
}

// watch follows the catalog: every change updates DNS, the cluster's
// ServiceImports and its exports' conditions, and asks for a pass (the
// learned sites may have changed). Writes to the API that fail are
// retried every few seconds.
func (ds *discovery) watch(ctx context.Context, kick func()) {
	var last uint64
	retry := time.NewTicker(3 * time.Second)
	defer retry.Stop()
	kubeDirty := true
	for {
		changed := ds.cat.Changed()
		snap := ds.cat.Snapshot()
		if snap.Generation != last || last == 0 {
			last = snap.Generation
			if ds.dns != nil {
				ds.dns.Update(snap)
			}
			kubeDirty = true
			kick()
		}
		if kubeDirty && ds.kube != nil && ds.kube.Synced() {
			err := errors.Join(ds.kube.SyncImports(ctx, snap), ds.kube.SyncExportStatus(ctx, snap))
			ds.mu.Lock()
			prev := ds.kubeErr
			ds.kubeErr = ""
			if err != nil {
				ds.kubeErr = err.Error()
			}
			ds.mu.Unlock()
			switch {
			case err == nil:
				kubeDirty = false
			case err.Error() != prev && ctx.Err() == nil:
				ds.log.Error("syncing ServiceImports and export conditions failed; retrying", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry.C:
			ds.cat.Expire()
			if ds.kube != nil && !kubeDirty {
				// Conditions name exports the catalog does not know
				// yet; another look after the source changed.
				kubeDirty = true
			}
		}
	}
}

// joinLoop joins through the seeds while this gateway sees no other
// member: at start, and again if it ever finds itself alone (a partition
// in which every other member was declared dead does not heal by itself).
func (ds *discovery) joinLoop(ctx context.Context) {
	backoff := time.Second
	for {
		ds.mu.Lock()
		seeds := slices.Clone(ds.seeds)
		ds.mu.Unlock()
		wait := 10 * time.Second
		if len(seeds) > 0 && ds.alive() <= 1 {
			n, err := ds.gossip.Join(seeds)
			ds.mu.Lock()
			prev := ds.joinErr
			ds.joinErr = ""
			if err != nil && n == 0 {
				ds.joinErr = fmt.Sprintf("joining through %v: %v", seeds, err)
			}
			msg := ds.joinErr
			ds.mu.Unlock()
			if msg != "" {
				if msg != prev {
					ds.log.Warn("cannot join the mesh yet; retrying", "err", msg)
				}
				wait, backoff = backoff, min(2*backoff, 30*time.Second)
			} else {
				ds.log.Info("joined the mesh", "through", n, "members", ds.alive())
				backoff = time.Second
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
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
func (ds *discovery) publish(want desired, self *meshconf.Site, pub wgtypes.Key, lookup func(string) (netip.Addr, bool)) error {
	c := catalog.Cluster{
		Region: ds.started.Region, PublicKey: pub.String(), Gossip: ds.started.AdvertiseAddr(self),
		Block: self.Block, CIDRs: self.CIDRs, Routable: self.Routable,
	}
	if self.Endpoint != "" {
		c.Endpoints = []string{self.Endpoint}
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
	rs, err := ds.cat.Publish(c, svcs)
	if err != nil {
		return fmt.Errorf("discovery: publish: %w", err)
	}
	if len(rs) > 0 {
		ds.gossip.Publish(rs)
		ds.log.Info("published", "records", len(rs), "services", len(svcs))
	}
	return nil
}

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
	Problems []string          `json:"problems,omitempty"`
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
	ds.mu.Lock()
	defer ds.mu.Unlock()
	st.Problems = slices.Clone(ds.problems)
	for _, e := range []string{ds.joinErr, ds.kubeErr} {
		if e != "" {
			st.Problems = append(st.Problems, e)
		}
	}
	return st
}
