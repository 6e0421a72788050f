package gateway

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/natpool"
)

func TestDeclareVIPs(t *testing.T) {
	dir := t.TempDir()
	now := func() time.Time { return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) }
	b := &balancer{store: &natpool.FileStore{Path: filepath.Join(dir, VIPsName), Site: "cloud-a", Now: now}}
	rng := netip.MustParsePrefix("242.255.0.0/24")
	web := meshpolicy.GlobalService{Namespace: "default", Name: "web"}
	want := desired{lb: &meshconf.LoadBalancer{VIPRange: rng, TableSize: 65537}, globalServices: []meshpolicy.GlobalService{web}}
	snap := catalog.Snapshot{Self: "cloud-a"}

	// Not settled: nothing new is allocated.
	gs, problems := b.declare(want, snap, false, now)
	if len(gs) != 0 || !strings.Contains(strings.Join(problems, "\n"), "waiting for the catalog") {
		t.Fatalf("before the catalog settles: %v %v", gs, problems)
	}
	// Settled: allocated at the hint, kept on disk.
	gs, problems = b.declare(want, snap, true, now)
	if len(gs) != 1 || !gs[0].Allocated || gs[0].VIP != hintIn(rng, "default/web") || len(problems) != 0 {
		t.Fatalf("allocated %v %v, want the hint %s", gs, problems, hintIn(rng, "default/web"))
	}
	vip := gs[0].VIP
	if data, err := os.ReadFile(filepath.Join(dir, VIPsName)); err != nil || !strings.Contains(string(data), vip.String()) {
		t.Fatalf("not saved: %s %v", data, err)
	}
	// Another cluster writes that VIP for another service: ours moves.
	snap.GlobalServices = []meshpolicy.DeclaredService{{Owner: "cloud-b",
		GlobalService: meshpolicy.GlobalService{Namespace: "default", Name: "api", VIP: vip}}}
	gs, problems = b.declare(want, snap, true, now)
	if len(gs) != 1 || gs[0].VIP == vip || !rng.Contains(gs[0].VIP) {
		t.Fatalf("after a written clash: %v %v", gs, problems)
	}
	moved := gs[0].VIP
	// Another cluster allocated the same VIP for a service whose name
	// sorts after: ours keeps it (the other moves).
	snap.GlobalServices = []meshpolicy.DeclaredService{{Owner: "cloud-b",
		GlobalService: meshpolicy.GlobalService{Namespace: "zz", Name: "late", VIP: moved, Allocated: true}}}
	if gs, _ = b.declare(want, snap, true, now); len(gs) != 1 || gs[0].VIP != moved {
		t.Fatalf("against a later name: %v, want %s kept", gs, moved)
	}
	// ... and gives it up to one that sorts first.
	snap.GlobalServices = []meshpolicy.DeclaredService{{Owner: "cloud-b",
		GlobalService: meshpolicy.GlobalService{Namespace: "aa", Name: "early", VIP: moved, Allocated: true}}}
	if gs, _ = b.declare(want, snap, true, now); len(gs) != 1 || gs[0].VIP == moved {
		t.Fatalf("against an earlier name: %v, want it moved off %s", gs, moved)
	}
	// A written VIP outside the range is said.
	want.globalServices = []meshpolicy.GlobalService{{Namespace: "default", Name: "web", VIP: netip.MustParseAddr("242.254.0.1")}}
	if _, problems = b.declare(want, snap, true, now); !strings.Contains(strings.Join(problems, "\n"), "outside the VIP range") {
		t.Fatalf("problems %v", problems)
	}
}

func TestLoadDeclarationsRefusesDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), DeclarationsName)
	if d, err := loadDeclarations(path); err != nil || d == nil {
		t.Fatalf("no file: %v %v", d, err)
	}
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := loadDeclarations(path); err == nil || !strings.Contains(err.Error(), "is damaged") {
		t.Fatalf("damaged file: %v", err)
	}
}
