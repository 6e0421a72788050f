package kubepolicy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	runtimeconv "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/e2e/kube/kubetest"
)

func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		ok, s := cond()
		if ok {
			return
		}
		last = s
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not after 20s; last: %s", what, last)
}

func closes(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("Changed did not fire for %s", what)
	}
}

func staysOpen(t testing.TB, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
		t.Errorf("Changed fired for %s", what)
	case <-time.After(300 * time.Millisecond):
	}
}

// logBuffer collects the source's logs for the test to count.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(substrs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for line := range strings.SplitSeq(l.b.String(), "\n") {
		all := line != ""
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// env is a real API server with strait's CRDs.
type env struct {
	cfg  *rest.Config
	dyn  dynamic.Interface
	logs *logBuffer

	mu  sync.Mutex
	now time.Time // the sources' clock
}

func installCRDs(t testing.TB, cfg *rest.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := InstallCRDs(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	// A second install (a lab already up) changes nothing and succeeds.
	if err := InstallCRDs(ctx, cfg); err != nil {
		t.Fatalf("second install: %v", err)
	}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := kubetest.Start(t)
	e := &env{cfg: srv.Config(), logs: &logBuffer{}, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	var err error
	if e.dyn, err = dynamic.NewForConfig(e.cfg); err != nil {
		t.Fatal(err)
	}
	installCRDs(t, e.cfg)
	return e
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) setClock(t time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = t
}

// run starts a source until the test ends, and checks that it stops.
func (e *env) run(t *testing.T) *Source {
	t.Helper()
	src, err := New(Options{Dynamic: e.dyn, Cluster: "cloud-a", Now: e.clock,
		Logger: slog.New(slog.NewTextHandler(e.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return 10s after its context ended")
		}
	})
	eventually(t, "synced", func() (bool, string) { return src.Synced(), "" })
	return src
}

var namespaces = schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}

func (e *env) namespace(t *testing.T, name string) {
	t.Helper()
	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": name}}}
	if _, err := e.dyn.Resource(namespaces).Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func gvrOf(u *unstructured.Unstructured) schema.GroupVersionResource {
	if u.GetKind() == KindGlobalService {
		return GlobalServices
	}
	return FirewallPolicies
}

// create makes an object with strict field validation, as kubectl does
// by default.
func (e *env) create(u *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	return e.dyn.Resource(gvrOf(u)).Namespace(u.GetNamespace()).Create(context.Background(), u, metav1.CreateOptions{FieldValidation: "Strict"})
}

func (e *env) get(t *testing.T, gvr schema.GroupVersionResource, ns, name string) *unstructured.Unstructured {
	t.Helper()
	u, err := e.dyn.Resource(gvr).Namespace(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// update applies change to the object's spec and updates it.
func (e *env) update(t *testing.T, gvr schema.GroupVersionResource, ns, name string, change func(u *unstructured.Unstructured)) {
	t.Helper()
	u := e.get(t, gvr, ns, name)
	change(u)
	if _, err := e.dyn.Resource(gvr).Namespace(ns).Update(context.Background(), u, metav1.UpdateOptions{FieldValidation: "Strict"}); err != nil {
		t.Fatal(err)
	}
}

func conditionOf(t *testing.T, u *unstructured.Unstructured, typ string) metav1.Condition {
	t.Helper()
	raw, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	var st struct {
		Conditions []metav1.Condition `json:"conditions"`
	}
	if err := runtimeconv.DefaultUnstructuredConverter.FromUnstructured(map[string]any{"conditions": raw}, &st); err != nil {
		t.Fatal(err)
	}
	if c := meta.FindStatusCondition(st.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// TestKube runs the CRDs and the source against a real API server.
func TestKube(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	t.Run("discovery", func(t *testing.T) { testDiscovery(t, e) })
	t.Run("source", func(t *testing.T) { testSource(t, e) })
	t.Run("schema refuses", func(t *testing.T) { testSchemaRefuses(t, e) })
}

// testDiscovery checks what kubectl learns of the resources: names,
// scope, the status subresource.
func testDiscovery(t *testing.T, e *env) {
	dc, err := discovery.NewDiscoveryClientForConfig(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	list, err := dc.ServerResourcesForGroupVersion(Group + "/" + Version)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range list.APIResources {
		got = append(got, fmt.Sprintf("%s kind=%s namespaced=%v short=%v categories=%v", r.Name, r.Kind, r.Namespaced, r.ShortNames, r.Categories))
	}
	slices.Sort(got)
	want := []string{
		"firewallpolicies kind=FirewallPolicy namespaced=false short=[fwp] categories=[strait]",
		"firewallpolicies/status kind=FirewallPolicy namespaced=false short=[] categories=[]",
		"globalservices kind=GlobalService namespaced=true short=[gsvc] categories=[strait]",
		"globalservices/status kind=GlobalService namespaced=true short=[] categories=[]",
	}
	if !slices.Equal(got, want) {
		t.Errorf("resources\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// table is what `kubectl get` prints: the server's Table rendering of a
// list, as "column=cell" lines, one per object.
func (e *env) table(t *testing.T, gvr schema.GroupVersionResource, ns string) []string {
	t.Helper()
	hc, err := rest.HTTPClientFor(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := "/apis/" + gvr.Group + "/" + gvr.Version + "/"
	if ns != "" {
		path += "namespaces/" + ns + "/"
	}
	req, err := http.NewRequest(http.MethodGet, e.cfg.Host+path+gvr.Resource, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("table of %s: %s: %s", gvr.Resource, resp.Status, body)
	}
	var tab metav1.Table
	if err := json.Unmarshal(body, &tab); err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, r := range tab.Rows {
		var cells []string
		for i, c := range tab.ColumnDefinitions {
			if c.Name == "Age" {
				continue // it moves
			}
			cells = append(cells, fmt.Sprintf("%s=%v", c.Name, r.Cells[i]))
		}
		rows = append(rows, strings.Join(cells, " "))
	}
	return rows
}

func testSource(t *testing.T, e *env) {
	ctx := context.Background()
	e.namespace(t, "shop")
	src := e.run(t)
	svcs, pols, problems := src.Declared()
	if svcs == nil || pols == nil || len(svcs)+len(pols)+len(problems) != 0 {
		t.Fatalf("Declared of an empty cluster: %v %v %v; want empty, not nil", svcs, pols, problems)
	}

	// Good objects come out as the meshpolicy values they stand for.
	ch := src.Changed()
	for _, doc := range []string{goodService, goodPolicy} {
		if _, err := e.create(object(t, doc)); err != nil {
			t.Fatal(err)
		}
	}
	closes(t, "new objects", ch)
	wantDeclared := func(svcs []meshpolicy.GlobalService, pols []meshpolicy.Policy, problems []string) {
		t.Helper()
		want := render([]any{svcs, pols, problems})
		eventually(t, "declared", func() (bool, string) {
			s, p, pr := src.Declared()
			got := render([]any{s, p, pr})
			return got == want, got + "\nwant\n" + want
		})
	}
	wantDeclared([]meshpolicy.GlobalService{wantService}, []meshpolicy.Policy{wantPolicy}, nil)

	// Status: Accepted, the VIP, the rule count; written once.
	web := netip.MustParseAddr("242.255.0.10")
	t0 := e.clock()
	ch = src.Changed()
	if err := src.SyncStatus(ctx, map[string]netip.Addr{"shop/web": web}, nil); err != nil {
		t.Fatal(err)
	}
	if w := src.Stats().Writes; w != 2 {
		t.Errorf("%d status writes for two new objects, want 2", w)
	}
	gs := e.get(t, GlobalServices, "shop", "web")
	fwp := e.get(t, FirewallPolicies, "", "shop-db")
	for _, u := range []*unstructured.Unstructured{gs, fwp} {
		c := conditionOf(t, u, ConditionAccepted)
		if c.Status != metav1.ConditionTrue || c.Reason != ReasonAccepted || c.ObservedGeneration != u.GetGeneration() ||
			!c.LastTransitionTime.Time.Equal(t0) || !strings.Contains(c.Message, "cloud-a") {
			t.Errorf("%s %s: Accepted %+v", u.GetKind(), u.GetName(), c)
		}
	}
	if vip, _, _ := unstructured.NestedString(gs.Object, "status", "vip"); vip != web.String() {
		t.Errorf("status.vip %q, want %s", vip, web)
	}
	if n, _, _ := unstructured.NestedInt64(fwp.Object, "status", "rules"); n != 2 {
		t.Errorf("status.rules %d, want 2", n)
	}
	staysOpen(t, "status writes", ch)

	// Nothing differs: nothing is written, even a minute later.
	e.setClock(t0.Add(time.Minute))
	if err := src.SyncStatus(ctx, map[string]netip.Addr{"shop/web": web}, nil); err != nil {
		t.Fatal(err)
	}
	if w := src.Stats().Writes; w != 2 {
		t.Errorf("%d status writes after a sync with nothing to do, want 2", w)
	}
	if rv := e.get(t, GlobalServices, "shop", "web").GetResourceVersion(); rv != gs.GetResourceVersion() {
		t.Errorf("the GlobalService was written (resourceVersion %s, was %s)", rv, gs.GetResourceVersion())
	}

	// What kubectl get prints.
	if got, want := e.table(t, GlobalServices, "shop"), []string{"Name=web VIP=242.255.0.10 Accepted=True"}; !slices.Equal(got, want) {
		t.Errorf("kubectl get gsvc: %q, want %q", got, want)
	}
	if got, want := e.table(t, FirewallPolicies, ""), []string{"Name=shop-db Priority=100 Rules=2 DryRun=true Accepted=True"}; !slices.Equal(got, want) {
		t.Errorf("kubectl get fwp: %q, want %q", got, want)
	}

	// An update shows through Changed and Declared; the status follows
	// the generation.
	ch = src.Changed()
	e.update(t, GlobalServices, "shop", "web", func(u *unstructured.Unstructured) {
		unstructured.SetNestedField(u.Object, int64(300), "spec", "weights", "cloud-a")
	})
	closes(t, "an updated GlobalService", ch)
	web2 := wantService
	web2.Weights = map[string]uint32{"cloud-a": 300, "cloud-b": 0}
	wantDeclared([]meshpolicy.GlobalService{web2}, []meshpolicy.Policy{wantPolicy}, nil)
	if err := src.SyncStatus(ctx, map[string]netip.Addr{"shop/web": web}, nil); err != nil {
		t.Fatal(err)
	}
	gs = e.get(t, GlobalServices, "shop", "web")
	if c := conditionOf(t, gs, ConditionAccepted); c.ObservedGeneration != gs.GetGeneration() || gs.GetGeneration() < 2 || !c.LastTransitionTime.Time.Equal(t0) {
		t.Errorf("after an update: Accepted %+v, generation %d", c, gs.GetGeneration())
	}
	if w := src.Stats().Writes; w != 3 {
		t.Errorf("%d status writes, want 3", w)
	}

	// An edit that says nothing new (labels, the order of a map) does not
	// wake anyone.
	ch = src.Changed()
	e.update(t, GlobalServices, "shop", "web", func(u *unstructured.Unstructured) {
		u.SetLabels(map[string]string{"team": "shop"})
	})
	staysOpen(t, "a label", ch)

	// What the schema lets through and meshpolicy refuses: not declared,
	// and the status says why.
	ch = src.Changed()
	if _, err := e.create(object(t, strings.NewReplacer("name: web", "name: loop", "242.255.0.10", "127.0.0.1").Replace(goodService))); err != nil {
		t.Fatal(err)
	}
	if _, err := e.create(object(t, `
apiVersion: strait.io/v1alpha1
kind: FirewallPolicy
metadata: {name: odd-labels}
spec:
  rules:
  - action: deny
    from: [{labels: {"a b": x}}]
`)); err != nil {
		t.Fatal(err)
	}
	closes(t, "invalid objects", ch)
	probLoop := "GlobalService shop/loop: vip: 127.0.0.1 is not a unicast IPv4 address"
	probLabels := "FirewallPolicy odd-labels: rules[0].from[0].labels: a b=x is not a valid label"
	wantDeclared([]meshpolicy.GlobalService{web2}, []meshpolicy.Policy{wantPolicy}, []string{probLabels, probLoop})
	if st := src.Stats(); st.Invalid != 2 || st.Refused != 2 || st.Services != 1 || st.Policies != 1 {
		t.Errorf("stats %+v, want 1 service, 1 policy, 2 invalid, 2 refused", st)
	}
	t1 := t0.Add(time.Hour)
	e.setClock(t1)
	if err := src.SyncStatus(ctx, map[string]netip.Addr{"shop/web": web}, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		gvr      schema.GroupVersionResource
		ns, name string
		msg      string
	}{
		{GlobalServices, "shop", "loop", "vip: 127.0.0.1 is not a unicast IPv4 address"},
		{FirewallPolicies, "", "odd-labels", "rules[0].from[0].labels: a b=x is not a valid label"},
	} {
		c := conditionOf(t, e.get(t, tc.gvr, tc.ns, tc.name), ConditionAccepted)
		if c.Status != metav1.ConditionFalse || c.Reason != ReasonInvalid || c.Message != tc.msg || !c.LastTransitionTime.Time.Equal(t1) {
			t.Errorf("%s: Accepted %+v, want False/Invalid %q", tc.name, c, tc.msg)
		}
	}
	if n := e.logs.count("not declared to the mesh", "key=shop/loop"); n != 1 {
		t.Errorf("the invalid GlobalService logged %d times, want once", n)
	}

	// A conflict: False until it is gone, and the transition time moves
	// each way. Another controller's condition stays.
	gs = e.get(t, GlobalServices, "shop", "web")
	conds, _, _ := unstructured.NestedSlice(gs.Object, "status", "conditions")
	conds = append(conds, map[string]any{"type": "example.com/Audited", "status": "True", "reason": "Audited", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"})
	unstructured.SetNestedSlice(gs.Object, conds, "status", "conditions")
	if _, err := e.dyn.Resource(GlobalServices).Namespace("shop").UpdateStatus(ctx, gs, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the cache shows the other condition", func() (bool, string) {
		o, ok, _ := src.svcs.GetStore().GetByKey("shop/web")
		return ok && conditionOf(t, o.(*unstructured.Unstructured), "example.com/Audited").Status == metav1.ConditionTrue, ""
	})
	t2 := t1.Add(time.Hour)
	e.setClock(t2)
	writes := src.Stats().Writes
	conflict := "cloud-0 declares shop/web with other weights; cloud-0's applies"
	if err := src.SyncStatus(ctx, nil, map[string]string{ConflictKey(KindGlobalService, "shop/web"): conflict}); err != nil {
		t.Fatal(err)
	}
	gs = e.get(t, GlobalServices, "shop", "web")
	if c := conditionOf(t, gs, ConditionAccepted); c.Status != metav1.ConditionFalse || c.Reason != ReasonConflict || c.Message != conflict || !c.LastTransitionTime.Time.Equal(t2) {
		t.Errorf("in conflict: Accepted %+v", c)
	}
	if _, ok, _ := unstructured.NestedString(gs.Object, "status", "vip"); ok {
		t.Error("status.vip kept though no VIP is in use")
	}
	if c := conditionOf(t, gs, "example.com/Audited"); c.Status != metav1.ConditionTrue {
		t.Errorf("another controller's condition is gone: %+v", gs.Object["status"])
	}
	if st := src.Stats(); st.Writes != writes+1 || st.Conflicts != 1 {
		t.Errorf("stats %+v: want one write and one conflict", st)
	}
	t3 := t2.Add(time.Hour)
	e.setClock(t3)
	if err := src.SyncStatus(ctx, map[string]netip.Addr{"shop/web": web}, nil); err != nil {
		t.Fatal(err)
	}
	if c := conditionOf(t, e.get(t, GlobalServices, "shop", "web"), ConditionAccepted); c.Status != metav1.ConditionTrue || !c.LastTransitionTime.Time.Equal(t3) {
		t.Errorf("conflict gone: Accepted %+v", c)
	}

	// Mending an invalid object declares it.
	ch = src.Changed()
	e.update(t, GlobalServices, "shop", "loop", func(u *unstructured.Unstructured) {
		unstructured.SetNestedField(u.Object, "242.255.0.11", "spec", "vip")
	})
	closes(t, "a mended GlobalService", ch)
	loop := wantService
	loop.Name, loop.VIP = "loop", netip.MustParseAddr("242.255.0.11")
	wantDeclared([]meshpolicy.GlobalService{loop, web2}, []meshpolicy.Policy{wantPolicy}, []string{probLabels})

	// Deletes.
	ch = src.Changed()
	if err := e.dyn.Resource(FirewallPolicies).Delete(ctx, "shop-db", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	closes(t, "a deleted FirewallPolicy", ch)
	wantDeclared([]meshpolicy.GlobalService{loop, web2}, []meshpolicy.Policy{}, []string{probLabels})
	for _, d := range []struct {
		gvr      schema.GroupVersionResource
		ns, name string
	}{{GlobalServices, "shop", "loop"}, {GlobalServices, "shop", "web"}, {FirewallPolicies, "", "odd-labels"}} {
		if err := e.dyn.Resource(d.gvr).Namespace(d.ns).Delete(ctx, d.name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	wantDeclared([]meshpolicy.GlobalService{}, []meshpolicy.Policy{}, nil)
	if st := src.Stats(); st.Invalid != 0 || st.Services != 0 || st.Policies != 0 {
		t.Errorf("stats %+v after deleting everything", st)
	}
}

// testSchemaRefuses checks that the API server itself refuses bad
// objects, with a field error naming the field.
func testSchemaRefuses(t *testing.T, e *env) {
	e.namespace(t, "schema")
	gs := func(spec string) string {
		return "apiVersion: strait.io/v1alpha1\nkind: GlobalService\nmetadata: {namespace: schema, name: NAME}\nspec: " + spec
	}
	fwp := func(spec string) string {
		return "apiVersion: strait.io/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: NAME}\nspec: " + spec
	}
	rules := func(n int, rule string) string {
		var b strings.Builder
		b.WriteString("{rules: [")
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(strings.ReplaceAll(rule, "I", fmt.Sprint(i)))
		}
		b.WriteString("]}")
		return b.String()
	}
	labels := "{"
	for i := range 17 {
		labels += fmt.Sprintf("l%d: v, ", i)
	}
	labels += "}"
	to := func(dest string) string { return fwp("{rules: [{action: allow, to: [" + dest + "]}]}") }
	for i, tc := range []struct {
		name string
		doc  string
		// field is the path the error must name; msg more of it.
		field, msg string
	}{
		{"action maybe", fwp("{rules: [{action: maybe}]}"), "spec.rules[0].action", `Unsupported value: "maybe"`},
		{"port 0", to("{namespace: a, service: b, ports: [{port: 0}]}"), "spec.rules[0].to[0].ports[0].port", "greater than or equal to 1"},
		{"port 70000", to("{namespace: a, service: b, ports: [{port: 70000}]}"), "spec.rules[0].to[0].ports[0].port", "less than or equal to 65535"},
		{"protocol SCTP", to("{namespace: a, service: b, ports: [{protocol: SCTP, port: 1}]}"), "spec.rules[0].to[0].ports[0].protocol", "Unsupported value"},
		{"vip not-an-ip", gs("{vip: not-an-ip}"), "spec.vip", "ipv4"},
		{"locality far", gs("{locality: far}"), "spec.locality", `Unsupported value: "far"`},
		{"priority -1", fwp("{priority: -1, rules: [{action: allow}]}"), "spec.priority", "greater than or equal to 0"},
		{"priority above the largest", fwp("{priority: 1000001, rules: [{action: allow}]}"), "spec.priority", "less than or equal to 1000000"},
		{"257 rules", fwp(rules(257, "{name: rI, action: allow}")), "spec.rules", "must have at most 256 items"},
		{"no rules", fwp("{rules: []}"), "spec.rules", "should have at least 1 items"},
		{"weight 10001", gs("{weights: {cloud-a: 10001}}"), "spec.weights.cloud-a", "less than or equal to 10000"},
		{"weight -1", gs("{weights: {cloud-a: -1}}"), "spec.weights.cloud-a", "greater than or equal to 0"},
		{"weight of a bad cluster name", gs("{weights: {Cloud_A: 1}}"), "spec.weights", "cluster names must be DNS labels"},
		{"path without /", gs("{healthCheck: {protocol: HTTP, path: healthz}}"), "spec.healthCheck.path", "should match '^/'"},
		{"path with TCP", gs("{healthCheck: {protocol: TCP, path: /healthz}}"), "spec.healthCheck.path", "a path is only for protocol HTTP"},
		{"path without protocol", gs("{healthCheck: {path: /healthz}}"), "spec.healthCheck.path", "a path is only for protocol HTTP"},
		{"protocol UDP", gs("{healthCheck: {protocol: UDP}}"), "spec.healthCheck.protocol", "Unsupported value"},
		{"timeout above interval", gs("{healthCheck: {interval: 200ms, timeout: 300ms}}"), "spec.healthCheck.timeout", "must not be longer than the interval"},
		{"timeout above the default interval", gs("{healthCheck: {timeout: 600ms}}"), "spec.healthCheck.timeout", "must not be longer than the interval"},
		{"timeout too short", gs("{healthCheck: {timeout: 5ms}}"), "spec.healthCheck.timeout", "at least 10ms"},
		{"interval too short", gs("{healthCheck: {interval: 50ms}}"), "spec.healthCheck.interval", "between 100ms and 1m"},
		{"interval too long", gs("{healthCheck: {interval: 2m}}"), "spec.healthCheck.interval", "between 100ms and 1m"},
		{"interval not a duration", gs("{healthCheck: {interval: 1d}}"), "spec.healthCheck.interval", "should match"},
		{"unhealthyAfter 0", gs("{healthCheck: {unhealthyAfter: 0}}"), "spec.healthCheck.unhealthyAfter", "greater than or equal to 1"},
		{"healthyAfter 11", gs("{healthCheck: {healthyAfter: 11}}"), "spec.healthCheck.healthyAfter", "less than or equal to 10"},
		{"health check port 0", gs("{healthCheck: {port: 0}}"), "spec.healthCheck.port", "greater than or equal to 1"},
		{"missing spec", strings.TrimSuffix(fwp(""), "\nspec: "), "spec", "Required value"},
		{"missing rules", fwp("{priority: 1}"), "spec.rules", "Required value"},
		{"missing action", fwp("{rules: [{name: a}]}"), "spec.rules[0].action", "Required value"},
		{"missing namespace", to("{service: b}"), "spec.rules[0].to[0].namespace", "Required value"},
		{"missing service", to("{namespace: a}"), "spec.rules[0].to[0].service", "Required value"},
		{"missing port", to("{namespace: a, service: b, ports: [{protocol: UDP}]}"), "spec.rules[0].to[0].ports[0].port", "Required value"},
		{"duplicate rule names", fwp("{rules: [{name: a, action: allow}, {name: b, action: deny}, {name: a, action: deny}]}"), "spec.rules", "rule names must be unique"},
		{"rule name not a DNS label", fwp("{rules: [{name: Web_DB, action: allow}]}"), "spec.rules[0].name", "should match"},
		{"source cluster not a DNS label", fwp("{rules: [{action: allow, from: [{cluster: -a}]}]}"), "spec.rules[0].from[0].cluster", "should match"},
		{"17 labels", fwp("{rules: [{action: allow, from: [{labels: " + labels + "}]}]}"), "spec.rules[0].from[0].labels", "must have at most 16 items"},
		{"label value", fwp("{rules: [{action: allow, from: [{labels: {app: -web}}]}]}"), "spec.rules[0].from[0].labels.app", "should match"},
		{"65 sources", fwp(rules(1, "{action: allow, from: ["+strings.Repeat("{cluster: a}, ", 65)+"]}")), "spec.rules[0].from", "must have at most 64 items"},
		{"name not a DNS label", strings.Replace(gs("{}"), "name: NAME", "name: web.v2", 1), "metadata.name", "should match"},
		{"policy name not a DNS label", strings.Replace(fwp("{rules: [{action: allow}]}"), "name: NAME", "name: deny.db", 1), "metadata.name", "should match"},
		{"policy name too long", strings.Replace(fwp("{rules: [{action: allow}]}"), "name: NAME", "name: "+strings.Repeat("a", 64), 1), "metadata.name", "may not be more than 63"},
		{"unknown spec field", gs("{vips: 242.255.0.1}"), "", `unknown field "spec.vips"`},
		{"allocated", gs("{vip: 242.255.0.1, allocated: true}"), "", `unknown field "spec.allocated"`},
		{"unknown rule field", fwp("{rules: [{action: allow, except: [{cluster: a}]}]}"), "", `unknown field "spec.rules[0].except"`},
		{"unknown health check field", gs("{healthCheck: {retries: 3}}"), "", `unknown field "spec.healthCheck.retries"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := object(t, strings.Replace(tc.doc, "name: NAME", fmt.Sprintf("name: bad-%d", i), 1))
			got, err := e.create(u)
			if err == nil {
				t.Fatalf("accepted: %v", got.Object["spec"])
			}
			if !apierrors.IsInvalid(err) && !apierrors.IsBadRequest(err) {
				t.Fatalf("refused, but not as invalid: %v", err)
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, tc.field) || !strings.Contains(msg, tc.msg) {
				t.Errorf("error %q\ndoes not name %q with %q", msg, tc.field, tc.msg)
			}
		})
	}
}

// leaks lists the goroutines of informers, watches and sources still
// running.
func leaks() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, mark := range []string{"k8s.io/client-go/tools/cache.", "k8s.io/client-go/dynamic/dynamicinformer.",
			"k8s.io/client-go/rest/watch.", "k8s.io/apimachinery/pkg/watch.", "discovery/kubepolicy.(*Source)"} {
			if strings.Contains(g, mark) {
				out = append(out, g)
				break
			}
		}
	}
	return strings.Join(out, "\n\n")
}

// TestRunStops checks that Run returns when its context ends, before or
// after the caches synced, and leaves no goroutine behind. It does not
// run in parallel, so that no other test's informers run meanwhile.
func TestRunStops(t *testing.T) {
	srv := kubetest.Start(t)
	cfg := srv.Config()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	stop := func(t *testing.T, synced bool) {
		t.Helper()
		src, err := New(Options{Dynamic: dyn, Cluster: "cloud-a", Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx) }()
		if synced {
			eventually(t, "synced", func() (bool, string) { return src.Synced(), "" })
			if leaks() == "" {
				t.Fatal("the leak check does not see the running informers")
			}
			if err := src.Run(ctx); err == nil {
				t.Error("a second Run did not fail")
			}
			if err := src.SyncStatus(ctx, nil, nil); err != nil {
				t.Errorf("SyncStatus with no objects: %v", err)
			}
		} else {
			time.Sleep(time.Second)
			if s, p, pr := src.Declared(); src.Synced() || s != nil || p != nil || pr != nil {
				t.Fatal("synced without the CRDs")
			}
			if err := src.SyncStatus(ctx, nil, nil); err != ErrNotSynced {
				t.Errorf("SyncStatus before the caches synced: %v, want ErrNotSynced", err)
			}
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return 10s after its context ended")
		}
		eventually(t, "no goroutines left", func() (bool, string) {
			l := leaks()
			return l == "", l
		})
	}
	t.Run("before the caches synced", func(t *testing.T) {
		stop(t, false) // without the CRDs, they never do
		if logs.count("are the strait.io CRDs installed?") == 0 {
			t.Error("no log hints at the missing CRDs")
		}
	})
	installCRDs(t, cfg)
	t.Run("after", func(t *testing.T) { stop(t, true) })
}

// TestOptions checks New's validation of its options.
func TestOptions(t *testing.T) {
	t.Parallel()
	dyn, err := dynamic.NewForConfig(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Cluster: "cloud-a"}, "Options.Dynamic is required"},
		{Options{Dynamic: dyn}, `cluster name "" is not a DNS label`},
		{Options{Dynamic: dyn, Cluster: "Cloud_A"}, `cluster name "Cloud_A" is not a DNS label`},
		{Options{Dynamic: dyn, Cluster: "cloud-a"}, ""},
	} {
		_, err := New(tc.o)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.o, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want %q", tc.o, err, tc.want)
		}
	}
}
