package kubesource

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/straitnet/strait/discovery/catalog"
)

func service(name, clusterIP string, ports ...corev1.ServicePort) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
		Spec:       corev1.ServiceSpec{ClusterIP: clusterIP, Ports: ports},
	}
	if clusterIP != "" && clusterIP != corev1.ClusterIPNone {
		svc.Spec.ClusterIPs = strings.Split(clusterIP, ",")
		svc.Spec.ClusterIP = svc.Spec.ClusterIPs[0]
	}
	return svc
}

func port(name string, proto corev1.Protocol, p int32) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Protocol: proto, Port: p}
}

// endpoint is "addr", "addr!" (not ready), "addr?" (readiness unknown,
// which means ready) or "host=addr".
func slice(name string, family discoveryv1.AddressType, eps ...string) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name}, AddressType: family}
	for _, e := range eps {
		var ep discoveryv1.Endpoint
		yes, no := true, false
		ep.Conditions.Ready = &yes
		switch {
		case strings.HasSuffix(e, "!"):
			e, ep.Conditions.Ready = strings.TrimSuffix(e, "!"), &no
		case strings.HasSuffix(e, "?"):
			e, ep.Conditions.Ready = strings.TrimSuffix(e, "?"), nil
		}
		if host, addr, ok := strings.Cut(e, "="); ok {
			ep.Hostname, e = &host, addr
		}
		ep.Addresses = []string{e}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

func eps(s ...string) []catalog.Endpoint {
	var out []catalog.Endpoint
	for _, e := range s {
		host, addr, ok := strings.Cut(e, "=")
		if !ok {
			host, addr = "", e
		}
		out = append(out, catalog.Endpoint{Hostname: host, Addr: netip.MustParseAddr(addr)})
	}
	return out
}

func TestExportOf(t *testing.T) {
	http, dns := port("http", corev1.ProtocolTCP, 80), port("dns", corev1.ProtocolUDP, 53)
	for _, tc := range []struct {
		name   string
		svc    *corev1.Service
		slices []*discoveryv1.EndpointSlice
		want   Export
		reason string // refused, for this reason
	}{
		{
			name: "cluster IP",
			svc:  service("web", "10.96.0.10", http, dns),
			slices: []*discoveryv1.EndpointSlice{
				slice("web-a", discoveryv1.AddressTypeIPv4, "10.0.1.2", "10.0.1.1!", "10.0.1.3?"),
				// The same endpoint in two slices counts once; IPv6
				// slices do not count.
				slice("web-b", discoveryv1.AddressTypeIPv4, "10.0.1.2", "10.0.1.4"),
				slice("web-c", discoveryv1.AddressTypeIPv6, "fd00::1"),
			},
			want: Export{Namespace: "shop", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
				Ports:     []Port{{Name: "http", Protocol: "TCP", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}},
				Endpoints: eps("10.0.1.2", "10.0.1.3", "10.0.1.4"), Ready: 3, Total: 4},
		},
		{
			name:   "headless with hostnames",
			svc:    service("db", corev1.ClusterIPNone, port("pg", corev1.ProtocolTCP, 5432)),
			slices: []*discoveryv1.EndpointSlice{slice("db-x", discoveryv1.AddressTypeIPv4, "db-1=10.0.2.2", "db-0=10.0.2.1", "db-2=10.0.2.3!")},
			want: Export{Namespace: "shop", Name: "db", Headless: true, Ports: []Port{{Name: "pg", Protocol: "TCP", Port: 5432}},
				Endpoints: eps("db-0=10.0.2.1", "db-1=10.0.2.2"), Ready: 2, Total: 3},
		},
		{
			name: "headless without ports or endpoints",
			svc:  service("empty", corev1.ClusterIPNone),
			want: Export{Namespace: "shop", Name: "empty", Headless: true},
		},
		{
			name: "dual stack exports the IPv4 address",
			svc:  service("dual", "fd00::10,10.96.0.11", port("", "", 8080)),
			want: Export{Namespace: "shop", Name: "dual", ClusterIP: netip.MustParseAddr("10.96.0.11"),
				Ports: []Port{{Protocol: "TCP", Port: 8080}}},
		},
		{name: "IPv6 only", svc: service("v6", "fd00::10", http), reason: ReasonIPFamily},
		{name: "no cluster IP", svc: service("none", "", http), reason: ReasonNoClusterIP},
		{name: "ExternalName", svc: func() *corev1.Service {
			s := service("ext", "", http)
			s.Spec.Type, s.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
			return s
		}(), reason: ReasonInvalidServiceType},
		{name: "protocol", svc: service("icmp", "10.96.0.12", port("ping", "ICMP", 7)), reason: ReasonInvalidPort},
		{name: "port name", svc: service("named", "10.96.0.13", port("Web_UI", corev1.ProtocolTCP, 80)), reason: ReasonInvalidPort},
		{name: "port number", svc: service("zero", "10.96.0.14", port("x", corev1.ProtocolTCP, 0)), reason: ReasonInvalidPort},
		{name: "service name", svc: service(strings.Repeat("a", 64), "10.96.0.15", http), reason: ReasonInvalidName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, r := exportOf(tc.svc, tc.slices)
			if tc.reason != "" {
				if r == nil || r.Reason != tc.reason || r.Message == "" {
					t.Fatalf("got %+v, refusal %+v; want refused for %s", got, r, tc.reason)
				}
				return
			}
			if r != nil {
				t.Fatalf("refused: %+v", r)
			}
			if !got.equal(tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func cs(cluster, name, addr string, headless bool, ports ...string) catalog.ClusterService {
	ns, n, _ := strings.Cut(name, "/")
	s := catalog.ClusterService{Cluster: cluster, Service: catalog.Service{Namespace: ns, Name: n, Headless: headless, Ready: 1}}
	if addr != "" {
		s.Addr = netip.MustParseAddr(addr)
	}
	for _, p := range ports { // "name:port/proto"
		var pt Port
		var num int
		name, rest, _ := strings.Cut(p, ":")
		numStr, proto, _ := strings.Cut(rest, "/")
		fmt.Sscan(numStr, &num)
		pt.Name, pt.Port, pt.Protocol = name, uint16(num), proto
		s.Ports = append(s.Ports, pt)
	}
	return s
}

func snapshot(self string, services ...catalog.ClusterService) catalog.Snapshot {
	snap := catalog.Snapshot{Self: self, Clusters: map[string]catalog.Cluster{self: {}}, Alive: map[string]bool{self: true}, Services: services}
	for _, s := range services {
		snap.Clusters[s.Cluster] = catalog.Cluster{}
	}
	return snap
}

func TestDesiredImports(t *testing.T) {
	render := func(ds []importSpec) string {
		var b strings.Builder
		for _, d := range ds {
			fmt.Fprintf(&b, "%s/%s %s", d.Namespace, d.Name, d.Spec.Type)
			for _, p := range d.Spec.Ports {
				fmt.Fprintf(&b, " %s:%d/%s", p.Name, p.Port, p.Protocol)
			}
			fmt.Fprintf(&b, " ips=%v clusters=%v", d.Spec.IPs, d.Clusters)
			if len(d.Dropped) > 0 {
				fmt.Fprintf(&b, " dropped=%v", d.Dropped)
			}
			if d.Conflict != "" {
				fmt.Fprintf(&b, " conflict")
			}
			b.WriteString("\n")
		}
		return b.String()
	}
	for _, tc := range []struct {
		name string
		snap catalog.Snapshot
		want string
	}{
		{
			name: "own services are not imported",
			snap: snapshot("a", cs("a", "shop/web", "242.0.128.1", false, "http:80/TCP")),
			want: "",
		},
		{
			name: "clusterset IP from the other clusters only",
			snap: snapshot("a",
				cs("a", "shop/web", "242.0.128.1", false, "http:80/TCP"),
				cs("c", "shop/web", "242.2.128.1", false, "http:80/TCP"),
				cs("b", "shop/web", "242.1.128.9", false, "http:80/TCP")),
			want: "shop/web ClusterSetIP http:80/TCP ips=[242.1.128.9 242.2.128.1] clusters=[{b} {c}]\n",
		},
		{
			name: "headless",
			snap: snapshot("a", cs("b", "shop/db", "", true, "pg:5432/TCP")),
			want: "shop/db Headless pg:5432/TCP ips=[] clusters=[{b}]\n",
		},
		{
			name: "ports differ: the first cluster by name decides",
			snap: snapshot("a",
				cs("c", "shop/web", "242.2.128.1", false, "http:8080/TCP"),
				cs("b", "shop/web", "242.1.128.1", false, "http:80/TCP", "dns:53/UDP")),
			want: "shop/web ClusterSetIP http:80/TCP dns:53/UDP ips=[242.1.128.1 242.2.128.1] clusters=[{b} {c}] conflict\n",
		},
		{
			name: "port order is no conflict",
			snap: snapshot("a",
				cs("c", "shop/web", "242.2.128.1", false, "dns:53/UDP", "http:80/TCP"),
				cs("b", "shop/web", "242.1.128.1", false, "http:80/TCP", "dns:53/UDP")),
			want: "shop/web ClusterSetIP http:80/TCP dns:53/UDP ips=[242.1.128.1 242.2.128.1] clusters=[{b} {c}]\n",
		},
		{
			name: "more exporters than spec.ips holds",
			snap: snapshot("a",
				cs("d", "shop/web", "242.3.128.1", false, "http:80/TCP"),
				cs("c", "shop/web", "242.2.128.1", false, "http:80/TCP"),
				cs("b", "shop/web", "242.1.128.1", false, "http:80/TCP")),
			want: "shop/web ClusterSetIP http:80/TCP ips=[242.1.128.1 242.2.128.1] clusters=[{b} {c} {d}] dropped=[242.3.128.1]\n",
		},
		{
			name: "headless and not: the first decides, a conflict",
			snap: snapshot("a",
				cs("b", "shop/x", "", true, "http:80/TCP"),
				cs("c", "shop/x", "242.2.128.1", false, "http:80/TCP"),
				cs("b", "web/y", "242.1.128.2", false)),
			want: "shop/x Headless http:80/TCP ips=[] clusters=[{b} {c}] conflict\n" +
				"web/y ClusterSetIP ips=[242.1.128.2] clusters=[{b}]\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := render(desiredImports(tc.snap)); got != tc.want {
				t.Errorf("got\n%swant\n%s", got, tc.want)
			}
		})
	}
}

func TestExportConditions(t *testing.T) {
	web := exportState{export: Export{Namespace: "shop", Name: "web", ClusterIP: netip.MustParseAddr("10.96.0.10"),
		Ports: []Port{{Name: "http", Protocol: "TCP", Port: 80}}}}
	render := func(cs []metav1.Condition) string {
		var b strings.Builder
		for _, c := range cs {
			fmt.Fprintf(&b, "%s=%s/%s: %s\n", c.Type, c.Status, c.Reason, c.Message)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name string
		st   exportState
		snap catalog.Snapshot
		want string
	}{
		{
			name: "refused",
			st:   exportState{refused: &refusal{Reason: ReasonNoService, Message: "service shop/web does not exist"}},
			snap: snapshot("a"),
			want: "Valid=False/NoService: service shop/web does not exist\n" +
				"Ready=False/Failed: not exported: service shop/web does not exist\n" +
				"Conflict=False/NoConflicts: not exported\n",
		},
		{
			name: "not in the catalog yet",
			st:   web,
			snap: snapshot("a"),
			want: "Valid=True/Valid: the service can be exported\n" +
				"Ready=False/Pending: not in the mesh catalog yet\n" +
				"Conflict=False/NoConflicts: no other cluster exports the service\n",
		},
		{
			name: "exported, agreeing with another cluster",
			st:   web,
			snap: snapshot("a", cs("a", "shop/web", "242.0.128.1", false, "http:80/TCP"), cs("b", "shop/web", "242.1.128.1", false, "http:80/TCP")),
			want: "Valid=True/Valid: the service can be exported\n" +
				"Ready=True/Exported: in the mesh catalog; other clusters reach it at 242.0.128.1\n" +
				"Conflict=False/NoConflicts: ports and type agree with the 1 other exporting clusters\n",
		},
		{
			name: "ports conflict",
			st:   web,
			snap: snapshot("b", cs("b", "shop/web", "242.1.128.1", false, "http:80/TCP"), cs("a", "shop/web", "242.0.128.1", false, "http:8080/TCP", "dns:53/UDP")),
			want: "Valid=True/Valid: the service can be exported\n" +
				"Ready=True/Exported: in the mesh catalog; other clusters reach it at 242.1.128.1\n" +
				"Conflict=True/PortConflict: ports differ between the exporting clusters: a: 8080/TCP (http), 53/UDP (dns); b (this cluster): 80/TCP (http); a's apply, the first cluster by name\n",
		},
		{
			name: "type conflict, before this cluster is in the catalog",
			st:   web,
			snap: snapshot("a", cs("b", "shop/web", "", true, "http:80/TCP")),
			want: "Valid=True/Valid: the service can be exported\n" +
				"Ready=False/Pending: not in the mesh catalog yet\n" +
				"Conflict=True/TypeConflict: type differs between the exporting clusters: a (this cluster): clusterset IP, 80/TCP (http); b: headless, 80/TCP (http); a's apply, the first cluster by name\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := render(exportConditions(tc.st, tc.snap, "shop", "web")); got != tc.want {
				t.Errorf("got\n%swant\n%s", got, tc.want)
			}
		})
	}
}
