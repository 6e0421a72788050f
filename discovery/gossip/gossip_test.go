package gossip

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/catalog/catalogtest"
)

// testMesh is a mesh of one test: its CA and its own gossip keys, so that
// tests running side by side on loopback never hear each other (a port
// one test frees, another may take while the first's members still call).
type testMesh struct {
	*catalogtest.Mesh
	key1, key2 []byte
}

func newTestMesh(t *testing.T) *testMesh {
	t.Helper()
	m, err := catalogtest.NewMesh()
	if err != nil {
		t.Fatal(err)
	}
	tm := &testMesh{Mesh: m, key1: make([]byte, 32), key2: make([]byte, 32)}
	rand.Read(tm.key1)
	rand.Read(tm.key2)
	return tm
}

// member is one gossiping cluster of a test mesh.
type member struct {
	name  string
	block netip.Prefix
	id    catalog.Identity
	cat   *catalog.Catalog
	g     *Gossip
	lossy *Lossy
}

type memberOpt func(*Options)

func withKeys(keys ...[]byte) memberOpt { return func(o *Options) { o.Keys = keys } }
func withPushPull(d time.Duration) memberOpt {
	return func(o *Options) { o.Tune = func(c *memberlist.Config) { c.PushPullInterval = d } }
}

// start makes member i of the mesh, listening on loopback, not joined.
func start(t *testing.T, m *testMesh, i int, loss float64, opts ...memberOpt) *member {
	t.Helper()
	name := fmt.Sprintf("cluster-%d", i)
	id, err := m.Identity(name, catalogtest.Block(i))
	if err != nil {
		t.Fatal(err)
	}
	cat, err := catalog.New(catalog.Options{CA: m.CA.Public, Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := NewLossy("127.0.0.1:0", loss)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Catalog: cat, Bind: "127.0.0.1:0", Keys: [][]byte{m.key1}, Profile: ProfileLocal, Transport: tr}
	for _, f := range opts {
		f(&o)
	}
	g, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Shutdown() })
	mb := &member{name: name, block: catalogtest.Block(i), id: id, cat: cat, g: g, lossy: tr}
	mb.publish(t)
	return mb
}

// publish announces the member's cluster and services.
func (mb *member) publish(t *testing.T, svcs ...catalog.Service) {
	t.Helper()
	rs, err := mb.cat.Publish(catalogtest.Cluster(mb.block), svcs)
	if err != nil {
		t.Fatal(err)
	}
	mb.g.Publish(rs)
}

func (mb *member) join(t *testing.T, seed *member) {
	t.Helper()
	if _, err := mb.g.Join([]string{seed.g.Addr()}); err != nil {
		t.Fatal(err)
	}
}

// mesh starts n joined members, whose links then lose the given fraction
// of packets.
func mesh(t *testing.T, n int, loss float64, opts ...memberOpt) (*testMesh, []*member) {
	t.Helper()
	m := newTestMesh(t)
	var ms []*member
	for i := range n {
		mb := start(t, m, i, 0, opts...)
		if i > 0 {
			mb.join(t, ms[0])
		}
		ms = append(ms, mb)
	}
	for _, mb := range ms {
		mb.lossy.SetLoss(loss)
	}
	return m, ms
}

// eventually waits for cond, failing with what after the deadline.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// has says whether c holds the service of owner at addr (or, with an
// invalid addr, no live record of it).
func has(c *catalog.Catalog, owner, ns, name string, addr netip.Addr) bool {
	r, ok := c.Get(catalog.Key{Kind: catalog.KindService, Owner: owner, Name: ns + "/" + name})
	if !addr.IsValid() {
		return !ok || r.Deleted
	}
	return ok && !r.Deleted && r.Service.Addr == addr
}

func allHave(ms []*member, owner, ns, name string, addr netip.Addr) bool {
	for _, mb := range ms {
		if !has(mb.cat, owner, ns, name, addr) {
			return false
		}
	}
	return true
}

func TestSpreadChangeAndDelete(t *testing.T) {
	t.Parallel()
	_, ms := mesh(t, 5, 0)
	eventually(t, 10*time.Second, "every member sees 5 clusters", func() bool {
		for _, mb := range ms {
			if len(mb.cat.Snapshot().Clusters) != 5 {
				return false
			}
		}
		return true
	})
	a := ms[3]
	web1, web2 := netip.MustParseAddr("242.0.48.1"), netip.MustParseAddr("242.0.48.2")
	a.publish(t, catalogtest.Service("shop", "web", web1, 2))
	eventually(t, 10*time.Second, "the new service reaches every member", func() bool { return allHave(ms, a.name, "shop", "web", web1) })
	a.publish(t, catalogtest.Service("shop", "web", web2, 2))
	eventually(t, 10*time.Second, "the changed service reaches every member", func() bool { return allHave(ms, a.name, "shop", "web", web2) })
	a.publish(t)
	eventually(t, 10*time.Second, "the deletion reaches every member", func() bool { return allHave(ms, a.name, "shop", "web", netip.Addr{}) })
	for _, mb := range ms {
		if st := mb.g.Stats(); st.Rejected+st.Malformed+st.WrongKey != 0 {
			t.Errorf("%s: %+v", mb.name, st)
		}
	}
}

func TestLateJoinerLearnsEverything(t *testing.T) {
	t.Parallel()
	m, ms := mesh(t, 3, 0)
	for i, mb := range ms {
		mb.publish(t, catalogtest.Service("default", "api", netip.AddrFrom4([4]byte{242, 0, byte(i * 16), 9}), 1))
	}
	late := start(t, m, 7, 0)
	late.join(t, ms[1])
	all := append(ms, late)
	eventually(t, 10*time.Second, "the late joiner learns every service, and every member learns the late joiner", func() bool {
		for _, mb := range all {
			s := mb.cat.Snapshot()
			if len(s.Clusters) != 4 || len(s.Services) != 3 {
				return false
			}
		}
		return true
	})
}

// A record that was never broadcast (as if every packet carrying it had
// been lost) still arrives, through the periodic push/pull.
func TestAntiEntropyRepairsMissedBroadcasts(t *testing.T) {
	t.Parallel()
	_, ms := mesh(t, 3, 0, withPushPull(300*time.Millisecond))
	eventually(t, 10*time.Second, "3 clusters everywhere", func() bool { return len(ms[2].cat.Snapshot().Clusters) == 3 })
	addr := netip.MustParseAddr("242.0.16.7")
	// Into the catalog, not through gossip: nothing is broadcast.
	if _, err := ms[1].cat.Publish(catalogtest.Cluster(ms[1].block), []catalog.Service{catalogtest.Service("default", "quiet", addr, 1)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "push/pull carries the unbroadcast record to all", func() bool { return allHave(ms, ms[1].name, "default", "quiet", addr) })
}

func TestLossyLinksStillConverge(t *testing.T) {
	t.Parallel()
	_, ms := mesh(t, 6, 0.2, withPushPull(time.Second))
	addr := netip.MustParseAddr("242.0.32.5")
	ms[2].publish(t, catalogtest.Service("default", "lossy", addr, 1))
	eventually(t, 15*time.Second, "a change reaches all over links losing 20% of packets", func() bool { return allHave(ms, ms[2].name, "default", "lossy", addr) })
	dropped := uint64(0)
	for _, mb := range ms {
		dropped += mb.lossy.Dropped()
	}
	if dropped == 0 {
		t.Fatal("the links lost nothing: the test tested nothing")
	}
}

func TestLargeRecordGoesOverTCP(t *testing.T) {
	t.Parallel()
	_, ms := mesh(t, 3, 0)
	s := catalog.Service{Namespace: "db", Name: "cassandra", Headless: true, Ready: 200, Ports: []catalog.Port{{Name: "cql", Protocol: "TCP", Port: 9042}}}
	for i := range 200 {
		s.Endpoints = append(s.Endpoints, catalog.Endpoint{Hostname: fmt.Sprintf("cassandra-%d", i), Addr: netip.AddrFrom4([4]byte{242, 0, 1, byte(i)})})
	}
	ms[0].publish(t, s)
	eventually(t, 10*time.Second, "a 200-endpoint headless service reaches all", func() bool {
		for _, mb := range ms {
			r, ok := mb.cat.Get(catalog.Key{Kind: catalog.KindService, Owner: ms[0].name, Name: "db/cassandra"})
			if !ok || len(r.Service.Endpoints) != 200 {
				return false
			}
		}
		return true
	})
	if ms[0].g.Stats().Large == 0 {
		t.Error("the large record was not counted as sent over TCP")
	}
}

func TestWrongKeyIsRefusedAndCounted(t *testing.T) {
	t.Parallel()
	m, ms := mesh(t, 2, 0)
	intruder := start(t, m, 5, 0, withKeys(m.key2))
	if _, err := intruder.g.Join([]string{ms[0].g.Addr()}); err == nil {
		t.Fatal("a member with another key joined")
	}
	eventually(t, 10*time.Second, "the wrong key is counted", func() bool { return ms[0].g.Stats().WrongKey > 0 })
	// The two members know each other (once their own gossip got
	// through), and never the intruder.
	eventually(t, 10*time.Second, "both members know each other", func() bool {
		for _, mb := range ms {
			if len(mb.cat.Snapshot().Clusters) != 2 {
				return false
			}
		}
		return true
	})
	for _, mb := range ms {
		if _, ok := mb.cat.Snapshot().Clusters[intruder.name]; ok {
			t.Errorf("%s knows the intruder's cluster %s", mb.name, intruder.name)
		}
	}
}

// Keys rotate without a pause: add the new key everywhere, make it primary
// everywhere, remove the old one; changes flow at every step, and nobody
// is suspected.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	m, ms := mesh(t, 3, 0)
	eventually(t, 10*time.Second, "3 clusters everywhere", func() bool { return len(ms[2].cat.Snapshot().Clusters) == 3 })
	steps := []struct {
		name string
		keys [][]byte
	}{
		{"add", [][]byte{m.key1, m.key2}},
		{"use", [][]byte{m.key2, m.key1}},
		{"remove", [][]byte{m.key2}},
	}
	for i, st := range steps {
		time.Sleep(300 * time.Millisecond) // operators roll a step out everywhere before the next
		for _, mb := range ms {
			if err := mb.g.SetKeys(st.keys); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			addr := netip.AddrFrom4([4]byte{242, 0, 0, byte(10 + i)})
			ms[i].publish(t, catalogtest.Service("default", "rotating", addr, 1))
			eventually(t, 10*time.Second, st.name+": a change reaches all", func() bool { return allHave(ms, ms[i].name, "default", "rotating", addr) })
		}
	}
	// Packets sealed with the old key just before a member switched may
	// still be in flight at the step (none in steady state: below).
	before := map[string]uint64{}
	for _, mb := range ms {
		before[mb.name] = mb.g.Stats().WrongKey
	}
	time.Sleep(time.Second) // a few probe and gossip rounds on the new key only
	for _, mb := range ms {
		if st := mb.g.Stats(); st.WrongKey != before[mb.name] || st.Suspicions+st.Dead != 0 {
			t.Errorf("%s after rotation: %+v (wrong-key packets before the pause: %d)", mb.name, st, before[mb.name])
		}
	}
	// A member still on the old key is now an outsider.
	old := start(t, m, 9, 0, withKeys(m.key1))
	if _, err := old.g.Join([]string{ms[0].g.Addr()}); err == nil {
		t.Fatal("a member with the retired key joined")
	}
}

// A member that signs a record for another cluster is refused and
// counted; so is junk; the catalog keeps serving.
func TestForgedAndMalformedRecordsAreCounted(t *testing.T) {
	t.Parallel()
	_, ms := mesh(t, 2, 0)
	victim, evil := ms[0], ms[1]
	eventually(t, 10*time.Second, "2 clusters", func() bool { return len(victim.cat.Snapshot().Clusters) == 2 })
	forged := catalog.Record{
		Key:     catalog.Key{Kind: catalog.KindService, Owner: victim.name, Name: "default/phish"},
		Version: uint64(time.Now().UnixMilli()) << 16,
		Service: &catalog.Service{Namespace: "default", Name: "phish", Addr: netip.MustParseAddr("242.0.0.66"), Ready: 1},
	}
	// evil signs with its own key: the only key it has.
	forged.Sign(evil.id.Key)
	b, err := forged.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var node *memberlist.Node
	for _, n := range evil.g.ml.Members() {
		if n.Name == victim.name {
			node = n
		}
	}
	if err := evil.g.ml.SendReliable(node, append([]byte{msgRecord}, b...)); err != nil {
		t.Fatal(err)
	}
	if err := evil.g.ml.SendReliable(node, []byte("x{not a record")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the forged record and the junk are counted", func() bool {
		st := victim.g.Stats()
		return st.Rejected == 1 && st.Malformed == 1 && victim.cat.Stats().Rejected[catalog.RejectForged] == 1
	})
	if _, ok := victim.cat.Get(forged.Key); ok {
		t.Fatal("the forged record was stored")
	}
	addr := netip.MustParseAddr("242.0.16.3")
	evil.publish(t, catalogtest.Service("default", "after", addr, 1))
	eventually(t, 10*time.Second, "the catalog keeps taking good records", func() bool { return has(victim.cat, evil.name, "default", "after", addr) })
}

func TestCrashedMemberIsMarkedDown(t *testing.T) {
	t.Parallel()
	_, ms := mesh(t, 4, 0)
	gone := ms[3]
	eventually(t, 10*time.Second, "all alive everywhere", func() bool {
		for _, mb := range ms[:3] {
			if !mb.cat.Alive(gone.name) {
				return false
			}
		}
		return true
	})
	gone.g.Shutdown()
	eventually(t, 10*time.Second, "the crashed member is marked down everywhere", func() bool {
		for _, mb := range ms[:3] {
			if mb.cat.Alive(gone.name) {
				return false
			}
		}
		return true
	})
	if s := ms[0].cat.Snapshot(); s.Alive[gone.name] || len(s.Clusters) != 4 {
		t.Fatalf("a crashed member's records stay, marked down: alive=%v clusters=%d", s.Alive[gone.name], len(s.Clusters))
	}
}

func TestStartRefusesBadOptions(t *testing.T) {
	key1 := bytes.Repeat([]byte{1}, 32)
	m, err := catalogtest.NewMesh()
	if err != nil {
		t.Fatal(err)
	}
	cat, err := m.Catalog("c", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no catalog", Options{Keys: [][]byte{key1}}, "no catalog"},
		{"no key", Options{Catalog: cat}, "must be encrypted"},
		{"short key", Options{Catalog: cat, Keys: [][]byte{[]byte("short")}}, "key 0 is 5 bytes"},
		{"profile", Options{Catalog: cat, Keys: [][]byte{key1}, Profile: "moon", Bind: "127.0.0.1:0"}, `unknown profile "moon"`},
		{"bind", Options{Catalog: cat, Keys: [][]byte{key1}, Bind: "127.0.0.1"}, `bind "127.0.0.1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := Start(tc.o)
			if err == nil {
				g.Shutdown()
				t.Fatal("started")
			}
			if !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
		})
	}
}
