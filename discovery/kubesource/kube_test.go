package kubesource

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/e2e/kube/kubetest"
)

// installCRDs applies the MCS API's CRDs and waits until they are served.
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
		all := true
		for _, s := range substrs {
			all = all && strings.Contains(line, s)
		}
		if all {
			n++
		}
	}
	return n
}

// env is a real API server with the MCS CRDs and a running source.
type env struct {
	cfg  *rest.Config
	kube kubernetes.Interface
	mcs  mcsclient.Interface
	src  *Source
	logs *logBuffer

	mu  sync.Mutex
	now time.Time // the source's clock
}

func newEnv(t *testing.T, cluster string) *env {
	t.Helper()
	srv := kubetest.Start(t)
	e := &env{cfg: srv.Config(), logs: &logBuffer{}, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	var err error
	if e.kube, err = kubernetes.NewForConfig(e.cfg); err != nil {
		t.Fatal(err)
	}
	if e.mcs, err = mcsclient.NewForConfig(e.cfg); err != nil {
		t.Fatal(err)
	}
	installCRDs(t, e.cfg)
	e.src = e.run(t, cluster)
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
func (e *env) run(t *testing.T, cluster string) *Source {
	t.Helper()
	src, err := New(Options{Kube: e.kube, MCS: e.mcs, Cluster: cluster, Now: e.clock,
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

func (e *env) namespace(t *testing.T, name string) {
	t.Helper()
	if _, err := e.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) service(t *testing.T, svc *corev1.Service) *corev1.Service {
	t.Helper()
	got, err := e.kube.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func (e *env) slice(t *testing.T, svc string, sl *discoveryv1.EndpointSlice) {
	t.Helper()
	sl.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	if _, err := e.kube.DiscoveryV1().EndpointSlices(sl.Namespace).Create(context.Background(), sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) export(t *testing.T, ns, name string) {
	t.Helper()
	se := &mcsv1a1.ServiceExport{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if _, err := e.mcs.MulticlusterV1alpha1().ServiceExports(ns).Create(context.Background(), se, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) exportObj(t *testing.T, ns, name string) *mcsv1a1.ServiceExport {
	t.Helper()
	se, err := e.mcs.MulticlusterV1alpha1().ServiceExports(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return se
}

// imports renders the cluster's ServiceImports, one line each.
func (e *env) imports(t *testing.T) (string, map[string]string) {
	t.Helper()
	list, err := e.mcs.MulticlusterV1alpha1().ServiceImports(metav1.NamespaceAll).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	rvs := map[string]string{}
	for _, si := range list.Items {
		var b strings.Builder
		fmt.Fprintf(&b, "%s/%s %s", si.Namespace, si.Name, si.Spec.Type)
		for _, p := range si.Spec.Ports {
			fmt.Fprintf(&b, " %s:%d/%s", p.Name, p.Port, p.Protocol)
		}
		var clusters []string
		for _, c := range si.Status.Clusters {
			clusters = append(clusters, c.Cluster)
		}
		fmt.Fprintf(&b, " ips=%v clusters=%v", si.Spec.IPs, clusters)
		if si.Labels[LabelManagedBy] != ManagedBy {
			b.WriteString(" unmanaged")
		}
		lines = append(lines, b.String())
		rvs[si.Namespace+"/"+si.Name] = si.ResourceVersion
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), rvs
}

func (e *env) findExport(ns, name string) (Export, bool) {
	for _, x := range e.src.Exports() {
		if x.Namespace == ns && x.Name == name {
			return x, true
		}
	}
	return Export{}, false
}

func condition(se *mcsv1a1.ServiceExport, typ string) metav1.Condition {
	if c := meta.FindStatusCondition(se.Status.Conditions, typ); c != nil {
		return *c
	}
	return metav1.Condition{}
}

// TestExports runs the export side against a real API server: what a
// Service, its EndpointSlices and its ServiceExport produce, how it
// follows them, and what is refused.
func TestExports(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "cloud-a")
	ctx := context.Background()
	e.namespace(t, "shop")

	web := e.service(t, service("web", "", port("http", corev1.ProtocolTCP, 80), port("dns", corev1.ProtocolUDP, 53)))
	e.slice(t, "web", slice("web-1", discoveryv1.AddressTypeIPv4, "10.0.1.1", "10.0.1.2!", "10.0.1.3?"))
	db := service("db", corev1.ClusterIPNone, port("pg", corev1.ProtocolTCP, 5432))
	e.service(t, db)
	e.slice(t, "db", slice("db-1", discoveryv1.AddressTypeIPv4, "db-0=10.0.2.1", "db-1=10.0.2.2"))
	e.service(t, service("internal", "", port("http", corev1.ProtocolTCP, 80))) // not exported

	ch := e.src.Changed()
	e.export(t, "shop", "web")
	e.export(t, "shop", "db")
	closes(t, "two new exports", ch)
	wantWeb := Export{Namespace: "shop", Name: "web", ClusterIP: netip.MustParseAddr(web.Spec.ClusterIP),
		Ports:     []Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
		Endpoints: eps("10.0.1.1", "10.0.1.3"), Ready: 2, Total: 3}
	wantDB := Export{Namespace: "shop", Name: "db", Headless: true, Ports: []Port{{Name: "pg", Protocol: "TCP", Port: 5432}},
		Endpoints: eps("db-0=10.0.2.1", "db-1=10.0.2.2"), Ready: 2, Total: 2}
	eventually(t, "exports", func() (bool, string) {
		got := e.src.Exports()
		return len(got) == 2 && got[0].equal(wantDB) && got[1].equal(wantWeb), fmt.Sprintf("%+v", got)
	})

	// An endpoint becomes ready; another slice adds one.
	sl, err := e.kube.DiscoveryV1().EndpointSlices("shop").Get(ctx, "web-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	sl.Endpoints[1].Conditions.Ready = &yes
	ch = e.src.Changed()
	if _, err := e.kube.DiscoveryV1().EndpointSlices("shop").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.slice(t, "web", slice("web-2", discoveryv1.AddressTypeIPv4, "10.0.1.4"))
	closes(t, "an endpoint becoming ready", ch)
	eventually(t, "four ready endpoints", func() (bool, string) {
		x, _ := e.findExport("shop", "web")
		return x.Ready == 4 && slices.Equal(x.Endpoints, eps("10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4")), fmt.Sprintf("%+v", x)
	})

	// Removing the ServiceExport removes the export.
	ch = e.src.Changed()
	if err := e.mcs.MulticlusterV1alpha1().ServiceExports("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	closes(t, "a removed export", ch)
	eventually(t, "web no longer exported", func() (bool, string) {
		_, ok := e.findExport("shop", "web")
		return !ok, fmt.Sprintf("%+v", e.src.Exports())
	})

	// Bad input: refused, with the reason on the ServiceExport.
	ext := service("ext", "", port("http", corev1.ProtocolTCP, 80))
	ext.Spec.Type, ext.Spec.ExternalName = corev1.ServiceTypeExternalName, "db.example.com"
	e.service(t, ext)
	for _, tc := range []struct{ name, reason string }{
		{"ghost", ReasonNoService},
		{"ext", ReasonInvalidServiceType},
	} {
		t.Run("refused "+tc.name, func(t *testing.T) {
			e.export(t, "shop", tc.name)
			eventually(t, "refusal known", func() (bool, string) {
				st, ok := e.src.lookup("shop/" + tc.name)
				return ok && st.refused != nil, fmt.Sprintf("%+v", st)
			})
			if _, ok := e.findExport("shop", tc.name); ok {
				t.Errorf("%s exported", tc.name)
			}
			if err := e.src.SyncExportStatus(ctx, snapshot("cloud-a")); err != nil {
				t.Fatal(err)
			}
			c := condition(e.exportObj(t, "shop", tc.name), ConditionValid)
			if c.Status != metav1.ConditionFalse || c.Reason != tc.reason || c.Message == "" {
				t.Errorf("Valid condition %+v; want False, %s", c, tc.reason)
			}
			if n := e.src.Stats().Refused[tc.reason]; n != 1 {
				t.Errorf("Stats().Refused[%s] = %d, want 1", tc.reason, n)
			}
		})
	}
	// The API server itself refuses a port protocol other than TCP, UDP
	// and SCTP, so the source's own check (TestExportOf) cannot be
	// reached through it.
	if _, err := e.kube.CoreV1().Services("shop").Create(ctx, service("icmp", "", port("ping", "ICMP", 7)), metav1.CreateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("a Service with protocol ICMP: %v, want it refused as invalid", err)
	}

	// A refusal is logged once, however often the export is looked at.
	for i := range 3 {
		se := e.exportObj(t, "shop", "ghost")
		se.Labels = map[string]string{"touch": fmt.Sprint(i)}
		if _, err := e.mcs.MulticlusterV1alpha1().ServiceExports("shop").Update(ctx, se, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond)
	if n := e.logs.count("service not exported", "service=shop/ghost"); n != 1 {
		t.Errorf("the refusal of shop/ghost logged %d times, want once", n)
	}

	// The Service appears: the export follows, and so does its status.
	ch = e.src.Changed()
	e.service(t, service("ghost", "", port("http", corev1.ProtocolTCP, 80)))
	closes(t, "a Service appearing", ch)
	eventually(t, "ghost exported", func() (bool, string) {
		_, ok := e.findExport("shop", "ghost")
		return ok, fmt.Sprintf("%+v", e.src.Exports())
	})
	if err := e.src.SyncExportStatus(ctx, snapshot("cloud-a")); err != nil {
		t.Fatal(err)
	}
	if c := condition(e.exportObj(t, "shop", "ghost"), ConditionValid); c.Status != metav1.ConditionTrue {
		t.Errorf("Valid condition %+v once the Service exists", c)
	}
	if st := e.src.Stats(); st.Exports != 2 || st.Invalid != 1 {
		t.Errorf("stats %+v, want 2 exports and 1 invalid", st)
	}
}

// TestImports reconciles ServiceImports from catalog snapshots on a real
// API server.
func TestImports(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "cloud-a")
	ctx := context.Background()
	e.namespace(t, "shop")
	// Someone else's ServiceImport, where strait would make one.
	legacy := &mcsv1a1.ServiceImport{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "legacy"},
		Spec: mcsv1a1.ServiceImportSpec{Type: mcsv1a1.ClusterSetIP, Ports: []mcsv1a1.ServicePort{{Port: 1, Protocol: corev1.ProtocolTCP}}}}
	if _, err := e.mcs.MulticlusterV1alpha1().ServiceImports("shop").Create(ctx, legacy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const legacyLine = "shop/legacy ClusterSetIP :1/TCP ips=[] clusters=[] unmanaged"

	steps := []struct {
		name     string
		snap     catalog.Snapshot
		want     string
		changed  []string // ServiceImports whose resourceVersion changes
		noNS     int
		conflict int
	}{
		{
			name: "create",
			snap: snapshot("cloud-a",
				cs("cloud-a", "shop/mine", "242.0.128.1", false, "http:80/TCP"),
				cs("cloud-a", "shop/web", "242.0.128.2", false, "http:80/TCP"),
				cs("cloud-b", "shop/web", "242.1.128.1", false, "http:80/TCP"),
				cs("cloud-c", "shop/web", "242.2.128.1", false, "http:80/TCP"),
				cs("cloud-b", "shop/db", "", true, "pg:5432/TCP"),
				cs("cloud-b", "shop/legacy", "242.1.128.2", false, "http:80/TCP"),
				cs("cloud-b", "nowhere/x", "242.1.128.3", false, "http:80/TCP")),
			want: "shop/db Headless pg:5432/TCP ips=[] clusters=[cloud-b]\n" +
				legacyLine + "\n" +
				"shop/web ClusterSetIP http:80/TCP ips=[242.1.128.1 242.2.128.1] clusters=[cloud-b cloud-c]",
			changed: []string{"shop/db", "shop/web"},
			noNS:    1,
		},
		{
			name: "same again: no writes",
			snap: snapshot("cloud-a",
				cs("cloud-a", "shop/mine", "242.0.128.1", false, "http:80/TCP"),
				cs("cloud-a", "shop/web", "242.0.128.2", false, "http:80/TCP"),
				cs("cloud-b", "shop/web", "242.1.128.1", false, "http:80/TCP"),
				cs("cloud-c", "shop/web", "242.2.128.1", false, "http:80/TCP"),
				cs("cloud-b", "shop/db", "", true, "pg:5432/TCP"),
				cs("cloud-b", "shop/legacy", "242.1.128.2", false, "http:80/TCP"),
				cs("cloud-b", "nowhere/x", "242.1.128.3", false, "http:80/TCP")),
			want: "shop/db Headless pg:5432/TCP ips=[] clusters=[cloud-b]\n" +
				legacyLine + "\n" +
				"shop/web ClusterSetIP http:80/TCP ips=[242.1.128.1 242.2.128.1] clusters=[cloud-b cloud-c]",
			noNS: 1,
		},
		{
			name: "the second cluster's ports differ: the first's stay, no writes",
			snap: snapshot("cloud-a",
				cs("cloud-b", "shop/web", "242.1.128.1", false, "http:80/TCP"),
				cs("cloud-c", "shop/web", "242.2.128.1", false, "http:80/TCP", "https:443/TCP"),
				cs("cloud-b", "shop/db", "", true, "pg:5432/TCP"),
				cs("cloud-b", "shop/legacy", "242.1.128.2", false, "http:80/TCP")),
			want: "shop/db Headless pg:5432/TCP ips=[] clusters=[cloud-b]\n" +
				legacyLine + "\n" +
				"shop/web ClusterSetIP http:80/TCP ips=[242.1.128.1 242.2.128.1] clusters=[cloud-b cloud-c]",
			conflict: 1,
		},
		{
			name: "the first cluster's ports change",
			snap: snapshot("cloud-a",
				cs("cloud-b", "shop/web", "242.1.128.1", false, "http:8080/TCP"),
				cs("cloud-c", "shop/web", "242.2.128.1", false, "http:8080/TCP"),
				cs("cloud-b", "shop/db", "", true, "pg:5432/TCP"),
				cs("cloud-b", "shop/legacy", "242.1.128.2", false, "http:80/TCP")),
			want: "shop/db Headless pg:5432/TCP ips=[] clusters=[cloud-b]\n" +
				legacyLine + "\n" +
				"shop/web ClusterSetIP http:8080/TCP ips=[242.1.128.1 242.2.128.1] clusters=[cloud-b cloud-c]",
			changed: []string{"shop/web"},
		},
		{
			name: "exporters leave",
			snap: snapshot("cloud-a",
				cs("cloud-a", "shop/db", "", true, "pg:5432/TCP"),
				cs("cloud-b", "shop/web", "242.1.128.1", false, "http:8080/TCP"),
				cs("cloud-b", "shop/legacy", "242.1.128.2", false, "http:80/TCP")),
			want: legacyLine + "\n" +
				"shop/web ClusterSetIP http:8080/TCP ips=[242.1.128.1] clusters=[cloud-b]",
			changed: []string{"shop/db", "shop/web"},
		},
	}
	_, rvs := e.imports(t)
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			writes := e.src.Stats().Writes
			if err := e.src.SyncImports(ctx, step.snap); err != nil {
				t.Fatal(err)
			}
			got, now := e.imports(t)
			if got != step.want {
				t.Errorf("ServiceImports:\n%s\nwant\n%s", got, step.want)
			}
			var changed []string
			for k, rv := range now {
				if rvs[k] != rv {
					changed = append(changed, k)
				}
			}
			for k := range rvs {
				if _, ok := now[k]; !ok {
					changed = append(changed, k)
				}
			}
			slices.Sort(changed)
			if !slices.Equal(changed, step.changed) {
				t.Errorf("changed %v, want %v", changed, step.changed)
			}
			if len(step.changed) == 0 && e.src.Stats().Writes != writes {
				t.Errorf("%d writes, want none", e.src.Stats().Writes-writes)
			}
			st := e.src.Stats()
			if st.ImportsNoNamespace != step.noNS || st.ImportConflicts != step.conflict || st.ImportsUnmanaged != 1 {
				t.Errorf("stats %+v, want %d without namespace, %d conflicts, 1 unmanaged", st, step.noNS, step.conflict)
			}
			rvs = now
		})
	}
	if n := e.logs.count("import", "service=shop/legacy", "left alone"); n != 1 {
		t.Errorf("the unmanaged ServiceImport logged %d times, want once", n)
	}

	// Drift: an edit to a managed ServiceImport wakes the source, and the
	// next sync puts it back; so does a namespace appearing.
	last := steps[len(steps)-1]
	si, err := e.mcs.MulticlusterV1alpha1().ServiceImports("shop").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	si.Spec.IPs = []string{"192.0.2.1"}
	ch := e.src.Changed()
	if _, err := e.mcs.MulticlusterV1alpha1().ServiceImports("shop").Update(ctx, si, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	closes(t, "an edited ServiceImport", ch)
	if err := e.src.SyncImports(ctx, last.snap); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.imports(t); got != last.want {
		t.Errorf("after repairing an edit:\n%s\nwant\n%s", got, last.want)
	}
	ch = e.src.Changed()
	e.namespace(t, "nowhere")
	closes(t, "a new namespace", ch)
	snap := last.snap
	snap.Services = append(slices.Clone(snap.Services), cs("cloud-b", "nowhere/x", "242.1.128.3", false, "http:80/TCP"))
	if err := e.src.SyncImports(ctx, snap); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.imports(t); !strings.HasPrefix(got, "nowhere/x ClusterSetIP http:80/TCP ips=[242.1.128.3] clusters=[cloud-b]\n") {
		t.Errorf("no import in the new namespace:\n%s", got)
	}

	// Nothing exported by others any more: only the unmanaged one stays.
	if err := e.src.SyncImports(ctx, snapshot("cloud-a", cs("cloud-a", "shop/web", "242.0.128.2", false, "http:80/TCP"))); err != nil {
		t.Fatal(err)
	}
	if got, _ := e.imports(t); got != legacyLine {
		t.Errorf("after every exporter left:\n%s\nwant\n%s", got, legacyLine)
	}

	// Snapshots of another cluster are refused.
	if err := e.src.SyncImports(ctx, snapshot("cloud-b")); err == nil {
		t.Error("a snapshot of cloud-b accepted by cloud-a's source")
	}
}

// TestExportStatus sets the ServiceExport conditions from snapshots on a
// real API server.
func TestExportStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "cloud-a")
	ctx := context.Background()
	e.namespace(t, "shop")
	e.service(t, service("web", "", port("http", corev1.ProtocolTCP, 80)))
	e.export(t, "shop", "web")
	eventually(t, "web exported", func() (bool, string) {
		_, ok := e.findExport("shop", "web")
		return ok, fmt.Sprintf("%+v", e.src.Exports())
	})
	mine := cs("cloud-a", "shop/web", "242.0.128.7", false, "http:80/TCP")

	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	steps := []struct {
		name  string
		snap  catalog.Snapshot
		want  string // Type=Status/Reason, in order
		write bool
		moved []string // conditions whose lastTransitionTime moves to this step's time
		msg   []string // in the Conflict message
	}{
		{
			name:  "not in the catalog yet",
			snap:  snapshot("cloud-a"),
			want:  "Valid=True/Valid Ready=False/Pending Conflict=False/NoConflicts",
			write: true, moved: []string{ConditionValid, ConditionReady, ConditionConflict},
		},
		{
			name:  "exported, another cluster with other ports",
			snap:  snapshot("cloud-a", mine, cs("cloud-b", "shop/web", "242.1.128.7", false, "http:8080/TCP")),
			want:  "Valid=True/Valid Ready=True/Exported Conflict=True/PortConflict",
			write: true, moved: []string{ConditionReady, ConditionConflict},
			msg: []string{"cloud-a (this cluster): 80/TCP (http)", "cloud-b: 8080/TCP (http)", "cloud-a's apply"},
		},
		{
			name: "the same again: no write",
			snap: snapshot("cloud-a", mine, cs("cloud-b", "shop/web", "242.1.128.7", false, "http:8080/TCP")),
			want: "Valid=True/Valid Ready=True/Exported Conflict=True/PortConflict",
		},
		{
			name: "a third cluster, still in conflict: the message changes, not the time",
			snap: snapshot("cloud-a", mine, cs("cloud-b", "shop/web", "242.1.128.7", false, "http:8080/TCP"),
				cs("cloud-c", "shop/web", "242.2.128.7", false, "http:80/TCP")),
			want:  "Valid=True/Valid Ready=True/Exported Conflict=True/PortConflict",
			write: true,
			msg:   []string{"cloud-c: 80/TCP (http)"},
		},
		{
			name:  "the other cluster agrees",
			snap:  snapshot("cloud-a", mine, cs("cloud-b", "shop/web", "242.1.128.7", false, "http:80/TCP")),
			want:  "Valid=True/Valid Ready=True/Exported Conflict=False/NoConflicts",
			write: true, moved: []string{ConditionConflict},
		},
	}
	last := map[string]metav1.Time{}
	for i, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			now := t0.Add(time.Duration(i) * time.Hour)
			e.setClock(now)
			before := e.exportObj(t, "shop", "web")
			if err := e.src.SyncExportStatus(ctx, step.snap); err != nil {
				t.Fatal(err)
			}
			se := e.exportObj(t, "shop", "web")
			if wrote := se.ResourceVersion != before.ResourceVersion; wrote != step.write {
				t.Errorf("wrote: %v, want %v", wrote, step.write)
			}
			var got []string
			for _, typ := range []string{ConditionValid, ConditionReady, ConditionConflict} {
				c := condition(se, typ)
				got = append(got, fmt.Sprintf("%s=%s/%s", c.Type, c.Status, c.Reason))
				if c.ObservedGeneration != se.Generation {
					t.Errorf("%s: observedGeneration %d, want %d", typ, c.ObservedGeneration, se.Generation)
				}
				moved := slices.Contains(step.moved, typ)
				switch {
				case moved && !c.LastTransitionTime.Time.Equal(now):
					t.Errorf("%s: lastTransitionTime %s, want %s", typ, c.LastTransitionTime, now)
				case !moved && !c.LastTransitionTime.Equal(ptr(last[typ])):
					t.Errorf("%s: lastTransitionTime moved from %s to %s", typ, last[typ], c.LastTransitionTime)
				}
				last[typ] = c.LastTransitionTime
			}
			if g := strings.Join(got, " "); g != step.want {
				t.Errorf("conditions %s, want %s", g, step.want)
			}
			msg := condition(se, ConditionConflict).Message
			for _, m := range step.msg {
				if !strings.Contains(msg, m) {
					t.Errorf("Conflict message %q does not say %q", msg, m)
				}
			}
		})
	}

	// Conditions of others are left alone.
	se := e.exportObj(t, "shop", "web")
	se.Status.Conditions = append(se.Status.Conditions, metav1.Condition{Type: "example.com/Audited", Status: metav1.ConditionTrue,
		Reason: "Audited", LastTransitionTime: metav1.NewTime(t0)})
	if _, err := e.mcs.MulticlusterV1alpha1().ServiceExports("shop").UpdateStatus(ctx, se, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the cache shows the other condition", func() (bool, string) {
		got, err := e.src.exportObjs.ServiceExports("shop").Get("web")
		return err == nil && len(got.Status.Conditions) == 4, ""
	})
	if err := e.src.SyncExportStatus(ctx, steps[0].snap); err != nil {
		t.Fatal(err)
	}
	se = e.exportObj(t, "shop", "web")
	if c := condition(se, "example.com/Audited"); c.Status != metav1.ConditionTrue {
		t.Errorf("another controller's condition is gone: %+v", se.Status.Conditions)
	}
	if c := condition(se, ConditionReady); c.Reason != "Pending" {
		t.Errorf("Ready %+v, want Pending", c)
	}
}

func ptr(t metav1.Time) *metav1.Time { return &t }

// leaks lists the goroutines of informers, watches and sources still
// running.
func leaks() string {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		for _, mark := range []string{"k8s.io/client-go/tools/cache.", "k8s.io/client-go/rest/watch.", "k8s.io/apimachinery/pkg/watch.", "discovery/kubesource.(*Source)"} {
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
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mcs, err := mcsclient.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	logs := &logBuffer{}
	stop := func(t *testing.T, synced bool) {
		t.Helper()
		src, err := New(Options{Kube: kube, MCS: mcs, Cluster: "cloud-a", Logger: slog.New(slog.NewTextHandler(logs, nil))})
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
		} else {
			time.Sleep(time.Second)
			if src.Synced() || src.Exports() != nil {
				t.Fatal("synced without the CRDs")
			}
			if err := src.SyncImports(ctx, snapshot("cloud-a")); err != ErrNotSynced {
				t.Errorf("SyncImports before the caches synced: %v, want ErrNotSynced", err)
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
		if logs.count("are the multicluster.x-k8s.io CRDs installed?") == 0 {
			t.Error("no log hints at the missing CRDs")
		}
	})
	installCRDs(t, cfg)
	t.Run("after", func(t *testing.T) { stop(t, true) })
}
