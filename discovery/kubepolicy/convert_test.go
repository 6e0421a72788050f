package kubepolicy

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// object parses a YAML manifest.
func object(t testing.TB, doc string) *unstructured.Unstructured {
	t.Helper()
	data, err := utilyaml.ToJSON([]byte(doc))
	if err != nil {
		t.Fatalf("test manifest: %v\n%s", err, doc)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		t.Fatalf("test manifest: %v\n%s", err, doc)
	}
	return u
}

// A GlobalService and a FirewallPolicy with every field used, and the
// meshpolicy values they stand for.
const (
	goodService = `
apiVersion: strait.io/v1alpha1
kind: GlobalService
metadata: {namespace: shop, name: web}
spec:
  vip: 242.255.0.10
  weights: {cloud-a: 200, cloud-b: 0}
  locality: region
  healthCheck:
    protocol: HTTP
    port: 8080
    path: /healthz
    interval: 2s
    timeout: 750ms
    unhealthyAfter: 3
    healthyAfter: 4
`
	goodPolicy = `
apiVersion: strait.io/v1alpha1
kind: FirewallPolicy
metadata: {name: shop-db}
spec:
  priority: 100
  dryRun: true
  rules:
  - name: web-to-db
    action: allow
    from:
    - cluster: cloud-a
      namespace: shop
      labels: {app: web, example.com/tier: front}
    - cluster: cloud-b
    to:
    - namespace: shop
      service: db
      cluster: cloud-b
      ports:
      - {protocol: TCP, port: 5432}
      - {protocol: UDP, port: 5433}
      - {port: 9187}
  - action: deny
    to:
    - {namespace: shop, service: db}
`
)

var (
	wantService = meshpolicy.GlobalService{
		Namespace: "shop", Name: "web", VIP: netip.MustParseAddr("242.255.0.10"),
		Weights:  map[string]uint32{"cloud-a": 200, "cloud-b": 0},
		Locality: meshpolicy.LocalityRegion,
		HealthCheck: meshpolicy.HealthCheck{Protocol: "HTTP", Port: 8080, Path: "/healthz",
			Interval: meshpolicy.Duration(2 * time.Second), Timeout: meshpolicy.Duration(750 * time.Millisecond),
			UnhealthyAfter: 3, HealthyAfter: 4},
	}
	wantPolicy = meshpolicy.Policy{
		Name: "shop-db", Priority: 100, DryRun: true,
		Rules: []meshpolicy.Rule{
			{Name: "web-to-db", Action: meshpolicy.Allow,
				From: []meshpolicy.Source{
					{Cluster: "cloud-a", Namespace: "shop", Labels: map[string]string{"app": "web", "example.com/tier": "front"}},
					{Cluster: "cloud-b"},
				},
				To: []meshpolicy.Destination{{Namespace: "shop", Service: "db", Cluster: "cloud-b",
					Ports: []meshpolicy.Port{{Protocol: "TCP", Port: 5432}, {Protocol: "UDP", Port: 5433}, {Port: 9187}}}}},
			{Action: meshpolicy.Deny, To: []meshpolicy.Destination{{Namespace: "shop", Service: "db"}}},
		},
	}
)

// render is a value as JSON, for comparisons that show the difference.
func render(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return "!" + err.Error()
	}
	return string(b)
}

// TestResolve converts objects as the API server hands them over,
// including what the schema lets through and meshpolicy refuses, and what
// only a CRD other than ours could let through.
func TestResolve(t *testing.T) {
	t.Parallel()
	gs := func(spec string) string {
		return "apiVersion: strait.io/v1alpha1\nkind: GlobalService\nmetadata: {namespace: shop, name: web}\n" + spec
	}
	fwp := func(spec string) string {
		return "apiVersion: strait.io/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: p}\n" + spec
	}
	for _, tc := range []struct {
		name string
		doc  string
		want any    // the value, when valid
		errs string // the problem, when not
	}{
		{name: "service with every field", doc: goodService, want: wantService},
		{name: "policy with every field", doc: goodPolicy, want: wantPolicy},
		{name: "service without spec", doc: gs(""),
			want: meshpolicy.GlobalService{Namespace: "shop", Name: "web"}},
		{name: "service with empty spec", doc: gs("spec: {}"),
			want: meshpolicy.GlobalService{Namespace: "shop", Name: "web"}},
		{name: "allocated is not the object's to say", doc: gs("spec: {vip: 242.255.0.1, allocated: true}"),
			errs: `GlobalService shop/web: spec: unknown field "allocated"`},
		{name: "metadata wins over spec", doc: gs("spec: {name: other}"),
			errs: `GlobalService shop/web: spec: unknown field "name"`},
		{name: "loopback vip", doc: gs("spec: {vip: 127.0.0.1}"),
			errs: "GlobalService shop/web: vip: 127.0.0.1 is not a unicast IPv4 address"},
		{name: "vip with a leading zero", doc: gs("spec: {vip: 010.0.0.1}"),
			errs: "GlobalService shop/web: spec: "},
		{name: "timeout above the default interval", doc: gs("spec: {healthCheck: {timeout: 600ms}}"),
			errs: "GlobalService shop/web: healthCheck.timeout: 600ms: want between 10ms and the interval (500ms)"},
		{name: "name that is no DNS label",
			doc:  "apiVersion: strait.io/v1alpha1\nkind: GlobalService\nmetadata: {namespace: shop, name: web.v2}\n",
			errs: `GlobalService shop/web.v2: name: "web.v2" is not a DNS label`},
		{name: "weight too large for the Go type", doc: gs("spec: {weights: {cloud-a: 5000000000}}"),
			errs: "GlobalService shop/web: spec: weights: a number 5000000000 does not fit (want uint32)"},
		{name: "label key", doc: fwp("spec: {rules: [{action: allow, from: [{labels: {'a b': x}}]}]}"),
			errs: "FirewallPolicy p: rules[0].from[0].labels: a b=x is not a valid label"},
		{name: "port above 65535", doc: fwp("spec: {rules: [{action: allow, to: [{namespace: a, service: b, ports: [{port: 70000}]}]}]}"),
			errs: "FirewallPolicy p: spec: rules.to.ports.port: a number 70000 does not fit (want uint16)"},
		{name: "no rules", doc: fwp("spec: {priority: 1}"),
			errs: "FirewallPolicy p: rules: a policy needs at least one rule"},
		{name: "several problems", doc: fwp("spec: {rules: [{name: a, action: maybe}, {name: a, action: allow}]}"),
			errs: `FirewallPolicy p: rules[0].action: "maybe" is not allow or deny; rules[1].name: "a" is also rules[0]'s name`},
		{name: "unknown rule field", doc: fwp("spec: {rules: [{action: allow, except: [{cluster: a}]}]}"),
			errs: `FirewallPolicy p: spec: unknown field "except"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := object(t, tc.doc)
			var r resolved
			switch u.GetKind() {
			case KindGlobalService:
				r = resolveService(u)
			case KindFirewallPolicy:
				r = resolvePolicy(u)
			}
			if tc.errs != "" {
				if r.valid() {
					t.Fatalf("valid; want %q", tc.errs)
				}
				if !strings.HasPrefix(r.problem(), tc.errs) {
					t.Errorf("problem %q, want %q", r.problem(), tc.errs)
				}
				return
			}
			if !r.valid() {
				t.Fatalf("invalid: %s", r.problem())
			}
			var got any = r.svc
			if r.kind == KindFirewallPolicy {
				got = r.pol
			}
			if render(got) != render(tc.want) {
				t.Errorf("got  %s\nwant %s", render(got), render(tc.want))
			}
		})
	}
}

// TestResolvedEqual: what decides whether Changed fires.
func TestResolvedEqual(t *testing.T) {
	t.Parallel()
	a := resolveService(object(t, goodService))
	reordered := resolveService(object(t, strings.Replace(goodService, "{cloud-a: 200, cloud-b: 0}", "{cloud-b: 0, cloud-a: 200}", 1)))
	other := resolveService(object(t, strings.Replace(goodService, "cloud-a: 200", "cloud-a: 201", 1)))
	bad1 := resolveService(object(t, strings.Replace(goodService, "242.255.0.10", "127.0.0.1", 1)))
	bad2 := resolveService(object(t, strings.Replace(goodService, "242.255.0.10", "224.0.0.1", 1)))
	for _, tc := range []struct {
		name string
		a, b resolved
		want bool
	}{
		{"same", a, a, true},
		{"map order", a, reordered, true},
		{"a weight", a, other, false},
		{"valid and invalid", a, bad1, false},
		{"two problems", bad1, bad2, false},
		{"same problem", bad1, bad1, true},
	} {
		if got := tc.a.equal(tc.b); got != tc.want {
			t.Errorf("%s: equal %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestWithStatus decides status writes without an API server.
func TestWithStatus(t *testing.T) {
	t.Parallel()
	t0 := metav1.NewTime(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Hour))
	accepted := metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: ReasonAccepted, Message: "ok", ObservedGeneration: 1, LastTransitionTime: t0}
	u := object(t, goodService)
	u.SetGeneration(1)

	cp, changed, err := withStatus(u, accepted, map[string]any{"vip": "242.255.0.10"})
	if err != nil || !changed {
		t.Fatalf("first status: changed %v, %v", changed, err)
	}
	if _, ok := u.Object["status"]; ok {
		t.Error("withStatus modified its input")
	}
	// The same again, later: nothing to write.
	again := accepted
	again.LastTransitionTime = t1
	if _, changed, err := withStatus(cp, again, map[string]any{"vip": "242.255.0.10"}); err != nil || changed {
		t.Errorf("the same status: changed %v, %v", changed, err)
	}
	// A new generation, a foreign condition, a removed VIP.
	conds, _, _ := unstructured.NestedSlice(cp.Object, "status", "conditions")
	conds = append(conds, map[string]any{"type": "example.com/Audited", "status": "True", "reason": "Audited", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"})
	if err := unstructured.SetNestedSlice(cp.Object, conds, "status", "conditions"); err != nil {
		t.Fatal(err)
	}
	again.ObservedGeneration = 2
	cp2, changed, err := withStatus(cp, again, map[string]any{"vip": nil})
	if err != nil || !changed {
		t.Fatalf("new generation: changed %v, %v", changed, err)
	}
	status := cp2.Object["status"].(map[string]any)
	if _, ok := status["vip"]; ok {
		t.Errorf("vip not removed: %v", status)
	}
	got := render(status["conditions"])
	want := `[{"lastTransitionTime":"2026-03-01T12:00:00Z","message":"ok","observedGeneration":2,"reason":"Accepted","status":"True","type":"Accepted"},` +
		`{"lastTransitionTime":"2026-01-01T00:00:00Z","message":"","reason":"Audited","status":"True","type":"example.com/Audited"}]`
	if got != want {
		t.Errorf("conditions\n%s\nwant\n%s", got, want)
	}
	// A status change moves the transition time.
	refused := again
	refused.Status, refused.Reason = metav1.ConditionFalse, ReasonInvalid
	cp3, changed, err := withStatus(cp2, refused, nil)
	if err != nil || !changed {
		t.Fatalf("refused: changed %v, %v", changed, err)
	}
	conds, _, _ = unstructured.NestedSlice(cp3.Object, "status", "conditions")
	if ltt := conds[0].(map[string]any)["lastTransitionTime"]; ltt != "2026-03-01T13:00:00Z" {
		t.Errorf("lastTransitionTime %v after a status change", ltt)
	}
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", maxMessage) // 2 bytes each
	got := truncate(long)
	if len(got) > maxMessage || !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "éé") {
		t.Errorf("truncate: %d bytes, ends %q", len(got), got[len(got)-8:])
	}
	if !utf8.ValidString(got) {
		t.Error("truncate cut a character in two")
	}
	if truncate("short") != "short" {
		t.Error("truncate changed a short message")
	}
}
