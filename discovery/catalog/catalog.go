package catalog

import (
	"bytes"
	"cmp"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// Options configure a Catalog. Zero values take the documented defaults.
type Options struct {
	// CA is the mesh's certificate authority's public key. Required.
	CA ed25519.PublicKey
	// Identity is this cluster's certificate and key. Required.
	Identity Identity
	// MaxSkew is how far in the future a version may lie (clocks differ);
	// default 1m. Records beyond it are refused: accepted, they would win
	// every merge until the clock caught up.
	MaxSkew time.Duration
	// TombstoneTTL is how long a deletion is kept, so that every member
	// hears of it before it is forgotten; default 24h.
	TombstoneTTL time.Duration
	// MaxPending bounds the records kept waiting for their owner's
	// cluster record; default 10,000.
	MaxPending int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (o *Options) defaults() error {
	if len(o.CA) != ed25519.PublicKeySize {
		return errors.New("catalog: no CA public key")
	}
	if err := o.Identity.Check(); err != nil {
		return err
	}
	if o.MaxSkew == 0 {
		o.MaxSkew = time.Minute
	}
	if o.TombstoneTTL == 0 {
		o.TombstoneTTL = 24 * time.Hour
	}
	if o.MaxPending == 0 {
		o.MaxPending = 10000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// Reasons a record is refused, as counted in Stats.
const (
	RejectMalformed = "malformed"
	RejectForged    = "forged"   // bad signature, or not the owner's key
	RejectCert      = "cert"     // certificate not the CA's, expired, or not the owner's
	RejectBlock     = "block"    // a cluster claiming a block its certificate does not give it
	RejectFuture    = "future"   // a version beyond the allowed clock skew
	RejectOwnRecord = "own"      // someone else's copy of one of ours, newer than ours
	RejectPending   = "overflow" // no room to wait for the owner's cluster record
)

// Stats counts what the catalog did with what it received.
type Stats struct {
	Accepted uint64            `json:"accepted"`
	Stale    uint64            `json:"stale"` // older than or equal to what it had
	Rejected map[string]uint64 `json:"rejected"`
	Pending  int               `json:"pending"`
	// LastChange is when the catalog last changed: a mesh whose gateways
	// all show it long past has converged.
	LastChange time.Time `json:"lastChange,omitzero"`
}

// Catalog holds the mesh's records.
type Catalog struct {
	opts  Options
	self  string
	clock Clock

	mu      sync.Mutex // guards the fields below
	records map[Key]Record
	// sums summarise each owner's records, kept with every write.
	sums map[string]OwnerSum
	// pending are verified-for-shape records whose owner's certificate
	// is not known yet, by owner.
	pending map[string]map[Key]Record
	// alive says which owners gossip reports as up.
	alive   map[string]bool
	stats   Stats
	gen     uint64
	changed chan struct{} // closed and replaced on every change
}

// New makes a catalog for the cluster of opts.Identity.
func New(opts Options) (*Catalog, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	if err := opts.Identity.Cert.Verify(opts.CA, opts.Now()); err != nil {
		return nil, fmt.Errorf("catalog: this cluster's own %v", err)
	}
	return &Catalog{
		opts: opts, self: opts.Identity.Cert.Cluster, clock: Clock{Now: opts.Now},
		records: map[Key]Record{}, sums: map[string]OwnerSum{}, pending: map[string]map[Key]Record{}, alive: map[string]bool{},
		stats: Stats{Rejected: map[string]uint64{}}, changed: make(chan struct{}),
	}, nil
}

// Self is this cluster's name.
func (c *Catalog) Self() string { return c.self }

// RejectError says why a record was refused.
type RejectError struct {
	Reason string
	Key    Key
	Err    error
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("catalog: %s refused (%s): %v", e.Key, e.Reason, e.Err)
}

func (e *RejectError) Unwrap() error { return e.Err }

func reject(reason string, k Key, format string, args ...any) error {
	return &RejectError{Reason: reason, Key: k, Err: fmt.Errorf(format, args...)}
}

// Merge takes a record from another member. If the catalog changed, it
// returns the record to pass on (the one given, or, for a record of this
// cluster's own from a previous life, the record that supersedes it); if
// the record was refused, why. Refusals are counted.
func (c *Catalog) Merge(r Record) (*Record, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pass, err := c.merge(r)
	var rej *RejectError
	if errors.As(err, &rej) {
		c.stats.Rejected[rej.Reason]++
	}
	if pass != nil {
		c.notify()
	}
	return pass, err
}

func (c *Catalog) merge(r Record) (*Record, error) {
	if err := r.check(); err != nil {
		return nil, reject(RejectMalformed, r.Key, "%v", err)
	}
	now := c.opts.Now()
	if VersionTime(r.Version).After(now.Add(c.opts.MaxSkew)) {
		return nil, reject(RejectFuture, r.Key, "version of %s is beyond the allowed skew of %s", VersionTime(r.Version).UTC().Format(time.RFC3339), c.opts.MaxSkew)
	}
	if r.Deleted && VersionTime(r.Version).Before(now.Add(-c.opts.TombstoneTTL)) {
		// A tombstone this catalog may already have forgotten (Expire):
		// taken back, it would bounce between members forever.
		c.stats.Stale++
		return nil, nil
	}
	if r.Owner == c.self {
		return c.mergeOwn(r)
	}
	if cur, ok := c.records[r.Key]; ok && !newer(r, cur) {
		c.stats.Stale++
		return nil, nil
	}
	key, err := c.ownerKey(r)
	if err != nil {
		return nil, err
	}
	if key == nil {
		// The owner's cluster record (and certificate) has not arrived
		// yet: wait for it.
		p := c.pending[r.Owner]
		old, had := p[r.Key]
		if !had && c.stats.Pending >= c.opts.MaxPending {
			return nil, reject(RejectPending, r.Key, "%d records already wait for their owners' cluster records", c.stats.Pending)
		}
		if p == nil {
			p = map[Key]Record{}
			c.pending[r.Owner] = p
		}
		if !had || newer(r, old) {
			if !had {
				c.stats.Pending++
			}
			p[r.Key] = r
		}
		return nil, nil
	}
	if !r.verify(key) {
		return nil, reject(RejectForged, r.Key, "the signature is not %s's", r.Owner)
	}
	c.put(r)
	c.stats.Accepted++
	if r.Kind == KindCluster {
		c.release(r.Owner)
	}
	return &r, nil
}

// mergeOwn handles a copy of one of this cluster's own records. Stale
// copies are ignored. A newer one was written by this cluster's key in a
// previous life (a restart lost it): it is superseded at a newer version by
// what this cluster publishes now under that key, or by a tombstone, so
// that what the cluster no longer exports does not linger at its peers.
func (c *Catalog) mergeOwn(r Record) (*Record, error) {
	cur, ok := c.records[r.Key]
	if ok && r.Version <= cur.Version {
		c.stats.Stale++
		return nil, nil
	}
	if !r.verify(c.opts.Identity.Cert.Key) {
		return nil, reject(RejectForged, r.Key, "claims to be this cluster's, but is not signed by its key")
	}
	next := Record{Key: r.Key, Deleted: true}
	if ok && !cur.Deleted {
		next = cur
	}
	c.clock.Observe(r.Version)
	next.Version = c.clock.Next()
	next.Sign(c.opts.Identity.Key)
	c.put(next)
	return &next, nil
}

// ownerKey returns the key that must have signed r: for a cluster record,
// the one its own certificate certifies (checked against the CA, the owner
// and the block); for other records, the one of the owner's cluster record
// (nil if there is none yet).
func (c *Catalog) ownerKey(r Record) (ed25519.PublicKey, error) {
	if r.Kind == KindCluster && !r.Deleted {
		cert := r.Cluster.Cert
		if err := cert.Verify(c.opts.CA, c.opts.Now()); err != nil {
			return nil, reject(RejectCert, r.Key, "%v", err)
		}
		if cert.Cluster != r.Owner {
			return nil, reject(RejectCert, r.Key, "certificate is %q's, not %q's", cert.Cluster, r.Owner)
		}
		if cert.Block != r.Cluster.Block {
			return nil, reject(RejectBlock, r.Key, "claims block %s, its certificate gives %s", r.Cluster.Block, cert.Block)
		}
		return cert.Key, nil
	}
	own, ok := c.records[Key{Kind: KindCluster, Owner: r.Owner}]
	if !ok || own.Deleted {
		return nil, nil
	}
	return own.Cluster.Cert.Key, nil
}

// release merges what waited for owner's cluster record.
func (c *Catalog) release(owner string) {
	p := c.pending[owner]
	delete(c.pending, owner)
	c.stats.Pending -= len(p)
	for _, r := range p {
		if _, err := c.merge(r); err != nil {
			var rej *RejectError
			if errors.As(err, &rej) {
				c.stats.Rejected[rej.Reason]++
			}
		}
	}
}

// newer decides between two versions of a record: the higher version
// wins; equal versions (one owner never writes two) break the tie by
// content, so every member picks the same.
func newer(a, b Record) bool {
	if a.Version != b.Version {
		return a.Version > b.Version
	}
	return bytes.Compare(a.signed(), b.signed()) > 0
}

// Publish makes this cluster's records what is given: a new version of
// every record that changed, tombstones for services gone (and for every
// global service and policy: see PublishAll). It returns the records to
// broadcast.
func (c *Catalog) Publish(cluster Cluster, services []Service) ([]Record, error) {
	return c.PublishAll(Local{Cluster: cluster, Services: services})
}

// Local is everything a cluster publishes.
type Local struct {
	Cluster        Cluster
	Services       []Service
	GlobalServices []meshpolicy.GlobalService
	Policies       []meshpolicy.Policy
}

// PublishAll makes this cluster's records what is given: a new version
// of every record that changed, tombstones for those gone. It returns the
// records to broadcast.
func (c *Catalog) PublishAll(l Local) ([]Record, error) {
	cluster, services := l.Cluster, l.Services
	cluster.Cert = c.opts.Identity.Cert
	if cluster.Block != cluster.Cert.Block {
		return nil, fmt.Errorf("catalog: this cluster's block %s is not its certificate's %s", cluster.Block, cluster.Cert.Block)
	}
	want := map[Key]Record{{Kind: KindCluster, Owner: c.self}: {Key: Key{Kind: KindCluster, Owner: c.self}, Cluster: &cluster}}
	for i := range services {
		s := services[i]
		k := Key{Kind: KindService, Owner: c.self, Name: s.Namespace + "/" + s.Name}
		if _, dup := want[k]; dup {
			return nil, fmt.Errorf("catalog: service %s published twice", k.Name)
		}
		want[k] = Record{Key: k, Service: &s}
	}
	for i := range l.GlobalServices {
		g := l.GlobalServices[i]
		k := Key{Kind: KindGlobalService, Owner: c.self, Name: g.Key()}
		if _, dup := want[k]; dup {
			return nil, fmt.Errorf("catalog: global service %s published twice", k.Name)
		}
		want[k] = Record{Key: k, GlobalService: &g}
	}
	for i := range l.Policies {
		p := l.Policies[i]
		k := Key{Kind: KindPolicy, Owner: c.self, Name: p.Name}
		if _, dup := want[k]; dup {
			return nil, fmt.Errorf("catalog: policy %s published twice", k.Name)
		}
		want[k] = Record{Key: k, Policy: &p}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Record
	write := func(r Record) error {
		r.Version = c.clock.Next()
		r.Sign(c.opts.Identity.Key)
		if err := r.check(); err != nil {
			return err
		}
		if b, err := r.Encode(); err != nil || len(b) > MaxRecordSize {
			return fmt.Errorf("catalog: %s: %d bytes encoded, more than a record holds (%d)", r.Key, len(b), MaxRecordSize)
		}
		c.put(r)
		out = append(out, r)
		return nil
	}
	// The cluster record first: peers verify the others with it.
	keys := slices.SortedFunc(maps.Keys(want), func(a, b Key) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	for _, k := range keys {
		w := want[k]
		if cur, ok := c.records[k]; ok && !cur.Deleted && sameContent(cur, w) {
			continue
		}
		if err := write(w); err != nil {
			return nil, err
		}
	}
	for k, cur := range c.records {
		if k.Owner == c.self && !cur.Deleted {
			if _, ok := want[k]; !ok {
				if err := write(Record{Key: k, Deleted: true}); err != nil {
					return nil, err
				}
			}
		}
	}
	if len(out) > 0 {
		c.notify()
	}
	return out, nil
}

func sameContent(a, b Record) bool {
	a.Version, b.Version, a.Sig, b.Sig = 0, 0, nil, nil
	return bytes.Equal(a.signed(), b.signed())
}

// Expire forgets tombstones older than the TTL. It returns how many.
func (c *Catalog) Expire() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	cutoff := c.opts.Now().Add(-c.opts.TombstoneTTL)
	for k, r := range c.records {
		if r.Deleted && VersionTime(r.Version).Before(cutoff) {
			c.remove(k)
			n++
		}
	}
	return n
}

// SetAlive records whether gossip sees an owner as up.
func (c *Catalog) SetAlive(owner string, alive bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.alive[owner] != alive {
		c.alive[owner] = alive
		c.notify()
	}
}

// put stores a record; c.mu is held.
func (c *Catalog) put(r Record) {
	c.remove(r.Key)
	c.records[r.Key] = r
	s := c.sums[r.Owner]
	s.Records++
	s.Sum += r.digest()
	c.sums[r.Owner] = s
}

// remove forgets a record; c.mu is held.
func (c *Catalog) remove(k Key) {
	old, ok := c.records[k]
	if !ok {
		return
	}
	delete(c.records, k)
	s := c.sums[k.Owner]
	s.Records--
	s.Sum -= old.digest()
	if s.Records == 0 {
		delete(c.sums, k.Owner)
	} else {
		c.sums[k.Owner] = s
	}
}

// OwnerSum summarises the records of one owner: two catalogs with equal
// sums for an owner hold the same records of it (to the odds of a 64-bit
// hash collision). Anti-entropy compares sums and exchanges only the
// records of owners whose sums differ, instead of whole catalogs.
type OwnerSum struct {
	Records int    `json:"n"`
	Sum     uint64 `json:"s"`
}

// Digest is the sums of every owner a catalog holds records of.
type Digest map[string]OwnerSum

// Digest returns the catalog's digest.
func (c *Catalog) Digest() Digest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.sums)
}

// RecordsOf returns the records of the given owners, tombstones included.
func (c *Catalog) RecordsOf(owners ...string) []Record {
	want := map[string]bool{}
	for _, o := range owners {
		want[o] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Record
	for k, r := range c.records {
		if want[k.Owner] {
			out = append(out, r)
		}
	}
	return out
}

// Get returns the record of a key, a tombstone included.
func (c *Catalog) Get(k Key) (Record, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.records[k]
	return r, ok
}

// Alive says whether gossip sees an owner as up (this cluster always is).
func (c *Catalog) Alive(owner string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return owner == c.self || c.alive[owner]
}

// Records returns every record, tombstones included: the state exchanged
// in anti-entropy.
func (c *Catalog) Records() []Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.records))
}

// Stats returns the counters.
func (c *Catalog) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.stats
	st.Rejected = maps.Clone(c.stats.Rejected)
	return st
}

// notify wakes the watchers; c.mu is held.
func (c *Catalog) notify() {
	c.gen++
	c.stats.LastChange = c.opts.Now()
	close(c.changed)
	c.changed = make(chan struct{})
}

// Changed returns a channel closed at the next change.
func (c *Catalog) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// Snapshot is the catalog as its consumers see it: live records only.
type Snapshot struct {
	// Generation counts changes; equal generations, equal snapshots.
	Generation uint64
	Self       string
	// Clusters by name, this one included.
	Clusters map[string]Cluster
	// Services, sorted by namespace, name and cluster.
	Services []ClusterService
	// Alive says which clusters gossip sees as up (this one always).
	Alive map[string]bool
	// GlobalServices and Policies are every cluster's declarations, as
	// meshpolicy.Merge takes them.
	GlobalServices []meshpolicy.DeclaredService
	Policies       []meshpolicy.DeclaredPolicy
}

// ClusterService is a service and the cluster exporting it.
type ClusterService struct {
	Cluster string
	Service
}

// Snapshot returns the current view.
func (c *Catalog) Snapshot() Snapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Snapshot{Generation: c.gen, Self: c.self, Clusters: map[string]Cluster{}, Alive: maps.Clone(c.alive)}
	s.Alive[c.self] = true
	for _, r := range c.records {
		if r.Deleted {
			continue
		}
		switch r.Kind {
		case KindCluster:
			s.Clusters[r.Owner] = *r.Cluster
		case KindService:
			s.Services = append(s.Services, ClusterService{Cluster: r.Owner, Service: *r.Service})
		case KindGlobalService:
			s.GlobalServices = append(s.GlobalServices, meshpolicy.DeclaredService{Owner: r.Owner, GlobalService: *r.GlobalService})
		case KindPolicy:
			s.Policies = append(s.Policies, meshpolicy.DeclaredPolicy{Owner: r.Owner, Policy: *r.Policy})
		}
	}
	// Declarations stay when their cluster is gone: a policy written
	// once for the mesh must not lapse while its author is down.
	slices.SortFunc(s.GlobalServices, func(a, b meshpolicy.DeclaredService) int {
		return cmp.Or(cmp.Compare(a.Key(), b.Key()), cmp.Compare(a.Owner, b.Owner))
	})
	slices.SortFunc(s.Policies, func(a, b meshpolicy.DeclaredPolicy) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Owner, b.Owner))
	})
	// A service whose cluster record is gone (a tombstone) goes with it.
	s.Services = slices.DeleteFunc(s.Services, func(cs ClusterService) bool {
		_, ok := s.Clusters[cs.Cluster]
		return !ok
	})
	slices.SortFunc(s.Services, func(a, b ClusterService) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name), cmp.Compare(a.Cluster, b.Cluster))
	})
	return s
}
