package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Compile compiles policies for the local pods, whose IPs (IPv4 only for
// now) are local, into a Program. pods and namespaces are the cluster's,
// for the selectors: a pod is a peer or a local pod when it has an IPv4
// address (status.podIPs, else status.podIP), is not on the host network
// and has not Succeeded or Failed. A namespace missing from namespaces has
// only its kubernetes.io/metadata.name label.
//
// The second result lists, sorted and human-readable, what could not be
// compiled, each naming its policy (namespace/name). Whatever is skipped
// is skipped closed: it allows less, never more. In particular:
//   - an invalid selector, cidr or port, or an IPv6 ipBlock: the peer or
//     port is left out (a rule whose ports are all left out allows
//     nothing; a policy with an invalid podSelector is left out);
//   - a named port of an egress rule resolves against each peer pod (its
//     container ports of that name and protocol) and so applies to pod
//     peers only: for an ipBlock peer it is left out, with a problem; for
//     a rule without peers it applies to the cluster's pods (per pod), not
//     to other addresses;
//   - a named port of an ingress rule resolves against the local pod;
//   - a union of more than MaxRanges ranges keeps the first MaxRanges.
//
// NetworkPolicy cannot express ICMP: a rule without ports allows every
// protocol (Any), ICMP too; a rule with ports allows only their protocols.
func Compile(policies []*networkingv1.NetworkPolicy, pods []*corev1.Pod, namespaces []*corev1.Namespace, local []netip.Addr) (Program, []string) {
	c := &compiler{problems: map[string]bool{}, nsLabels: map[string]labels.Set{}, byIP: map[netip.Addr][]*podInfo{}}
	for _, ns := range namespaces {
		if ns == nil {
			continue
		}
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		if _, ok := l[corev1.LabelMetadataName]; !ok {
			l[corev1.LabelMetadataName] = ns.Name
		}
		c.nsLabels[ns.Name] = l
	}
	for _, p := range pods {
		if pi := c.podInfo(p); pi != nil {
			c.pods = append(c.pods, pi)
			for _, ip := range pi.ips {
				c.byIP[ip] = append(c.byIP[ip], pi)
			}
		}
	}
	var cps []*cpolicy
	for _, np := range policies {
		if np == nil {
			continue
		}
		if cp := c.compilePolicy(np); cp != nil {
			cps = append(cps, cp)
		}
	}

	prog := Program{Enforced: map[PodDir]bool{}, Entries: map[Entry]PortSet{}}
	done := map[netip.Addr]bool{}
	for _, ip := range local {
		ip = ip.Unmap()
		if done[ip] {
			continue
		}
		done[ip] = true
		if !ip.Is4() {
			c.problemf("local pod %s: only IPv4 pods are enforced; not enforced", ip)
			continue
		}
		owners := c.byIP[ip]
		switch len(owners) {
		case 0:
			c.problemf("local pod %s: no running pod with that IP is known; not enforced", ip)
			continue
		case 1:
		default:
			c.problemf("local pod %s: several running pods have that IP (%s); enforcing the policies of all of them", ip, podNames(owners))
		}
		for _, d := range []Direction{Ingress, Egress} {
			var gs grants
			enforced := false
			for _, o := range owners {
				for _, cp := range cps {
					if !cp.dirs[d] || cp.ns != o.ns || !cp.sel.Matches(o.labels) {
						continue
					}
					enforced = true
					for _, r := range cp.rules[d] {
						c.ruleGrants(&gs, cp, r, d, o)
					}
				}
			}
			if enforced {
				prog.Enforced[PodDir{Pod: ip, Dir: d}] = true
				c.emit(&prog, ip, d, gs, owners)
			}
		}
	}
	out := make([]string, 0, len(c.problems))
	for p := range c.problems {
		out = append(out, p)
	}
	sort.Strings(out)
	return prog, out
}

type compiler struct {
	problems map[string]bool
	nsLabels map[string]labels.Set
	pods     []*podInfo
	byIP     map[netip.Addr][]*podInfo
}

func (c *compiler) problemf(format string, args ...any) {
	c.problems[fmt.Sprintf(format, args...)] = true
}

type namedPort struct {
	name  string
	proto uint8
}

type podInfo struct {
	ns, name string
	labels   labels.Set
	ips      []netip.Addr
	ports    map[namedPort][]uint16 // container ports by name and protocol
}

func (p *podInfo) String() string { return p.ns + "/" + p.name }

func podNames(ps []*podInfo) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// podInfo returns what the selectors need of p, or nil when p is not a
// possible peer or local pod.
func (c *compiler) podInfo(p *corev1.Pod) *podInfo {
	if p == nil || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	pi := &podInfo{ns: p.Namespace, name: p.Name, labels: labels.Set(p.Labels), ports: map[namedPort][]uint16{}}
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		if a = a.Unmap(); a.Is4() && !slices.Contains(pi.ips, a) {
			pi.ips = append(pi.ips, a)
		}
	}
	for _, ip := range p.Status.PodIPs {
		add(ip.IP)
	}
	if len(p.Status.PodIPs) == 0 {
		add(p.Status.PodIP)
	}
	if len(pi.ips) == 0 {
		return nil
	}
	addPorts := func(ct corev1.Container) {
		for _, cp := range ct.Ports {
			if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			proto, ok := protoNumber(cp.Protocol)
			if !ok {
				continue
			}
			k := namedPort{cp.Name, proto}
			pi.ports[k] = append(pi.ports[k], uint16(cp.ContainerPort))
		}
	}
	for _, ct := range p.Spec.Containers {
		addPorts(ct)
	}
	for _, ct := range p.Spec.InitContainers { // sidecars run alongside
		if ct.RestartPolicy != nil && *ct.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			addPorts(ct)
		}
	}
	return pi
}

func (c *compiler) namespaceLabels(ns string) labels.Set {
	if l, ok := c.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{corev1.LabelMetadataName: ns}
}

func protoNumber(p corev1.Protocol) (uint8, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return ProtoTCP, true
	case corev1.ProtocolUDP:
		return ProtoUDP, true
	case corev1.ProtocolSCTP:
		return ProtoSCTP, true
	}
	return 0, false
}

// cpolicy is a NetworkPolicy with its selectors evaluated.
type cpolicy struct {
	name  string // namespace/name
	ns    string
	sel   labels.Selector
	dirs  [2]bool
	rules [2][]*crule
}

type portSpec struct {
	proto  uint8
	lo, hi uint16
	name   string // a named port; lo and hi unused
}

type block struct {
	cidr   netip.Prefix
	except []netip.Prefix // those within cidr
}

// crule is a rule with its peers resolved.
type crule struct {
	anyPort  bool       // no ports listed
	ports    []portSpec // the valid ones
	named    bool       // some of ports are named
	allPeers bool       // no peers listed
	pods     []*podInfo
	blocks   []block
}

func (c *compiler) compilePolicy(np *networkingv1.NetworkPolicy) *cpolicy {
	cp := &cpolicy{name: np.Namespace + "/" + np.Name, ns: np.Namespace}
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		c.problemf("policy %s: podSelector: %v; policy left out", cp.name, err)
		return nil
	}
	cp.sel = sel
	if len(np.Spec.PolicyTypes) == 0 {
		cp.dirs[Ingress] = true
		cp.dirs[Egress] = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			cp.dirs[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			cp.dirs[Egress] = true
		default:
			c.problemf("policy %s: unknown policyType %q ignored", cp.name, t)
		}
	}
	if cp.dirs[Ingress] {
		for i, r := range np.Spec.Ingress {
			cp.rules[Ingress] = append(cp.rules[Ingress], c.compileRule(cp, Ingress, i, r.Ports, r.From))
		}
	}
	if cp.dirs[Egress] {
		for i, r := range np.Spec.Egress {
			cp.rules[Egress] = append(cp.rules[Egress], c.compileRule(cp, Egress, i, r.Ports, r.To))
		}
	}
	return cp
}

func (c *compiler) compileRule(cp *cpolicy, d Direction, i int, ports []networkingv1.NetworkPolicyPort, peers []networkingv1.NetworkPolicyPeer) *crule {
	where := fmt.Sprintf("policy %s: %s rule %d", cp.name, d, i)
	r := &crule{anyPort: len(ports) == 0, allPeers: len(peers) == 0}
	for j, p := range ports {
		ps, err := portSpecOf(p)
		if err != nil {
			c.problemf("%s: port %d: %v; port left out", where, j, err)
			continue
		}
		r.ports = append(r.ports, ps)
		r.named = r.named || ps.name != ""
	}
	seen := map[*podInfo]bool{}
	for j, p := range peers {
		if p.IPBlock != nil {
			if p.PodSelector != nil || p.NamespaceSelector != nil {
				c.problemf("%s: peer %d: ipBlock with a selector; peer left out", where, j)
				continue
			}
			b, err := blockOf(p.IPBlock)
			if err != nil {
				c.problemf("%s: peer %d: %v; peer left out", where, j, err)
				continue
			}
			r.blocks = append(r.blocks, b)
			if d == Egress && r.named {
				c.problemf("%s: peer %d: named ports cannot be resolved for an ipBlock peer; they are left out for it", where, j)
			}
			continue
		}
		if p.PodSelector == nil && p.NamespaceSelector == nil {
			c.problemf("%s: peer %d: no podSelector, namespaceSelector or ipBlock; peer left out", where, j)
			continue
		}
		var podSel, nsSel labels.Selector
		var err error
		if p.PodSelector != nil {
			if podSel, err = metav1.LabelSelectorAsSelector(p.PodSelector); err != nil {
				c.problemf("%s: peer %d: podSelector: %v; peer left out", where, j, err)
				continue
			}
		}
		if p.NamespaceSelector != nil {
			if nsSel, err = metav1.LabelSelectorAsSelector(p.NamespaceSelector); err != nil {
				c.problemf("%s: peer %d: namespaceSelector: %v; peer left out", where, j, err)
				continue
			}
		}
		for _, pi := range c.pods {
			if nsSel == nil && pi.ns != cp.ns || nsSel != nil && !nsSel.Matches(c.namespaceLabels(pi.ns)) {
				continue
			}
			if podSel != nil && !podSel.Matches(pi.labels) {
				continue
			}
			if !seen[pi] {
				seen[pi] = true
				r.pods = append(r.pods, pi)
			}
		}
	}
	return r
}

func portSpecOf(p networkingv1.NetworkPolicyPort) (portSpec, error) {
	var ps portSpec
	proto := corev1.ProtocolTCP
	if p.Protocol != nil {
		proto = *p.Protocol
	}
	n, ok := protoNumber(proto)
	if !ok {
		return ps, fmt.Errorf("unsupported protocol %q", proto)
	}
	ps.proto = n
	switch {
	case p.Port == nil:
		if p.EndPort != nil {
			return ps, fmt.Errorf("endPort without port")
		}
		ps.lo, ps.hi = 0, 65535
	case p.Port.Type == intstr.String:
		if p.EndPort != nil {
			return ps, fmt.Errorf("endPort with named port %q", p.Port.StrVal)
		}
		if p.Port.StrVal == "" {
			return ps, fmt.Errorf("empty port name")
		}
		ps.name = p.Port.StrVal
	default:
		v := p.Port.IntVal
		if v < 1 || v > 65535 {
			return ps, fmt.Errorf("port %d out of range", v)
		}
		end := v
		if p.EndPort != nil {
			end = *p.EndPort
			if end < v || end > 65535 {
				return ps, fmt.Errorf("endPort %d invalid for port %d", end, v)
			}
		}
		ps.lo, ps.hi = uint16(v), uint16(end)
	}
	return ps, nil
}

func blockOf(b *networkingv1.IPBlock) (block, error) {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil {
		return block{}, fmt.Errorf("ipBlock cidr %q: %v", b.CIDR, err)
	}
	if !cidr.Addr().Is4() {
		return block{}, fmt.Errorf("ipBlock %s: IPv6 is not supported", b.CIDR)
	}
	bl := block{cidr: cidr.Masked()}
	for _, s := range b.Except {
		x, err := netip.ParsePrefix(s)
		if err != nil {
			return block{}, fmt.Errorf("ipBlock %s: except %q: %v", b.CIDR, s, err)
		}
		if x = x.Masked(); x.Addr().Is4() && x.Bits() >= bl.cidr.Bits() && bl.cidr.Contains(x.Addr()) {
			bl.except = append(bl.except, x)
		}
	}
	return bl, nil
}

// grant says that the addresses of pfx but not of except may use ports.
type grant struct {
	pfx    netip.Prefix
	except []netip.Prefix
	ports  PortSet // not normalized
	policy string
}

type grants []grant

func (gs *grants) add(pfx netip.Prefix, except []netip.Prefix, ports PortSet, policy string) {
	if ports.Empty() {
		return
	}
	*gs = append(*gs, grant{pfx: pfx, except: except, ports: ports, policy: policy})
}

// portsFor is what r's ports allow: the numeric ones, and the named ones
// resolved against target (none when target is nil).
func (r *crule) portsFor(target *podInfo) PortSet {
	if r.anyPort {
		return PortSet{Any: true}
	}
	var rs []PortRange
	for _, p := range r.ports {
		if p.name == "" {
			rs = append(rs, PortRange{Proto: p.proto, Lo: p.lo, Hi: p.hi})
			continue
		}
		if target == nil {
			continue
		}
		for _, n := range target.ports[namedPort{p.name, p.proto}] {
			rs = append(rs, PortRange{Proto: p.proto, Lo: n, Hi: n})
		}
	}
	return PortSet{Ranges: rs}
}

var everything = netip.PrefixFrom(netip.IPv4Unspecified(), 0)

// ruleGrants adds what rule r of cp allows local pod self in direction d.
func (c *compiler) ruleGrants(gs *grants, cp *cpolicy, r *crule, d Direction, self *podInfo) {
	if d == Ingress {
		ports := r.portsFor(self)
		if r.allPeers {
			gs.add(everything, nil, ports, cp.name)
		}
		for _, p := range r.pods {
			for _, ip := range p.ips {
				gs.add(netip.PrefixFrom(ip, 32), nil, ports, cp.name)
			}
		}
		for _, b := range r.blocks {
			gs.add(b.cidr, b.except, ports, cp.name)
		}
		return
	}
	numeric := r.portsFor(nil)
	if r.allPeers {
		gs.add(everything, nil, numeric, cp.name)
		if r.named {
			for _, p := range c.pods {
				ports := r.portsFor(p)
				for _, ip := range p.ips {
					gs.add(netip.PrefixFrom(ip, 32), nil, ports, cp.name)
				}
			}
		}
	}
	for _, p := range r.pods {
		ports := numeric
		if r.named {
			ports = r.portsFor(p)
		}
		for _, ip := range p.ips {
			gs.add(netip.PrefixFrom(ip, 32), nil, ports, cp.name)
		}
	}
	for _, b := range r.blocks {
		gs.add(b.cidr, b.except, numeric, cp.name)
	}
}

// excepted says whether one of g's excepts contains e.
func (g *grant) excepted(e netip.Prefix) bool {
	for _, x := range g.except {
		if x.Bits() <= e.Bits() && x.Contains(e.Addr()) {
			return true
		}
	}
	return false
}

// emit puts the entries of (pod, d) for gs into prog.
func (c *compiler) emit(prog *Program, pod netip.Addr, d Direction, gs grants, owners []*podInfo) {
	byPfx := map[netip.Prefix][]int{}
	cands := map[netip.Prefix]bool{}
	var grantLen, candLen [33]bool
	for i, g := range gs {
		byPfx[g.pfx] = append(byPfx[g.pfx], i)
		grantLen[g.pfx.Bits()] = true
		cands[g.pfx] = true
		candLen[g.pfx.Bits()] = true
		for _, x := range g.except {
			cands[x] = true
			candLen[x.Bits()] = true
		}
	}
	var lens []int
	for l, ok := range grantLen {
		if ok {
			lens = append(lens, l)
		}
	}

	sets := make(map[netip.Prefix]PortSet, len(cands))
	var overflow []netip.Prefix
	overPolicies := map[string]bool{}
	var rs []PortRange
	for e := range cands {
		any := false
		rs = rs[:0]
		for _, l := range lens {
			if l > e.Bits() {
				break
			}
			for _, i := range byPfx[netip.PrefixFrom(e.Addr(), l).Masked()] {
				g := &gs[i]
				if g.excepted(e) {
					continue
				}
				any = any || g.ports.Any
				if !any {
					rs = append(rs, g.ports.Ranges...)
				}
			}
		}
		s := normalize(any, rs)
		if len(s.Ranges) > MaxRanges {
			s.Ranges = s.Ranges[:MaxRanges:MaxRanges]
			overflow = append(overflow, e)
			for _, l := range lens {
				if l > e.Bits() {
					break
				}
				for _, i := range byPfx[netip.PrefixFrom(e.Addr(), l).Masked()] {
					if !gs[i].excepted(e) {
						overPolicies[gs[i].policy] = true
					}
				}
			}
		}
		sets[e] = s
	}
	if len(overflow) > 0 {
		slices.SortFunc(overflow, func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
		names := make([]string, 0, len(overPolicies))
		for n := range overPolicies {
			names = append(names, n)
		}
		sort.Strings(names)
		c.problemf("policy %s: pod %s (%s) %s: %d peer prefixes (such as %s) are allowed more than %d port ranges; the ranges past the first %d are denied",
			strings.Join(names, ", "), podNames(owners), pod, d, len(overflow), overflow[0], MaxRanges, MaxRanges)
	}

	// Leave out what changes no lookup: an entry equal to its nearest
	// less specific candidate (or empty without one) gives the same
	// answer as that candidate would without it.
	for e, s := range sets {
		var parent PortSet
		for l := e.Bits() - 1; l >= 0; l-- {
			if !candLen[l] {
				continue
			}
			if ps, ok := sets[netip.PrefixFrom(e.Addr(), l).Masked()]; ok {
				parent = ps
				break
			}
		}
		if s.Equal(parent) {
			continue
		}
		prog.Entries[Entry{Pod: pod, Dir: d, Peer: e}] = s
	}
}
