package gateway

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/kubesource"
	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/bgp"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/siteconf"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/natpool"
)

// desired is what a gateway brings its host to for one mesh configuration
// and one site file, before addresses are allocated.
type desired struct {
	tunnel tunnel.Config
	iface  string
	// block, pools, requests: what to allocate, from where.
	block    netip.Prefix
	pools    []natpool.Pool
	requests []natpool.Request
	holdDown time.Duration
	// services, egress: what to translate once allocated.
	services   []siteconf.Service
	egressPods map[netip.Addr]string // pod to egress rule
	cidrs      []netip.Prefix
	translated []netip.Prefix
	// pairs is how traffic flows between every two sites of the mesh.
	pairs []natpool.Pair
	// self is this site, as the mesh file (and the catalog) know it;
	// discovery the mesh file's discovery section, if any.
	self      meshconf.Site
	discovery *meshconf.Discovery
	// exports are the services published in the catalog, without their
	// ingress addresses (allocated later); problems say which inputs
	// were left out, and why.
	exports  []catalog.Service
	problems []string
	// lb and fw are the mesh file's loadBalancer and firewall sections;
	// globalServices and policies what this site declares for the mesh
	// (site file, then Kubernetes objects), without allocated VIPs.
	lb             *meshconf.LoadBalancer
	fw             *meshconf.Firewall
	globalServices []meshpolicy.GlobalService
	policies       []meshpolicy.Policy
	// egressRules are the site's egress rules, whose addresses tell
	// other sites' firewalls its namespaces apart.
	egressRules []natpool.EgressRule
	// mesh is the mesh, learned sites included, for the firewall's view
	// of the other clusters.
	mesh *meshconf.Mesh
	// bgp is the site file's bgp section, if any.
	bgp *bgp.Config
	// meshData and siteData are the files it was derived from: with
	// other inputs, they derive the next configuration while the files
	// on disk are refused.
	meshData, siteData []byte
}

// derive computes the desired state of site self. It refuses a mesh in
// which self is missing or holds another public key than this gateway's
// (applying it would cut the site off), and a site file that does not fit
// the site.
func derive(m *meshconf.Mesh, sc *siteconf.Config, self string, key wgtypes.Key, iface string, mtu int) (desired, error) {
	me, ok := m.Site(self)
	if !ok {
		return desired{}, fmt.Errorf("site %q is not in the mesh configuration (sites: %s)", self, m.SiteNames())
	}
	if pub := key.PublicKey(); me.PublicKey != pub {
		return desired{}, fmt.Errorf("site %q (line %d) has publicKey %s, but this gateway's key is %s: "+
			"put this gateway's public key in the mesh configuration (`strait-gateway keygen` prints it)", self, me.Line, me.PublicKey, pub)
	}
	if err := sc.Check(self, me.Block, me.CIDRs, []netip.Addr{me.TunnelAddr()}); err != nil {
		return desired{}, err
	}
	d := desired{
		tunnel: tunnel.Config{
			PrivateKey: key,
			ListenPort: me.ListenPort,
			MTU:        mtu,
			Address:    me.TunnelAddr(),
			Mesh:       m.GlobalCIDR,
		},
		iface:     iface,
		block:     me.Block,
		pools:     sc.EffectivePools(me.Block),
		holdDown:  sc.HoldDown,
		services:  slices.Clone(sc.Services),
		cidrs:     me.CIDRs,
		self:      *me,
		discovery: m.Discovery,
		lb:        m.LoadBalancer,
		fw:        m.Firewall,
		mesh:      m,
		// Declarations of the site file; Kubernetes objects add theirs.
		globalServices: slices.Clone(sc.GlobalServices),
		policies:       slices.Clone(sc.Policies),
		egressRules:    sc.Rules(),
		bgp:            sc.BGP,
	}
	var peers []natpool.Site
	lb := m.LoadBalancer
	hubFound := false
	for _, p := range m.Peers(self) {
		peers = append(peers, p.Plan())
		allowed := natpool.RoutedTo(me.Plan(), p.Plan())
		if lb != nil && lb.Hub == p.Name && lb.VIPRange.IsValid() {
			// The hub balances: the VIPs are reached through it.
			allowed = append(allowed, lb.VIPRange)
			hubFound = true
		}
		d.tunnel.Peers = append(d.tunnel.Peers, tunnel.Peer{
			Name:                p.Name,
			PublicKey:           p.PublicKey,
			Endpoint:            p.Endpoint,
			AllowedIPs:          allowed,
			PersistentKeepalive: p.PersistentKeepalive,
		})
	}
	d.translated = natpool.TranslatedDestinations(me.Plan(), peers)
	switch {
	case lb == nil || !lb.VIPRange.IsValid():
	case lb.Balances(self):
		d.tunnel.Routes = []netip.Prefix{lb.VIPRange}
	case hubFound:
		// Clients' connections to the hub leave as this site's egress
		// addresses where they would be translated toward the hub.
		if hub, ok := m.Site(lb.Hub); ok && !natpool.RealPath(me.Plan(), hub.Plan()) {
			d.translated = append(d.translated, lb.VIPRange)
		}
	default:
		d.problems = append(d.problems, fmt.Sprintf("loadBalancer.hub %q is not a site of the mesh (yet): the VIPs are unreachable from here", lb.Hub))
	}
	d.pairs = natpool.Matrix(m.Plan())
	for _, s := range sc.Services {
		d.requests = append(d.requests, natpool.Request{Key: natpool.IngressKey(s.Namespace, s.Name), Pool: s.Pool, Kind: natpool.Ingress})
		// A service of the site file has no health the gateway knows
		// of: it is published as ready.
		d.exports = append(d.exports, catalog.Service{Namespace: s.Namespace, Name: s.Name, Ports: catalogPorts(s.Ports), Ready: 1})
	}
	if len(me.CIDRs) > 0 {
		d.requests = append(d.requests, natpool.Request{Key: natpool.EgressDefaultKey(), Pool: sc.Egress.Pool, Kind: natpool.Egress})
	}
	for _, r := range sc.Rules() {
		d.requests = append(d.requests, natpool.Request{Key: natpool.EgressRuleKey(r.Name), Pool: r.Pool, Kind: natpool.Egress})
	}
	d.egressPods = natpool.CompileEgress(sc.Rules(), sc.Pods)
	return d, nil
}

// catalogPorts are a site file service's ports as the catalog lists them.
func catalogPorts(ps []siteconf.Port) []catalog.Port {
	var out []catalog.Port
	for _, p := range ps {
		out = append(out, catalog.Port{Protocol: siteconf.ProtoName(p.Protocol), Port: p.Port})
	}
	return out
}

// addExports adds the services the cluster's ServiceExports export: each
// gets an ingress address from the default ingress pool, translated to its
// ClusterIP; headless ones publish their endpoints and get no address. A
// service the site file exports too stays the file's. Ports other than
// TCP and UDP are published but not translated.
func addExports(d *desired, exports []kubesource.Export) {
	file := map[string]bool{}
	for _, s := range d.services {
		file[s.Namespace+"/"+s.Name] = true
	}
	for _, e := range exports {
		if file[e.Namespace+"/"+e.Name] {
			d.problems = append(d.problems, fmt.Sprintf("service %s/%s is exported by the site file and by a ServiceExport; the site file's is published", e.Namespace, e.Name))
			continue
		}
		cs := catalog.Service{Namespace: e.Namespace, Name: e.Name, Ports: e.Ports, Ready: e.Ready, Total: e.Total}
		if e.Headless {
			cs.Headless, cs.Endpoints = true, e.Endpoints
			d.exports = append(d.exports, cs)
			continue
		}
		svc := siteconf.Service{Namespace: e.Namespace, Name: e.Name, Backend: e.ClusterIP, Pool: natpool.DefaultIngressPool}
		for _, p := range e.Ports {
			var proto uint8
			switch p.Protocol {
			case "TCP", "":
				proto = 6
			case "UDP":
				proto = 17
			default:
				continue
			}
			svc.Ports = append(svc.Ports, siteconf.Port{Protocol: proto, Port: p.Port, TargetPort: p.Port})
		}
		if len(svc.Ports) == 0 {
			d.problems = append(d.problems, fmt.Sprintf("service %s/%s is not exported: none of its ports is TCP or UDP, which is all the gateway translates", e.Namespace, e.Name))
			continue
		}
		d.services = append(d.services, svc)
		d.requests = append(d.requests, natpool.Request{Key: natpool.IngressKey(e.Namespace, e.Name), Pool: svc.Pool, Kind: natpool.Ingress})
		d.exports = append(d.exports, cs)
	}
}

// program compiles the translation from the desired state and the
// addresses allocated to it. What could not be allocated is left out: a
// service without an address is not exported, pods whose rule has none
// leave by the default.
func program(d desired, lookup func(string) (netip.Addr, bool)) nat.Program {
	p := nat.Program{Tunnel: d.iface, EgressPods: map[netip.Addr]netip.Addr{}, Translated: slices.Clone(d.translated)}
	for _, s := range d.services {
		ip, ok := lookup(natpool.IngressKey(s.Namespace, s.Name))
		if !ok {
			continue
		}
		for _, port := range s.Ports {
			p.Services = append(p.Services, nat.Service{Addr: ip, Proto: port.Protocol, Port: port.Port, Backend: s.Backend, BackendPort: port.TargetPort})
		}
	}
	for pod, rule := range d.egressPods {
		if ip, ok := lookup(natpool.EgressRuleKey(rule)); ok {
			p.EgressPods[pod] = ip
		}
	}
	if ip, ok := lookup(natpool.EgressDefaultKey()); ok {
		for _, c := range d.cidrs {
			p.EgressNets = append(p.EgressNets, nat.EgressNet{Source: c, As: ip})
		}
	}
	return p
}

// addDeclared adds what the cluster's strait.io objects declare to the
// site file's declarations; where both declare the same name, the site
// file's is published, and the status says so.
func addDeclared(d *desired, in inputs) {
	for _, g := range in.GlobalServices {
		if slices.ContainsFunc(d.globalServices, func(o meshpolicy.GlobalService) bool { return o.Key() == g.Key() }) {
			d.problems = append(d.problems, fmt.Sprintf("global service %s is declared by the site file and by a GlobalService object; the site file's is published", g.Key()))
			continue
		}
		d.globalServices = append(d.globalServices, g)
	}
	for _, p := range in.Policies {
		if slices.ContainsFunc(d.policies, func(o meshpolicy.Policy) bool { return o.Name == p.Name }) {
			d.problems = append(d.problems, fmt.Sprintf("policy %s is declared by the site file and by a FirewallPolicy object; the site file's is published", p.Name))
			continue
		}
		d.policies = append(d.policies, p)
	}
}
