package kubepolicy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
	"unicode/utf8"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
)

// The condition SyncStatus sets, and its reasons.
const (
	ConditionAccepted = "Accepted"
	// ReasonAccepted: the object is valid and declared to the mesh.
	ReasonAccepted = "Accepted"
	// ReasonInvalid: meshpolicy's validation refuses the object; the
	// message lists the field errors.
	ReasonInvalid = "Invalid"
	// ReasonConflict: the object is valid, but the mesh applies another
	// declaration of the same name (conflicts says which and why).
	ReasonConflict = "Conflict"
)

// ConflictKey is the key of an object in SyncStatus's conflicts:
// "GlobalService namespace/name" or "FirewallPolicy name", as Declared's
// problems name objects.
func ConflictKey(kind, key string) string { return kind + " " + key }

// maxMessage bounds a condition message: the API allows 32768 bytes, but
// a policy of 256 broken rules need not say all of it.
const maxMessage = 4096

// settleTimeout bounds how long SyncStatus waits for the informer cache
// to show its own writes.
const settleTimeout = 10 * time.Second

// SyncStatus makes the objects' status say what the gateway made of them,
// writing only the objects where something differs:
//
//   - the Accepted condition: True; or False with reason Invalid and the
//     validation errors (meshpolicy's, which also catch what the schema
//     cannot); or False with reason Conflict and the message
//     conflicts[ConflictKey(kind, key)], where given, for a valid object;
//   - a GlobalService's status.vip: vips[namespace/name], the VIP in use;
//     removed where vips has none;
//   - a FirewallPolicy's status.rules: how many rules it has, for
//     kubectl get.
//
// The condition's lastTransitionTime moves only when its status does, and
// its observedGeneration is the object's generation; other conditions
// are left alone. Writes are status updates against the cached
// resourceVersion: an object changed meanwhile fails with a conflict,
// which the next sync mends. SyncStatus waits until the informer cache
// shows its writes, so that the next sync compares against them, and
// returns the errors of all objects together.
func (s *Source) SyncStatus(ctx context.Context, vips map[string]netip.Addr, conflicts map[string]string) error {
	if !s.Synced() {
		return ErrNotSynced
	}
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	now := metav1.NewTime(s.opts.Now())
	var (
		errs      []error
		ws        []written
		writes    int
		nConflict int
	)
	for _, k := range []struct {
		kind    string
		gvr     schema.GroupVersionResource
		inf     cache.SharedIndexInformer
		resolve func(*unstructured.Unstructured) resolved
		fields  func(*unstructured.Unstructured, resolved) map[string]any
	}{
		{KindGlobalService, GlobalServices, s.svcs, resolveService, func(_ *unstructured.Unstructured, r resolved) map[string]any {
			if vip, ok := vips[r.key]; ok && vip.IsValid() {
				return map[string]any{"vip": vip.String()}
			}
			return map[string]any{"vip": nil}
		}},
		{KindFirewallPolicy, FirewallPolicies, s.pols, resolvePolicy, func(u *unstructured.Unstructured, _ resolved) map[string]any {
			rules, _, _ := unstructured.NestedSlice(u.Object, "spec", "rules")
			return map[string]any{"rules": int64(len(rules))}
		}},
	} {
		var objs []*unstructured.Unstructured
		for _, o := range k.inf.GetStore().List() {
			if u, ok := o.(*unstructured.Unstructured); ok && u.GetDeletionTimestamp() == nil {
				objs = append(objs, u)
			}
		}
		slices.SortFunc(objs, func(a, b *unstructured.Unstructured) int {
			return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
		})
		for _, u := range objs {
			// Resolved again rather than taken from s.objects, so that
			// the condition speaks of the very generation it names.
			r := k.resolve(u)
			cond := metav1.Condition{Type: ConditionAccepted, ObservedGeneration: u.GetGeneration(), LastTransitionTime: now}
			conflict := conflicts[ConflictKey(r.kind, r.key)]
			switch {
			case !r.valid():
				cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, ReasonInvalid, truncate(r.why())
			case conflict != "":
				nConflict++
				cond.Status, cond.Reason, cond.Message = metav1.ConditionFalse, ReasonConflict, truncate(conflict)
			default:
				cond.Status, cond.Reason = metav1.ConditionTrue, ReasonAccepted
				cond.Message = fmt.Sprintf("declared to the mesh by cluster %s", s.opts.Cluster)
			}
			cp, changed, err := withStatus(u, cond, k.fields(u, r))
			if err != nil {
				errs = append(errs, fmt.Errorf("kubepolicy: status of %s %s: %w", r.kind, r.key, err))
				continue
			}
			if !changed {
				continue
			}
			if _, err := s.opts.Dynamic.Resource(k.gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, cp,
				metav1.UpdateOptions{FieldManager: "strait"}); err != nil {
				if apierrors.IsNotFound(err) {
					continue // deleted meanwhile: no status to keep
				}
				errs = append(errs, fmt.Errorf("kubepolicy: update status of %s %s: %w", r.kind, r.key, err))
				continue
			}
			writes++
			ws = append(ws, written{inf: k.inf, kind: r.kind, key: r.key, stale: u.GetResourceVersion()})
		}
	}
	s.mu.Lock()
	s.stats.Writes += uint64(writes)
	s.stats.Conflicts = nConflict
	s.mu.Unlock()
	if err := settle(ctx, ws); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// withStatus returns a copy of u with cond set among its conditions and
// the status fields set (a nil value removes the field), and whether
// that changes anything.
func withStatus(u *unstructured.Unstructured, cond metav1.Condition, fields map[string]any) (*unstructured.Unstructured, bool, error) {
	status, _, err := unstructured.NestedMap(u.Object, "status")
	if err != nil {
		return nil, false, fmt.Errorf("status is not an object: %w", err)
	}
	if status == nil {
		status = map[string]any{}
	}
	var conds struct {
		Conditions []metav1.Condition `json:"conditions"`
	}
	if raw, ok := status["conditions"]; ok {
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(map[string]any{"conditions": raw}, &conds); err != nil {
			return nil, false, fmt.Errorf("status.conditions: %w", err)
		}
	}
	if conds.Conditions == nil {
		conds.Conditions = []metav1.Condition{}
	}
	changed := meta.SetStatusCondition(&conds.Conditions, cond)
	for name, want := range fields {
		have, ok := status[name]
		switch {
		case want == nil && ok:
			delete(status, name)
			changed = true
		case want != nil && (!ok || have != want):
			status[name] = want
			changed = true
		}
	}
	if !changed {
		return nil, false, nil
	}
	out, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&conds)
	if err != nil {
		return nil, false, fmt.Errorf("status.conditions: %w", err)
	}
	status["conditions"] = out["conditions"]
	cp := u.DeepCopy()
	cp.Object["status"] = status
	return cp, true, nil
}

func truncate(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	cut := maxMessage - len("…")
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "…"
}

// written is a status write that SyncStatus waits to see in the informer
// cache. The syncs compare against the cache, not the API: if the next
// sync ran before the cache caught up, it would see the old status,
// write again and fail on the stale resourceVersion. Syncs are
// serialized, so waiting here is enough.
type written struct {
	inf       cache.SharedIndexInformer
	kind, key string
	// stale is the resourceVersion the sync started from: any other
	// (its write, or someone else's after it) means the cache caught up.
	stale string
}

func settle(ctx context.Context, ws []written) error {
	if len(ws) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ws = slices.DeleteFunc(ws, func(w written) bool {
			o, ok, err := w.inf.GetStore().GetByKey(w.key)
			if err != nil || !ok {
				return true // deleted meanwhile: nothing to compare against
			}
			u, isU := o.(*unstructured.Unstructured)
			return !isU || u.GetResourceVersion() != w.stale
		})
		if len(ws) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubepolicy: the cache does not show %d of this sync's status writes (first %s %s): %w",
				len(ws), ws[0].kind, ws[0].key, ctx.Err())
		case <-tick.C:
		}
	}
}
