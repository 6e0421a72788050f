package catalog

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// mesh is a CA and the identities of some clusters, on a fake clock.
type mesh struct {
	ca  *CA
	ids map[string]Identity
	now time.Time
}

var blocks = map[string]string{"cloud-a": "242.0.0.0/16", "cloud-b": "242.1.0.0/16", "onprem": "242.2.0.0/16", "cloud-c": "242.3.0.0/16"}

func newMesh(t *testing.T) *mesh {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{ca: ca, ids: map[string]Identity{}, now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	for name, b := range blocks {
		m.ids[name] = m.identity(name, b)
	}
	return m
}

func (m *mesh) identity(name, block string) Identity {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	return Identity{Cert: m.ca.Issue(name, netip.MustParsePrefix(block), pub, m.now, 365*24*time.Hour), Key: priv}
}

func (m *mesh) catalog(t *testing.T, name string) *Catalog {
	t.Helper()
	c, err := New(Options{CA: m.ca.Public, Identity: m.ids[name], Now: func() time.Time { return m.now }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func cluster(name string) Cluster {
	return Cluster{PublicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", Endpoints: []string{"198.18.0.2:51820"},
		Block: netip.MustParsePrefix(blocks[name]), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}
}

func svc(name, addr string, ready int) Service {
	return Service{Namespace: "default", Name: name, Addr: netip.MustParseAddr(addr), Ready: ready,
		Ports: []Port{{Name: "http", Protocol: "TCP", Port: 80}}}
}

// deliver merges records into c, failing the test on any refusal.
func deliver(t *testing.T, c *Catalog, rs []Record) {
	t.Helper()
	for _, r := range rs {
		if _, err := c.Merge(r); err != nil {
			t.Fatal(err)
		}
	}
}

func TestPublishAndMerge(t *testing.T) {
	m := newMesh(t)
	a, b := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b")
	rs, err := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 2), svc("db", "242.0.128.2", 1)})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || rs[0].Kind != KindCluster {
		t.Fatalf("published %d records, cluster first: %v", len(rs), rs)
	}
	deliver(t, b, rs)
	snap := b.Snapshot()
	if len(snap.Services) != 2 || snap.Services[0].Name != "db" || snap.Services[1].Cluster != "cloud-a" {
		t.Fatalf("cloud-b sees %+v", snap.Services)
	}
	if c := snap.Clusters["cloud-a"]; c.Block.String() != "242.0.0.0/16" || c.Cert.Cluster != "cloud-a" {
		t.Errorf("cloud-a's cluster record at cloud-b: %+v", c)
	}
	// The same again changes nothing and publishes nothing.
	if rs, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 2), svc("db", "242.0.128.2", 1)}); len(rs) != 0 {
		t.Errorf("an unchanged publish wrote %d records", len(rs))
	}
	// One service changes readiness, one goes: two records.
	m.now = m.now.Add(time.Second)
	rs, _ = a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 0)})
	if len(rs) != 2 {
		t.Fatalf("a change and a removal wrote %d records: %v", len(rs), rs)
	}
	deliver(t, b, rs)
	snap = b.Snapshot()
	if len(snap.Services) != 1 || snap.Services[0].Ready != 0 {
		t.Errorf("after the change cloud-b sees %+v", snap.Services)
	}
	// Redelivering old versions changes nothing.
	gen := b.Snapshot().Generation
	for _, r := range rs {
		if pass, err := b.Merge(r); pass != nil || err != nil {
			t.Errorf("a redelivered record was news: %v %v", pass, err)
		}
	}
	if b.Snapshot().Generation != gen {
		t.Error("redelivery changed the generation")
	}
}

// TestConvergesInAnyOrder delivers a history of writes from three clusters
// to several catalogs in random orders, with duplicates: all end equal, and
// equal to the writers' final state.
func TestConvergesInAnyOrder(t *testing.T) {
	seed := mrand.Uint64()
	t.Logf("seed %d", seed)
	r := mrand.New(mrand.NewPCG(seed, 2))
	m := newMesh(t)
	writers := map[string]*Catalog{}
	var history []Record
	for _, name := range []string{"cloud-a", "cloud-b", "onprem"} {
		writers[name] = m.catalog(t, name)
	}
	for step := range 60 {
		m.now = m.now.Add(time.Duration(r.IntN(3)) * time.Millisecond)
		name := []string{"cloud-a", "cloud-b", "onprem"}[r.IntN(3)]
		var svcs []Service
		for i := range 4 {
			if r.IntN(2) == 0 {
				svcs = append(svcs, svc(fmt.Sprintf("s%d", i), fmt.Sprintf("%s", netip.MustParsePrefix(blocks[name]).Addr().Next()), r.IntN(3)))
			}
		}
		rs, err := writers[name].Publish(cluster(name), svcs)
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		history = append(history, rs...)
	}
	want := map[string]Snapshot{}
	for name, w := range writers {
		want[name] = w.Snapshot()
	}
	var results []Snapshot
	for range 5 {
		c := m.catalog(t, "cloud-c")
		order := append(append([]Record{}, history...), history[:len(history)/3]...)
		r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		deliver(t, c, order)
		results = append(results, c.Snapshot())
	}
	norm := func(s Snapshot, owner string) []ClusterService {
		var out []ClusterService
		for _, cs := range s.Services {
			if cs.Cluster == owner {
				out = append(out, cs)
			}
		}
		return out
	}
	for i, got := range results {
		for name := range writers {
			if !reflect.DeepEqual(norm(got, name), norm(want[name], name)) {
				t.Fatalf("catalog %d: %s's services %v, the writer has %v", i, name, norm(got, name), norm(want[name], name))
			}
		}
		if !reflect.DeepEqual(got.Services, results[0].Services) || !reflect.DeepEqual(got.Clusters, results[0].Clusters) {
			t.Fatalf("catalogs 0 and %d differ", i)
		}
	}
}

func TestServiceWaitsForItsClusterRecord(t *testing.T) {
	m := newMesh(t)
	a, b := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b")
	rs, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1)})
	if pass, err := b.Merge(rs[1]); pass != nil || err != nil {
		t.Fatalf("service before its cluster: %v %v", pass, err)
	}
	if st := b.Stats(); st.Pending != 1 || len(b.Snapshot().Services) != 0 {
		t.Fatalf("stats %+v", st)
	}
	deliver(t, b, rs[:1])
	if st := b.Stats(); st.Pending != 0 || len(b.Snapshot().Services) != 1 {
		t.Errorf("after the cluster record: stats %+v, services %v", st, b.Snapshot().Services)
	}
}

func TestRefuses(t *testing.T) {
	m := newMesh(t)
	a, b := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b")
	good, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1)})
	deliver(t, b, good[:1])
	other, _ := NewCA()
	outsiderPub, outsiderKey, _ := ed25519.GenerateKey(rand.Reader)
	tests := []struct {
		name   string
		rec    func() Record
		reason string
	}{
		{"forged service for cloud-a", func() Record {
			r := Record{Key: Key{Kind: KindService, Owner: "cloud-a", Name: "default/evil"}, Version: a.clock.Next(), Service: &Service{Namespace: "default", Name: "evil", Addr: netip.MustParseAddr("242.0.128.9")}}
			r.Sign(m.ids["cloud-b"].Key) // cloud-b's key, not cloud-a's
			return r
		}, RejectForged},
		{"cluster with a certificate of another CA", func() Record {
			c := cluster("onprem")
			c.Cert = other.Issue("onprem", c.Block, outsiderPub, m.now, time.Hour)
			r := Record{Key: Key{Kind: KindCluster, Owner: "onprem"}, Version: 1 << counterBits, Cluster: &c}
			r.Sign(outsiderKey)
			return r
		}, RejectCert},
		{"cluster with someone else's certificate", func() Record {
			c := cluster("onprem")
			c.Cert = m.ids["cloud-c"].Cert
			c.Block = c.Cert.Block
			r := Record{Key: Key{Kind: KindCluster, Owner: "onprem"}, Version: 1 << counterBits, Cluster: &c}
			r.Sign(m.ids["cloud-c"].Key)
			return r
		}, RejectCert},
		{"cluster claiming another block", func() Record {
			c := cluster("onprem")
			c.Cert = m.ids["onprem"].Cert
			c.Block = netip.MustParsePrefix("242.0.0.0/16") // cloud-a's
			r := Record{Key: Key{Kind: KindCluster, Owner: "onprem"}, Version: 1 << counterBits, Cluster: &c}
			r.Sign(m.ids["onprem"].Key)
			return r
		}, RejectBlock},
		{"version far in the future", func() Record {
			r := good[1]
			r.Version = uint64(m.now.Add(time.Hour).UnixMilli()) << counterBits
			r.Sign(m.ids["cloud-a"].Key)
			return r
		}, RejectFuture},
		{"malformed: bad service name", func() Record {
			r := good[1]
			r.Name, r.Service = "Default/Web!", &Service{Namespace: "Default", Name: "Web!"}
			r.Sign(m.ids["cloud-a"].Key)
			return r
		}, RejectMalformed},
		{"malformed: no signature", func() Record {
			r := good[1]
			r.Sig = nil
			return r
		}, RejectMalformed},
		{"a copy of cloud-b's own record it did not sign", func() Record {
			r := Record{Key: Key{Kind: KindService, Owner: "cloud-b", Name: "default/x"}, Version: 1 << counterBits, Service: &Service{Namespace: "default", Name: "x", Addr: netip.MustParseAddr("242.1.128.1")}}
			r.Sign(m.ids["cloud-a"].Key)
			return r
		}, RejectForged},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := b.Stats().Rejected[tt.reason]
			pass, err := b.Merge(tt.rec())
			var rej *RejectError
			if pass != nil || !errors.As(err, &rej) || rej.Reason != tt.reason {
				t.Fatalf("Merge = %v, %v; want a %q refusal", pass, err, tt.reason)
			}
			if b.Stats().Rejected[tt.reason] != before+1 {
				t.Errorf("the refusal was not counted")
			}
		})
	}
	if s := b.Snapshot(); len(s.Clusters) != 1 || len(s.Services) != 0 {
		t.Errorf("refused records changed the catalog: %+v", s)
	}
}

func TestTombstonesWinAndExpire(t *testing.T) {
	m := newMesh(t)
	a, b := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b")
	first, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1)})
	m.now = m.now.Add(time.Second)
	second, _ := a.Publish(cluster("cloud-a"), nil)
	if len(second) != 1 || !second[0].Deleted {
		t.Fatalf("removal published %v", second)
	}
	// The tombstone arrives before the record it deletes.
	deliver(t, b, []Record{first[0], second[0], first[1]})
	if s := b.Snapshot(); len(s.Services) != 0 {
		t.Fatalf("the older record beat the tombstone: %v", s.Services)
	}
	m.now = m.now.Add(23 * time.Hour)
	if n := b.Expire(); n != 0 {
		t.Errorf("expired %d tombstones before the TTL", n)
	}
	m.now = m.now.Add(2 * time.Hour)
	if n := b.Expire(); n != 1 {
		t.Errorf("expired %d tombstones after the TTL, want 1", n)
	}
	// A member that still gossips the forgotten tombstone does not bring
	// it back: it would bounce between members forever.
	stale := b.Stats().Stale
	if _, err := b.Merge(second[0]); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Get(second[0].Key); ok {
		t.Error("an expired tombstone was taken back")
	}
	if b.Stats().Stale != stale+1 {
		t.Errorf("the expired tombstone was not counted as stale")
	}
}

func TestDigestsFollowEveryWrite(t *testing.T) {
	m := newMesh(t)
	a, b, c := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b"), m.catalog(t, "onprem")
	ra, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1), svc("db", "242.0.128.2", 1)})
	rb, _ := b.Publish(cluster("cloud-b"), []Service{svc("web", "242.1.128.1", 1)})
	deliver(t, c, ra)
	deliver(t, c, rb)
	deliver(t, b, ra)
	if got, want := c.Digest()["cloud-a"], b.Digest()["cloud-a"]; got != want || got.Records != 3 {
		t.Fatalf("same records of cloud-a, different sums: %v and %v", got, want)
	}
	if got, want := c.Digest()["cloud-b"], b.Digest()["cloud-b"]; got != want {
		t.Fatalf("same records of cloud-b, different sums: %v and %v", got, want)
	}
	if _, ok := a.Digest()["cloud-b"]; ok {
		t.Fatal("a digest names an owner the catalog holds nothing of")
	}

	// A new version changes the sum although the count stays; delivering
	// it makes the sums equal again.
	m.now = m.now.Add(time.Second)
	ra2, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 3), svc("db", "242.0.128.2", 1)})
	if a.Digest()["cloud-a"] == c.Digest()["cloud-a"] {
		t.Fatal("a changed record left the sum as it was")
	}
	deliver(t, c, ra2)
	if a.Digest()["cloud-a"] != c.Digest()["cloud-a"] {
		t.Fatalf("sums differ after the change arrived: %v and %v", a.Digest()["cloud-a"], c.Digest()["cloud-a"])
	}

	// RecordsOf holds just the owners asked for, tombstones included.
	m.now = m.now.Add(time.Second)
	del, _ := a.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 3)})
	deliver(t, c, del)
	got := c.RecordsOf("cloud-a")
	if len(got) != 3 {
		t.Fatalf("RecordsOf(cloud-a) = %d records, want 3 (cluster, web, db's tombstone)", len(got))
	}
	for _, r := range got {
		if r.Owner != "cloud-a" {
			t.Errorf("RecordsOf(cloud-a) returned %s", r.Key)
		}
	}
	if r, ok := c.Get(del[0].Key); !ok || !r.Deleted {
		t.Errorf("Get(%s) = %v, %v; want the tombstone", del[0].Key, r, ok)
	}

	// Expiring the tombstone takes it out of the sum.
	m.now = m.now.Add(25 * time.Hour)
	c.Expire()
	if s := c.Digest()["cloud-a"]; s.Records != 2 {
		t.Errorf("after expiry the sum counts %d records, want 2", s.Records)
	}
}

func TestAlive(t *testing.T) {
	m := newMesh(t)
	a := m.catalog(t, "cloud-a")
	if !a.Alive("cloud-a") {
		t.Error("a cluster does not see itself alive")
	}
	if a.Alive("cloud-b") {
		t.Error("an unknown cluster is alive")
	}
	a.SetAlive("cloud-b", true)
	if !a.Alive("cloud-b") {
		t.Error("SetAlive(true) did not take")
	}
	a.SetAlive("cloud-b", false)
	if a.Alive("cloud-b") {
		t.Error("SetAlive(false) did not take")
	}
}

func TestPreviousLifeIsSuperseded(t *testing.T) {
	m := newMesh(t)
	a1, b := m.catalog(t, "cloud-a"), m.catalog(t, "cloud-b")
	old, _ := a1.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1), svc("gone", "242.0.128.2", 1)})
	deliver(t, b, old)
	// cloud-a restarts: a new catalog, and it no longer exports "gone".
	m.now = m.now.Add(time.Second)
	a2 := m.catalog(t, "cloud-a")
	if _, err := a2.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1)}); err != nil {
		t.Fatal(err)
	}
	// cloud-b passes its records back (anti-entropy).
	var out []Record
	for _, r := range b.Records() {
		pass, err := a2.Merge(r)
		if err != nil {
			t.Fatal(err)
		}
		if pass != nil {
			out = append(out, *pass)
		}
	}
	if len(out) != 1 || !out[0].Deleted || out[0].Name != "default/gone" {
		t.Fatalf("cloud-a answered its previous life with %v; want one tombstone for default/gone", out)
	}
	deliver(t, b, out)
	if s := b.Snapshot(); len(s.Services) != 1 || s.Services[0].Name != "web" {
		t.Errorf("cloud-b still sees %v", s.Services)
	}
}

func TestPublishRefusesAnotherBlock(t *testing.T) {
	m := newMesh(t)
	a := m.catalog(t, "cloud-a")
	c := cluster("cloud-a")
	c.Block = netip.MustParsePrefix("242.9.0.0/16")
	if _, err := a.Publish(c, nil); err == nil {
		t.Error("published a block the certificate does not give")
	}
}

func TestClock(t *testing.T) {
	now := time.Unix(1000, 0)
	c := Clock{Now: func() time.Time { return now }}
	v1, v2 := c.Next(), c.Next()
	now = now.Add(-time.Hour) // the wall clock goes back
	v3 := c.Next()
	if !(v1 < v2 && v2 < v3) || !VersionTime(v1).Equal(time.Unix(1000, 0)) {
		t.Errorf("versions %d %d %d", v1, v2, v3)
	}
}

func FuzzDecode(f *testing.F) {
	m := &mesh{now: time.Unix(1e9, 0)}
	m.ca, _ = NewCA()
	id := m.identity("cloud-a", "242.0.0.0/16")
	c, _ := New(Options{CA: m.ca.Public, Identity: id, Now: func() time.Time { return m.now }})
	rs, _ := c.Publish(cluster("cloud-a"), []Service{svc("web", "242.0.128.1", 1)})
	for _, r := range rs {
		b, _ := r.Encode()
		f.Add(b)
	}
	f.Add([]byte(`{"kind":2,"owner":"x","name":"a/b","version":1,"service":{"namespace":"a","name":"b"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Decode(b)
		if err != nil {
			return
		}
		// What decodes re-encodes and decodes to the same record.
		b2, err := r.Encode()
		if err != nil {
			t.Fatal(err)
		}
		r2, err := Decode(b2)
		if err != nil || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, r, r2)
		}
	})
}
