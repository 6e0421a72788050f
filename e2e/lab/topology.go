// Package lab builds strait's lab: sites made of network namespaces, each
// with a gateway host, node hosts and pods, joined by a simulated WAN with
// configurable latency and loss.
//
// A Topology declares the sites; Plan turns it into hosts and addresses
// (pure, tested without root); Up builds it for real, starts a strait
// gateway in every gateway host and a small server in every pod; Down
// removes all of it, also after a crash, by the run ID in every name.
package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/natpool"
)

// SiteKind says what stands at a site.
type SiteKind string

const (
	// KindStrait is a cluster: a strait gateway, nodes and pods.
	KindStrait SiteKind = "strait"
	// KindWireGuard is one plain WireGuard host without strait, joined to
	// the mesh with the configuration `strait config wg-quick` prints.
	KindWireGuard SiteKind = "wireguard"
)

// Topology declares a lab.
type Topology struct {
	Name       string       `yaml:"name"`
	GlobalCIDR netip.Prefix `yaml:"globalCIDR"`
	Sites      []Site       `yaml:"sites"`
	// GlobalServices are services exported by pods of several sites
	// under one name, and declared global by one site.
	GlobalServices []GlobalService `yaml:"globalServices"`
}

// GlobalService is a service that pods of several sites export under one
// namespace and name, on the lab server's port (TCP and UDP), declared
// global (one VIP, balanced) in DeclaredBy's site file. The gateways
// balance it where the lab has a VIP range.
type GlobalService struct {
	Namespace  string   `yaml:"namespace" json:"namespace"`
	Name       string   `yaml:"name" json:"name"`
	Pods       []string `yaml:"pods" json:"pods"`
	DeclaredBy string   `yaml:"declaredBy" json:"declaredBy"`
}

// Site is one site of the lab.
type Site struct {
	Name string   `yaml:"name"`
	Kind SiteKind `yaml:"kind"`
	// PodCIDR is the site's real CIDR; node n gets its n-th /24.
	PodCIDR netip.Prefix `yaml:"podCIDR"`
	// Routable lets the mesh route PodCIDR as it is where it collides
	// with nothing (no translation, sources kept).
	Routable bool `yaml:"routable"`
	// Block is the site's block of the global CIDR; zero derives it from
	// the name, as the gateways do.
	Block       netip.Prefix `yaml:"block"`
	Nodes       int          `yaml:"nodes"`
	PodsPerNode int          `yaml:"podsPerNode"`
	// Pods sets the namespace and labels of pods by name ("pod2"); the
	// others are in namespace "default", labelled app=<name>.
	Pods map[string]PodMeta `yaml:"pods"`
	// Egress rules of the site, as in its site file.
	Egress []EgressRule `yaml:"egress"`
	WAN    WAN          `yaml:"wan"`
	// Router, when set, is a BIRD router on the site's LAN that peers
	// with the gateway over BGP, with a data center LAN behind it.
	Router *Router `yaml:"router"`
	// Kubernetes says the site is a Kubernetes cluster: in a lab with
	// Options.Kube, it runs a kube-apiserver and etcd in its gateway's
	// namespace and kube-proxy on its nodes (see kube.go).
	Kubernetes bool `yaml:"kubernetes"`
}

// PodMeta is a pod's namespace and labels.
type PodMeta struct {
	Namespace string            `yaml:"namespace" json:"namespace"`
	Labels    map[string]string `yaml:"labels" json:"labels,omitempty"`
}

// EgressRule is a site's egress rule (see siteconf).
type EgressRule struct {
	Name        string            `yaml:"name" json:"name"`
	Namespace   string            `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	PodSelector map[string]string `yaml:"podSelector,omitempty" json:"podSelector,omitempty"`
	Pool        string            `yaml:"pool,omitempty" json:"pool,omitempty"`
}

// WAN is the site's access link to the WAN router. Delay, jitter and loss
// apply in both directions, so a packet from site A to site B is delayed by
// A's latency plus B's. The lab's WAN emulator (package wanemu) applies them.
type WAN struct {
	Latency Duration `yaml:"latency"`
	Jitter  Duration `yaml:"jitter"`
	// Loss is the share of packets dropped, in percent.
	Loss float64 `yaml:"loss"`
}

// Duration reads "20ms" from YAML.
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as 20ms", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// Merger is the demo's topology: two clouds built on the same 10.0.0.0/16,
// as after a company merger, and an on-premises site on 192.168.0.0/16, each
// behind a strait gateway, a few milliseconds of WAN apart. cloud-a and
// onprem do not collide and are routable: between them, addresses stay
// real. cloud-b collides with cloud-a: its traffic is translated. In
// cloud-a, pod2 runs in namespace payments, whose traffic leaves by an
// egress address of its own; in cloud-b, pods labelled app=batch do.
func Merger() Topology {
	return Topology{
		Name:       "merger",
		GlobalCIDR: netip.MustParsePrefix(natpool.DefaultGlobalCIDR),
		Sites: []Site{
			{Name: "cloud-a", PodCIDR: pfx("10.0.0.0/16"), Routable: true, Block: pfx("242.0.0.0/16"), Nodes: 2, PodsPerNode: 1,
				Pods:   map[string]PodMeta{"pod2": {Namespace: "payments", Labels: map[string]string{"app": "api"}}},
				Egress: []EgressRule{{Name: "payments", Namespace: "payments"}},
				WAN:    WAN{Latency: Duration(2 * time.Millisecond)}, Kubernetes: true},
			{Name: "cloud-b", PodCIDR: pfx("10.0.0.0/16"), Block: pfx("242.1.0.0/16"), Nodes: 2, PodsPerNode: 1,
				Pods:   map[string]PodMeta{"pod2": {Namespace: "default", Labels: map[string]string{"app": "batch"}}},
				Egress: []EgressRule{{Name: "batch", PodSelector: map[string]string{"app": "batch"}}},
				WAN:    WAN{Latency: Duration(2 * time.Millisecond)}, Kubernetes: true},
			{Name: "onprem", PodCIDR: pfx("192.168.0.0/16"), Routable: true, Block: pfx("242.2.0.0/16"), Nodes: 1, PodsPerNode: 1, WAN: WAN{Latency: Duration(5 * time.Millisecond)},
				Router: &Router{ASN: 64513, GatewayASN: 64512, LAN: pfx("172.16.10.0/24"),
					// The data center's own summary of 10/8, a default route, a prefix longer than the filter takes.
					Bogus:  []netip.Prefix{pfx("10.0.0.0/8"), pfx("0.0.0.0/0"), pfx("172.16.99.128/25")},
					Import: []PrefixRuleDoc{{Prefix: "172.16.0.0/12", MaxLength: 24}},
					// The mesh's global addresses and the real CIDRs routed as they are (cloud-a's).
					Export: []PrefixRuleDoc{{Prefix: "242.0.0.0/8", MaxLength: 32}, {Prefix: "10.0.0.0/8", MaxLength: 16}}}},
		},
		GlobalServices: []GlobalService{{Namespace: "default", Name: "web", Pods: []string{"cloud-a-pod1", "cloud-b-pod1"}, DeclaredBy: "onprem"}},
	}
}

// Pair is two clouds on the same CIDR, one node and one pod each, and no
// WAN impairment: the benchmark topology.
func Pair() Topology {
	return Topology{
		Name:       "pair",
		GlobalCIDR: netip.MustParsePrefix(natpool.DefaultGlobalCIDR),
		Sites: []Site{
			{Name: "cloud-a", PodCIDR: pfx("10.0.0.0/16"), Block: pfx("242.0.0.0/16"), Nodes: 1, PodsPerNode: 1, Kubernetes: true},
			{Name: "cloud-b", PodCIDR: pfx("10.0.0.0/16"), Block: pfx("242.1.0.0/16"), Nodes: 1, PodsPerNode: 1, Kubernetes: true},
		},
	}
}

// Builtin returns a topology by name.
func Builtin(name string) (Topology, bool) {
	switch name {
	case "merger":
		return Merger(), true
	case "pair":
		return Pair(), true
	}
	return Topology{}, false
}

// LoadTopology reads a topology from a YAML file.
func LoadTopology(path string) (Topology, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Topology{}, fmt.Errorf("lab: %w", err)
	}
	var t Topology
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&t); err != nil {
		return Topology{}, fmt.Errorf("lab: topology %s: %w", path, err)
	}
	if !t.GlobalCIDR.IsValid() {
		t.GlobalCIDR = netip.MustParsePrefix(natpool.DefaultGlobalCIDR)
	}
	return t, nil
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// Roles of hosts.
const (
	RoleWAN     = "wan"     // the WAN router
	RoleSwitch  = "switch"  // a site's LAN switch
	RoleGateway = "gateway" // a strait gateway
	RoleNode    = "node"    // a cluster node
	RolePod     = "pod"     // a pod on a node
	RolePlain   = "plain"   // a plain WireGuard host (a site of KindWireGuard)
)

// Host is one network namespace of the lab.
type Host struct {
	Name string `json:"name"` // such as "cloud-a-pod1"
	Site string `json:"site,omitempty"`
	Role string `json:"role"`
	NS   string `json:"ns"`
	// Addr is the host's own address: a pod's pod IP, a node's or a
	// gateway's LAN address, a plain host's mesh address.
	Addr netip.Addr `json:"addr,omitzero"`
	// Global is the address of the service a pod exports (its site's
	// gateway allocates it), or a plain host's own address: where sites
	// reach the host when they cannot use Addr.
	Global netip.Addr `json:"global,omitzero"`
	// Egress is the address a pod's traffic leaves its site as, where it
	// is translated.
	Egress netip.Addr `json:"egress,omitzero"`
	// WAN is the gateway's or plain host's address on the WAN.
	WAN netip.Addr `json:"wan,omitzero"`
	// Node is the node a pod runs on; PodCIDR the pods' /24 of a node.
	Node    string       `json:"node,omitempty"`
	PodCIDR netip.Prefix `json:"podCIDR,omitzero"`
	// PodNamespace and Labels of a pod.
	PodNamespace string            `json:"podNamespace,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
	// Index numbers the host among its kind: the site's index for
	// gateways and plain hosts, 1.. for nodes and pods.
	Index int `json:"index"`
}

// Service is the name of the service a pod exports: the pod's own name.
func (h Host) Service() string { return h.Name }

// Addressing of the lab's underlay. Every site's LAN uses the same subnet,
// as real sites would. The WAN is a router with one link per site: site i
// has 198.18.i.0/24 (RFC 2544's benchmarking range), the router .1, the
// site's edge .2.
var (
	wanBits   = 24
	lanNet    = pfx("172.31.0.0/24")
	podGW     = netip.MustParseAddr("169.254.1.1") // pods' link-local default gateway
	lanGWAddr = netip.MustParseAddr("172.31.0.1")
)

// ServePort is where every pod's lab server listens (TCP and UDP).
const ServePort = 7777

var runRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// ValidRun checks a run ID: 1 to 8 lowercase letters and digits, so that
// names built from it fit interface names and never prefix one another.
func ValidRun(run string) error {
	if !runRE.MatchString(run) {
		return fmt.Errorf("lab: run ID %q: want 1 to 8 lowercase letters or digits", run)
	}
	return nil
}

// Plan lays out the hosts of a topology for a run: names, namespaces and
// addresses. It validates the topology.
func Plan(t Topology, run string) (_ []Host, err error) {
	if err := ValidRun(run); err != nil {
		return nil, err
	}
	if len(t.Sites) == 0 {
		return nil, fmt.Errorf("lab: topology %q has no sites", t.Name)
	}
	if len(t.Sites) > 200 {
		return nil, fmt.Errorf("lab: topology %q has %d sites; the WAN holds 200", t.Name, len(t.Sites))
	}
	ns := func(host string) string { return fmt.Sprintf("strait-%s-%s", run, host) }
	hosts := []Host{{Name: "wan", Role: RoleWAN, NS: ns("wan")}}
	seen := map[string]bool{}
	for i, s := range t.Sites {
		if s.Kind == KindWireGuard && s.PodCIDR.IsValid() {
			return nil, fmt.Errorf("lab: site %s: a plain WireGuard host has no pod CIDR", s.Name)
		}
		if !siteRE.MatchString(s.Name) {
			return nil, fmt.Errorf("lab: site %q: want 1 to 15 lowercase letters, digits or '-'", s.Name)
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("lab: site %q appears twice", s.Name)
		}
		seen[s.Name] = true
		if !s.Block.IsValid() {
			if s.Block, err = natpool.DeriveBlock(t.GlobalCIDR, natpool.DefaultBlockBits, s.Name); err != nil {
				return nil, fmt.Errorf("lab: site %s: %w", s.Name, err)
			}
		}
		if !natpool.Contains(t.GlobalCIDR, s.Block) {
			return nil, fmt.Errorf("lab: site %s: block %s is not inside the global CIDR %s", s.Name, s.Block, t.GlobalCIDR)
		}
		wanAddr := wanAddr(i, 2)
		switch s.Kind {
		case KindWireGuard:
			addr := s.Block.Addr().Next()
			hosts = append(hosts, Host{Name: s.Name + "-host", Site: s.Name, Role: RolePlain, NS: ns(s.Name + "-host"),
				Addr: addr, Global: addr, WAN: wanAddr, Index: i})
			continue
		case KindStrait, "":
		default:
			return nil, fmt.Errorf("lab: site %s: unknown kind %q (want strait or wireguard)", s.Name, s.Kind)
		}
		if !s.PodCIDR.IsValid() || !s.PodCIDR.Addr().Is4() || s.PodCIDR.Masked() != s.PodCIDR {
			return nil, fmt.Errorf("lab: site %s: pod CIDR %s is not a masked IPv4 prefix", s.Name, s.PodCIDR)
		}
		if s.PodCIDR.Overlaps(t.GlobalCIDR) {
			return nil, fmt.Errorf("lab: site %s: pod CIDR %s overlaps the global CIDR %s", s.Name, s.PodCIDR, t.GlobalCIDR)
		}
		nodes, ppn := max(s.Nodes, 1), max(s.PodsPerNode, 1)
		if s.PodCIDR.Bits() > 23 || nodes > 200 || ppn > 200 || nodes+1 > 1<<(24-s.PodCIDR.Bits()) {
			return nil, fmt.Errorf("lab: site %s: %d nodes of %d pods do not fit: each node takes a /24 of %s", s.Name, nodes, ppn, s.PodCIDR)
		}
		hosts = append(hosts,
			Host{Name: s.Name + "-lan", Site: s.Name, Role: RoleSwitch, NS: ns(s.Name + "-lan")},
			Host{Name: s.Name + "-gw", Site: s.Name, Role: RoleGateway, NS: ns(s.Name + "-gw"), Addr: lanGWAddr, WAN: wanAddr, Index: i},
		)
		pod := 0
		for n := 1; n <= nodes; n++ {
			lan := lanNet.Addr().As4()
			lan[3] = byte(10 + n)
			base := s.PodCIDR.Addr().As4()
			base[2] += byte(n) // the n-th /24 of the pod CIDR
			nodeCIDR := netip.PrefixFrom(netip.AddrFrom4(base), 24)
			node := Host{Name: fmt.Sprintf("%s-node%d", s.Name, n), Site: s.Name, Role: RoleNode,
				Addr: netip.AddrFrom4(lan), PodCIDR: nodeCIDR, Index: n}
			node.NS = ns(node.Name)
			hosts = append(hosts, node)
			for j := 1; j <= ppn; j++ {
				pod++
				a := base
				a[3] = byte(9 + j)
				short := fmt.Sprintf("pod%d", pod)
				h := Host{Name: s.Name + "-" + short, Site: s.Name, Role: RolePod,
					Addr: netip.AddrFrom4(a), Node: node.Name, Index: pod,
					PodNamespace: "default", Labels: map[string]string{"app": short}}
				if m, ok := s.Pods[short]; ok {
					h.PodNamespace, h.Labels = m.Namespace, m.Labels
				}
				h.NS = ns(h.Name)
				hosts = append(hosts, h)
			}
		}
		if s.Router != nil {
			if err := checkRouter(s, t.GlobalCIDR); err != nil {
				return nil, err
			}
			hosts = append(hosts, routerHosts(s, ns)...)
		}
	}
	return hosts, nil
}

// checkGlobalServices validates the topology's global services against
// its hosts.
func checkGlobalServices(t Topology, hosts []Host) error {
	for _, g := range t.GlobalServices {
		if g.Namespace == "" || g.Name == "" {
			return fmt.Errorf("lab: global service %s/%s: namespace and name are required", g.Namespace, g.Name)
		}
		if _, ok := t.siteOf(g.DeclaredBy); !ok {
			return fmt.Errorf("lab: global service %s/%s: declaredBy %q is not a site", g.Namespace, g.Name, g.DeclaredBy)
		}
		sites := map[string]string{}
		for _, p := range g.Pods {
			i := slices.IndexFunc(hosts, func(h Host) bool { return h.Name == p && h.Role == RolePod })
			if i < 0 {
				return fmt.Errorf("lab: global service %s/%s: %q is not a pod of the topology", g.Namespace, g.Name, p)
			}
			if other, dup := sites[hosts[i].Site]; dup {
				return fmt.Errorf("lab: global service %s/%s: %s and %s are both in %s; a site exports a service once", g.Namespace, g.Name, other, p, hosts[i].Site)
			}
			sites[hosts[i].Site] = p
		}
	}
	return nil
}

var siteRE = regexp.MustCompile(`^[a-z0-9][-a-z0-9]{0,14}$`)

// Endpoints returns the hosts that send and receive test traffic: pods and
// plain WireGuard hosts.
func Endpoints(hosts []Host) []Host {
	var out []Host
	for _, h := range hosts {
		if h.Role == RolePod || h.Role == RolePlain {
			out = append(out, h)
		}
	}
	return out
}

// wanAddr is host h (1: router, 2: site edge) on the WAN link of site i.
func wanAddr(i, h int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(i), byte(h)})
}

// TunnelInterface is the WireGuard device name of the site with index i in
// a run. Userspace devices share /var/run/wireguard across namespaces, so
// the name carries the run ID.
func TunnelInterface(run string, i int) string {
	return fmt.Sprintf("wg-%s-%d", run, i)
}

// Resolve fills in what the topology leaves to derivation: blocks from the
// site names, as the gateways derive them.
func (t Topology) Resolve() (Topology, error) {
	out := t
	out.Sites = slices.Clone(t.Sites)
	for i := range out.Sites {
		if !out.Sites[i].Block.IsValid() {
			b, err := natpool.DeriveBlock(t.GlobalCIDR, natpool.DefaultBlockBits, out.Sites[i].Name)
			if err != nil {
				return Topology{}, err
			}
			out.Sites[i].Block = b
		}
	}
	return out, nil
}

// PlanSite is a site as the address plan sees it.
func (s Site) PlanSite() natpool.Site {
	ps := natpool.Site{Name: s.Name, Block: s.Block, Routable: s.Routable}
	if s.PodCIDR.IsValid() {
		ps.CIDRs = []netip.Prefix{s.PodCIDR}
	}
	if s.Router != nil {
		// The data center's LAN: the gateway learns it by BGP.
		ps.CIDRs = append(ps.CIDRs, s.Router.LAN)
	}
	return ps
}

// siteOf returns a site of the (resolved) topology.
func (t Topology) siteOf(name string) (Site, bool) {
	for _, s := range t.Sites {
		if s.Name == name {
			return s, true
		}
	}
	return Site{}, false
}

// realPath reports whether traffic from site a to site b keeps its real
// addresses (natpool.RealPath), and reach whether a routes b's real CIDR.
func (t Topology) realPath(a, b string) (real, reach bool) {
	sa, _ := t.siteOf(a)
	sb, _ := t.siteOf(b)
	real = natpool.RealPath(sa.PlanSite(), sb.PlanSite())
	reach = len(natpool.RoutedTo(sa.PlanSite(), sb.PlanSite())) > 1
	return real, reach
}

// Target is the address src uses to reach dst: dst's own address inside
// its site and wherever dst's site routes its real CIDR to src's, else the
// address of the service dst exports.
func (t Topology) Target(src, dst Host) netip.Addr {
	if src.Site == dst.Site || dst.Role == RolePlain {
		return dst.Addr
	}
	if _, reach := t.realPath(src.Site, dst.Site); reach {
		return dst.Addr
	}
	return dst.Global
}

// SeenAs is the source address dst sees a connection from src come from:
// src's own where traffic keeps its real addresses, else src's egress
// address.
func (t Topology) SeenAs(src, dst Host) netip.Addr {
	if src.Site == dst.Site || src.Role == RolePlain {
		return src.Addr
	}
	if real, _ := t.realPath(src.Site, dst.Site); real {
		return src.Addr
	}
	return src.Egress
}
