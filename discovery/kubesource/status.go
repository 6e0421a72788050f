package kubesource

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"

	"github.com/straitnet/strait/discovery/catalog"
)

// The condition types SyncExportStatus sets on ServiceExports, the MCS
// API's (v0.5.2 calls "Exported" Ready, with the reason Exported).
const (
	ConditionValid    = string(mcsv1a1.ServiceExportConditionValid)
	ConditionReady    = string(mcsv1a1.ServiceExportConditionReady)
	ConditionConflict = string(mcsv1a1.ServiceExportConditionConflict)
)

// exportConditions decides the conditions of the ServiceExport ns/name,
// which resolves to st, from what snap says about the service:
//
//   - Valid: False with the refusal's reason if the service cannot be
//     exported, else True.
//   - Ready: True (Exported) once this cluster's instance is in the
//     catalog, False (Pending) before, False (Failed) if refused.
//   - Conflict: True if other clusters export the service with other
//     ports or another type (headless or not), naming every exporter's
//     ports and the cluster whose apply; else False (NoConflicts).
//
// Their messages hold nothing that changes with readiness, so that
// endpoints coming and going do not rewrite the status.
func exportConditions(st exportState, snap catalog.Snapshot, ns, name string) []metav1.Condition {
	cond := func(t string, ok bool, reason, msg string) metav1.Condition {
		status := metav1.ConditionFalse
		if ok {
			status = metav1.ConditionTrue
		}
		return metav1.Condition{Type: t, Status: status, Reason: reason, Message: msg}
	}
	noConflict := string(mcsv1a1.ServiceExportReasonNoConflicts)
	if st.refused != nil {
		return []metav1.Condition{
			cond(ConditionValid, false, st.refused.Reason, st.refused.Message),
			cond(ConditionReady, false, string(mcsv1a1.ServiceExportReasonFailed), "not exported: "+st.refused.Message),
			cond(ConditionConflict, false, noConflict, "not exported"),
		}
	}
	var mine *catalog.ClusterService
	var members []catalog.ClusterService
	for _, cs := range snap.Services {
		if cs.Namespace != ns || cs.Name != name {
			continue
		}
		if cs.Cluster == snap.Self {
			mine = &cs
			continue
		}
		members = append(members, cs)
	}
	out := []metav1.Condition{cond(ConditionValid, true, string(mcsv1a1.ServiceExportReasonValid), "the service can be exported")}
	switch {
	case mine == nil:
		out = append(out, cond(ConditionReady, false, string(mcsv1a1.ServiceExportReasonPending), "not in the mesh catalog yet"))
	case mine.Headless:
		out = append(out, cond(ConditionReady, true, string(mcsv1a1.ServiceExportReasonExported), "in the mesh catalog, as a headless service"))
	default:
		out = append(out, cond(ConditionReady, true, string(mcsv1a1.ServiceExportReasonExported),
			fmt.Sprintf("in the mesh catalog; other clusters reach it at %s", mine.Addr)))
	}
	if len(members) == 0 {
		return append(out, cond(ConditionConflict, false, noConflict, "no other cluster exports the service"))
	}
	// This cluster's side as the mesh sees it, or, before it is in the
	// catalog, as it will.
	self := catalog.ClusterService{Cluster: snap.Self, Service: catalog.Service{
		Namespace: ns, Name: name, Ports: st.export.Ports, Headless: st.export.Headless}}
	if mine != nil {
		self = *mine
	}
	members = append(members, self)
	slices.SortFunc(members, func(a, b catalog.ClusterService) int { return cmp.Compare(a.Cluster, b.Cluster) })
	reason, msg := conflict(members, snap.Self)
	if reason == "" {
		return append(out, cond(ConditionConflict, false, noConflict,
			fmt.Sprintf("ports and type agree with the %d other exporting clusters", len(members)-1)))
	}
	return append(out, cond(ConditionConflict, true, reason, msg))
}

// SyncExportStatus sets the Valid, Ready and Conflict conditions of the
// cluster's ServiceExports from snap and what each resolves to. A
// ServiceExport is written only when a condition changes, and a
// condition's lastTransitionTime moves only when its status does (the
// Kubernetes convention). Other conditions are left as they are. It
// waits until the informer cache shows its writes; errors are returned
// together, and the next sync retries.
func (s *Source) SyncExportStatus(ctx context.Context, snap catalog.Snapshot) error {
	if err := s.ready(snap); err != nil {
		return err
	}
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	ses, err := s.exportObjs.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("kubesource: list ServiceExports: %w", err)
	}
	slices.SortFunc(ses, func(a, b *mcsv1a1.ServiceExport) int {
		return cmp.Compare(key(a.Namespace, a.Name), key(b.Namespace, b.Name))
	})
	now := metav1.NewTime(s.opts.Now())
	var (
		errs   []error
		ws     []written
		writes int
	)
	for _, se := range ses {
		if se.DeletionTimestamp != nil {
			continue
		}
		st, ok := s.lookup(key(se.Namespace, se.Name))
		if !ok {
			continue // not looked at yet; Changed fires when it is
		}
		conds := slices.Clone(se.Status.Conditions)
		changed := false
		for _, c := range exportConditions(st, snap, se.Namespace, se.Name) {
			c.ObservedGeneration = se.Generation
			c.LastTransitionTime = now
			if meta.SetStatusCondition(&conds, c) {
				changed = true
			}
		}
		if !changed {
			continue
		}
		cp := se.DeepCopy()
		cp.Status.Conditions = conds
		if _, err := s.opts.MCS.MulticlusterV1alpha1().ServiceExports(se.Namespace).UpdateStatus(ctx, cp, metav1.UpdateOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("kubesource: update status of ServiceExport %s/%s: %w", se.Namespace, se.Name, err))
			continue
		}
		writes++
		ws = append(ws, written{ns: se.Namespace, name: se.Name, stale: []string{se.ResourceVersion}})
	}
	s.wrote(writes)
	if err := s.settle(ctx, "ServiceExport", func(ns, name string) metav1.Object {
		if se, err := s.exportObjs.ServiceExports(ns).Get(name); err == nil {
			return se
		}
		return nil
	}, ws); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
