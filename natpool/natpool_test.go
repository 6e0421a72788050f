package natpool

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func p(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func a(s string) netip.Addr   { return netip.MustParseAddr(s) }

func TestDeriveBlock(t *testing.T) {
	g := p(DefaultGlobalCIDR)
	b1, err := DeriveBlock(g, 16, "cloud-a")
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := DeriveBlock(g, 16, "cloud-a")
	if b1 != b2 || !Contains(g, b1) || b1.Bits() != 16 || b1.Masked() != b1 {
		t.Errorf("DeriveBlock(cloud-a) = %s then %s", b1, b2)
	}
	// Pinned: a derived block must never change between versions, or a
	// site's addresses would move on upgrade.
	if b1.String() != "242.56.0.0/16" {
		t.Errorf("DeriveBlock(cloud-a) = %s; the derivation changed", b1)
	}
	seen := map[netip.Prefix]bool{}
	for i := range 50 {
		b, _ := DeriveBlock(g, 20, fmt.Sprintf("site-%d", i))
		seen[b] = true
	}
	if len(seen) < 45 {
		t.Errorf("50 names fell into only %d of 4096 blocks", len(seen))
	}
	if _, err := DeriveBlock(g, 7, "x"); err == nil {
		t.Error("blocks larger than the global CIDR accepted")
	}
}

func TestRoutingDecisions(t *testing.T) {
	cloudA := Site{Name: "cloud-a", Block: p("242.0.0.0/16"), CIDRs: []netip.Prefix{p("10.0.0.0/16")}, Routable: true}
	cloudB := Site{Name: "cloud-b", Block: p("242.1.0.0/16"), CIDRs: []netip.Prefix{p("10.0.0.0/16")}}
	onprem := Site{Name: "onprem", Block: p("242.2.0.0/16"), CIDRs: []netip.Prefix{p("192.168.0.0/16")}, Routable: true}
	tests := []struct {
		from, to Site
		real     bool
		routed   string // what from routes to to
	}{
		{cloudA, onprem, true, "[242.2.0.0/16 192.168.0.0/16]"},
		{onprem, cloudA, true, "[242.0.0.0/16 10.0.0.0/16]"},
		{cloudA, cloudB, false, "[242.1.0.0/16]"}, // collide
		{cloudB, cloudA, false, "[242.0.0.0/16]"}, // collide: cloud-a's 10/16 is cloud-b's own
		{cloudB, onprem, false, "[242.2.0.0/16 192.168.0.0/16]"},
		{onprem, cloudB, true, "[242.1.0.0/16]"}, // cloud-b routes onprem's real CIDR back
	}
	for _, tt := range tests {
		if got := RealPath(tt.from, tt.to); got != tt.real {
			t.Errorf("RealPath(%s, %s) = %v", tt.from.Name, tt.to.Name, got)
		}
		if got := fmt.Sprint(RoutedTo(tt.from, tt.to)); got != tt.routed {
			t.Errorf("RoutedTo(%s, %s) = %s, want %s", tt.from.Name, tt.to.Name, got, tt.routed)
		}
	}
	// Consistency: a real path from a to b exists exactly when b routes
	// a's real CIDRs back to a.
	sites := []Site{cloudA, cloudB, onprem}
	for _, x := range sites {
		for _, y := range sites {
			if x.Name == y.Name {
				continue
			}
			back := RoutedTo(y, x)
			routesReal := len(back) > 1
			if RealPath(x, y) != routesReal {
				t.Errorf("%s->%s: real path %v, but %s routes %v to %s", x.Name, y.Name, RealPath(x, y), y.Name, back, x.Name)
			}
		}
	}
	if got := fmt.Sprint(TranslatedDestinations(cloudA, []Site{cloudB, onprem})); got != "[242.1.0.0/16]" {
		t.Errorf("cloud-a translates toward %s", got)
	}
	if got := fmt.Sprint(TranslatedDestinations(cloudB, []Site{cloudA, onprem})); got != "[192.168.0.0/16 242.0.0.0/16 242.2.0.0/16]" {
		t.Errorf("cloud-b translates toward %s", got)
	}
	var lines []string
	for _, pr := range Matrix(sites) {
		lines = append(lines, fmt.Sprintf("%s %s %s/%s: %s", pr.A, pr.B, pr.AB, pr.BA, pr.Why))
	}
	want := "cloud-a cloud-b translated/translated: cloud-a 10.0.0.0/16 collides with cloud-b 10.0.0.0/16\n" +
		"cloud-a onprem real/real: \n" +
		"cloud-b onprem translated/real: cloud-b is not routable"
	if got := strings.Join(lines, "\n"); got != want {
		t.Errorf("matrix:\n%s\nwant:\n%s", got, want)
	}
}

func TestDefaultPools(t *testing.T) {
	for _, tt := range []struct{ block, egress, ingress string }{
		{"242.1.0.0/16", "242.1.1.0/24", "242.1.128.0/17"},
		{"242.1.16.0/20", "242.1.16.16/28", "242.1.24.0/21"},
		{"242.9.9.0/24", "242.9.9.4/30", "242.9.9.128/25"},
	} {
		ps := DefaultPools(p(tt.block))
		if ps[0].CIDR.String() != tt.egress || ps[1].CIDR.String() != tt.ingress {
			t.Errorf("DefaultPools(%s) = %v", tt.block, ps)
		}
		if errs := CheckPools(p(tt.block), nil, []netip.Addr{p(tt.block).Addr().Next()}, ps); len(errs) > 0 {
			t.Errorf("default pools of %s do not pass CheckPools: %v", tt.block, errs)
		}
	}
}

func TestCheckPools(t *testing.T) {
	block := p("242.1.0.0/16")
	keep := []netip.Addr{a("242.1.0.1")}
	for _, tt := range []struct {
		pools []Pool
		want  string
	}{
		{[]Pool{{"x", Ingress, p("242.2.0.0/24")}}, `pool "x": 242.2.0.0/24 is outside the site's block 242.1.0.0/16`},
		{[]Pool{{"x", Ingress, p("242.1.0.0/24")}}, `pool "x": 242.1.0.0/24 holds the gateway's own address 242.1.0.1`},
		{[]Pool{{"x", Ingress, p("242.1.1.0/24")}, {"y", Egress, p("242.1.1.128/25")}}, `pool "y": 242.1.1.128/25 overlaps pool "x" (242.1.1.0/24)`},
		{[]Pool{{"x", Ingress, p("242.1.1.0/24")}, {"x", Egress, p("242.1.2.0/24")}}, `pool "x" is defined twice`},
		{[]Pool{{"x", "dnat", p("242.1.1.0/24")}}, `pool "x": kind "dnat" is neither ingress nor egress`},
	} {
		errs := CheckPools(block, nil, keep, tt.pools)
		if len(errs) != 1 || errs[0].Error() != tt.want {
			t.Errorf("CheckPools(%v) = %v, want %q", tt.pools, errs, tt.want)
		}
	}
	// The real CIDR check, with a block overlapping it (a bad plan caught late).
	errs := CheckPools(p("10.0.0.0/16"), []netip.Prefix{p("10.0.0.0/16")}, nil, []Pool{{"x", Egress, p("10.0.5.0/24")}})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "overlaps the site's real CIDR 10.0.0.0/16") {
		t.Errorf("pool on the real CIDR: %v", errs)
	}
}

// clock is a fake clock for the allocator.
type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)} }
func req(key string) Request         { return Request{Key: key, Pool: "in", Kind: Ingress} }
func reqs(keys ...string) (out []Request) {
	for _, k := range keys {
		out = append(out, req(k))
	}
	return out
}

func TestAllocatorStableAndHoldDown(t *testing.T) {
	c := newClock()
	pools := []Pool{{"in", Ingress, p("242.1.128.0/30")}, {"out", Egress, p("242.1.1.0/30")}} // 4 addresses each
	al, err := NewAllocator(p("242.1.0.0/16"), pools, State{}, time.Minute, c.now)
	if err != nil {
		t.Fatal(err)
	}
	if changed, errs := al.Sync(reqs("a", "b")); !changed || errs != nil {
		t.Fatalf("Sync = %v, %v", changed, errs)
	}
	ipA, _ := al.Lookup("a")
	ipB, _ := al.Lookup("b")
	if ipA.String() != "242.1.128.1" || ipB.String() != "242.1.128.2" {
		t.Errorf("a=%s b=%s: want the lowest usable addresses, skipping .0", ipA, ipB)
	}
	// Unchanged requests change nothing, and a restart from State keeps all.
	if changed, _ := al.Sync(reqs("a", "b")); changed {
		t.Error("a second Sync of the same requests changed something")
	}
	al2, err := NewAllocator(p("242.1.0.0/16"), pools, al.State(), time.Minute, c.now)
	if err != nil {
		t.Fatal(err)
	}
	al2.Sync(reqs("b", "a"))
	if x, _ := al2.Lookup("a"); x != ipA {
		t.Errorf("after a restart a=%s, was %s", x, ipA)
	}
	// a goes: its address is held down; c gets the next one, not a's.
	al2.Sync(reqs("b", "c"))
	if x, _ := al2.Lookup("c"); x.String() != "242.1.128.3" {
		t.Errorf("c=%s; want 242.1.128.3, not the held %s", x, ipA)
	}
	// The pool is full but for the held address: exhausted, no reuse.
	_, errs := al2.Sync(reqs("b", "c", "d"))
	if len(errs) != 1 || !errors.Is(errs[0], ErrExhausted) || !strings.Contains(errs[0].Error(), "1 in hold-down") {
		t.Fatalf("d while a's address is held: %v", errs)
	}
	if _, ok := al2.Lookup("d"); ok {
		t.Error("d got an address")
	}
	// After the hold-down, d gets it.
	c.add(time.Minute)
	if _, errs := al2.Sync(reqs("b", "c", "d")); errs != nil {
		t.Fatal(errs)
	}
	if x, _ := al2.Lookup("d"); x != ipA {
		t.Errorf("after the hold-down d=%s, want %s", x, ipA)
	}
	u := al2.Usage()
	if len(u) != 2 || u[0].Pool != "in" || u[0].Size != 3 || u[0].Used != 3 || u[0].Held != 0 {
		t.Errorf("usage %+v", u)
	}
}

func TestAllocatorRefuses(t *testing.T) {
	c := newClock()
	pools := []Pool{{"in", Ingress, p("242.1.128.0/24")}}
	al, _ := NewAllocator(p("242.1.0.0/16"), pools, State{}, time.Minute, c.now)
	_, errs := al.Sync([]Request{{Key: "x", Pool: "nope", Kind: Ingress}, {Key: "y", Pool: "in", Kind: Egress}, req("z")})
	if len(errs) != 2 || !errors.Is(errs[0], ErrNoPool) || !errors.Is(errs[1], ErrWrongKind) {
		t.Errorf("errors %v", errs)
	}
	if _, ok := al.Lookup("z"); !ok {
		t.Error("a good request was not served next to bad ones")
	}
	for _, st := range []State{
		{Allocations: []Allocation{{Key: "a", Pool: "in", IP: a("242.1.128.1")}, {Key: "b", Pool: "in", IP: a("242.1.128.1")}}},
		{Allocations: []Allocation{{Key: "a", Pool: "in", IP: a("242.1.128.1")}, {Key: "a", Pool: "in", IP: a("242.1.128.2")}}},
	} {
		if _, err := NewAllocator(p("242.1.0.0/16"), pools, st, time.Minute, c.now); err == nil {
			t.Errorf("NewAllocator accepted %+v", st)
		}
	}
}

func TestAllocatorKeepsOrphans(t *testing.T) {
	c := newClock()
	st := State{Allocations: []Allocation{{Key: "a", Pool: "in", IP: a("242.1.200.7")}}}
	// The pool shrank: a's address is outside it now. It keeps it.
	al, err := NewAllocator(p("242.1.0.0/16"), []Pool{{"in", Ingress, p("242.1.128.0/24")}}, st, time.Minute, c.now)
	if err != nil {
		t.Fatal(err)
	}
	al.Sync(reqs("a"))
	if x, _ := al.Lookup("a"); x.String() != "242.1.200.7" || len(al.Orphans()) != 1 {
		t.Errorf("a=%s orphans %v", x, al.Orphans())
	}
}

func TestAllocatorKeyReclaimsItsOwnHeldAddress(t *testing.T) {
	c := newClock()
	al, _ := NewAllocator(p("242.1.0.0/16"), []Pool{{"in", Ingress, p("242.1.128.0/24")}}, State{}, time.Minute, c.now)
	al.Sync(reqs("a", "b", "c"))
	al.Sync(reqs("c")) // a and b vanish (a file read half-written, say)
	c.add(10 * time.Second)
	al.Sync(reqs("b", "a", "c"))
	if x, _ := al.Lookup("a"); x.String() != "242.1.128.1" {
		t.Errorf("a came back at %s, not its own 242.1.128.1", x)
	}
	if x, _ := al.Lookup("b"); x.String() != "242.1.128.2" {
		t.Errorf("b came back at %s, not its own 242.1.128.2", x)
	}
}

func TestAllocatorMoveKeepsAddressUntilItHasANewOne(t *testing.T) {
	c := newClock()
	pools := []Pool{{"in", Ingress, p("242.1.128.0/24")}, {"full", Ingress, p("242.1.129.0/30")}}
	al, _ := NewAllocator(p("242.1.0.0/16"), pools, State{}, time.Minute, c.now)
	al.Sync([]Request{req("a"), {Key: "x", Pool: "full", Kind: Ingress}, {Key: "y", Pool: "full", Kind: Ingress}, {Key: "z", Pool: "full", Kind: Ingress}})
	_, errs := al.Sync([]Request{{Key: "a", Pool: "full", Kind: Ingress}, {Key: "x", Pool: "full", Kind: Ingress}, {Key: "y", Pool: "full", Kind: Ingress}, {Key: "z", Pool: "full", Kind: Ingress}})
	if len(errs) != 1 || !errors.Is(errs[0], ErrExhausted) {
		t.Fatalf("moving a into a full pool: %v", errs)
	}
	if x, ok := al.Lookup("a"); !ok || x.String() != "242.1.128.1" {
		t.Errorf("a lost its address while waiting for one in the full pool: %s, %v", x, ok)
	}
}

func TestAllocatorMovesAddressesOutsideTheBlock(t *testing.T) {
	c := newClock()
	st := State{Allocations: []Allocation{{Key: "a", Pool: "ingress", IP: a("242.1.128.1")}}}
	// The site's block moved from 242.1.0.0/16 to 242.7.0.0/16.
	al, err := NewAllocator(p("242.7.0.0/16"), DefaultPools(p("242.7.0.0/16")), st, time.Minute, c.now)
	if err != nil {
		t.Fatal(err)
	}
	if changed, errs := al.Sync([]Request{{Key: "a", Pool: "ingress", Kind: Ingress}}); !changed || errs != nil {
		t.Fatalf("Sync = %v, %v", changed, errs)
	}
	if x, _ := al.Lookup("a"); !p("242.7.0.0/16").Contains(x) {
		t.Errorf("a stays at %s, outside the block", x)
	}
	if len(al.State().Released) != 0 {
		t.Errorf("an address outside the block is held: %+v", al.State().Released)
	}
}

func TestAllocatorMovesPools(t *testing.T) {
	c := newClock()
	pools := []Pool{{"in", Ingress, p("242.1.128.0/24")}, {"in2", Ingress, p("242.1.129.0/24")}}
	al, _ := NewAllocator(p("242.1.0.0/16"), pools, State{}, time.Minute, c.now)
	al.Sync(reqs("a"))
	al.Sync([]Request{{Key: "a", Pool: "in2", Kind: Ingress}})
	if x, _ := al.Lookup("a"); x.String() != "242.1.129.1" {
		t.Errorf("a=%s after moving to in2", x)
	}
	if st := al.State(); len(st.Released) != 1 || st.Released[0].IP.String() != "242.1.128.1" {
		t.Errorf("the old address is not held: %+v", st.Released)
	}
}

// TestAllocatorAgainstReference runs random requests, releases and clock
// steps against an obviously correct, slow model of the rules.
func TestAllocatorAgainstReference(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	c := newClock()
	pool := Pool{"in", Ingress, p("242.1.128.0/28")} // 14 usable addresses
	al, _ := NewAllocator(p("242.1.0.0/16"), []Pool{pool}, State{}, time.Minute, c.now)
	type hold struct {
		key string
		at  time.Time
	}
	owner := map[string]netip.Addr{}
	held := map[netip.Addr]hold{}
	for step := range 3000 {
		c.add(time.Duration(r.IntN(20)) * time.Second)
		var keys []string
		for k := range 20 {
			if r.IntN(3) > 0 {
				keys = append(keys, fmt.Sprintf("k%d", k))
			}
		}
		// The model: expire holds, release unwanted, then a key's own
		// held address, else the lowest free.
		for ip, h := range held {
			if c.t.Sub(h.at) >= time.Minute {
				delete(held, ip)
			}
		}
		for k, ip := range owner {
			if !slices.Contains(keys, k) {
				delete(owner, k)
				held[ip] = hold{k, c.t}
			}
		}
		wantErrs := 0
		for _, k := range keys {
			if _, ok := owner[k]; ok {
				continue
			}
			found := false
			for ip, h := range held {
				if h.key == k {
					owner[k], found = ip, true
					delete(held, ip)
					break
				}
			}
			if found {
				continue
			}
			for ip := pool.CIDR.Addr(); pool.CIDR.Contains(ip); ip = ip.Next() {
				if !usable(ip) {
					continue
				}
				taken := false
				for _, o := range owner {
					taken = taken || o == ip
				}
				if _, h := held[ip]; !taken && !h {
					owner[k], found = ip, true
					break
				}
			}
			if !found {
				wantErrs++
			}
		}
		_, errs := al.Sync(reqs(keys...))
		if len(errs) != wantErrs {
			t.Fatalf("step %d: %d errors, model %d", step, len(errs), wantErrs)
		}
		for k, ip := range owner {
			if got, _ := al.Lookup(k); got != ip {
				t.Fatalf("step %d: %s=%s, model %s", step, k, got, ip)
			}
		}
		if len(al.State().Allocations) != len(owner) {
			t.Fatalf("step %d: %d allocations, model %d", step, len(al.State().Allocations), len(owner))
		}
	}
}

func TestAllocatorScales(t *testing.T) {
	c := newClock()
	al, _ := NewAllocator(p("242.1.0.0/16"), DefaultPools(p("242.1.0.0/16")), State{}, time.Minute, c.now)
	var rs []Request
	for i := range 10000 {
		rs = append(rs, Request{Key: IngressKey("ns", fmt.Sprint(i)), Pool: DefaultIngressPool, Kind: Ingress})
	}
	start := time.Now()
	if _, errs := al.Sync(rs); errs != nil {
		t.Fatal(errs[0])
	}
	// Not a benchmark: a guard against going quadratic again (that took
	// seconds; linear takes milliseconds).
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("10,000 allocations took %s", d)
	}
}

func TestCompileEgress(t *testing.T) {
	rules := []EgressRule{
		{Name: "payments-api", Namespace: "payments", Selector: map[string]string{"app": "api"}, Pool: "pci"},
		{Name: "payments", Namespace: "payments", Pool: "egress"},
		{Name: "db", Selector: map[string]string{"tier": "db"}, Pool: "egress"},
	}
	pods := []Pod{
		{Namespace: "payments", Name: "api-1", IP: a("10.0.1.10"), Labels: map[string]string{"app": "api"}},
		{Namespace: "payments", Name: "worker", IP: a("10.0.1.11"), Labels: map[string]string{"app": "worker", "tier": "db"}},
		{Namespace: "shop", Name: "pg", IP: a("10.0.2.10"), Labels: map[string]string{"tier": "db"}},
		{Namespace: "shop", Name: "web", IP: a("10.0.2.11")},
	}
	got := CompileEgress(rules, pods)
	want := map[netip.Addr]string{a("10.0.1.10"): "payments-api", a("10.0.1.11"): "payments", a("10.0.2.10"): "db"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("CompileEgress = %v, want %v", got, want)
	}
}

func TestFileStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "allocations.json")
	s := &FileStore{Path: path, Site: "cloud-b"}
	st, err := s.Load()
	if err != nil || len(st.Allocations) != 0 {
		t.Fatalf("first start: %v %v", st, err)
	}
	st1 := State{Allocations: []Allocation{{Key: "ingress/default/web", Pool: "ingress", IP: a("242.1.128.1"), Since: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)}}}
	if err := s.Save(st1); err != nil {
		t.Fatal(err)
	}
	st2 := State{Allocations: append(slices.Clone(st1.Allocations), Allocation{Key: "egress/default", Pool: "egress", IP: a("242.1.1.1")})}
	if err := s.Save(st2); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || fmt.Sprint(got) != fmt.Sprint(st2) {
		t.Fatalf("Load = %v, %v; want %v", got, err, st2)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	prev := &FileStore{Path: path + ".prev", Site: "cloud-b"}
	if pst, err := prev.Load(); err != nil || len(pst.Allocations) != 1 {
		t.Errorf("previous copy: %v %v", pst, err)
	}
	good, _ := os.ReadFile(path)
	for name, bad := range map[string][]byte{
		"truncated":      good[:len(good)/2],
		"edited":         []byte(strings.Replace(string(good), "242.1.128.1", "242.1.128.9", 1)),
		"empty":          {},
		"other site":     []byte(strings.Replace(string(good), `"site": "cloud-b"`, `"site": "cloud-c"`, 1)),
		"future version": []byte(strings.Replace(string(good), `"version": 1`, `"version": 9`, 1)),
		"trailing junk":  append(append([]byte{}, good...), []byte("garbage {{{")...),
	} {
		t.Run(name, func(t *testing.T) {
			os.WriteFile(path, bad, 0o600)
			_, err := s.Load()
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "refusing to start") ||
				!strings.Contains(err.Error(), "previous good copy "+path+".prev holds 1 allocations") {
				t.Errorf("Load = %v; want a refusal naming the file and the previous copy", err)
			}
			if now, _ := os.ReadFile(path); string(now) != string(bad) {
				t.Error("Load changed the bad file")
			}
		})
	}
	os.Remove(path)
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "is missing but its previous copy") {
		t.Errorf("missing file beside .prev: %v", err)
	}
}

// TestDefaultPoolsFitEveryBlock checks the defaults of every block length
// meshconf accepts.
func TestDefaultPoolsFitEveryBlock(t *testing.T) {
	for bits := 9; bits <= MaxBlockBits; bits++ {
		block := netip.PrefixFrom(a("242.64.0.0"), bits).Masked()
		if errs := CheckPools(block, nil, []netip.Addr{block.Addr().Next()}, DefaultPools(block)); errs != nil {
			t.Errorf("default pools of /%d: %v", bits, errs)
		}
	}
}
