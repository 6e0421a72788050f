package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The reference evaluator decides a packet directly from the NetworkPolicy
// semantics (and the choices documented on Compile), with no entries,
// prefixes or port sets: it shares no code with Compile.

func refSelects(s *metav1.LabelSelector, l map[string]string) bool {
	for k, v := range s.MatchLabels {
		if got, ok := l[k]; !ok || got != v {
			return false
		}
	}
	for _, r := range s.MatchExpressions {
		v, ok := l[r.Key]
		switch r.Operator {
		case metav1.LabelSelectorOpIn:
			if !ok || !slices.Contains(r.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if ok && slices.Contains(r.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		default:
			panic("operator " + r.Operator)
		}
	}
	return true
}

type refCluster struct {
	pods []*corev1.Pod
	nss  []*corev1.Namespace
}

func (c refCluster) nsLabels(name string) map[string]string {
	l := map[string]string{corev1.LabelMetadataName: name}
	for _, ns := range c.nss {
		if ns.Name == name {
			for k, v := range ns.Labels {
				l[k] = v
			}
		}
	}
	return l
}

// podsAt are the running, pod-network pods with IPv4 address a.
func (c refCluster) podsAt(a netip.Addr) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range c.pods {
		if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if x, err := netip.ParseAddr(ip.IP); err == nil && x.Unmap().Is4() && x.Unmap() == a {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

func refProto(p *corev1.Protocol) uint8 {
	if p == nil {
		return ProtoTCP
	}
	switch *p {
	case corev1.ProtocolUDP:
		return ProtoUDP
	case corev1.ProtocolSCTP:
		return ProtoSCTP
	}
	return ProtoTCP
}

// refPorts: does a port of the rule admit (proto, port)? Named ports
// resolve against target (none: nil).
func refPorts(ports []networkingv1.NetworkPolicyPort, target *corev1.Pod, proto uint8, port uint16) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if refProto(p.Protocol) != proto {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int:
			hi := p.Port.IntVal
			if p.EndPort != nil {
				hi = *p.EndPort
			}
			if int32(port) >= p.Port.IntVal && int32(port) <= hi {
				return true
			}
		case target != nil:
			for _, c := range target.Spec.Containers {
				for _, cp := range c.Ports {
					cpProto := ProtoTCP
					if cp.Protocol != "" {
						cpProto = refProto(&cp.Protocol)
					}
					if cp.Name == p.Port.StrVal && cpProto == proto && cp.ContainerPort == int32(port) {
						return true
					}
				}
			}
		}
	}
	return false
}

func refAllowed(c refCluster, pols []*networkingv1.NetworkPolicy, pod netip.Addr, d Direction, peer netip.Addr, proto uint8, port uint16) bool {
	selected := false
	for _, self := range c.podsAt(pod) {
		for _, pol := range pols {
			if pol.Namespace != self.Namespace || !refSelects(&pol.Spec.PodSelector, self.Labels) {
				continue
			}
			types := pol.Spec.PolicyTypes
			if len(types) == 0 {
				types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
				if len(pol.Spec.Egress) > 0 {
					types = append(types, networkingv1.PolicyTypeEgress)
				}
			}
			want := networkingv1.PolicyTypeIngress
			if d == Egress {
				want = networkingv1.PolicyTypeEgress
			}
			if !slices.Contains(types, want) {
				continue
			}
			selected = true
			type rule struct {
				ports []networkingv1.NetworkPolicyPort
				peers []networkingv1.NetworkPolicyPeer
			}
			var rules []rule
			if d == Ingress {
				for _, r := range pol.Spec.Ingress {
					rules = append(rules, rule{r.Ports, r.From})
				}
			} else {
				for _, r := range pol.Spec.Egress {
					rules = append(rules, rule{r.Ports, r.To})
				}
			}
			// target: what named ports resolve against, given the
			// peer pod matched (nil: an address, not a pod).
			target := func(peerPod *corev1.Pod) *corev1.Pod {
				if d == Ingress {
					return self
				}
				return peerPod
			}
			for _, r := range rules {
				if len(r.peers) == 0 {
					if refPorts(r.ports, target(nil), proto, port) {
						return true
					}
					for _, pp := range c.podsAt(peer) {
						if refPorts(r.ports, target(pp), proto, port) {
							return true
						}
					}
				}
				for _, p := range r.peers {
					if p.IPBlock != nil {
						cidr := netip.MustParsePrefix(p.IPBlock.CIDR)
						in := cidr.Contains(peer)
						for _, x := range p.IPBlock.Except {
							if netip.MustParsePrefix(x).Contains(peer) {
								in = false
							}
						}
						if in && refPorts(r.ports, target(nil), proto, port) {
							return true
						}
						continue
					}
					for _, pp := range c.podsAt(peer) {
						if p.NamespaceSelector == nil && pp.Namespace != pol.Namespace ||
							p.NamespaceSelector != nil && !refSelects(p.NamespaceSelector, c.nsLabels(pp.Namespace)) {
							continue
						}
						if p.PodSelector != nil && !refSelects(p.PodSelector, pp.Labels) {
							continue
						}
						if refPorts(r.ports, target(pp), proto, port) {
							return true
						}
					}
				}
			}
		}
	}
	return !selected
}

// Random clusters and policies.

type gen struct {
	r        *rand.Rand
	prefixes []netip.Prefix // every cidr and except made, for probes
}

func (g *gen) pick(n int) int { return g.r.IntN(n) }

func (g *gen) labels() map[string]string {
	l := map[string]string{}
	if g.pick(4) > 0 {
		l["app"] = []string{"x", "y", "z"}[g.pick(3)]
	}
	if g.pick(2) > 0 {
		l["tier"] = []string{"1", "2"}[g.pick(2)]
	}
	return l
}

func (g *gen) selector(ns bool) *metav1.LabelSelector {
	s := &metav1.LabelSelector{}
	key, vals := "app", []string{"x", "y", "z"}
	if ns {
		key, vals = "team", []string{"a", "b"}
	}
	switch g.pick(6) {
	case 0: // empty: everything
	case 1, 2:
		s.MatchLabels = map[string]string{key: vals[g.pick(len(vals))]}
	case 3:
		if ns {
			s.MatchLabels = map[string]string{corev1.LabelMetadataName: fmt.Sprintf("ns%d", g.pick(4))}
		} else {
			s.MatchLabels = map[string]string{"tier": "1", key: vals[g.pick(len(vals))]}
		}
	default:
		ops := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}
		req := metav1.LabelSelectorRequirement{Key: key, Operator: ops[g.pick(4)]}
		if req.Operator == metav1.LabelSelectorOpIn || req.Operator == metav1.LabelSelectorOpNotIn {
			req.Values = []string{vals[g.pick(len(vals))], vals[g.pick(len(vals))]}
		}
		if !ns && g.pick(2) == 0 {
			req.Key = "tier"
			if req.Values != nil {
				req.Values = []string{"1"}
			}
		}
		s.MatchExpressions = []metav1.LabelSelectorRequirement{req}
	}
	return s
}

var (
	bases = []netip.Addr{netip.MustParseAddr("10.0.0.0"), netip.MustParseAddr("10.0.1.0"), netip.MustParseAddr("10.0.2.128"), netip.MustParseAddr("192.168.0.0")}
	lens  = []int{0, 8, 16, 22, 23, 24, 25, 26, 28, 30, 31, 32}
)

// within returns a random address of p.
func (g *gen) within(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	if p.Bits() < 32 {
		host := g.r.Uint32() & (1<<(32-p.Bits()) - 1)
		if p.Bits() < 22 { // stay mostly near the pods
			host &= 1<<10 - 1
		}
		v |= host
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func (g *gen) prefix() netip.Prefix {
	base := bases[g.pick(len(bases))]
	l := lens[g.pick(len(lens))]
	p := netip.PrefixFrom(g.within(netip.PrefixFrom(base, 22)), l).Masked()
	g.prefixes = append(g.prefixes, p)
	return p
}

func (g *gen) peer() networkingv1.NetworkPolicyPeer {
	switch g.pick(4) {
	case 0:
		cidr := g.prefix()
		b := &networkingv1.IPBlock{CIDR: cidr.String()}
		for range g.pick(3) {
			l := cidr.Bits() + g.pick(33-cidr.Bits())
			if cidr.Bits() < 22 && l < 22 && g.pick(2) == 0 {
				l = 22 + g.pick(11)
			}
			x := netip.PrefixFrom(g.within(cidr), l).Masked()
			g.prefixes = append(g.prefixes, x)
			b.Except = append(b.Except, x.String())
		}
		return networkingv1.NetworkPolicyPeer{IPBlock: b}
	case 1:
		return networkingv1.NetworkPolicyPeer{PodSelector: g.selector(false)}
	case 2:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: g.selector(true)}
	}
	return networkingv1.NetworkPolicyPeer{PodSelector: g.selector(false), NamespaceSelector: g.selector(true)}
}

func (g *gen) port() networkingv1.NetworkPolicyPort {
	var p networkingv1.NetworkPolicyPort
	switch g.pick(4) {
	case 0:
		p.Protocol = protoPtr(corev1.ProtocolUDP)
	case 1:
		if g.pick(3) == 0 {
			p.Protocol = protoPtr(corev1.ProtocolSCTP)
		}
	case 2:
		p.Protocol = protoPtr(corev1.ProtocolTCP)
	}
	switch g.pick(8) {
	case 0: // the whole protocol
	case 1:
		v := intstr.FromInt32(8000)
		p.Port, p.EndPort = &v, ptrTo(int32(8100))
	case 2, 3:
		v := intstr.FromString([]string{"http", "dns"}[g.pick(2)])
		p.Port = &v
	default:
		v := intstr.FromInt32([]int32{53, 80, 443, 8080, 9090}[g.pick(5)])
		p.Port = &v
	}
	return p
}

func (g *gen) policy(i int) *networkingv1.NetworkPolicy {
	spec := networkingv1.NetworkPolicySpec{PodSelector: *g.selector(false)}
	switch g.pick(4) {
	case 0:
		spec.PolicyTypes = ingressOnly
	case 1:
		spec.PolicyTypes = egressOnly
	case 2:
		spec.PolicyTypes = bothTypes
	}
	rule := func() ([]networkingv1.NetworkPolicyPort, []networkingv1.NetworkPolicyPeer) {
		var ports []networkingv1.NetworkPolicyPort
		var peers []networkingv1.NetworkPolicyPeer
		if g.pick(3) > 0 {
			for range 1 + g.pick(3) {
				ports = append(ports, g.port())
			}
		}
		if g.pick(4) > 0 {
			for range 1 + g.pick(3) {
				peers = append(peers, g.peer())
			}
		}
		return ports, peers
	}
	for range g.pick(4) {
		ports, peers := rule()
		spec.Ingress = append(spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: ports, From: peers})
	}
	for range g.pick(4) {
		ports, peers := rule()
		spec.Egress = append(spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: ports, To: peers})
	}
	return mkPolicy(fmt.Sprintf("ns%d", g.pick(3)), fmt.Sprintf("p%d", i), spec)
}

func (g *gen) cluster() ([]*corev1.Pod, []*corev1.Namespace) {
	var nss []*corev1.Namespace
	for i := range 3 { // ns3 has no Namespace object
		l := map[string]string{}
		if g.pick(3) > 0 {
			l["team"] = []string{"a", "b"}[g.pick(2)]
		}
		nss = append(nss, mkNS(fmt.Sprintf("ns%d", i), l))
	}
	used := map[netip.Addr]bool{}
	var pods []*corev1.Pod
	for i := range 6 + g.pick(10) {
		var ip netip.Addr
		for {
			ip = g.within(netip.PrefixFrom(bases[g.pick(3)], 24))
			if !used[ip] {
				break
			}
		}
		used[ip] = true
		var cps []corev1.ContainerPort
		for range g.pick(3) {
			cps = append(cps, cport([]string{"http", "dns"}[g.pick(2)], []int32{53, 80, 8080, 9090}[g.pick(4)],
				[]corev1.Protocol{"", corev1.ProtocolTCP, corev1.ProtocolUDP}[g.pick(3)]))
		}
		p := mkPod(fmt.Sprintf("ns%d", g.pick(4)), fmt.Sprintf("pod%d", i), ip.String(), g.labels(), cps...)
		switch g.pick(10) {
		case 0:
			p.Spec.HostNetwork = true
		case 1:
			p.Status.Phase = corev1.PodSucceeded
		}
		pods = append(pods, p)
	}
	return pods, nss
}

// TestAgainstReference compiles random policies and compares Allowed with
// the reference evaluator.
func TestAgainstReference(t *testing.T) {
	iterations := 200
	if testing.Short() {
		iterations = 50
	}
	protos := []uint8{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP}
	portsToTry := []uint16{0, 53, 80, 443, 8000, 8080, 8100, 8101, 9090}
	checked := 0
	for it := range iterations {
		g := &gen{r: rand.New(rand.NewPCG(uint64(it), 7))}
		pods, nss := g.cluster()
		var pols []*networkingv1.NetworkPolicy
		for i := range 1 + g.pick(4) {
			pols = append(pols, g.policy(i))
		}
		var local []netip.Addr
		for _, p := range pods {
			if g.pick(3) > 0 {
				local = append(local, netip.MustParseAddr(p.Status.PodIP))
			}
		}
		prog, problems := Compile(pols, pods, nss, local)
		for _, p := range problems {
			if !strings.Contains(p, "named ports cannot be resolved for an ipBlock peer") && !strings.Contains(p, "no running pod with that IP") {
				t.Errorf("iteration %d: unexpected problem %q", it, p)
			}
		}
		checkProgram(t, prog)

		peers := map[netip.Addr]bool{netip.MustParseAddr("8.8.8.8"): true, netip.MustParseAddr("0.0.0.0"): true, netip.MustParseAddr("255.255.255.255"): true}
		for _, p := range pods {
			peers[netip.MustParseAddr(p.Status.PodIP)] = true
		}
		for _, p := range g.prefixes {
			first := p.Addr()
			peers[first] = true
			peers[first.Prev()] = true
			last := first
			for range 1 << min(32-p.Bits(), 12) { // the last address, near enough for big prefixes
				last = last.Next()
			}
			peers[last.Prev()] = true
			peers[last] = true
			peers[g.within(p)] = true
		}
		c := refCluster{pods: pods, nss: nss}
		for _, pod := range local {
			for _, d := range []Direction{Ingress, Egress} {
				for peer := range peers {
					if !peer.IsValid() {
						continue
					}
					for _, proto := range protos {
						for _, port := range portsToTry {
							if proto == ProtoICMP && port != 0 {
								continue
							}
							got := prog.Allowed(pod, d, peer, proto, port)
							want := refAllowed(c, pols, pod, d, peer, proto, port)
							checked++
							if got != want {
								pfx, s, _ := prog.Lookup(pod, d, peer)
								t.Fatalf("iteration %d: pod %s %s peer %s proto %d port %d: Allowed = %v, reference %v (entry %s: %s)\npolicies:\n%s",
									it, pod, d, peer, proto, port, got, want, pfx, s, dump(pols))
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d verdicts compared", checked)
}

func dump(pols []*networkingv1.NetworkPolicy) string {
	var b strings.Builder
	for _, p := range pols {
		fmt.Fprintf(&b, "%s/%s: %s\n", p.Namespace, p.Name, p.Spec.String())
	}
	return b.String()
}
