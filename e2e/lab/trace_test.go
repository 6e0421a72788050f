package lab

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/straitnet/strait/natpool"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func tup(src, dst string) Tuple { return Tuple{Src: ap(src), Dst: ap(dst)} }

// flow is a conntrack entry that translates orig into out.
func flow(orig, out Tuple) Flow {
	return Flow{Orig: orig, Reply: Tuple{Src: out.Dst, Dst: out.Src}}
}

// demoSeen is what the merger lab's conntrack tables hold after
// cloud-a-pod1 connected to demo/app in cloud-b, as read in the lab,
// among other connections (the same pod address in the other cloud,
// health checks, an older connection of the same pair).
func demoSeen() []Seen {
	return []Seen{
		{Host: "cloud-a-node1", Site: "cloud-a", Flows: []Flow{
			flow(tup("10.0.1.10:40000", "242.1.128.4:80"), tup("10.0.1.10:40000", "242.1.128.4:80")),
			flow(tup("10.0.1.10:58840", "242.1.128.4:80"), tup("10.0.1.10:58840", "242.1.128.4:80")),
		}},
		{Host: "cloud-a-node2", Site: "cloud-a"},
		{Host: "cloud-a-gw", Site: "cloud-a", Flows: []Flow{
			flow(tup("10.0.1.10:40000", "242.1.128.4:80"), tup("242.0.1.1:40000", "242.1.128.4:80")),
			flow(tup("10.0.1.10:58840", "242.1.128.4:80"), tup("242.0.1.1:58840", "242.1.128.4:80")),
		}},
		{Host: "cloud-b-gw", Site: "cloud-b", Flows: []Flow{
			// cloud-b-pod1 (also 10.0.1.10) elsewhere: must not be taken.
			flow(tup("10.0.1.10:58840", "242.0.128.1:7777"), tup("242.1.1.1:58840", "242.0.128.1:7777")),
			flow(tup("242.0.1.1:58840", "242.1.128.4:80"), tup("242.0.1.1:58840", "10.107.54.180:80")),
			flow(tup("172.31.0.1:33000", "10.107.54.180:80"), tup("172.31.0.1:33000", "10.107.54.180:80")),
		}},
		{Host: "cloud-b-node1", Site: "cloud-b", Flows: []Flow{
			flow(tup("242.0.1.1:58840", "10.107.54.180:80"), tup("172.31.0.11:9501", "10.0.1.10:7777")),
			flow(tup("242.0.1.1:40000", "10.107.54.180:80"), tup("172.31.0.11:1234", "10.0.1.10:7777")),
		}},
		{Host: "cloud-b-node2", Site: "cloud-b"},
		{Host: "onprem-gw", Site: "onprem"},
	}
}

func TestPath(t *testing.T) {
	start := tup("10.0.1.10:58840", "242.1.128.4:80")
	hops := Path(start, demoSeen())
	want := []struct {
		host string
		in   Tuple
		out  Tuple
	}{
		{"cloud-a-node1", start, start},
		{"cloud-a-gw", start, tup("242.0.1.1:58840", "242.1.128.4:80")},
		{"cloud-b-gw", tup("242.0.1.1:58840", "242.1.128.4:80"), tup("242.0.1.1:58840", "10.107.54.180:80")},
		{"cloud-b-node1", tup("242.0.1.1:58840", "10.107.54.180:80"), tup("172.31.0.11:9501", "10.0.1.10:7777")},
	}
	if len(hops) != len(want) {
		t.Fatalf("hops %+v, want %d", hops, len(want))
	}
	for i, w := range want {
		h := hops[i]
		if h.Host != w.host || h.In != w.in || h.Out != w.out || h.Via != "conntrack" {
			t.Errorf("hop %d = %s %s => %s, want %s %s => %s", i, h.Host, h.In, h.Out, w.host, w.in, w.out)
		}
	}
	if hops[0].SNAT() || hops[0].DNAT() || !hops[1].SNAT() || hops[1].DNAT() || !hops[2].DNAT() || !hops[3].SNAT() || !hops[3].DNAT() {
		t.Errorf("translations misread: %+v", hops)
	}

	// The namespaces' order only breaks ties between those that see the
	// same tuple: listed backwards, the path is the same but for the
	// node that passed it on, which now comes after the gateway (and is
	// left out, as the gateway changed the tuple).
	seen := demoSeen()
	for i, j := 0, len(seen)-1; i < j; i, j = i+1, j-1 {
		seen[i], seen[j] = seen[j], seen[i]
	}
	back := Path(start, seen)
	if len(back) != 3 || back[0].Host != "cloud-a-gw" || back[2].Host != "cloud-b-node1" {
		t.Errorf("backwards: %+v", back)
	}
	// A connection nobody tracked has no hops.
	if h := Path(tup("10.0.1.10:1", "242.1.128.4:80"), demoSeen()); len(h) != 0 {
		t.Errorf("untracked connection: %+v", h)
	}
}

// demoClassifier names addresses as the merger lab with clusters does.
func demoClassifier(t *testing.T) Classifier {
	t.Helper()
	topo, err := Merger().Resolve()
	if err != nil {
		t.Fatal(err)
	}
	hosts, err := Plan(topo, "demo")
	if err != nil {
		t.Fatal(err)
	}
	allocs := map[string][]natpool.Allocation{
		"cloud-a": {{Key: "egress/default", IP: netip.MustParseAddr("242.0.1.1")}, {Key: "egress/rule/payments", IP: netip.MustParseAddr("242.0.1.2")}},
		"cloud-b": {{Key: "ingress/demo/app", IP: netip.MustParseAddr("242.1.128.4")}},
	}
	cips := map[string]map[netip.Addr]string{"cloud-b": {netip.MustParseAddr("10.107.54.180"): "demo/app"}}
	return NewClassifier(topo, hosts, netip.MustParsePrefix("242.255.0.0/24"), allocs, cips)
}

func TestClassifier(t *testing.T) {
	c := demoClassifier(t)
	for _, tc := range []struct {
		site, addr string
		want       AddrInfo
	}{
		{"cloud-a", "10.0.1.10", AddrInfo{AddrPod, "cloud-a-pod1"}},
		{"cloud-b", "10.0.1.10", AddrInfo{AddrPod, "cloud-b-pod1"}},
		{"cloud-b", "172.31.0.11", AddrInfo{AddrNode, "cloud-b-node1"}},
		{"cloud-a", "172.31.0.1", AddrInfo{AddrNode, "cloud-a-gw"}},
		{"cloud-a", "242.0.1.1", AddrInfo{AddrEgress, "cloud-a, default"}},
		{"cloud-b", "242.0.1.2", AddrInfo{AddrEgress, "cloud-a, rule payments"}},
		{"cloud-a", "242.1.128.4", AddrInfo{AddrIngress, "cloud-b, demo/app"}},
		{"cloud-a", "242.1.200.9", AddrInfo{AddrOther, "cloud-b's block"}},
		{"cloud-b", "10.107.54.180", AddrInfo{AddrCluster, "cloud-b, demo/app"}},
		{"cloud-a", "10.96.0.1", AddrInfo{AddrCluster, "cloud-a"}},
		{"onprem", "10.96.0.1", AddrInfo{Role: AddrOther}},         // onprem is no cluster
		{"onprem", "10.0.1.10", AddrInfo{AddrPod, "cloud-a-pod1"}}, // cloud-a is routable
		{"onprem", "242.255.0.187", AddrInfo{Role: AddrVIP}},
	} {
		if got := c(tc.site, netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("%s at %s = %+v, want %+v", tc.addr, tc.site, got, tc.want)
		}
	}
}

func TestStops(t *testing.T) {
	start := tup("10.0.1.10:58840", "242.1.128.4:80")
	hops := append([]Hop{{Host: "cloud-a-pod1", Site: "cloud-a", Via: "socket", In: start, Out: start}}, Path(start, demoSeen())...)
	server := tup("172.31.0.11:9501", "10.0.1.10:7777")
	hops = append(hops, Hop{Host: "cloud-b-pod1", Site: "cloud-b", Via: "socket", In: server, Out: server})
	path, seenAs := Stops(hops, demoClassifier(t))
	want := []Stop{
		{AddrInfo{AddrPod, "cloud-a-pod1"}, ap("10.0.1.10:58840"), "cloud-a-pod1"},
		{AddrInfo{AddrEgress, "cloud-a, default"}, ap("242.0.1.1:58840"), "cloud-a-gw"},
		{AddrInfo{AddrIngress, "cloud-b, demo/app"}, ap("242.1.128.4:80"), "cloud-a-pod1"},
		{AddrInfo{AddrCluster, "cloud-b, demo/app"}, ap("10.107.54.180:80"), "cloud-b-gw"},
		{AddrInfo{AddrBackend, "cloud-b-pod1"}, ap("10.0.1.10:7777"), "cloud-b-node1"},
	}
	if len(path) != len(want) {
		t.Fatalf("path %v, want %v", path, want)
	}
	for i := range want {
		if path[i] != want[i] {
			t.Errorf("stop %d = %+v, want %+v", i, path[i], want[i])
		}
	}
	if w := (Stop{AddrInfo{AddrNode, "cloud-b-node1"}, ap("172.31.0.11:9501"), "cloud-b-node1"}); seenAs != w {
		t.Errorf("seen as %+v, want %+v", seenAs, w)
	}

	tr := &Trace{From: "cloud-a-pod1", Name: "app.demo.svc.clusterset.local", Resolver: ap("172.31.0.1:53"), Target: ap("242.1.128.4:80"),
		Reply: Reply{Name: "cloud-b-pod1", Peer: server.Src, Local: server.Dst}, Hops: hops, Stops: path, SeenAs: seenAs, Complete: true}
	var b bytes.Buffer
	PrintTrace(&b, tr)
	for _, line := range []string{
		"app.demo.svc.clusterset.local is 242.1.128.4: cloud-a's gateway answered at 172.31.0.1:53",
		"cloud-a-gw     conntrack  10.0.1.10:58840 -> 242.1.128.4:80            source -> 242.0.1.1:58840",
		"cloud-b-node1  conntrack  242.0.1.1:58840 -> 10.107.54.180:80          source -> 172.31.0.11:9501, destination -> 10.0.1.10:7777",
		"path: pod IP 10.0.1.10:58840 (cloud-a-pod1)\n   -> egress IP 242.0.1.1:58840 (cloud-a, default)\n   -> ingress IP 242.1.128.4:80 (cloud-b, demo/app)\n   -> ClusterIP 10.107.54.180:80 (cloud-b, demo/app)\n   -> backend pod 10.0.1.10:7777 (cloud-b-pod1)\n",
		"the backend saw the client as node address 172.31.0.11:9501 (cloud-b-node1), translated by cloud-b-node1",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("trace lacks %q:\n%s", line, b.String())
		}
	}
	if strings.Contains(b.String(), "INCOMPLETE") {
		t.Errorf("a complete trace printed as incomplete:\n%s", b.String())
	}
}

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in   string
		name string
		addr string
		port uint16
		err  bool
	}{
		{in: "app.demo.svc.clusterset.local:80", name: "app.demo.svc.clusterset.local", port: 80},
		{in: "app.demo.svc.clusterset.local", name: "app.demo.svc.clusterset.local", port: ServePort},
		{in: "242.1.128.4:80", addr: "242.1.128.4", port: 80},
		{in: "242.1.128.4", addr: "242.1.128.4", port: ServePort},
		{in: "app:0", err: true},
		{in: "app:65536", err: true},
		{in: "app:+80", err: true},
		{in: "app:http", err: true},
		{in: ":80", err: true},
		{in: "[::1]:80", err: true},
		{in: "a b", err: true},
	} {
		name, addr, port, err := ParseTarget(tc.in, ServePort)
		if tc.err {
			if err == nil {
				t.Errorf("%q: accepted as %q %v %d", tc.in, name, addr, port)
			}
			continue
		}
		var want netip.Addr
		if tc.addr != "" {
			want = netip.MustParseAddr(tc.addr)
		}
		if err != nil || name != tc.name || addr != want || port != tc.port {
			t.Errorf("%q = %q %v %d, %v; want %q %v %d", tc.in, name, addr, port, err, tc.name, want, tc.port)
		}
	}
}

func TestParseReplyLocal(t *testing.T) {
	r, err := parseReply("strait-lab name=cloud-b-pod1 local=10.0.1.10:7777 peer=172.31.0.11:9501\n")
	if err != nil || r.Local != ap("10.0.1.10:7777") || r.Peer != ap("172.31.0.11:9501") {
		t.Errorf("parseReply = %+v, %v", r, err)
	}
}

// TestDemoManifests checks the demo's objects against the merger lab:
// the EndpointSlice names cloud-b-pod1 and its node, on the lab server's
// port.
func TestDemoManifests(t *testing.T) {
	hosts, err := Plan(Merger(), "demo")
	if err != nil {
		t.Fatal(err)
	}
	var pod Host
	for _, h := range hosts {
		if h.Name == "cloud-b-pod1" {
			pod = h
		}
	}
	app := string(DemoApp)
	for _, want := range []string{"addresses: [" + pod.Addr.String() + "]", "nodeName: " + pod.Node, "port: " + strconv.Itoa(ServePort), "kind: ServiceExport"} {
		if !strings.Contains(app, want) {
			t.Errorf("demo/app.yaml lacks %q", want)
		}
	}
	if !strings.Contains(string(DemoNamespace), "name: demo") {
		t.Error("demo/namespace.yaml is not namespace demo")
	}
}
