// Package kubepolicy is the Kubernetes side of package meshpolicy: the
// GlobalService and FirewallPolicy custom resources (strait.io/v1alpha1)
// through which a cluster declares global services and firewall policies
// to the mesh.
//
// It owns the resources' CustomResourceDefinitions (crds/, embedded, and
// installed by InstallCRDs), whose spec fields are exactly the JSON fields
// of meshpolicy.GlobalService and meshpolicy.Policy: an object converts
// through JSON, with its namespace and name from metadata, and there are
// no generated types or clientsets.
//
// A Source watches both kinds through dynamic informers and hands the
// valid objects to the gateway (Declared), which publishes them in the
// catalog. An object that the schema let through but meshpolicy's
// validation refuses is not declared; SyncStatus says why on its Accepted
// condition, and says there too when the mesh prefers another cluster's
// declaration (Conflict).
//
// The source owns its informers and their goroutines; all stop when Run's
// context ends. It needs, cluster-wide: list and watch on globalservices
// and firewallpolicies (strait.io), and update on globalservices/status
// and firewallpolicies/status.
package kubepolicy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/ratelog"
	"github.com/straitnet/strait/internal/kubewatch"
)

// Options configure a Source. Zero values take the documented defaults.
type Options struct {
	// Dynamic is the cluster's dynamic API client; the CRDs must be
	// installed (InstallCRDs, or the deploy manifests). Required.
	Dynamic dynamic.Interface
	// Cluster is this cluster's name in the mesh, a DNS label; status
	// messages name it. Required.
	Cluster string
	// Logger receives the package's logs; default: none.
	Logger *slog.Logger
	// Now is the clock of condition timestamps and log rate limits;
	// default time.Now.
	Now func() time.Time
	// Resync is how often the informers hand every cached object back
	// for another look, a safety net that costs no API calls; default
	// 10m, negative disables it.
	Resync time.Duration
}

func (o *Options) defaults() error {
	if o.Dynamic == nil {
		return errors.New("kubepolicy: Options.Dynamic is required")
	}
	if !meshpolicy.ValidName(o.Cluster) {
		return fmt.Errorf("kubepolicy: cluster name %q is not a DNS label", o.Cluster)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.Resync == 0:
		o.Resync = 10 * time.Minute
	case o.Resync < 0:
		o.Resync = 0 // the informers' "never"
	}
	return nil
}

// ErrNotSynced is returned by SyncStatus before the informer caches have
// synced.
var ErrNotSynced = errors.New("kubepolicy: informer caches not synced yet")

// Stats counts what the source declares, refuses and writes.
type Stats struct {
	// Services and Policies are how many valid GlobalServices and
	// FirewallPolicies are declared now.
	Services int `json:"services"`
	Policies int `json:"policies"`
	// Invalid is how many objects are not declared now because they are
	// invalid (Declared's problems).
	Invalid int `json:"invalid"`
	// Refused counts each time an object becomes invalid or its problem
	// changes.
	Refused uint64 `json:"refused"`
	// Conflicts is how many objects the last SyncStatus marked Conflict.
	Conflicts int `json:"conflicts"`
	// Writes counts the status updates of SyncStatus.
	Writes uint64 `json:"writes"`
}

// Source follows the cluster's GlobalServices and FirewallPolicies.
type Source struct {
	opts    Options
	log     *slog.Logger
	lim     *ratelog.Limiter
	factory dynamicinformer.DynamicSharedInformerFactory
	svcs    cache.SharedIndexInformer
	pols    cache.SharedIndexInformer
	// hasSynced are the informers' and their handlers' sync checks.
	hasSynced []cache.InformerSynced
	running   atomic.Bool

	statusMu sync.Mutex // serializes SyncStatus

	mu sync.Mutex // guards the fields below
	// objects are what each object resolves to, by kind and key.
	objects map[string]map[string]resolved
	// The declaration, rebuilt from objects when asked for after a
	// change (stale), so that the initial list of many objects does not
	// sort them once per object.
	stale    bool
	services []meshpolicy.GlobalService
	policies []meshpolicy.Policy
	problems []string
	synced   bool
	changed  chan struct{} // closed and replaced on every change
	stats    Stats
}

// New makes a source; Run starts it.
func New(o Options) (*Source, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	s := &Source{
		opts: o,
		log:  o.Logger.With("component", "kubepolicy", "cluster", o.Cluster),
		lim:  ratelog.New(time.Minute, 10, o.Now),
		objects: map[string]map[string]resolved{
			KindGlobalService:  {},
			KindFirewallPolicy: {},
		},
		services: []meshpolicy.GlobalService{},
		policies: []meshpolicy.Policy{},
		changed:  make(chan struct{}),
	}
	s.factory = dynamicinformer.NewDynamicSharedInformerFactory(o.Dynamic, o.Resync)
	s.svcs = s.factory.ForResource(GlobalServices).Informer()
	s.pols = s.factory.ForResource(FirewallPolicies).Informer()
	for _, w := range []struct {
		inf     cache.SharedIndexInformer
		kind    string
		resolve func(*unstructured.Unstructured) resolved
	}{
		{s.svcs, KindGlobalService, resolveService},
		{s.pols, KindFirewallPolicy, resolvePolicy},
	} {
		reg, err := w.inf.AddEventHandler(s.handler(w.kind, w.resolve))
		if err != nil {
			return nil, fmt.Errorf("kubepolicy: %s handler: %w", w.kind, err)
		}
		what := w.kind
		if err := w.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
			s.watchError(ctx, what, err)
		}); err != nil {
			return nil, fmt.Errorf("kubepolicy: %s: %w", w.kind, err)
		}
		s.hasSynced = append(s.hasSynced, w.inf.HasSynced, reg.HasSynced)
	}
	return s, nil
}

// handler keeps s.objects current for one kind. Resolving is cheap (a
// JSON round trip and the validation), so it runs right in the informer's
// handler goroutine, which also keeps the events of one object in order.
func (s *Source) handler(kind string, resolve func(*unstructured.Unstructured) resolved) cache.ResourceEventHandler {
	set := func(obj any) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return
		}
		key, err := cache.MetaNamespaceKeyFunc(u)
		if err != nil {
			return
		}
		if u.GetDeletionTimestamp() != nil {
			// Going away (held by someone's finalizer): no longer
			// declared.
			s.update(kind, key, nil)
			return
		}
		r := resolve(u)
		s.update(kind, key, &r)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    set,
		UpdateFunc: func(_, cur any) { set(cur) },
		DeleteFunc: func(obj any) {
			key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
			if err == nil {
				s.update(kind, key, nil)
			}
		},
	}
}

// update records what the object key of kind resolves to (nil: it is
// gone) and, if the declaration changes, wakes the watchers.
func (s *Source) update(kind, key string, r *resolved) {
	s.mu.Lock()
	objs := s.objects[kind]
	old, had := objs[key]
	switch {
	case r == nil && !had:
		s.mu.Unlock()
		return
	case r == nil:
		delete(objs, key)
	case had && old.equal(*r):
		s.mu.Unlock()
		return
	default:
		objs[key] = *r
	}
	newProblem := r != nil && !r.valid() && (!had || old.valid() || old.why() != r.why())
	if newProblem {
		s.stats.Refused++
	}
	s.stale = true
	if s.synced {
		s.notify()
	}
	s.mu.Unlock()

	if newProblem {
		if ok, suppressed := s.lim.Allow("invalid"); ok {
			s.log.Warn("kubepolicy: object not declared to the mesh", "kind", kind, "key", key, "why", r.why(), "suppressed", suppressed)
		}
	}
}

// rebuild remakes the declaration and the gauges if they are stale;
// s.mu is held.
func (s *Source) rebuild() {
	if !s.stale {
		return
	}
	s.stale = false
	s.services = make([]meshpolicy.GlobalService, 0, len(s.objects[KindGlobalService]))
	s.policies = make([]meshpolicy.Policy, 0, len(s.objects[KindFirewallPolicy]))
	s.problems = nil
	for _, r := range s.objects[KindGlobalService] {
		if r.valid() {
			s.services = append(s.services, r.svc)
		} else {
			s.problems = append(s.problems, r.problem())
		}
	}
	for _, r := range s.objects[KindFirewallPolicy] {
		if r.valid() {
			s.policies = append(s.policies, r.pol)
		} else {
			s.problems = append(s.problems, r.problem())
		}
	}
	slices.SortFunc(s.services, func(a, b meshpolicy.GlobalService) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	slices.SortFunc(s.policies, func(a, b meshpolicy.Policy) int { return cmp.Compare(a.Name, b.Name) })
	slices.Sort(s.problems)
	s.stats.Services, s.stats.Policies, s.stats.Invalid = len(s.services), len(s.policies), len(s.problems)
}

// notify wakes the watchers; s.mu is held.
func (s *Source) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Source) watchError(ctx context.Context, kind string, err error) {
	if kubewatch.Routine(ctx, err) {
		return
	}
	hint := ""
	if apierrors.IsNotFound(err) {
		hint = "; are the strait.io CRDs installed?"
	}
	if ok, suppressed := s.lim.Allow("watch " + kind); ok {
		s.log.Warn("kubepolicy: list and watch failed, retrying"+hint, "kind", kind, "err", err, "suppressed", suppressed)
	}
}

// Run starts the informers and keeps the declaration current until ctx
// ends; it returns when every goroutine it started has stopped. It may be
// called once.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("kubepolicy: Run called twice")
	}
	s.factory.Start(ctx.Done())
	// Shutdown waits for the informers, which stop with ctx.
	defer s.factory.Shutdown()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !s.cachesSynced() {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	tick.Stop()
	s.mu.Lock()
	s.synced = true
	s.notify()
	s.rebuild()
	st := s.stats
	s.mu.Unlock()
	s.log.Info("kubepolicy: caches synced", "services", st.Services, "policies", st.Policies, "invalid", st.Invalid)
	<-ctx.Done()
	return nil
}

func (s *Source) cachesSynced() bool {
	for _, f := range s.hasSynced {
		if !f() {
			return false
		}
	}
	return true
}

// Synced says whether the caches have synced and the declaration is
// known.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Changed returns a channel closed at the next change of what Declared
// returns; the first close comes when the caches have synced. Status
// writes, and edits that change nothing a declaration says, do not close
// it.
func (s *Source) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Declared returns the valid GlobalServices (by namespace and name) and
// FirewallPolicies (by name) as meshpolicy values, and a line for each
// invalid object, sorted, such as
//
//	FirewallPolicy deny-db: rules[0].from[0].labels: a b=c is not a valid label
//
// All are nil until the caches have synced, so that a partial view is
// never published; services and policies are never nil after. The maps
// and slices inside the values are shared: do not modify them.
func (s *Source) Declared() (services []meshpolicy.GlobalService, policies []meshpolicy.Policy, problems []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return nil, nil, nil
	}
	s.rebuild()
	return slices.Clone(s.services), slices.Clone(s.policies), slices.Clone(s.problems)
}

// Stats returns the counters.
func (s *Source) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rebuild()
	return s.stats
}
