// Package meshconf reads and validates the mesh configuration file: the
// global CIDR and, for every site, its WireGuard public key, endpoint, block
// of the global CIDR, and real CIDRs (routable or not).
//
// Every gateway of the mesh reads the same file and finds itself in it by
// site name. Parse refuses a file that is malformed or inconsistent with an
// error per problem, each naming the file, line, column and field, so that a
// gateway can keep running on its last good configuration and say why the
// new one was refused.
package meshconf

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/gateway/internal/yamlpos"
	"github.com/straitnet/strait/natpool"
)

// DefaultListenPort is the UDP port a gateway listens on when its site sets
// neither listenPort nor an endpoint.
const DefaultListenPort = 51820

// DefaultPersistentKeepalive keeps NAT and firewall state between sites
// alive; sites behind NAT would otherwise become unreachable after idling.
const DefaultPersistentKeepalive = 25 * time.Second

// Mesh is a validated mesh configuration.
type Mesh struct {
	GlobalCIDR netip.Prefix
	// BlockBits is the prefix length of blocks derived from site names.
	BlockBits int
	Sites     []Site
	// Discovery, when set, has the gateway learn the strait sites that
	// are not in the file from the gossip catalog.
	Discovery *Discovery
	// LoadBalancer, when set, has the gateway serve global services.
	LoadBalancer *LoadBalancer
	// Firewall configures the mesh firewall; nil: default allow.
	Firewall *Firewall
}

// Site is one member of the mesh: a strait gateway, or a plain WireGuard host
// that joined with `strait config wg-quick`.
type Site struct {
	Name      string
	PublicKey wgtypes.Key
	// Endpoint is "host:port" where peers reach the site, or empty for a
	// site that only dials out (behind NAT); peers then learn its address
	// from its first handshake.
	Endpoint string
	// ListenPort is the UDP port of the site's WireGuard device: listenPort
	// if set, else the endpoint's port, else DefaultListenPort.
	ListenPort int
	// Block is the site's share of the global CIDR; BlockDerived says it
	// was derived from the name (natpool.DeriveBlock), not assigned.
	Block        netip.Prefix
	BlockDerived bool
	// CIDRs are the site's real CIDRs (pods, services, hosts).
	CIDRs []netip.Prefix
	// Routable says the real CIDRs may be routed as they are to every site
	// they do not collide with (no translation, sources kept).
	Routable bool
	// PersistentKeepalive is the interval of keepalives peers send to the
	// site; 0 turns them off.
	PersistentKeepalive time.Duration
	// Line is where the site starts in the file.
	Line int
	// cidrAt holds where each of CIDRs is written, for messages.
	cidrAt []cidrPos
}

type cidrPos struct {
	node  *yaml.Node
	field string
}

// TunnelAddr is the site's own address in the mesh: the first host address
// of its block. A gateway puts it on its tunnel device so that what it sends
// itself (ICMP errors, health checks) carries a source its peers accept; a
// plain WireGuard host uses it as its interface address.
func (s *Site) TunnelAddr() netip.Addr {
	return s.Block.Addr().Next()
}

// Plan is the site as the address plan sees it.
func (s *Site) Plan() natpool.Site {
	return natpool.Site{Name: s.Name, Block: s.Block, CIDRs: s.CIDRs, Routable: s.Routable}
}

// Site returns the site called name.
func (m *Mesh) Site(name string) (*Site, bool) {
	for i := range m.Sites {
		if m.Sites[i].Name == name {
			return &m.Sites[i], true
		}
	}
	return nil, false
}

// SiteNames lists the sites' names, comma separated, for messages.
func (m *Mesh) SiteNames() string {
	s := make([]string, len(m.Sites))
	for i, site := range m.Sites {
		s[i] = site.Name
	}
	return strings.Join(s, ", ")
}

// Peers returns every site but self, in file order.
func (m *Mesh) Peers(self string) []Site {
	var out []Site
	for _, s := range m.Sites {
		if s.Name != self {
			out = append(out, s)
		}
	}
	return out
}

// Plan returns every site as the address plan sees it.
func (m *Mesh) Plan() []natpool.Site {
	out := make([]natpool.Site, len(m.Sites))
	for i := range m.Sites {
		out[i] = m.Sites[i].Plan()
	}
	return out
}

// Load reads and parses the mesh configuration at path.
func Load(path string) (*Mesh, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("meshconf: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates a mesh configuration. file names the source in
// error messages. The error, if any, is a yamlpos.ErrorList.
func Parse(file string, data []byte) (*Mesh, error) {
	d := &decoder{Decoder: yamlpos.Decoder{File: file}}
	m := d.mesh(data)
	if err := d.Err(); err != nil {
		return nil, err
	}
	return m, nil
}

type decoder struct {
	yamlpos.Decoder
}

func (d *decoder) mesh(data []byte) *Mesh {
	top := d.Document(data, "globalCIDR and sites")
	if top == nil {
		return nil
	}
	f := d.Fields(top, "", "globalCIDR", "blockSize", "discovery", "loadBalancer", "firewall", "sites")
	if f == nil {
		return nil
	}
	m := &Mesh{GlobalCIDR: netip.MustParsePrefix(natpool.DefaultGlobalCIDR), BlockBits: natpool.DefaultBlockBits}
	if n := f["globalCIDR"]; n != nil {
		m.GlobalCIDR = d.Prefix(n, "globalCIDR")
	}
	if n := f["blockSize"]; n != nil {
		if s, ok := d.Scalar(n, "blockSize"); ok {
			bits, err := strconv.Atoi(strings.TrimPrefix(s, "/"))
			switch {
			case err != nil || !strings.HasPrefix(s, "/"):
				d.Fail(n, "blockSize", "%q is not a prefix length such as /16", s)
			case m.GlobalCIDR.IsValid() && (bits <= m.GlobalCIDR.Bits() || bits > natpool.MaxBlockBits):
				d.Fail(n, "blockSize", "/%d: want a length between /%d and /%d, inside the global CIDR %s", bits, m.GlobalCIDR.Bits()+1, natpool.MaxBlockBits, m.GlobalCIDR)
			default:
				m.BlockBits = bits
			}
		}
	}
	if n := f["discovery"]; n != nil {
		m.Discovery = d.discovery(n)
	}
	if n := f["loadBalancer"]; n != nil {
		m.LoadBalancer = d.loadBalancer(n, m)
		defer d.checkVIPRange(n, m)
	}
	if n := f["firewall"]; n != nil {
		m.Firewall = d.firewall(n)
	}
	sites := f["sites"]
	if sites == nil {
		d.Fail(top, "sites", "missing: a mesh needs at least one site")
		return m
	}
	items := d.List(sites, "sites", "sites")
	if items == nil {
		return m
	}
	var nodes []map[string]*yaml.Node
	for i, n := range items {
		s, fields := d.site(n, fmt.Sprintf("sites[%d]", i), m)
		m.Sites = append(m.Sites, s)
		nodes = append(nodes, fields)
	}
	if len(m.Sites) == 0 {
		d.Fail(sites, "sites", "empty: a mesh needs at least one site")
	}
	d.crossCheck(m, nodes)
	return m
}

var siteFields = []string{"name", "publicKey", "endpoint", "listenPort", "block", "cidrs", "routable", "persistentKeepalive"}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func (d *decoder) site(n *yaml.Node, field string, m *Mesh) (Site, map[string]*yaml.Node) {
	s := Site{Line: n.Line, PersistentKeepalive: DefaultPersistentKeepalive}
	f := d.Fields(n, field, siteFields...)
	if f == nil {
		return s, nil
	}
	d.Require(n, f, field, "name", "publicKey")
	if v := f["name"]; v != nil {
		if name, ok := d.Scalar(v, field+".name"); ok {
			if len(name) > 63 || !nameRE.MatchString(name) {
				d.Fail(v, field+".name", "%q is not a valid site name (lowercase letters, digits and '-', at most 63, like a DNS label)", name)
			}
			s.Name = name
		}
	}
	if v := f["publicKey"]; v != nil {
		if str, ok := d.Scalar(v, field+".publicKey"); ok {
			k, err := wgtypes.ParseKey(str)
			if err != nil {
				d.Fail(v, field+".publicKey", "not a WireGuard key (44 characters of base64, as `wg pubkey` prints)")
			}
			s.PublicKey = k
		}
	}
	if v := f["endpoint"]; v != nil {
		if str, ok := d.Scalar(v, field+".endpoint"); ok && str != "" {
			if port, err := checkEndpoint(str); err != nil {
				d.Fail(v, field+".endpoint", "%q: %v", str, err)
			} else {
				s.Endpoint, s.ListenPort = str, port
			}
		}
	}
	if s.ListenPort == 0 {
		s.ListenPort = DefaultListenPort
	}
	if v := f["listenPort"]; v != nil {
		if p := d.Int(v, field+".listenPort", 1, 65535, "a UDP port"); p != 0 {
			s.ListenPort = p
		}
	}
	if v := f["block"]; v != nil {
		s.Block = d.Prefix(v, field+".block")
	} else if s.Name != "" && m.GlobalCIDR.IsValid() {
		b, err := natpool.DeriveBlock(m.GlobalCIDR, m.BlockBits, s.Name)
		if err != nil {
			d.Fail(n, field+".block", "%v", err)
		}
		s.Block, s.BlockDerived = b, true
	}
	if v := f["cidrs"]; v != nil {
		for i, pn := range d.List(v, field+".cidrs", "prefixes") {
			pf := fmt.Sprintf("%s.cidrs[%d]", field, i)
			if p := d.Prefix(pn, pf); p.IsValid() {
				s.CIDRs = append(s.CIDRs, p)
				s.cidrAt = append(s.cidrAt, cidrPos{pn, pf})
			}
		}
	}
	if v := f["routable"]; v != nil {
		s.Routable = d.Bool(v, field+".routable")
	}
	if v := f["persistentKeepalive"]; v != nil {
		if ka, ok := d.Duration(v, field+".persistentKeepalive"); ok {
			if ka < 0 || ka > 65535*time.Second || ka%time.Second != 0 {
				d.Fail(v, field+".persistentKeepalive", "%s: want whole seconds between 0s (off) and 65535s", ka)
			} else {
				s.PersistentKeepalive = ka
			}
		}
	}
	return s, f
}

// checkEndpoint checks "host:port" and returns the port.
func checkEndpoint(s string) (int, error) {
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return 0, fmt.Errorf("want host:port, such as 203.0.113.7:51820 or [2001:db8::7]:51820")
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return 0, fmt.Errorf("port %q is not a UDP port (1-65535)", portStr)
	}
	if host == "" {
		return 0, fmt.Errorf("host is empty")
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return port, nil
	}
	if strings.ContainsAny(host, ":%") {
		return 0, fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
	}
	for _, label := range strings.Split(strings.TrimSuffix(host, "."), ".") {
		if len(label) == 0 || len(label) > 63 || !hostLabelRE.MatchString(label) {
			return 0, fmt.Errorf("host %q is neither an IP address nor a DNS name", host)
		}
	}
	return port, nil
}

var hostLabelRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$`)

// crossCheck validates what involves more than one field: uniqueness,
// blocks inside the global CIDR and apart, real CIDRs apart from the global
// CIDR, and routable CIDRs apart from each other.
func (d *decoder) crossCheck(m *Mesh, nodes []map[string]*yaml.Node) {
	// where names a site's field for messages about conflicts.
	where := func(j int, key string) string {
		line := m.Sites[j].Line
		if n := nodes[j][key]; n != nil {
			line = n.Line
		}
		return fmt.Sprintf("%s (sites[%d], line %d)", m.Sites[j].Name, j, line)
	}
	at := func(i int, key string) *yaml.Node {
		if n := nodes[i][key]; n != nil {
			return n
		}
		return nil
	}
	for i := range m.Sites {
		s := &m.Sites[i]
		field := fmt.Sprintf("sites[%d]", i)
		if nodes[i] == nil {
			continue
		}
		site := at(i, "name")
		for j := range i {
			o := &m.Sites[j]
			if s.Name != "" && s.Name == o.Name {
				d.Fail(site, field+".name", "site %q is defined twice (also sites[%d], line %d)", s.Name, j, o.Line)
			}
			var zero wgtypes.Key
			if s.PublicKey != zero && s.PublicKey == o.PublicKey {
				d.Fail(at(i, "publicKey"), field+".publicKey", "same public key as sites[%d] (%s, line %d): every site needs its own key", j, o.Name, nodes[j]["publicKey"].Line)
			}
			if s.Block.IsValid() && o.Block.IsValid() && s.Block.Overlaps(o.Block) {
				n, how := at(i, "block"), ""
				if s.BlockDerived {
					n, how = site, " (derived from the name)"
				}
				other := "block of " + where(j, "block")
				if o.BlockDerived {
					other = "block derived from the name of " + where(j, "name")
				}
				d.Fail(n, field+".block", "%s%s overlaps %s %s: assign one of them a block explicitly", s.Block, how, other, o.Block)
			}
			if s.Routable && o.Routable {
				for _, c := range natpool.Collisions(s.Plan(), o.Plan()) {
					d.Fail(at(i, "routable"), field+".routable", "%s of %s collides with %s of %s, which is routable too: "+
						"at most one of colliding sites may be routable", c[0], s.Name, c[1], where(j, "cidrs"))
				}
			}
		}
		if s.Block.IsValid() && m.GlobalCIDR.IsValid() {
			n := at(i, "block")
			if n == nil {
				n = site
			}
			if !natpool.Contains(m.GlobalCIDR, s.Block) {
				d.Fail(n, field+".block", "%s is outside the global CIDR %s", s.Block, m.GlobalCIDR)
			}
			if s.Block.Bits() > natpool.MaxBlockBits {
				d.Fail(n, field+".block", "%s is too small: a block needs room for the site's tunnel address and pools (at most /%d)", s.Block, natpool.MaxBlockBits)
			}
		}
		for k, c := range s.CIDRs {
			at := s.cidrAt[k]
			if m.GlobalCIDR.IsValid() && c.Overlaps(m.GlobalCIDR) {
				d.Fail(at.node, at.field, "%s overlaps the global CIDR %s, which is reserved for the mesh", c, m.GlobalCIDR)
			}
			for _, c2 := range s.CIDRs[:k] {
				if c.Overlaps(c2) {
					d.Fail(at.node, at.field, "%s overlaps %s of the same site", c, c2)
				}
			}
		}
	}
}
