package kubesource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"

	"github.com/straitnet/strait/discovery/catalog"
)

// The label that marks the ServiceImports strait manages: it creates,
// updates and deletes those, and never touches any other.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "strait"
)

// MaxImportIPs is how many addresses a ServiceImport's spec.ips may hold
// (the CRD's maxItems: one per IP family, in the MCS API's design). With
// more exporting clusters than that, the lowest addresses are listed and
// the truncation is reported; status.clusters still names them all.
const MaxImportIPs = 2

// importSpec is a ServiceImport as it should be.
type importSpec struct {
	Namespace, Name string
	Spec            mcsv1a1.ServiceImportSpec
	Clusters        []mcsv1a1.ClusterStatus
	// Conflict says how the exporters disagree; "" when they agree.
	Conflict string
	// Dropped are the addresses spec.ips has no room for.
	Dropped []string
}

// desiredImports decides the ServiceImports of snap's cluster: one for
// every service another cluster exports (the cluster's own are reached
// as they are), sorted by namespace and name. Where the exporters
// disagree, the first cluster by name decides the ports and the type, so
// that every cluster decides the same.
func desiredImports(snap catalog.Snapshot) []importSpec {
	groups := map[string][]catalog.ClusterService{}
	for _, cs := range snap.Services {
		if cs.Cluster == snap.Self {
			continue
		}
		k := key(cs.Namespace, cs.Name)
		groups[k] = append(groups[k], cs)
	}
	out := make([]importSpec, 0, len(groups))
	for _, members := range groups {
		slices.SortFunc(members, func(a, b catalog.ClusterService) int { return cmp.Compare(a.Cluster, b.Cluster) })
		first := members[0]
		d := importSpec{Namespace: first.Namespace, Name: first.Name}
		d.Spec.Type = mcsv1a1.ClusterSetIP
		if first.Headless {
			d.Spec.Type = mcsv1a1.Headless
		}
		// Never nil: the CRD requires the field, and nil encodes as null.
		d.Spec.Ports = make([]mcsv1a1.ServicePort, 0, len(first.Ports))
		for _, p := range first.Ports {
			d.Spec.Ports = append(d.Spec.Ports, mcsv1a1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: int32(p.Port)})
		}
		var addrs []netip.Addr
		for _, m := range members {
			d.Clusters = append(d.Clusters, mcsv1a1.ClusterStatus{Cluster: m.Cluster})
			if d.Spec.Type == mcsv1a1.ClusterSetIP && !m.Headless && m.Addr.IsValid() {
				addrs = append(addrs, m.Addr)
			}
		}
		slices.SortFunc(addrs, netip.Addr.Compare)
		for i, a := range slices.Compact(addrs) {
			if i < MaxImportIPs {
				d.Spec.IPs = append(d.Spec.IPs, a.String())
			} else {
				d.Dropped = append(d.Dropped, a.String())
			}
		}
		_, d.Conflict = conflict(members, "")
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b importSpec) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// conflict says how the exporters of one service (sorted by cluster)
// disagree on ports or type: the MCS API's reasons ("PortConflict",
// "TypeConflict", joined by a comma) and a message naming every
// exporter's ports and which one wins. Both are empty when they agree.
func conflict(members []catalog.ClusterService, self string) (reason, msg string) {
	if len(members) < 2 {
		return "", ""
	}
	first := members[0]
	var portsDiffer, typeDiffers bool
	for _, m := range members[1:] {
		portsDiffer = portsDiffer || !samePorts(m.Ports, first.Ports)
		typeDiffers = typeDiffers || m.Headless != first.Headless
	}
	if !portsDiffer && !typeDiffers {
		return "", ""
	}
	var reasons, what []string
	if portsDiffer {
		reasons, what = append(reasons, string(mcsv1a1.ServiceExportReasonPortConflict)), append(what, "ports")
	}
	if typeDiffers {
		reasons, what = append(reasons, string(mcsv1a1.ServiceExportReasonTypeConflict)), append(what, "type")
	}
	parts := make([]string, 0, len(members))
	for _, m := range members {
		name := m.Cluster
		if m.Cluster == self {
			name += " (this cluster)"
		}
		desc := portsString(sortedPorts(m.Ports))
		if typeDiffers {
			kind := "clusterset IP"
			if m.Headless {
				kind = "headless"
			}
			desc = kind + ", " + desc
		}
		parts = append(parts, name+": "+desc)
	}
	verb := "differ"
	if !portsDiffer {
		verb = "differs"
	}
	return strings.Join(reasons, ","), fmt.Sprintf("%s %s between the exporting clusters: %s; %s's apply, the first cluster by name",
		strings.Join(what, " and "), verb, strings.Join(parts, "; "), first.Cluster)
}

// SyncImports makes the cluster's ServiceImports what snap says: one,
// labelled as strait's, for every service another cluster exports, in
// that service's namespace if it exists here (namespaces are not
// strait's to make); none for services no other cluster exports any
// more. It writes only what differs and waits until the informer cache
// shows its writes. A write that fails does not stop the others; the
// errors are returned together, and the next sync retries.
func (s *Source) SyncImports(ctx context.Context, snap catalog.Snapshot) error {
	if err := s.ready(snap); err != nil {
		return err
	}
	s.importMu.Lock()
	defer s.importMu.Unlock()
	client := s.opts.MCS.MulticlusterV1alpha1()
	var (
		errs    []error
		ws      []written
		writes  int
		wanted  = map[string]bool{}
		noNS    = map[string]string{}
		foreign = map[string]string{}
		clashes = map[string]string{}
		dropped = map[string]string{}
	)
	for _, d := range desiredImports(snap) {
		k := key(d.Namespace, d.Name)
		wanted[k] = true
		if d.Conflict != "" {
			clashes[k] = "imported service: " + d.Conflict
		}
		if len(d.Dropped) > 0 {
			dropped[k] = fmt.Sprintf("imported service: %d exporters, but a ServiceImport lists at most %d addresses; left out: %s",
				len(d.Clusters), MaxImportIPs, strings.Join(d.Dropped, ", "))
		}
		if !s.namespaceReady(d.Namespace) {
			noNS[k] = fmt.Sprintf("imported service: namespace %s does not exist here, no ServiceImport made", d.Namespace)
			continue
		}
		cur, err := s.importObjs.ServiceImports(d.Namespace).Get(d.Name)
		var w *written
		var n int
		switch {
		case apierrors.IsNotFound(err):
			w, n, err = s.createImport(ctx, d)
		case err != nil:
		case cur.Labels[LabelManagedBy] != ManagedBy:
			foreign[k] = fmt.Sprintf("imported service: ServiceImport %s exists without label %s=%s; left alone", k, LabelManagedBy, ManagedBy)
			continue
		case cur.DeletionTimestamp != nil:
			continue // its deletion wakes Changed, and the next sync makes it again
		default:
			w, n, err = s.updateImport(ctx, cur, d)
		}
		writes += n
		if w != nil {
			ws = append(ws, *w)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	managed, err := s.importObjs.List(labels.SelectorFromSet(labels.Set{LabelManagedBy: ManagedBy}))
	if err != nil {
		errs = append(errs, fmt.Errorf("kubesource: list ServiceImports: %w", err))
	}
	slices.SortFunc(managed, func(a, b *mcsv1a1.ServiceImport) int {
		return cmp.Compare(key(a.Namespace, a.Name), key(b.Namespace, b.Name))
	})
	for _, si := range managed {
		if wanted[key(si.Namespace, si.Name)] || si.DeletionTimestamp != nil {
			continue
		}
		// Only the object seen, as seen: if someone took it over (removed
		// the label) in the meantime, it is theirs.
		uid, rv := si.UID, si.ResourceVersion
		err := client.ServiceImports(si.Namespace).Delete(ctx, si.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv}})
		switch {
		case apierrors.IsNotFound(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("kubesource: delete ServiceImport %s/%s: %w", si.Namespace, si.Name, err))
		default:
			writes++
			ws = append(ws, written{ns: si.Namespace, name: si.Name, deleted: true, uid: uid})
			s.log.Info("kubesource: ServiceImport deleted: no other cluster exports the service", "service", key(si.Namespace, si.Name))
		}
	}
	s.wrote(writes)
	if err := s.settle(ctx, "ServiceImport", func(ns, name string) metav1.Object {
		if si, err := s.importObjs.ServiceImports(ns).Get(name); err == nil {
			return si
		}
		return nil
	}, ws); err != nil {
		errs = append(errs, err)
	}
	s.mu.Lock()
	s.stats.ImportsNoNamespace, s.stats.ImportsUnmanaged = len(noNS), len(foreign)
	s.stats.ImportConflicts, s.stats.ImportIPsTruncated = len(clashes), len(dropped)
	s.mu.Unlock()
	s.report("import namespace", noNS)
	s.report("import unmanaged", foreign)
	s.report("import conflict", clashes)
	s.report("import ips", dropped)
	return errors.Join(errs...)
}

// createImport makes a ServiceImport: the object, then its status (the
// status subresource ignores status on create).
func (s *Source) createImport(ctx context.Context, d importSpec) (*written, int, error) {
	c := s.opts.MCS.MulticlusterV1alpha1().ServiceImports(d.Namespace)
	si := &mcsv1a1.ServiceImport{
		ObjectMeta: metav1.ObjectMeta{Namespace: d.Namespace, Name: d.Name, Labels: map[string]string{LabelManagedBy: ManagedBy}},
		Spec:       d.Spec,
	}
	got, err := c.Create(ctx, si, metav1.CreateOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("kubesource: create ServiceImport %s/%s: %w", d.Namespace, d.Name, err)
	}
	s.log.Info("kubesource: ServiceImport created", "service", key(d.Namespace, d.Name), "type", d.Spec.Type, "clusters", len(d.Clusters))
	w := &written{ns: d.Namespace, name: d.Name}
	return s.updateImportStatus(ctx, got, d, w, 1)
}

// updateImport brings a managed ServiceImport to d: its spec, then its
// status, each only if it differs.
func (s *Source) updateImport(ctx context.Context, cur *mcsv1a1.ServiceImport, d importSpec) (*written, int, error) {
	w := &written{ns: d.Namespace, name: d.Name, stale: []string{cur.ResourceVersion}}
	n := 0
	if !apiequality.Semantic.DeepEqual(cur.Spec, d.Spec) {
		cp := cur.DeepCopy()
		cp.Spec = d.Spec
		got, err := s.opts.MCS.MulticlusterV1alpha1().ServiceImports(d.Namespace).Update(ctx, cp, metav1.UpdateOptions{})
		if err != nil {
			return nil, 0, fmt.Errorf("kubesource: update ServiceImport %s/%s: %w", d.Namespace, d.Name, err)
		}
		s.log.Info("kubesource: ServiceImport updated", "service", key(d.Namespace, d.Name), "type", d.Spec.Type)
		cur, n = got, 1
	}
	w2, n, err := s.updateImportStatus(ctx, cur, d, w, n)
	if n == 0 {
		return nil, 0, err
	}
	return w2, n, err
}

// updateImportStatus sets status.clusters if it differs from d's; cur is
// the object as last written (n writes so far, w waiting for them).
func (s *Source) updateImportStatus(ctx context.Context, cur *mcsv1a1.ServiceImport, d importSpec, w *written, n int) (*written, int, error) {
	if apiequality.Semantic.DeepEqual(cur.Status.Clusters, d.Clusters) {
		return w, n, nil
	}
	cp := cur.DeepCopy()
	cp.Status.Clusters = d.Clusters
	_, err := s.opts.MCS.MulticlusterV1alpha1().ServiceImports(d.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{})
	if err != nil {
		return w, n, fmt.Errorf("kubesource: update status of ServiceImport %s/%s: %w", d.Namespace, d.Name, err)
	}
	if n > 0 {
		// The cache has caught up once it shows the status write.
		w.stale = append(w.stale, cur.ResourceVersion)
	}
	return w, n + 1, nil
}

// ready checks that a sync may run with snap.
func (s *Source) ready(snap catalog.Snapshot) error {
	if snap.Self != s.opts.Cluster {
		return fmt.Errorf("kubesource: a snapshot of cluster %q given to the source of cluster %q", snap.Self, s.opts.Cluster)
	}
	if !s.Synced() {
		return ErrNotSynced
	}
	return nil
}
