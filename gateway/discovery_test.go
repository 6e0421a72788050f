package gateway

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/siteconf"
	"github.com/straitnet/strait/natpool"
)

func TestAddExports(t *testing.T) {
	k := keys(t, 3)
	d, err := derive(mustMesh(t, k), mustSite(t, siteText), "cloud-b", k[1], "wg-x-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.exports) != 1 || d.exports[0].Name != "web" || d.exports[0].Ready != 1 || len(d.exports[0].Ports) != 2 {
		t.Fatalf("the site file's service is published as %+v", d.exports)
	}
	addExports(&d, []kubesource.Export{
		{Namespace: "shop", Name: "cart", ClusterIP: netip.MustParseAddr("10.96.0.20"), Ready: 2,
			Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 8080}, {Name: "dns", Protocol: "UDP", Port: 53}, {Name: "sig", Protocol: "SCTP", Port: 9}}},
		{Namespace: "shop", Name: "db", Headless: true, Ready: 1,
			Endpoints: []catalog.Endpoint{{Hostname: "db-0", Addr: netip.MustParseAddr("10.0.3.4")}},
			Ports:     []catalog.Port{{Name: "pg", Protocol: "TCP", Port: 5432}}},
		{Namespace: "default", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.30"), Ready: 1,
			Ports: []catalog.Port{{Protocol: "TCP", Port: 80}}},
	})

	// cart: an ingress address translated to its ClusterIP, TCP and UDP.
	i := slices.IndexFunc(d.services, func(s siteconf.Service) bool { return s.Name == "cart" })
	if i < 0 {
		t.Fatal("cart is not translated")
	}
	cart := d.services[i]
	if cart.Backend != netip.MustParseAddr("10.96.0.20") || len(cart.Ports) != 2 || cart.Ports[0].TargetPort != 8080 || cart.Ports[1].Protocol != 17 {
		t.Errorf("cart translates as %+v", cart)
	}
	if !slices.ContainsFunc(d.requests, func(r natpool.Request) bool { return r.Key == natpool.IngressKey("shop", "cart") }) {
		t.Error("no ingress address is asked for cart")
	}
	// db: published with its endpoints, nothing translated or allocated.
	if slices.ContainsFunc(d.services, func(s siteconf.Service) bool { return s.Name == "db" }) ||
		slices.ContainsFunc(d.requests, func(r natpool.Request) bool { return r.Key == natpool.IngressKey("shop", "db") }) {
		t.Error("the headless service got an address")
	}
	j := slices.IndexFunc(d.exports, func(s catalog.Service) bool { return s.Name == "db" })
	if j < 0 || !d.exports[j].Headless || len(d.exports[j].Endpoints) != 1 {
		t.Errorf("db is published as %+v", d.exports)
	}
	// default/web: the site file's stays; the ServiceExport is reported.
	if n := len(slices.DeleteFunc(slices.Clone(d.exports), func(s catalog.Service) bool { return s.Name != "web" })); n != 1 {
		t.Errorf("web published %d times", n)
	}
	if len(d.problems) != 1 || !strings.Contains(d.problems[0], "default/web is exported by the site file and by a ServiceExport") {
		t.Errorf("problems %v", d.problems)
	}
	// The catalog takes what is published, ports names and all.
	if j := slices.IndexFunc(d.exports, func(s catalog.Service) bool { return s.Name == "cart" }); d.exports[j].Ports[0].Name != "http" || d.exports[j].Ready != 2 {
		t.Errorf("cart is published as %+v", d.exports[j])
	}
}

func TestLearned(t *testing.T) {
	k := keys(t, 2)
	snap := catalog.Snapshot{Self: "cloud-a", Clusters: map[string]catalog.Cluster{
		"cloud-a": {PublicKey: k[0].PublicKey().String(), Block: netip.MustParsePrefix("242.0.0.0/16")},
		"cloud-c": {PublicKey: k[1].PublicKey().String(), Block: netip.MustParsePrefix("242.2.0.0/16"), Endpoints: []string{"198.18.2.2:51820"},
			CIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, Routable: true},
		"cloud-b": {PublicKey: "not a key", Block: netip.MustParsePrefix("242.1.0.0/16")},
	}}
	got := learned(snap)
	if len(got) != 1 {
		t.Fatalf("learned %+v, want cloud-c alone (not itself, not a bad key)", got)
	}
	c := got[0]
	if c.Name != "cloud-c" || c.PublicKey != k[1].PublicKey() || c.Endpoint != "198.18.2.2:51820" || !c.Routable || len(c.CIDRs) != 1 || c.PersistentKeepalive == 0 {
		t.Errorf("cloud-c learned as %+v", c)
	}
}

func TestInputsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), DiscoveredName)
	if in, err := loadInputs(path); err != nil || len(in.Learned)+len(in.Exports) != 0 {
		t.Fatalf("no file: %+v %v, want nothing remembered", in, err)
	}
	k := keys(t, 1)
	in := inputs{
		Learned: []meshconf.Site{{Name: "cloud-c", PublicKey: k[0].PublicKey(), Endpoint: "198.18.2.2:51820", ListenPort: 51820,
			Block: netip.MustParsePrefix("242.2.0.0/16"), CIDRs: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16")}, Routable: true}},
		Exports: []kubesource.Export{{Namespace: "shop", Name: "cart", ClusterIP: netip.MustParseAddr("10.96.0.20"), Ready: 1,
			Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 80}}}},
	}
	if err := saveInputs(path, in); err != nil {
		t.Fatal(err)
	}
	back, err := loadInputs(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.encode(), in.encode()) {
		t.Fatalf("round trip changed the inputs:\n%s\n%s", back.encode(), in.encode())
	}
	data, _ := os.ReadFile(path)
	os.WriteFile(path, data[:len(data)/2], 0o600)
	if _, err := loadInputs(path); err == nil || !strings.Contains(err.Error(), "is damaged") || !strings.Contains(err.Error(), path) {
		t.Fatalf("a damaged file: %v, want an error naming it", err)
	}
}
