package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Fixture helpers.

func mkPod(ns, name, ip string, lbls map[string]string, ports ...corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: lbls},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	return p
}

func cport(name string, port int32, proto corev1.Protocol) corev1.ContainerPort {
	return corev1.ContainerPort{Name: name, ContainerPort: port, Protocol: proto}
}

func mkNS(name string, lbls map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: lbls}}
}

func mkPolicy(ns, name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

// sel is a selector of key=value pairs (none: the empty selector).
func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	for i := 0; i+1 < len(kv); i += 2 {
		if s.MatchLabels == nil {
			s.MatchLabels = map[string]string{}
		}
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func protoPtr(p corev1.Protocol) *corev1.Protocol { return &p }

func portN(proto corev1.Protocol, n int32) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(n)
	return networkingv1.NetworkPolicyPort{Protocol: protoPtr(proto), Port: &v}
}

func tcpPort(n int32) networkingv1.NetworkPolicyPort { return portN(corev1.ProtocolTCP, n) }

func portRange(proto corev1.Protocol, lo, hi int32) networkingv1.NetworkPolicyPort {
	p := portN(proto, lo)
	p.EndPort = &hi
	return p
}

func namedPortOf(name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Port: &v}
}

func ipBlock(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func podPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: s}
}

func nsPeer(s *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: s}
}

func ingressRule(ports []networkingv1.NetworkPolicyPort, from ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{Ports: ports, From: from}
}

func egressRule(ports []networkingv1.NetworkPolicyPort, to ...networkingv1.NetworkPolicyPeer) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{Ports: ports, To: to}
}

func ports(p ...networkingv1.NetworkPolicyPort) []networkingv1.NetworkPolicyPort { return p }

var (
	ingressOnly   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly    = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	bothTypes     = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	fixtureLocals = []netip.Addr{netip.MustParseAddr(dbIP), netip.MustParseAddr(frontendIP), netip.MustParseAddr(webIP)}
)

// The fixture cluster. The local pods are those of namespace default.
const (
	dbIP       = "10.0.0.10" // default/db role=db, redis=tcp/6379
	frontendIP = "10.0.0.11" // default/frontend role=frontend
	webIP      = "10.0.0.12" // default/web app=web, http=tcp/8080, dns=udp/53
	myappIP    = "10.0.1.10" // myproject/app (project=myproject)
	clientIP   = "10.0.2.10" // other/client role=client (user=alice)
	serverIP   = "10.0.2.11" // other/server role=server, http=tcp/9090 (user=alice)
	prodIP     = "10.0.3.10" // prod/client role=client (user=bob)
	hostIP     = "10.0.9.1"  // default/host role=frontend, host network
	deadIP     = "10.0.9.2"  // default/dead role=frontend, Failed
)

func fixture() ([]*corev1.Pod, []*corev1.Namespace) {
	host := mkPod("default", "host", hostIP, map[string]string{"role": "frontend"})
	host.Spec.HostNetwork = true
	dead := mkPod("default", "dead", deadIP, map[string]string{"role": "frontend"})
	dead.Status.Phase = corev1.PodFailed
	pods := []*corev1.Pod{
		mkPod("default", "db", dbIP, map[string]string{"role": "db"}, cport("redis", 6379, "")),
		mkPod("default", "frontend", frontendIP, map[string]string{"role": "frontend"}),
		mkPod("default", "web", webIP, map[string]string{"app": "web"}, cport("http", 8080, corev1.ProtocolTCP), cport("dns", 53, corev1.ProtocolUDP)),
		mkPod("myproject", "app", myappIP, map[string]string{"role": "x"}),
		mkPod("other", "client", clientIP, map[string]string{"role": "client"}),
		mkPod("other", "server", serverIP, map[string]string{"role": "server"}, cport("http", 9090, corev1.ProtocolTCP)),
		mkPod("prod", "client", prodIP, map[string]string{"role": "client"}),
		host, dead,
	}
	nss := []*corev1.Namespace{
		mkNS("default", nil),
		mkNS("myproject", map[string]string{"project": "myproject"}),
		mkNS("other", map[string]string{"user": "alice"}),
		mkNS("prod", map[string]string{"user": "bob"}),
	}
	return pods, nss
}

type check struct {
	pod   string
	dir   Direction
	peer  string
	proto uint8
	port  uint16
	want  bool
}

func in(pod, peer string, proto uint8, port uint16, want bool) check {
	return check{pod, Ingress, peer, proto, port, want}
}

func out(pod, peer string, proto uint8, port uint16, want bool) check {
	return check{pod, Egress, peer, proto, port, want}
}

const (
	tcp  = ProtoTCP
	udp  = ProtoUDP
	sctp = ProtoSCTP
	icmp = ProtoICMP
)

// entriesOf lists pod's entries as "dir prefix ports", sorted.
func entriesOf(p Program, pod string) []string {
	a := netip.MustParseAddr(pod)
	var out []string
	for e, s := range p.Entries {
		if e.Pod == a {
			out = append(out, fmt.Sprintf("%s %s %s", e.Dir, e.Peer, s))
		}
	}
	sort.Strings(out)
	return out
}

func enforcedOf(p Program) []string {
	var out []string
	for k, v := range p.Enforced {
		if v {
			out = append(out, fmt.Sprintf("%s %s", k.Pod, k.Dir))
		}
	}
	sort.Strings(out)
	return out
}

func TestCompile(t *testing.T) {
	empty := metav1.LabelSelector{}
	tests := []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		local    []string // default: the fixture's local pods
		checks   []check
		entries  map[string][]string // pod → entriesOf, when given
		enforced []string            // enforcedOf, when given
		problems []string            // substrings, one per problem; nil: none
	}{
		{
			name: "default deny all ingress",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "default-deny-ingress", networkingv1.NetworkPolicySpec{
				PodSelector: empty, PolicyTypes: ingressOnly})},
			checks: []check{
				in(dbIP, frontendIP, tcp, 80, false), in(dbIP, "8.8.8.8", icmp, 0, false), in(webIP, dbIP, udp, 53, false),
				out(dbIP, frontendIP, tcp, 80, true), out(dbIP, "8.8.8.8", icmp, 0, true),
			},
			entries:  map[string][]string{dbIP: nil, frontendIP: nil, webIP: nil},
			enforced: []string{"10.0.0.10 ingress", "10.0.0.11 ingress", "10.0.0.12 ingress"},
		},
		{
			name: "allow all ingress",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "allow-all-ingress", networkingv1.NetworkPolicySpec{
				PodSelector: empty, Ingress: []networkingv1.NetworkPolicyIngressRule{{}}, PolicyTypes: ingressOnly})},
			checks: []check{
				in(dbIP, frontendIP, tcp, 80, true), in(dbIP, "8.8.8.8", icmp, 0, true), in(webIP, "0.0.0.0", sctp, 9, true),
			},
			entries:  map[string][]string{dbIP: {"ingress 0.0.0.0/0 any"}},
			enforced: []string{"10.0.0.10 ingress", "10.0.0.11 ingress", "10.0.0.12 ingress"},
		},
		{
			name: "default deny all egress",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "default-deny-egress", networkingv1.NetworkPolicySpec{
				PodSelector: empty, PolicyTypes: egressOnly})},
			checks: []check{
				out(dbIP, frontendIP, tcp, 80, false), out(dbIP, "8.8.8.8", udp, 53, false), in(dbIP, frontendIP, tcp, 80, true),
			},
			entries:  map[string][]string{dbIP: nil},
			enforced: []string{"10.0.0.10 egress", "10.0.0.11 egress", "10.0.0.12 egress"},
		},
		{
			name: "allow all egress",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "allow-all-egress", networkingv1.NetworkPolicySpec{
				PodSelector: empty, Egress: []networkingv1.NetworkPolicyEgressRule{{}}, PolicyTypes: egressOnly})},
			checks:   []check{out(dbIP, "1.2.3.4", tcp, 443, true), out(dbIP, "1.2.3.4", icmp, 0, true)},
			entries:  map[string][]string{dbIP: {"egress 0.0.0.0/0 any"}},
			enforced: []string{"10.0.0.10 egress", "10.0.0.11 egress", "10.0.0.12 egress"},
		},
		{
			name: "default deny all ingress and egress",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "default-deny-all", networkingv1.NetworkPolicySpec{
				PodSelector: empty, PolicyTypes: bothTypes})},
			checks:   []check{in(dbIP, webIP, tcp, 80, false), out(dbIP, webIP, tcp, 80, false)},
			enforced: []string{"10.0.0.10 egress", "10.0.0.10 ingress", "10.0.0.11 egress", "10.0.0.11 ingress", "10.0.0.12 egress", "10.0.0.12 ingress"},
		},
		{
			name: "the documentation's test-network-policy: ipBlock with except, namespaceSelector, podSelector",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "test-network-policy", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"),
				PolicyTypes: bothTypes,
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingressRule(ports(tcpPort(6379)),
					ipBlock("172.17.0.0/16", "172.17.1.0/24"), nsPeer(sel("project", "myproject")), podPeer(sel("role", "frontend")))},
				Egress: []networkingv1.NetworkPolicyEgressRule{egressRule(ports(tcpPort(5978)), ipBlock("10.0.0.0/24"))},
			})},
			checks: []check{
				in(dbIP, "172.17.0.1", tcp, 6379, true), in(dbIP, "172.17.2.3", tcp, 6379, true), in(dbIP, "172.17.255.255", tcp, 6379, true),
				in(dbIP, "172.17.1.5", tcp, 6379, false), in(dbIP, "172.17.1.0", tcp, 6379, false),
				in(dbIP, "172.17.2.3", tcp, 80, false), in(dbIP, "172.17.2.3", udp, 6379, false), in(dbIP, "172.17.2.3", icmp, 0, false),
				in(dbIP, "172.18.0.1", tcp, 6379, false),
				in(dbIP, myappIP, tcp, 6379, true), in(dbIP, frontendIP, tcp, 6379, true), in(dbIP, frontendIP, udp, 6379, false),
				in(dbIP, hostIP, tcp, 6379, false), in(dbIP, deadIP, tcp, 6379, false), in(dbIP, webIP, tcp, 6379, false),
				out(dbIP, "10.0.0.200", tcp, 5978, true), out(dbIP, "10.0.1.1", tcp, 5978, false), out(dbIP, webIP, tcp, 6379, false),
				in(webIP, "172.17.1.5", tcp, 1, true), out(frontendIP, "1.1.1.1", tcp, 1, true),
			},
			entries: map[string][]string{
				dbIP: {
					"egress 10.0.0.0/24 tcp/5978",
					"ingress 10.0.0.11/32 tcp/6379",
					"ingress 10.0.1.10/32 tcp/6379",
					"ingress 172.17.0.0/16 tcp/6379",
					"ingress 172.17.1.0/24 none",
				},
				webIP: nil,
			},
			enforced: []string{"10.0.0.10 egress", "10.0.0.10 ingress"},
		},
		{
			name: "allow from a namespace",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "from-alice", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("app", "web"),
				Ingress:     []networkingv1.NetworkPolicyIngressRule{ingressRule(nil, nsPeer(sel("user", "alice")))},
			})},
			checks: []check{
				in(webIP, clientIP, tcp, 80, true), in(webIP, serverIP, icmp, 0, true), in(webIP, prodIP, tcp, 80, false),
				in(webIP, dbIP, tcp, 80, false), out(webIP, "8.8.8.8", udp, 53, true),
			},
			entries:  map[string][]string{webIP: {"ingress 10.0.2.10/32 any", "ingress 10.0.2.11/32 any"}},
			enforced: []string{"10.0.0.12 ingress"},
		},
		{
			name: "namespaceSelector and podSelector in one peer: AND",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "and", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("app", "web"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingressRule(nil, networkingv1.NetworkPolicyPeer{
					NamespaceSelector: sel("user", "alice"), PodSelector: sel("role", "client")})},
			})},
			checks: []check{
				in(webIP, clientIP, tcp, 80, true), in(webIP, serverIP, tcp, 80, false), in(webIP, prodIP, tcp, 80, false),
				in(webIP, frontendIP, tcp, 80, false),
			},
			entries: map[string][]string{webIP: {"ingress 10.0.2.10/32 any"}},
		},
		{
			name: "namespaceSelector and podSelector in two peers: OR",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "or", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("app", "web"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingressRule(nil,
					nsPeer(sel("user", "alice")), podPeer(sel("role", "client")), podPeer(sel("role", "frontend")))},
			})},
			checks: []check{
				in(webIP, clientIP, tcp, 80, true), in(webIP, serverIP, tcp, 80, true),
				in(webIP, prodIP, tcp, 80, false), // podSelector alone: the policy's namespace only
				in(webIP, frontendIP, tcp, 80, true), in(webIP, hostIP, tcp, 80, false), in(webIP, deadIP, tcp, 80, false),
			},
			entries: map[string][]string{webIP: {"ingress 10.0.0.11/32 any", "ingress 10.0.2.10/32 any", "ingress 10.0.2.11/32 any"}},
		},
		{
			name: "matchExpressions and the namespace name label",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "expr", networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: metav1.LabelSelectorOpIn, Values: []string{"db", "frontend"}}}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingressRule(nil, networkingv1.NetworkPolicyPeer{
					NamespaceSelector: sel(corev1.LabelMetadataName, "prod"),
					PodSelector:       &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: metav1.LabelSelectorOpExists}}}})},
			})},
			checks:   []check{in(dbIP, prodIP, tcp, 1, true), in(frontendIP, prodIP, tcp, 1, true), in(dbIP, clientIP, tcp, 1, false), in(webIP, dbIP, tcp, 1, true)},
			enforced: []string{"10.0.0.10 ingress", "10.0.0.11 ingress"},
		},
		{
			name: "ports with endPort, UDP, SCTP and a whole protocol",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "ranges", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"),
				PolicyTypes: egressOnly,
				Egress: []networkingv1.NetworkPolicyEgressRule{
					egressRule(ports(portRange(corev1.ProtocolTCP, 32000, 32768), portN(corev1.ProtocolSCTP, 3868)), ipBlock("10.0.0.0/24")),
					egressRule(ports(networkingv1.NetworkPolicyPort{Protocol: protoPtr(corev1.ProtocolUDP)}, portRange(corev1.ProtocolTCP, 32769, 32770))),
				},
			})},
			checks: []check{
				out(dbIP, "10.0.0.5", tcp, 32000, true), out(dbIP, "10.0.0.5", tcp, 32768, true), out(dbIP, "10.0.0.5", tcp, 32770, true),
				out(dbIP, "10.0.0.5", tcp, 31999, false), out(dbIP, "10.0.0.5", tcp, 32771, false),
				out(dbIP, "10.0.0.5", sctp, 3868, true), out(dbIP, "10.0.0.5", sctp, 3869, false),
				out(dbIP, "10.0.0.5", udp, 1, true), out(dbIP, "9.9.9.9", udp, 65535, true), out(dbIP, "9.9.9.9", tcp, 32000, false),
				out(dbIP, "9.9.9.9", tcp, 32769, true), out(dbIP, "9.9.9.9", icmp, 0, false),
			},
			entries: map[string][]string{dbIP: {
				"egress 0.0.0.0/0 tcp/32769-32770,udp/*",
				"egress 10.0.0.0/24 tcp/32000-32770,udp/*,sctp/3868",
			}},
		},
		{
			name: "named ports on ingress resolve against the local pod",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "named-in", networkingv1.NetworkPolicySpec{
				PodSelector: empty,
				Ingress: []networkingv1.NetworkPolicyIngressRule{ingressRule(ports(namedPortOf("http"), namedPortOf("dns"),
					networkingv1.NetworkPolicyPort{Protocol: protoPtr(corev1.ProtocolUDP), Port: ptrTo(intstr.FromString("dns"))}))},
			})},
			checks: []check{
				in(webIP, clientIP, tcp, 8080, true), in(webIP, clientIP, tcp, 9090, false),
				in(webIP, clientIP, udp, 53, true), in(webIP, clientIP, tcp, 53, false), // dns is UDP only
				in(dbIP, clientIP, tcp, 8080, false), in(dbIP, clientIP, tcp, 6379, false),
			},
			entries:  map[string][]string{webIP: {"ingress 0.0.0.0/0 tcp/8080,udp/53"}, dbIP: nil},
			enforced: []string{"10.0.0.10 ingress", "10.0.0.11 ingress", "10.0.0.12 ingress"},
		},
		{
			name: "named ports on egress resolve per peer pod",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "named-out", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "frontend"),
				PolicyTypes: egressOnly,
				Egress: []networkingv1.NetworkPolicyEgressRule{egressRule(ports(namedPortOf("http"), tcpPort(443)),
					networkingv1.NetworkPolicyPeer{NamespaceSelector: &empty, PodSelector: &empty})},
			})},
			checks: []check{
				out(frontendIP, webIP, tcp, 8080, true), out(frontendIP, webIP, tcp, 9090, false), out(frontendIP, webIP, tcp, 443, true),
				out(frontendIP, serverIP, tcp, 9090, true), out(frontendIP, serverIP, tcp, 8080, false),
				out(frontendIP, dbIP, tcp, 443, true), out(frontendIP, dbIP, tcp, 6379, false),
				out(frontendIP, "8.8.8.8", tcp, 443, false),
			},
			entries: map[string][]string{frontendIP: {
				"egress 10.0.0.10/32 tcp/443",
				"egress 10.0.0.11/32 tcp/443",
				"egress 10.0.0.12/32 tcp/443,tcp/8080",
				"egress 10.0.1.10/32 tcp/443",
				"egress 10.0.2.10/32 tcp/443",
				"egress 10.0.2.11/32 tcp/443,tcp/9090",
				"egress 10.0.3.10/32 tcp/443",
			}},
		},
		{
			name: "named ports on egress: left out for ipBlock peers, per pod without peers",
			policies: []*networkingv1.NetworkPolicy{
				mkPolicy("default", "named-block", networkingv1.NetworkPolicySpec{
					PodSelector: *sel("role", "db"),
					Egress:      []networkingv1.NetworkPolicyEgressRule{egressRule(ports(namedPortOf("http"), tcpPort(443)), ipBlock("10.0.0.0/16"))},
				}),
				mkPolicy("default", "named-anywhere", networkingv1.NetworkPolicySpec{
					PodSelector: *sel("app", "web"),
					Egress:      []networkingv1.NetworkPolicyEgressRule{egressRule(ports(namedPortOf("http")))},
				}),
			},
			checks: []check{
				out(dbIP, serverIP, tcp, 9090, false), out(dbIP, serverIP, tcp, 443, true), out(dbIP, "10.0.200.1", tcp, 443, true),
				out(dbIP, "10.1.0.1", tcp, 443, false),
				out(webIP, serverIP, tcp, 9090, true), out(webIP, webIP, tcp, 8080, true), out(webIP, serverIP, tcp, 8080, false),
				out(webIP, "8.8.8.8", tcp, 8080, false), out(webIP, dbIP, tcp, 9090, false),
				in(dbIP, webIP, tcp, 1, false), in(webIP, dbIP, tcp, 1, false), // egress rules imply both types
			},
			entries: map[string][]string{
				dbIP:  {"egress 10.0.0.0/16 tcp/443"},
				webIP: {"egress 10.0.0.12/32 tcp/8080", "egress 10.0.2.11/32 tcp/9090"},
			},
			enforced: []string{"10.0.0.10 egress", "10.0.0.10 ingress", "10.0.0.12 egress", "10.0.0.12 ingress"},
			problems: []string{"policy default/named-block: egress rule 0: peer 0: named ports cannot be resolved for an ipBlock peer"},
		},
		{
			name: "overlapping rules union",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "overlap", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingressRule(ports(tcpPort(80)), ipBlock("10.0.0.0/8")),
					ingressRule(ports(tcpPort(443)), ipBlock("10.1.0.0/16")),
				},
			})},
			checks: []check{
				in(dbIP, "10.1.2.3", tcp, 80, true), in(dbIP, "10.1.2.3", tcp, 443, true),
				in(dbIP, "10.2.0.1", tcp, 443, false), in(dbIP, "10.2.0.1", tcp, 80, true), in(dbIP, "11.0.0.1", tcp, 80, false),
			},
			entries: map[string][]string{dbIP: {"ingress 10.0.0.0/8 tcp/80", "ingress 10.1.0.0/16 tcp/80,tcp/443"}},
		},
		{
			name: "two policies on one pod union",
			policies: []*networkingv1.NetworkPolicy{
				mkPolicy("default", "a", networkingv1.NetworkPolicySpec{
					PodSelector: *sel("role", "db"),
					Ingress:     []networkingv1.NetworkPolicyIngressRule{ingressRule(ports(tcpPort(80)), podPeer(sel("role", "frontend")))},
				}),
				mkPolicy("default", "b", networkingv1.NetworkPolicySpec{
					PodSelector: empty,
					Ingress:     []networkingv1.NetworkPolicyIngressRule{ingressRule(ports(portN(corev1.ProtocolUDP, 53)), ipBlock("10.0.0.0/16"))},
				}),
			},
			checks: []check{
				in(dbIP, frontendIP, tcp, 80, true), in(dbIP, frontendIP, udp, 53, true), in(dbIP, webIP, udp, 53, true),
				in(dbIP, webIP, tcp, 80, false), in(webIP, frontendIP, tcp, 80, false), in(webIP, frontendIP, udp, 53, true),
			},
			entries: map[string][]string{
				dbIP:  {"ingress 10.0.0.0/16 udp/53", "ingress 10.0.0.11/32 tcp/80,udp/53"},
				webIP: {"ingress 10.0.0.0/16 udp/53"},
			},
		},
		{
			name: "a pod not selected stays unenforced",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "db-only", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"), PolicyTypes: bothTypes}),
				mkPolicy("other", "elsewhere", networkingv1.NetworkPolicySpec{PodSelector: empty, PolicyTypes: bothTypes})},
			checks: []check{
				in(webIP, dbIP, tcp, 80, true), out(webIP, "8.8.8.8", icmp, 0, true), in(frontendIP, clientIP, tcp, 80, true),
				in(dbIP, webIP, tcp, 80, false),
			},
			enforced: []string{"10.0.0.10 egress", "10.0.0.10 ingress"},
		},
		{
			name: "except inside another rule's include",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "except", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingressRule(ports(tcpPort(80)), ipBlock("10.0.0.0/8", "10.1.0.0/16")),
					ingressRule(ports(tcpPort(443)), ipBlock("10.1.2.0/24")),
				},
			})},
			checks: []check{
				in(dbIP, "10.1.2.3", tcp, 443, true), in(dbIP, "10.1.2.3", tcp, 80, false),
				in(dbIP, "10.1.3.3", tcp, 80, false), in(dbIP, "10.1.3.3", tcp, 443, false),
				in(dbIP, "10.2.0.1", tcp, 80, true), in(dbIP, "10.2.0.1", tcp, 443, false),
			},
			entries: map[string][]string{dbIP: {"ingress 10.0.0.0/8 tcp/80", "ingress 10.1.0.0/16 none", "ingress 10.1.2.0/24 tcp/443"}},
		},
		{
			name: "except of one policy, include of another, and an except covering a pod",
			policies: []*networkingv1.NetworkPolicy{
				mkPolicy("default", "a", networkingv1.NetworkPolicySpec{
					PodSelector: *sel("role", "db"),
					Ingress: []networkingv1.NetworkPolicyIngressRule{ingressRule(ports(tcpPort(80)),
						ipBlock("10.0.0.0/8", "10.0.0.0/16", "10.0.0.11/32", "10.9.0.0/16"))},
				}),
				mkPolicy("default", "b", networkingv1.NetworkPolicySpec{
					PodSelector: *sel("role", "db"),
					Ingress: []networkingv1.NetworkPolicyIngressRule{
						ingressRule(ports(tcpPort(443)), ipBlock("10.0.0.0/8")),
						ingressRule(ports(tcpPort(80)), podPeer(sel("role", "frontend"))),
					},
				}),
			},
			checks: []check{
				in(dbIP, "10.0.5.5", tcp, 443, true), in(dbIP, "10.0.5.5", tcp, 80, false),
				in(dbIP, "10.5.5.5", tcp, 443, true), in(dbIP, "10.5.5.5", tcp, 80, true),
				in(dbIP, "10.9.5.5", tcp, 443, true), in(dbIP, "10.9.5.5", tcp, 80, false),
				in(dbIP, frontendIP, tcp, 80, true), in(dbIP, webIP, tcp, 80, false), in(dbIP, webIP, tcp, 443, true),
			},
			entries: map[string][]string{dbIP: {
				"ingress 10.0.0.0/16 tcp/443",
				"ingress 10.0.0.0/8 tcp/80,tcp/443",
				"ingress 10.0.0.11/32 tcp/80,tcp/443",
				"ingress 10.9.0.0/16 tcp/443",
			}},
		},
		{
			name: "ipBlock except everything shadows with an empty entry",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "internet", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"), PolicyTypes: egressOnly,
				Egress: []networkingv1.NetworkPolicyEgressRule{egressRule(nil, ipBlock("0.0.0.0/0", "10.0.0.0/8", "192.168.0.0/16", "10.1.0.0/16"))},
			})},
			checks: []check{
				out(dbIP, "8.8.8.8", icmp, 0, true), out(dbIP, "10.1.1.1", tcp, 80, false), out(dbIP, "192.168.3.3", udp, 53, false),
			},
			entries: map[string][]string{dbIP: {"egress 0.0.0.0/0 any", "egress 10.0.0.0/8 none", "egress 192.168.0.0/16 none"}},
		},
		{
			name: "ICMP: allowed by a rule without ports, dropped by one with ports",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "icmp", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingressRule(nil, ipBlock("10.0.0.0/24")),
					ingressRule(ports(tcpPort(22)), ipBlock("192.168.0.0/24")),
				},
			})},
			checks: []check{
				in(dbIP, "10.0.0.99", icmp, 0, true), in(dbIP, "192.168.0.99", icmp, 0, false), in(dbIP, "192.168.0.99", tcp, 22, true),
			},
		},
		{
			name: "explicit policyTypes: egress rules of an Ingress-only policy are ignored",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "in-only", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"), PolicyTypes: ingressOnly,
				Egress: []networkingv1.NetworkPolicyEgressRule{egressRule(ports(tcpPort(1)))},
			})},
			checks:   []check{out(dbIP, "1.1.1.1", tcp, 2, true), in(dbIP, "1.1.1.1", tcp, 2, false)},
			enforced: []string{"10.0.0.10 ingress"},
			entries:  map[string][]string{dbIP: nil},
		},
		{
			name: "more than MaxRanges ranges: the first ones are kept, the rest denied",
			policies: func() []*networkingv1.NetworkPolicy {
				var ps []networkingv1.NetworkPolicyPort
				for i := int32(0); i < 20; i++ {
					ps = append(ps, tcpPort(1000+2*i))
				}
				return []*networkingv1.NetworkPolicy{
					mkPolicy("default", "many", networkingv1.NetworkPolicySpec{
						PodSelector: *sel("role", "db"),
						Ingress:     []networkingv1.NetworkPolicyIngressRule{ingressRule(ps)},
					}),
					mkPolicy("default", "one", networkingv1.NetworkPolicySpec{
						PodSelector: *sel("role", "db"),
						Ingress:     []networkingv1.NetworkPolicyIngressRule{ingressRule(ports(tcpPort(1001)), ipBlock("10.0.0.0/8"))},
					}),
				}
			}(),
			checks: []check{
				in(dbIP, "1.1.1.1", tcp, 1000, true), in(dbIP, "1.1.1.1", tcp, 1030, true), in(dbIP, "1.1.1.1", tcp, 1032, false),
				in(dbIP, "1.1.1.1", tcp, 1038, false), in(dbIP, "10.1.1.1", tcp, 1001, true), in(dbIP, "10.1.1.1", tcp, 1000, true),
				in(dbIP, "10.1.1.1", tcp, 1030, true), in(dbIP, "10.1.1.1", tcp, 1032, true), in(dbIP, "10.1.1.1", tcp, 1034, false),
			},
			problems: []string{"policy default/many, default/one: pod default/db (10.0.0.10) ingress: 2 peer prefixes (such as 0.0.0.0/0) are allowed more than 16 port ranges"},
		},
		{
			name: "what cannot be compiled is left out closed",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "bad", networkingv1.NetworkPolicySpec{
				PodSelector: *sel("role", "db"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingressRule(ports(tcpPort(80)), ipBlock("fd00::/8"), ipBlock("10.0.0.0/8"), ipBlock("nonsense"), ipBlock("11.0.0.0/8", "bad")),
					ingressRule(ports(portN("ICMP", 0), tcpPort(0)), ipBlock("12.0.0.0/8")),
					ingressRule(ports(networkingv1.NetworkPolicyPort{Port: ptrTo(intstr.FromString("redis")), EndPort: ptrTo(int32(7000))}), ipBlock("13.0.0.0/8")),
					ingressRule(ports(tcpPort(81)), networkingv1.NetworkPolicyPeer{}, networkingv1.NetworkPolicyPeer{PodSelector: &empty, IPBlock: &networkingv1.IPBlock{CIDR: "14.0.0.0/8"}},
						podPeer(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "x", Operator: "Bogus"}}})),
				},
			})},
			checks: []check{
				in(dbIP, "10.0.0.1", tcp, 80, true), in(dbIP, "11.0.0.1", tcp, 80, false), in(dbIP, "12.0.0.1", tcp, 0, false),
				in(dbIP, "12.0.0.1", icmp, 0, false), in(dbIP, "13.0.0.1", tcp, 6379, false), in(dbIP, "14.0.0.1", tcp, 81, false),
				in(dbIP, frontendIP, tcp, 81, false),
			},
			entries: map[string][]string{dbIP: {"ingress 10.0.0.0/8 tcp/80"}},
			problems: []string{
				"policy default/bad: ingress rule 0: peer 0: ipBlock fd00::/8: IPv6 is not supported; peer left out",
				"policy default/bad: ingress rule 0: peer 2: ipBlock cidr \"nonsense\"",
				"policy default/bad: ingress rule 0: peer 3: ipBlock 11.0.0.0/8: except \"bad\"",
				"policy default/bad: ingress rule 1: port 0: unsupported protocol \"ICMP\"",
				"policy default/bad: ingress rule 1: port 1: port 0 out of range",
				"policy default/bad: ingress rule 2: port 0: endPort with named port \"redis\"",
				"policy default/bad: ingress rule 3: peer 0: no podSelector, namespaceSelector or ipBlock",
				"policy default/bad: ingress rule 3: peer 1: ipBlock with a selector",
				"policy default/bad: ingress rule 3: peer 2: podSelector:",
			},
		},
		{
			name: "local addresses without a pod, IPv6 or shared",
			policies: []*networkingv1.NetworkPolicy{mkPolicy("default", "deny", networkingv1.NetworkPolicySpec{
				PodSelector: empty, PolicyTypes: ingressOnly})},
			local:    []string{dbIP, "10.0.0.99", "fd00::1", hostIP, "::ffff:10.0.0.11", dbIP},
			checks:   []check{in(dbIP, webIP, tcp, 1, false), in(frontendIP, webIP, tcp, 1, false), in(webIP, dbIP, tcp, 1, true)},
			enforced: []string{"10.0.0.10 ingress", "10.0.0.11 ingress"},
			problems: []string{
				"local pod 10.0.0.99: no running pod with that IP is known; not enforced",
				"local pod 10.0.9.1: no running pod with that IP is known; not enforced",
				"local pod fd00::1: only IPv4 pods are enforced; not enforced",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pods, nss := fixture()
			local := fixtureLocals
			if tt.local != nil {
				local = nil
				for _, s := range tt.local {
					local = append(local, netip.MustParseAddr(s))
				}
			}
			prog, problems := Compile(tt.policies, pods, nss, local)
			for _, c := range tt.checks {
				got := prog.Allowed(netip.MustParseAddr(c.pod), c.dir, netip.MustParseAddr(c.peer), c.proto, c.port)
				if got != c.want {
					pfx, s, ok := prog.Lookup(netip.MustParseAddr(c.pod), c.dir, netip.MustParseAddr(c.peer))
					t.Errorf("Allowed(%s %s %s proto %d port %d) = %v, want %v (entry %s %s %v)", c.pod, c.dir, c.peer, c.proto, c.port, got, c.want, pfx, s, ok)
				}
			}
			for pod, want := range tt.entries {
				if got := entriesOf(prog, pod); !slices.Equal(got, want) {
					t.Errorf("entries of %s:\n got %q\nwant %q", pod, got, want)
				}
			}
			if tt.enforced != nil {
				if got := enforcedOf(prog); !slices.Equal(got, tt.enforced) {
					t.Errorf("enforced:\n got %q\nwant %q", got, tt.enforced)
				}
			}
			if len(problems) != len(tt.problems) {
				t.Errorf("problems:\n got %q\nwant %q", problems, tt.problems)
			} else {
				for i, want := range tt.problems {
					if !strings.Contains(problems[i], want) {
						t.Errorf("problem %d = %q, want it to contain %q", i, problems[i], want)
					}
				}
			}
			checkProgram(t, prog)
		})
	}
}

func ptrTo[T any](v T) *T { return &v }

// checkProgram checks what the eBPF side relies on: IPv4 keys, masked
// prefixes, normalized PortSets of at most MaxRanges ranges, entries only
// for enforced (pod, direction)s.
func checkProgram(t *testing.T, p Program) {
	t.Helper()
	for k := range p.Enforced {
		if !k.Pod.Is4() {
			t.Errorf("enforced pod %s is not IPv4", k.Pod)
		}
	}
	for e, s := range p.Entries {
		if !e.Pod.Is4() || !e.Peer.Addr().Is4() || e.Peer != e.Peer.Masked() {
			t.Errorf("bad entry key %+v", e)
		}
		if !p.Enforced[PodDir{e.Pod, e.Dir}] {
			t.Errorf("entry %+v for an unenforced pod", e)
		}
		if len(s.Ranges) > MaxRanges || s.Any && len(s.Ranges) > 0 {
			t.Errorf("entry %+v: bad PortSet %+v", e, s)
		}
		if n := normalize(s.Any, slices.Clone(s.Ranges)); !n.Equal(s) {
			t.Errorf("entry %+v: PortSet %v is not normalized (%v)", e, s, n)
		}
	}
}

func TestPortSet(t *testing.T) {
	s := normalize(false, []PortRange{{6, 80, 80}, {17, 53, 53}, {6, 81, 90}, {6, 70, 79}, {6, 100, 200}, {6, 150, 160}, {17, 53, 53}})
	if want := "tcp/70-90,tcp/100-200,udp/53"; s.String() != want {
		t.Errorf("normalize = %s, want %s", s, want)
	}
	if s := normalize(false, []PortRange{{0, 0, 65535}, {6, 1, 1}}); !s.Any {
		t.Errorf("a full range of protocol 0 is Any: %+v", s)
	}
	r := PortSet{Ranges: []PortRange{{0, 0, 0}, {6, 65535, 65535}}}
	for _, c := range []struct {
		proto uint8
		port  uint16
		want  bool
	}{{icmp, 0, true}, {tcp, 0, true}, {tcp, 1, false}, {tcp, 65535, true}, {udp, 65535, false}} {
		if got := r.Contains(c.proto, c.port); got != c.want {
			t.Errorf("%v Contains(%d, %d) = %v", r, c.proto, c.port, got)
		}
	}
	if (PortSet{}).Contains(icmp, 0) || !(PortSet{Any: true}).Contains(icmp, 0) {
		t.Error("the empty and Any sets")
	}
}

// TestManyIPBlocks: 1,000 ipBlock rules (with excepts) on one pod compile
// fast.
func TestManyIPBlocks(t *testing.T) {
	pods, nss := fixture()
	var rules []networkingv1.NetworkPolicyIngressRule
	for i := range 1000 {
		cidr := fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)
		ex := fmt.Sprintf("10.%d.%d.128/25", i/256, i%256)
		rules = append(rules, ingressRule(ports(tcpPort(int32(1+i%10))), ipBlock(cidr, ex), ipBlock(fmt.Sprintf("11.%d.0.0/16", i%200))))
	}
	pol := mkPolicy("default", "big", networkingv1.NetworkPolicySpec{PodSelector: *sel("role", "db"), Ingress: rules})
	start := time.Now()
	prog, problems := Compile([]*networkingv1.NetworkPolicy{pol}, pods, nss, fixtureLocals)
	el := time.Since(start)
	if len(problems) > 0 {
		t.Fatalf("problems: %q", problems)
	}
	if el > 500*time.Millisecond {
		t.Errorf("compiling 1,000 ipBlock rules took %v", el)
	}
	t.Logf("1,000 rules: %d entries in %v", len(prog.Entries), el)
	db := netip.MustParseAddr(dbIP)
	if !prog.Allowed(db, Ingress, netip.MustParseAddr("10.3.231.5"), tcp, 1+999%10) ||
		prog.Allowed(db, Ingress, netip.MustParseAddr("10.3.231.129"), tcp, 1+999%10) ||
		prog.Allowed(db, Ingress, netip.MustParseAddr("10.3.231.5"), tcp, 1+998%10) ||
		!prog.Allowed(db, Ingress, netip.MustParseAddr("11.199.1.1"), tcp, 10) {
		t.Error("wrong verdicts")
	}
}
