package kubepolicy

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// randomObject makes a GlobalService or FirewallPolicy from a small space
// of names and values, valid or not, so that a random walk revisits the
// same objects and sometimes changes nothing they say.
func randomObject(rng *rand.Rand) *unstructured.Unstructured {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	meta := map[string]any{"name": pick("a", "b", "c"), "labels": map[string]any{"rev": fmt.Sprint(rng.IntN(3))}}
	if rng.IntN(2) == 0 {
		meta["namespace"] = pick("shop", "bank")
		spec := map[string]any{}
		if rng.IntN(2) == 0 {
			spec["vip"] = pick("242.255.0.1", "242.255.0.2", "127.0.0.1")
		}
		if rng.IntN(2) == 0 {
			spec["weights"] = map[string]any{pick("x", "y"): int64(rng.IntN(3)), pick("x", "z"): int64(rng.IntN(3))}
		}
		if rng.IntN(3) == 0 {
			spec["healthCheck"] = map[string]any{"timeout": pick("100ms", "600ms")}
		}
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "strait.io/v1alpha1", "kind": KindGlobalService, "metadata": meta, "spec": spec}}
	}
	var rules []any
	for range rng.IntN(3) {
		r := map[string]any{"action": pick("allow", "deny", "allow", "maybe")}
		if rng.IntN(2) == 0 {
			r["name"] = pick("r1", "r2")
		}
		rules = append(rules, r)
	}
	spec := map[string]any{"priority": int64(rng.IntN(2)), "rules": rules}
	return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "strait.io/v1alpha1", "kind": KindFirewallPolicy, "metadata": meta, "spec": spec}}
}

// declaredFromScratch is what Declared must say of a set of objects:
// each resolved on its own, sorted.
func declaredFromScratch(objs map[string]*unstructured.Unstructured) string {
	svcs, pols, problems := []meshpolicy.GlobalService{}, []meshpolicy.Policy{}, []string(nil)
	for _, u := range objs {
		if u.GetDeletionTimestamp() != nil {
			continue
		}
		var r resolved
		if u.GetKind() == KindGlobalService {
			r = resolveService(u)
		} else {
			r = resolvePolicy(u)
		}
		switch {
		case !r.valid():
			problems = append(problems, r.problem())
		case r.kind == KindGlobalService:
			svcs = append(svcs, r.svc)
		default:
			pols = append(pols, r.pol)
		}
	}
	slices.SortFunc(svcs, func(a, b meshpolicy.GlobalService) int { return cmp.Compare(a.Key(), b.Key()) })
	slices.SortFunc(pols, func(a, b meshpolicy.Policy) int { return cmp.Compare(a.Name, b.Name) })
	slices.Sort(problems)
	return render([]any{svcs, pols, problems})
}

// TestIncrementalDeclared drives the source's event handlers with a
// seeded random walk of adds, updates and deletes, and checks after each
// event that Declared equals a from-scratch resolution of the objects,
// and that Changed fires exactly when Declared's answer changes.
func TestIncrementalDeclared(t *testing.T) {
	t.Parallel()
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0))
	dyn, err := dynamic.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Dynamic: dyn, Cluster: "cloud-a"})
	if err != nil {
		t.Fatal(err)
	}
	handlers := map[string]cache.ResourceEventHandler{
		KindGlobalService:  s.handler(KindGlobalService, resolveService),
		KindFirewallPolicy: s.handler(KindFirewallPolicy, resolvePolicy),
	}
	s.mu.Lock()
	s.synced = true
	s.mu.Unlock()

	objs := map[string]*unstructured.Unstructured{}
	keyOf := func(u *unstructured.Unstructured) string {
		return u.GetKind() + " " + u.GetNamespace() + "/" + u.GetName()
	}
	render3 := func() string {
		a, b, c := s.Declared()
		return render([]any{a, b, c})
	}
	before := render3()
	fired := 0
	for step := range 3000 {
		ch := s.Changed()
		u := randomObject(rng)
		k := keyOf(u)
		h := handlers[u.GetKind()]
		old, exists := objs[k]
		var what string
		switch {
		case exists && rng.IntN(4) == 0:
			what = "delete"
			if rng.IntN(2) == 0 {
				key, _ := cache.MetaNamespaceKeyFunc(old)
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: key, Obj: old})
			} else {
				h.OnDelete(old)
			}
			delete(objs, k)
		case exists:
			what = "update"
			if rng.IntN(8) == 0 {
				// Held by a finalizer: going away, no longer declared.
				what = "update to deleting"
				now := metav1.Now()
				u.SetDeletionTimestamp(&now)
			}
			h.OnUpdate(old, u)
			objs[k] = u
		default:
			what = "add"
			h.OnAdd(u, false)
			objs[k] = u
		}
		want := declaredFromScratch(objs)
		got := render3()
		if got != want {
			t.Fatalf("step %d (%s %s): Declared\n%s\nwant\n%s", step, what, k, got, want)
		}
		closed := false
		select {
		case <-ch:
			closed = true
			fired++
		default:
		}
		if changed := got != before; closed != changed {
			t.Fatalf("step %d (%s %s): Changed fired %v, Declared changed %v", step, what, k, closed, changed)
		}
		before = got
	}
	st := s.Stats()
	t.Logf("%d objects at the end, Changed fired %d times in 3000 events; stats %+v", len(objs), fired, st)
	if fired == 0 || fired == 3000 {
		t.Errorf("Changed fired %d times: the walk does not exercise both cases", fired)
	}
}
