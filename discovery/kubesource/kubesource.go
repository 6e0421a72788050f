// Package kubesource connects a Kubernetes cluster to the mesh catalog, in
// both directions, through the Multi-Cluster Services API
// (multicluster.x-k8s.io/v1alpha1).
//
// Out: it watches ServiceExports, Services and EndpointSlices and turns
// every Service that has a ServiceExport of the same namespace and name
// into an Export, which the gateway publishes in the catalog. What cannot
// be exported (no Service, an ExternalName Service, IPv6 only, ports the
// catalog cannot carry) is refused, logged once and said on the
// ServiceExport's conditions.
//
// In: SyncImports makes the cluster's ServiceImports match the services
// other clusters export, and SyncExportStatus sets the ServiceExports'
// conditions (Valid, Ready, Conflict) from a catalog snapshot. Both only
// write what differs, and only touch ServiceImports labelled
// app.kubernetes.io/managed-by=strait.
//
// The package owns its informers and the goroutines of Run; everything
// stops when Run's context ends. It needs, cluster-wide: list and watch
// on services, namespaces, endpointslices (discovery.k8s.io),
// serviceexports and serviceimports (multicluster.x-k8s.io); update on
// serviceexports/status; create, update and delete on serviceimports and
// update on serviceimports/status.
package kubesource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"
	mcsinformers "sigs.k8s.io/mcs-api/pkg/client/informers/externalversions"
	mcslisters "sigs.k8s.io/mcs-api/pkg/client/listers/apis/v1alpha1"

	"github.com/straitnet/strait/gateway/ratelog"
	"github.com/straitnet/strait/internal/kubewatch"
)

// Options configure a Source. Zero values take the documented defaults.
type Options struct {
	// Kube is the cluster's API client. Required.
	Kube kubernetes.Interface
	// MCS is the client of the Multi-Cluster Services API group, whose
	// CRDs must be installed. Required.
	MCS mcsclient.Interface
	// Cluster is this cluster's name in the mesh, a DNS label. Required;
	// the snapshots given to SyncImports and SyncExportStatus must be
	// this cluster's (their Self).
	Cluster string
	// Logger receives the package's logs; default: none.
	Logger *slog.Logger
	// Resync is how often the informers hand every cached Service and
	// ServiceExport back for another look, a safety net that costs no
	// API calls; default 10m, negative disables it.
	Resync time.Duration
	// SettleTimeout bounds how long a sync waits for the informer cache
	// to show its own writes, so that the next sync compares against
	// them; default 10s.
	SettleTimeout time.Duration
	// Now is the clock of condition timestamps and log rate limits;
	// default time.Now.
	Now func() time.Time
}

func (o *Options) defaults() error {
	if o.Kube == nil || o.MCS == nil {
		return errors.New("kubesource: Options.Kube and Options.MCS are required")
	}
	if !dnsLabel(o.Cluster) {
		return fmt.Errorf("kubesource: cluster name %q is not a DNS label", o.Cluster)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case o.Resync == 0:
		o.Resync = 10 * time.Minute
	case o.Resync < 0:
		o.Resync = 0 // the informers' "never"
	}
	if o.SettleTimeout == 0 {
		o.SettleTimeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return nil
}

// ErrNotSynced is returned by the sync methods before the informer caches
// have synced: against a partial cache they would delete what they have
// not seen yet.
var ErrNotSynced = errors.New("kubesource: informer caches not synced yet")

// Stats counts what the source refused and what its syncs did.
type Stats struct {
	// Exports is how many services are exported now.
	Exports int `json:"exports"`
	// Invalid is how many ServiceExports are refused now.
	Invalid int `json:"invalid"`
	// Refused counts refusals by reason (Reason* constants), each time a
	// ServiceExport becomes refused or its reason changes.
	Refused map[string]uint64 `json:"refused"`
	// From the last SyncImports: services whose namespace does not exist
	// here (no ServiceImport is made: namespaces are the cluster
	// owner's), ServiceImports in the way that strait does not manage
	// (left alone), services whose exporters disagree on ports or type,
	// and services with more exporters than spec.ips can list.
	ImportsNoNamespace int `json:"importsNoNamespace"`
	ImportsUnmanaged   int `json:"importsUnmanaged"`
	ImportConflicts    int `json:"importConflicts"`
	ImportIPsTruncated int `json:"importIPsTruncated"`
	// Writes counts the API writes of the syncs (creates, updates,
	// status updates, deletes).
	Writes uint64 `json:"writes"`
}

// Source is the Kubernetes side of the catalog for one cluster.
type Source struct {
	opts Options
	log  *slog.Logger
	lim  *ratelog.Limiter

	kubeFactory informers.SharedInformerFactory
	mcsFactory  mcsinformers.SharedInformerFactory
	services    corelisters.ServiceLister
	slices      discoverylisters.EndpointSliceLister
	namespaces  corelisters.NamespaceLister
	exportObjs  mcslisters.ServiceExportLister
	importObjs  mcslisters.ServiceImportLister
	// hasSynced are the informers' and their handlers' sync checks.
	hasSynced []cache.InformerSynced
	running   atomic.Bool
	kick      chan struct{} // one slot: dirty has keys to look at

	importMu sync.Mutex // serializes SyncImports
	statusMu sync.Mutex // serializes SyncExportStatus

	mu sync.Mutex // guards the fields below
	// dirty are the namespace/name keys to look at again.
	dirty map[string]struct{}
	// state is what each ServiceExport resolves to, by namespace/name.
	state map[string]exportState
	// exports are the exported ones, sorted; rebuilt on change.
	exports []Export
	synced  bool
	changed chan struct{} // closed and replaced on every change
	stats   Stats
	// notes are the problems last reported, by kind and key.
	notes map[string]map[string]string
}

// exportState is what a ServiceExport resolves to: an export or a refusal.
type exportState struct {
	export  Export
	refused *refusal
}

func (a exportState) equal(b exportState) bool {
	if (a.refused == nil) != (b.refused == nil) {
		return false
	}
	if a.refused != nil {
		return *a.refused == *b.refused
	}
	return a.export.equal(b.export)
}

// New makes a source; Run starts it.
func New(opts Options) (*Source, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	s := &Source{
		opts:    opts,
		log:     opts.Logger.With("component", "kubesource", "cluster", opts.Cluster),
		lim:     ratelog.New(time.Minute, 10, opts.Now),
		kick:    make(chan struct{}, 1),
		dirty:   map[string]struct{}{},
		state:   map[string]exportState{},
		changed: make(chan struct{}),
		stats:   Stats{Refused: map[string]uint64{}},
		notes:   map[string]map[string]string{},
	}
	s.kubeFactory = informers.NewSharedInformerFactory(opts.Kube, opts.Resync)
	s.mcsFactory = mcsinformers.NewSharedInformerFactory(opts.MCS, opts.Resync)

	svcInf := s.kubeFactory.Core().V1().Services()
	epsInf := s.kubeFactory.Discovery().V1().EndpointSlices()
	nsInf := s.kubeFactory.Core().V1().Namespaces()
	// The MCS informers are made here rather than by mcs-api's generated
	// constructors, which list and watch with context.TODO: a request in
	// flight would outlive Run. Registered with the factory, they are
	// the shared ones all the same.
	mcs := opts.MCS.MulticlusterV1alpha1()
	seInf := s.mcsFactory.InformerFor(&mcsv1a1.ServiceExport{}, func(_ mcsclient.Interface, resync time.Duration) cache.SharedIndexInformer {
		return newInformer(&mcsv1a1.ServiceExport{}, resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return mcs.ServiceExports(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return mcs.ServiceExports(metav1.NamespaceAll).Watch(ctx, o)
			})
	})
	siInf := s.mcsFactory.InformerFor(&mcsv1a1.ServiceImport{}, func(_ mcsclient.Interface, resync time.Duration) cache.SharedIndexInformer {
		return newInformer(&mcsv1a1.ServiceImport{}, resync,
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return mcs.ServiceImports(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return mcs.ServiceImports(metav1.NamespaceAll).Watch(ctx, o)
			})
	})
	s.services = svcInf.Lister()
	s.slices = epsInf.Lister()
	s.namespaces = nsInf.Lister()
	s.exportObjs = mcslisters.NewServiceExportLister(seInf.GetIndexer())
	s.importObjs = mcslisters.NewServiceImportLister(siInf.GetIndexer())

	type wiring struct {
		inf  cache.SharedIndexInformer
		what string
		h    cache.ResourceEventHandler
	}
	for _, w := range []wiring{
		{svcInf.Informer(), "services", s.keyHandler(func(obj metav1.Object) string { return key(obj.GetNamespace(), obj.GetName()) }, false)},
		{epsInf.Informer(), "endpointslices", s.keyHandler(func(obj metav1.Object) string {
			if svc := obj.GetLabels()[discoveryv1.LabelServiceName]; svc != "" {
				return key(obj.GetNamespace(), svc)
			}
			return ""
		}, false)},
		{seInf, "serviceexports", s.keyHandler(func(obj metav1.Object) string { return key(obj.GetNamespace(), obj.GetName()) }, true)},
		{siInf, "serviceimports", s.driftHandler()},
		{nsInf.Informer(), "namespaces", s.driftHandler()},
	} {
		reg, err := w.inf.AddEventHandler(w.h)
		if err != nil {
			return nil, fmt.Errorf("kubesource: %s handler: %w", w.what, err)
		}
		what := w.what
		if err := w.inf.SetWatchErrorHandlerWithContext(func(ctx context.Context, _ *cache.Reflector, err error) {
			s.watchError(ctx, what, err)
		}); err != nil {
			return nil, fmt.Errorf("kubesource: %s: %w", w.what, err)
		}
		s.hasSynced = append(s.hasSynced, w.inf.HasSynced, reg.HasSynced)
	}
	return s, nil
}

func newInformer(example runtime.Object, resync time.Duration,
	list cache.ListWithContextFunc, watch cache.WatchFuncWithContext) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformer(
		&cache.ListWatch{ListWithContextFunc: list, WatchFuncWithContext: watch},
		example, resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
}

func key(ns, name string) string { return ns + "/" + name }

// object unwraps what informers hand to handlers, deletion tombstones
// included.
func object(obj any) metav1.Object {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	o, _ := obj.(metav1.Object)
	return o
}

// keyHandler marks the export keys that an object bears on for another
// look. For ServiceExports (status), any change but the informer's
// resyncs also wakes the watchers, so that a sync puts back conditions
// someone else changed (after the syncs' own writes, it finds nothing to
// do).
func (s *Source) keyHandler(keyOf func(metav1.Object) string, status bool) cache.ResourceEventHandler {
	mark := func(obj any) {
		if o := object(obj); o != nil {
			if k := keyOf(o); k != "" {
				s.markDirty(k)
			}
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: mark,
		UpdateFunc: func(old, cur any) {
			mark(old) // an EndpointSlice may change service
			mark(cur)
			if status {
				o, c := object(old), object(cur)
				if o != nil && c != nil && o.GetResourceVersion() != c.GetResourceVersion() {
					s.drifted()
				}
			}
		},
		DeleteFunc: mark,
	}
}

// driftHandler wakes the watchers when what the syncs wrote or depend on
// changes (a namespace appears, a ServiceImport is edited or deleted),
// so that they sync again; informer resyncs change nothing and wake no
// one.
func (s *Source) driftHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.drifted() },
		UpdateFunc: func(old, cur any) {
			o, c := object(old), object(cur)
			if o == nil || c == nil || o.GetResourceVersion() != c.GetResourceVersion() {
				s.drifted()
			}
		},
		DeleteFunc: func(any) { s.drifted() },
	}
}

func (s *Source) markDirty(k string) {
	s.mu.Lock()
	s.dirty[k] = struct{}{}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Source) drifted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.synced {
		s.notify()
	}
}

// notify wakes the watchers; s.mu is held.
func (s *Source) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Source) watchError(ctx context.Context, what string, err error) {
	if kubewatch.Routine(ctx, err) {
		return
	}
	hint := ""
	if apierrors.IsNotFound(err) && (what == "serviceexports" || what == "serviceimports") {
		hint = "; are the multicluster.x-k8s.io CRDs installed?"
	}
	if ok, suppressed := s.lim.Allow("watch " + what); ok {
		s.log.Warn("kubesource: list and watch failed, retrying"+hint, "resource", what, "err", err, "suppressed", suppressed)
	}
}

// Run starts the informers and keeps the exports current until ctx ends;
// it returns when every goroutine it started has stopped. It may be
// called once.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("kubesource: Run called twice")
	}
	s.kubeFactory.StartWithContext(ctx)
	s.mcsFactory.Start(ctx.Done())
	// Shutdown waits for the informers, which stop with ctx.
	defer s.mcsFactory.Shutdown()
	defer s.kubeFactory.Shutdown()

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
	// Every ServiceExport gets a first look, whether or not its handler
	// has run yet.
	ses, _ := s.exportObjs.List(labels.Everything())
	s.mu.Lock()
	for _, se := range ses {
		s.dirty[key(se.Namespace, se.Name)] = struct{}{}
	}
	s.mu.Unlock()
	s.process()
	s.mu.Lock()
	s.synced = true
	s.notify()
	n := len(s.exports)
	s.mu.Unlock()
	s.log.Info("kubesource: caches synced", "exports", n, "serviceExports", len(ses))
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.kick:
			s.process()
		}
	}
}

func (s *Source) cachesSynced() bool {
	for _, f := range s.hasSynced {
		if !f() {
			return false
		}
	}
	return true
}

// process looks again at the dirty keys and publishes what changed.
func (s *Source) process() {
	s.mu.Lock()
	keys := s.dirty
	s.dirty = map[string]struct{}{}
	s.mu.Unlock()
	if len(keys) == 0 {
		return
	}
	results := make(map[string]*exportState, len(keys))
	for k := range keys {
		results[k] = s.resolve(k)
	}

	type logLine struct {
		key string
		r   refusal
	}
	var newly []logLine
	s.mu.Lock()
	changed := false
	for k, st := range results {
		old, had := s.state[k]
		switch {
		case st == nil:
			if had {
				delete(s.state, k)
				changed = true
			}
		case !had || !old.equal(*st):
			s.state[k] = *st
			changed = true
			if st.refused != nil && (!had || old.refused == nil || old.refused.Reason != st.refused.Reason) {
				s.stats.Refused[st.refused.Reason]++
			}
			if st.refused != nil && (!had || old.refused == nil || *old.refused != *st.refused) {
				newly = append(newly, logLine{k, *st.refused})
			}
		}
	}
	if changed {
		s.rebuild()
		if s.synced {
			s.notify()
		}
	}
	s.mu.Unlock()

	for _, l := range newly {
		if ok, suppressed := s.lim.Allow("refused " + l.r.Reason); ok {
			s.log.Warn("kubesource: service not exported", "service", l.key, "reason", l.r.Reason, "why", l.r.Message, "suppressed", suppressed)
		}
	}
}

// resolve decides what the ServiceExport of k exports; nil if there is no
// ServiceExport (or it is being deleted).
func (s *Source) resolve(k string) *exportState {
	ns, name, err := cache.SplitMetaNamespaceKey(k)
	if err != nil {
		return nil
	}
	se, err := s.exportObjs.ServiceExports(ns).Get(name)
	if err != nil || se.DeletionTimestamp != nil {
		return nil
	}
	svc, err := s.services.Services(ns).Get(name)
	if err != nil {
		return &exportState{refused: &refusal{Reason: ReasonNoService, Message: fmt.Sprintf("service %s/%s does not exist", ns, name)}}
	}
	eps, _ := s.slices.EndpointSlices(ns).List(labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name}))
	e, r := exportOf(svc, eps)
	return &exportState{export: e, refused: r}
}

// rebuild remakes the sorted exports and the gauges; s.mu is held.
func (s *Source) rebuild() {
	s.exports = s.exports[:0:0]
	invalid := 0
	for _, st := range s.state {
		if st.refused != nil {
			invalid++
			continue
		}
		s.exports = append(s.exports, st.export)
	}
	slices.SortFunc(s.exports, func(a, b Export) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	s.stats.Exports, s.stats.Invalid = len(s.exports), invalid
}

// Exports returns the exported services sorted by namespace and name; nil
// until the caches have synced (and never nil after), so that a partial
// view is never published. The slices inside the exports are shared: do not modify
// them.
func (s *Source) Exports() []Export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.synced {
		return nil
	}
	return append([]Export{}, s.exports...)
}

// Changed returns a channel closed at the next change: of the exports or
// refusals, or of what the syncs keep (ServiceImports, ServiceExport
// status, namespaces), so that whoever waits on it re-reads Exports and
// syncs again. The first close comes when the caches have synced.
func (s *Source) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Synced says whether the caches have synced and the exports are known.
func (s *Source) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

// Stats returns the counters.
func (s *Source) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Refused = maps.Clone(s.stats.Refused)
	return st
}

// lookup returns what the ServiceExport of k resolves to.
func (s *Source) lookup(k string) (exportState, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.state[k]
	return st, ok
}

func (s *Source) wrote(n int) {
	s.mu.Lock()
	s.stats.Writes += uint64(n)
	s.mu.Unlock()
}

// report logs the problems of a kind that are new or changed since its
// last report (within the rate limit), by key, and forgets those that are
// gone: a problem is logged once, not on every sync, and again if it
// comes back.
func (s *Source) report(kind string, current map[string]string) {
	s.mu.Lock()
	last := s.notes[kind]
	s.notes[kind] = current
	s.mu.Unlock()
	for _, k := range slices.Sorted(maps.Keys(current)) {
		msg := current[k]
		if old, had := last[k]; had && old == msg {
			continue
		}
		if ok, suppressed := s.lim.Allow(kind); ok {
			s.log.Warn("kubesource: "+msg, "service", k, "suppressed", suppressed)
		}
	}
}

// namespaceReady says whether ns exists and is not being deleted.
func (s *Source) namespaceReady(ns string) bool {
	n, err := s.namespaces.Get(ns)
	return err == nil && n.DeletionTimestamp == nil && n.Status.Phase != corev1.NamespaceTerminating
}
