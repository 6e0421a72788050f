package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/straitnet/strait/e2e/kube/kubetest"
	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/natpool"
	"github.com/straitnet/strait/natpool/kubestore"
)

// fakeEngine stands in for the tunnel engine: it records what was applied
// and fails when told to.
type fakeEngine struct {
	tunnel  tunnel.Config
	applied int
	failing error
}

func (f *fakeEngine) Apply(_ context.Context, c tunnel.Config) error {
	if f.failing != nil {
		return f.failing
	}
	f.tunnel = c
	f.applied++
	return nil
}
func (f *fakeEngine) Status() (tunnel.Status, error) { return tunnel.Status{Interface: "fake"}, nil }
func (f *fakeEngine) Implementation() tunnel.Mode    { return "fake" }
func (f *fakeEngine) Close() error                   { return nil }

// fakeNAT stands in for the table: it keeps the last program, and drifts
// when told to.
type fakeNAT struct {
	prog    nat.Program
	syncs   int
	drifted bool
}

func (f *fakeNAT) Sync(p nat.Program) (nat.SyncStats, error) {
	f.prog, f.drifted = p, false
	f.syncs++
	return nat.SyncStats{}, nil
}
func (f *fakeNAT) Verify() (bool, error) { return !f.drifted, nil }
func (f *fakeNAT) Close() error          { return nil }

// fakeStore keeps state in memory and fails saves when told to.
type fakeStore struct {
	st      natpool.State
	saves   int
	failing error
}

func (f *fakeStore) Load() (natpool.State, error) { return f.st, nil }
func (f *fakeStore) Save(st natpool.State) error {
	if f.failing != nil {
		return f.failing
	}
	f.st = st
	f.saves++
	return nil
}
func (f *fakeStore) Where() string { return "memory" }

var (
	_ engine        = (*fakeEngine)(nil)
	_ natTable      = (*fakeNAT)(nil)
	_ natpool.Store = (*fakeStore)(nil)
)

type testbed struct {
	g     *Gateway
	eng   *fakeEngine
	tab   *fakeNAT
	store *fakeStore
	k     []wgtypes.Key
	mesh  string
	site  string
	now   time.Time
	ctx   context.Context
	t     *testing.T
}

// newTestbed starts a gateway for site cloud-b on fakes, with the mesh of
// meshText and the site file siteText.
func newTestbed(t *testing.T) *testbed {
	t.Helper()
	dir := t.TempDir()
	tb := &testbed{k: keys(t, 3), mesh: filepath.Join(dir, "mesh.yaml"), site: filepath.Join(dir, "site.yaml"),
		eng: &fakeEngine{}, tab: &fakeNAT{}, store: &fakeStore{}, now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
		ctx: context.Background(), t: t}
	tb.write(tb.mesh, meshText(tb.k, "25s"))
	tb.write(tb.site, siteText)
	opts := Options{Site: "cloud-b", MeshFile: tb.mesh, SiteFile: tb.site, Interface: "wg0", Now: func() time.Time { return tb.now }}
	if err := opts.setDefaults(); err != nil {
		t.Fatal(err)
	}
	tb.g = newGateway(opts, slog.New(slog.NewTextHandler(io.Discard, nil)), tb.k[1], tb.eng, tb.tab, tb.store)
	want, h, err := readConfig(opts, tb.k[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.g.start(tb.ctx, want, h); err != nil {
		t.Fatal(err)
	}
	return tb
}

func (tb *testbed) write(path, text string) {
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

func (tb *testbed) ip(key string) string {
	for _, a := range tb.g.Status().Allocations {
		if a.Key == key {
			return a.IP.String()
		}
	}
	return ""
}

func TestStartAllocatesSavesAndPrograms(t *testing.T) {
	tb := newTestbed(t)
	if tb.store.saves != 1 || len(tb.store.st.Allocations) != 3 {
		t.Fatalf("saved %d times, %d allocations", tb.store.saves, len(tb.store.st.Allocations))
	}
	if got := tb.ip("ingress/default/web"); got != "242.1.128.1" {
		t.Errorf("web's ingress address %s", got)
	}
	if len(tb.tab.prog.Services) != 2 || tb.tab.prog.Services[0].Addr.String() != "242.1.128.1" {
		t.Errorf("programmed services %+v", tb.tab.prog.Services)
	}
	st := tb.g.Status()
	if len(st.Paths) != 2 || st.Paths[0].Peer != "cloud-a" || st.Paths[0].Outbound != "translated" || !strings.Contains(st.Paths[0].Why, "collides") {
		t.Errorf("paths %+v", st.Paths)
	}
	// cloud-b is not routable: out translated, in real from branch.
	if st.Paths[1].Peer != "branch" || st.Paths[1].Outbound != "translated" || st.Paths[1].Inbound != "real" || len(st.Matrix) != 3 {
		t.Errorf("paths %+v, matrix %+v", st.Paths, st.Matrix)
	}
}

func TestRestartKeepsAllocations(t *testing.T) {
	tb := newTestbed(t)
	web := tb.ip("ingress/default/web")
	// A second gateway on the same store: a restart.
	want, h, err := readConfig(tb.g.opts, tb.k[1])
	if err != nil {
		t.Fatal(err)
	}
	g2 := newGateway(tb.g.opts, tb.g.log, tb.k[1], &fakeEngine{}, &fakeNAT{}, tb.store)
	if err := g2.start(tb.ctx, want, h); err != nil {
		t.Fatal(err)
	}
	if tb.store.saves != 1 {
		t.Errorf("the restart saved again (%d saves): nothing changed", tb.store.saves)
	}
	for _, a := range g2.Status().Allocations {
		if a.Key == "ingress/default/web" && a.IP.String() != web {
			t.Errorf("after the restart web is at %s, was %s", a.IP, web)
		}
	}
}

func TestNewServiceIsSavedBeforeProgrammed(t *testing.T) {
	tb := newTestbed(t)
	tb.write(tb.site, siteText+"  - {namespace: default, name: other, ip: 10.0.3.3}\n"+
		"services:\n  - {namespace: shop, name: db, backend: 10.96.0.12, ports: [{port: 5432}]}\n")
	// The file above is invalid YAML (services twice): refused.
	tb.g.reconcile(tb.ctx)
	if st := tb.g.Status(); st.Config.Refused == nil {
		t.Fatalf("a site file with services twice was accepted")
	}
	tb.write(tb.site, strings.Replace(siteText, "services:\n", "services:\n  - {namespace: shop, name: db, backend: 10.96.0.12, ports: [{port: 5432}]}\n", 1))
	tb.store.failing = errors.New("disk full")
	tb.g.reconcile(tb.ctx)
	st := tb.g.Status()
	if st.ApplyError == nil || !strings.Contains(st.ApplyError.Msg, "disk full") {
		t.Fatalf("failed save: apply error %+v", st.ApplyError)
	}
	if tb.ip("ingress/shop/db") != "" || len(tb.tab.prog.Services) != 2 {
		t.Fatalf("an allocation that was not saved is in use: %v; programmed %d services", tb.ip("ingress/shop/db"), len(tb.tab.prog.Services))
	}
	tb.store.failing = nil
	tb.g.reconcile(tb.ctx)
	if got := tb.ip("ingress/shop/db"); got != "242.1.128.2" || len(tb.tab.prog.Services) != 3 {
		t.Errorf("after the save works: db at %q, %d services programmed", got, len(tb.tab.prog.Services))
	}
	if len(tb.store.st.Allocations) != 4 {
		t.Errorf("store holds %d allocations, want 4", len(tb.store.st.Allocations))
	}
}

func TestExhaustedPoolIsACondition(t *testing.T) {
	tb := newTestbed(t)
	text := "pools:\n  - {name: ingress, kind: ingress, cidr: 242.1.128.0/30}\n  - {name: egress, kind: egress, cidr: 242.1.1.0/28}\nservices:\n"
	for i := range 5 {
		text += fmt.Sprintf("  - {namespace: default, name: s%d, backend: 10.0.1.%d, ports: [{port: 80}]}\n", i, i+10)
	}
	tb.write(tb.site, text)
	tb.g.reconcile(tb.ctx)
	st := tb.g.Status()
	if st.Config.Refused != nil || st.ApplyError != nil {
		t.Fatalf("refused %+v, apply error %+v", st.Config.Refused, st.ApplyError)
	}
	// A /30 has 242.1.128.1-3; web's .1 was released into hold-down: s0,
	// s1 get .2 and .3, the others wait.
	if len(st.Conditions) != 3 || !strings.Contains(st.Conditions[0], "pool exhausted") {
		t.Fatalf("conditions %v", st.Conditions)
	}
	if len(tb.tab.prog.Services) != 2 {
		t.Errorf("%d services programmed, want the 2 that got addresses", len(tb.tab.prog.Services))
	}
	// The hold-down passes: one more gets web's old address.
	tb.now = tb.now.Add(natpool.DefaultHoldDown)
	tb.g.reconcile(tb.ctx)
	if st := tb.g.Status(); len(st.Conditions) != 2 || len(tb.tab.prog.Services) != 3 {
		t.Errorf("after the hold-down: conditions %v, %d services", st.Conditions, len(tb.tab.prog.Services))
	}
}

func TestReconcileRefusesBadFileAndKeepsRunning(t *testing.T) {
	tb := newTestbed(t)
	before := tb.g.Status().Config.Hash
	// Duplicate key: refused, the last good configuration stays applied.
	bad := strings.Replace(meshText(tb.k, "25s"), tb.k[2].PublicKey().String(), tb.k[0].PublicKey().String(), 1)
	tb.write(tb.mesh, bad)
	tb.g.reconcile(tb.ctx)
	st := tb.g.Status()
	if st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, "sites[2].publicKey") {
		t.Fatalf("bad file: refused = %+v", st.Config.Refused)
	}
	if st.Config.Hash != before || st.Config.Pending != "" || len(tb.eng.tunnel.Peers) != 2 {
		t.Errorf("bad file: hash %s (was %s), pending %q, %d peers", st.Config.Hash, before, st.Config.Pending, len(tb.eng.tunnel.Peers))
	}
	os.Remove(tb.mesh)
	tb.g.reconcile(tb.ctx)
	if st := tb.g.Status(); st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, "no such file") {
		t.Errorf("missing file: refused = %+v", st.Config.Refused)
	}
	// The same bad content comes back: its own refusal again, not the
	// stale "no such file".
	tb.write(tb.mesh, bad)
	tb.g.reconcile(tb.ctx)
	if st := tb.g.Status(); st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, "sites[2].publicKey") {
		t.Errorf("bad file again: refused = %+v", st.Config.Refused)
	}
	tb.write(tb.mesh, meshText(tb.k, "25s"))
	tb.g.reconcile(tb.ctx)
	if st := tb.g.Status(); st.Config.Refused != nil || st.Config.Hash != before {
		t.Errorf("good file back: refused %+v, hash %s", st.Config.Refused, st.Config.Hash)
	}
}

func TestReconcileCallsNothingCurrentUntilApplied(t *testing.T) {
	tb := newTestbed(t)
	before := tb.g.Status().Config.Hash
	tb.write(tb.mesh, meshText(tb.k, "0s"))
	tb.eng.failing = errors.New("port in use")
	tb.g.reconcile(tb.ctx)
	st := tb.g.Status()
	if st.Config.Hash != before || st.Config.Pending == "" || st.ApplyError == nil || !strings.Contains(st.ApplyError.Msg, "port in use") {
		t.Fatalf("failing apply: hash %s (was %s), pending %q, error %+v", st.Config.Hash, before, st.Config.Pending, st.ApplyError)
	}
	tb.eng.failing = nil
	tb.g.reconcile(tb.ctx)
	st = tb.g.Status()
	if st.Config.Hash == before || st.Config.Pending != "" || st.ApplyError != nil {
		t.Errorf("after the apply succeeds: hash %s, pending %q, error %+v", st.Config.Hash, st.Config.Pending, st.ApplyError)
	}
	if tb.eng.applied != 2 {
		t.Errorf("%d applies, want 2 (start and the new file)", tb.eng.applied)
	}
	if ka := tb.eng.tunnel.Peers[1].PersistentKeepalive; ka != 0 {
		t.Errorf("branch keepalive %s, want the new file's 0s", ka)
	}
}

func TestReconcileRepairsNATDrift(t *testing.T) {
	tb := newTestbed(t)
	tb.tab.drifted = true // someone flushed the table
	tb.g.reconcile(tb.ctx)
	if st := tb.g.Status(); st.NAT.Drifts != 1 || tb.tab.drifted {
		t.Errorf("drifts %d, still drifted %v", st.NAT.Drifts, tb.tab.drifted)
	}
}

// TestKubernetesStore runs the gateway's allocation on a real API server:
// a restart comes back with the same addresses, and a damaged object stops
// the start.
func TestKubernetesStore(t *testing.T) {
	srv := kubetest.Start(t)
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "strait-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tb := newTestbed(t) // for its files and keys
	start := func() (*Gateway, error) {
		want, h, err := readConfig(tb.g.opts, tb.k[1])
		if err != nil {
			t.Fatal(err)
		}
		g := newGateway(tb.g.opts, tb.g.log, tb.k[1], &fakeEngine{}, &fakeNAT{},
			&kubestore.Store{Client: c, Namespace: "strait-system", Site: "cloud-b"})
		return g, g.start(ctx, want, h)
	}
	g1, err := start()
	if err != nil {
		t.Fatal(err)
	}
	// Make the state one a fresh start would not reach: web goes (its
	// address into hold-down), db comes and gets the next address.
	tb.write(tb.site, strings.Replace(siteText,
		"  - {namespace: default, name: web, backend: 10.0.1.10, ports: [{port: 80, targetPort: 7777}, {port: 53, protocol: UDP}]}\n",
		"  - {namespace: shop, name: db, backend: 10.96.0.12, ports: [{port: 5432}]}\n", 1))
	g1.reconcile(ctx)
	before := keysAndIPs(g1.Status().Allocations)
	if !strings.Contains(fmt.Sprint(before), "ingress/shop/db=242.1.128.2") {
		t.Fatalf("before the restart: %v", before)
	}
	g2, err := start()
	if err != nil {
		t.Fatal(err)
	}
	if after := keysAndIPs(g2.Status().Allocations); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("after a restart: %v\nbefore: %v", after, before)
	}
	cm, err := c.CoreV1().ConfigMaps("strait-system").Get(ctx, "strait-allocations-cloud-b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[kubestore.KeyState] = "{"
	if _, err := c.CoreV1().ConfigMaps("strait-system").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := start(); err == nil || !strings.Contains(err.Error(), "configmap strait-system/strait-allocations-cloud-b cannot be trusted") {
		t.Errorf("start on a damaged object: %v", err)
	}
}

// TestDriftRepairedWhileApplyFails: a configuration that cannot be applied
// (the tunnel refuses it, the store cannot save) must not stop the table
// from being repaired.
func TestDriftRepairedWhileApplyFails(t *testing.T) {
	tb := newTestbed(t)
	tb.write(tb.mesh, meshText(tb.k, "0s"))
	tb.eng.failing = errors.New("port in use")
	tb.store.failing = errors.New("disk full")
	tb.write(tb.site, strings.Replace(siteText, "services:\n", "services:\n  - {namespace: shop, name: db, backend: 10.96.0.12, ports: [{port: 5432}]}\n", 1))
	tb.g.reconcile(tb.ctx)
	syncs := tb.tab.syncs
	tb.tab.drifted = true // someone flushes the table meanwhile
	tb.g.reconcile(tb.ctx)
	st := tb.g.Status()
	if st.ApplyError == nil || !strings.Contains(st.ApplyError.Msg, "port in use") || !strings.Contains(st.ApplyError.Msg, "disk full") {
		t.Errorf("apply error %+v; want both failures named", st.ApplyError)
	}
	if tb.tab.drifted || tb.tab.syncs == syncs || st.NAT.Drifts != 1 {
		t.Errorf("the table was not repaired while applying failed (drifted %v, %d drifts)", tb.tab.drifted, st.NAT.Drifts)
	}
	// Programmed from the saved allocations: web still, not db (unsaved).
	if len(tb.tab.prog.Services) != 2 || tb.tab.prog.Services[0].Addr.String() != "242.1.128.1" {
		t.Errorf("programmed %+v", tb.tab.prog.Services)
	}
}

func keysAndIPs(as []natpool.Allocation) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Key+"="+a.IP.String())
	}
	return out
}
