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

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/tunnel"
)

// fakeHost stands in for the tunnel engine and the NAT table: it records
// what was applied and fails when told to.
type fakeHost struct {
	tunnel  tunnel.Config
	rules   nat.Rules
	applied int
	failing error
}

func (f *fakeHost) Apply(_ context.Context, c tunnel.Config) error {
	if f.failing != nil {
		return f.failing
	}
	f.tunnel = c
	f.applied++
	return nil
}
func (f *fakeHost) Status() (tunnel.Status, error) { return tunnel.Status{Interface: "fake"}, nil }
func (f *fakeHost) Implementation() tunnel.Mode    { return "fake" }
func (f *fakeHost) Close() error                   { return nil }
func (f *fakeHost) InSync(r nat.Rules) (bool, error) {
	return fmt.Sprint(r) == fmt.Sprint(f.rules), nil
}

type fakeNAT struct{ *fakeHost }

func (f fakeNAT) Apply(r nat.Rules) error { f.rules = r; return nil }

var (
	_ engine   = (*fakeHost)(nil)
	_ natTable = fakeNAT{}
)

// testGateway starts a gateway for site cloud-b on fakes, with the mesh of
// mesh() written to a file.
func testGateway(t *testing.T) (*Gateway, *fakeHost, []wgtypes.Key, string) {
	t.Helper()
	k := keys(t, 3)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(meshText(k, "25s"))
	f := &fakeHost{}
	opts := Options{Site: "cloud-b", MeshFile: path, Interface: "wg0"}
	if err := opts.setDefaults(); err != nil {
		t.Fatal(err)
	}
	g := newGateway(opts, slog.New(slog.NewTextHandler(io.Discard, nil)), k[1], f, fakeNAT{f})
	data, _ := os.ReadFile(path)
	m, err := meshconf.Parse(path, data)
	if err != nil {
		t.Fatal(err)
	}
	want, err := derive(m, "cloud-b", k[1], "wg0", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.start(context.Background(), want, hash(data)); err != nil {
		t.Fatal(err)
	}
	return g, f, k, path
}

func meshText(k []wgtypes.Key, branchKeepalive string) string {
	return fmt.Sprintf(`
sites:
  - {name: cloud-a, publicKey: %s, endpoint: "203.0.113.10:51820", block: 242.0.0.0/16, podCIDR: 10.0.0.0/16}
  - {name: cloud-b, publicKey: %s, endpoint: "203.0.113.11:51821", block: 242.1.0.0/16, podCIDR: 10.0.0.0/16}
  - {name: branch, publicKey: %s, block: 242.3.0.0/16, prefixes: [192.168.50.0/24], persistentKeepalive: %s}
`, k[0].PublicKey(), k[1].PublicKey(), k[2].PublicKey(), branchKeepalive)
}

func TestReconcileRefusesBadFileAndKeepsRunning(t *testing.T) {
	g, f, k, path := testGateway(t)
	ctx := context.Background()
	before := g.Status().Config.Hash
	// Duplicate key: refused, the last good configuration stays applied.
	bad := strings.Replace(meshText(k, "25s"), k[2].PublicKey().String(), k[0].PublicKey().String(), 1)
	os.WriteFile(path, []byte(bad), 0o644)
	g.reconcile(ctx)
	st := g.Status()
	if st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, "sites[2].publicKey") {
		t.Fatalf("bad file: refused = %+v", st.Config.Refused)
	}
	if st.Config.Hash != before || st.Config.Pending != "" || len(f.tunnel.Peers) != 2 {
		t.Errorf("bad file: hash %s (was %s), pending %q, %d peers", st.Config.Hash, before, st.Config.Pending, len(f.tunnel.Peers))
	}
	// The file vanishes: another refusal, still running.
	os.Remove(path)
	g.reconcile(ctx)
	if st := g.Status(); st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, "no such file") {
		t.Errorf("missing file: refused = %+v", st.Config.Refused)
	}
	// The same bad content comes back: its own refusal again, not the
	// stale "no such file".
	os.WriteFile(path, []byte(bad), 0o644)
	g.reconcile(ctx)
	if st := g.Status(); st.Config.Refused == nil || !strings.Contains(st.Config.Refused.Msg, "sites[2].publicKey") {
		t.Errorf("bad file again: refused = %+v", st.Config.Refused)
	}
	// Back to the good file: the refusal clears.
	os.WriteFile(path, []byte(meshText(k, "25s")), 0o644)
	g.reconcile(ctx)
	if st := g.Status(); st.Config.Refused != nil || st.Config.Hash != before {
		t.Errorf("good file back: refused %+v, hash %s", st.Config.Refused, st.Config.Hash)
	}
}

func TestReconcileCallsNothingCurrentUntilApplied(t *testing.T) {
	g, f, k, path := testGateway(t)
	ctx := context.Background()
	before := g.Status().Config.Hash
	os.WriteFile(path, []byte(meshText(k, "0s")), 0o644)
	f.failing = errors.New("port in use")
	g.reconcile(ctx)
	st := g.Status()
	if st.Config.Hash != before || st.Config.Pending == "" || st.ApplyError == nil || !strings.Contains(st.ApplyError.Msg, "port in use") {
		t.Fatalf("failing apply: hash %s (was %s), pending %q, error %+v", st.Config.Hash, before, st.Config.Pending, st.ApplyError)
	}
	if st.Config.Refused != nil {
		t.Errorf("a valid file reported refused: %+v", st.Config.Refused)
	}
	f.failing = nil
	g.reconcile(ctx)
	st = g.Status()
	if st.Config.Hash == before || st.Config.Pending != "" || st.ApplyError != nil {
		t.Errorf("after the apply succeeds: hash %s, pending %q, error %+v", st.Config.Hash, st.Config.Pending, st.ApplyError)
	}
	if f.applied != 2 {
		t.Errorf("%d applies, want 2 (start and the new file)", f.applied)
	}
	if ka := f.tunnel.Peers[1].PersistentKeepalive; ka != 0 {
		t.Errorf("branch keepalive %s, want the new file's 0s", ka)
	}
}

func TestReconcileRepairsNATDrift(t *testing.T) {
	g, f, _, _ := testGateway(t)
	f.rules = nat.Rules{} // someone flushed the table
	g.reconcile(context.Background())
	if f.rules.Tunnel != "wg0" || len(f.rules.Maps) != 1 {
		t.Errorf("NAT rules after a pass: %+v", f.rules)
	}
}
