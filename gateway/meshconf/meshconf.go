// Package meshconf reads and validates the mesh configuration file: the
// global CIDR and, for every site, its WireGuard public key, endpoint, block
// of the global CIDR, the real CIDR translated into that block and the real
// prefixes routed to it as they are.
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
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"gopkg.in/yaml.v3"

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
	Sites      []Site
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
	// Block is the site's share of the global CIDR.
	Block netip.Prefix
	// PodCIDR is the site's real CIDR, translated one-to-one into Block at
	// the site's gateway. Invalid (zero) for a site whose hosts use
	// addresses of its block directly, such as a plain WireGuard host.
	PodCIDR netip.Prefix
	// Prefixes are real prefixes behind the site routed to it without
	// translation (they must not collide with anything else in the mesh).
	Prefixes []netip.Prefix
	// PersistentKeepalive is the interval of keepalives peers send to the
	// site; 0 turns them off.
	PersistentKeepalive time.Duration
	// Line is where the site starts in the file.
	Line int
}

// AllowedIPs is what the site's peers accept from it and route to it: its
// block and its routed prefixes.
func (s *Site) AllowedIPs() []netip.Prefix {
	return append([]netip.Prefix{s.Block}, s.Prefixes...)
}

// TunnelAddr is the site's own address in the mesh: the first host address
// of its block. A gateway puts it on its tunnel device so that what it sends
// itself (ICMP errors, health checks) carries a source its peers accept; a
// plain WireGuard host uses it as its interface address.
func (s *Site) TunnelAddr() netip.Addr {
	return s.Block.Addr().Next()
}

// Translated reports whether the site's gateway translates a real CIDR into its block.
func (s *Site) Translated() bool { return s.PodCIDR.IsValid() }

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

// Load reads and parses the mesh configuration at path.
func Load(path string) (*Mesh, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("meshconf: %w", err)
	}
	return Parse(path, data)
}

// Parse parses and validates a mesh configuration. file names the source in
// error messages. The error, if any, is an ErrorList.
func Parse(file string, data []byte) (*Mesh, error) {
	d := &decoder{file: file}
	m := d.mesh(data)
	if len(d.errs) > 0 {
		d.errs.sort()
		return nil, d.errs
	}
	return m, nil
}

// Error is one problem in a mesh configuration file.
type Error struct {
	File   string
	Line   int
	Column int
	Field  string // such as "sites[1].publicKey"; empty for the whole file
	Msg    string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in a file, in file order.
type ErrorList []*Error

func (l ErrorList) Error() string {
	msgs := make([]string, len(l))
	for i, e := range l {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

func (l ErrorList) sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Column - b.Column
	})
}

type decoder struct {
	file string
	errs ErrorList
}

func (d *decoder) fail(n *yaml.Node, field, format string, args ...any) {
	e := &Error{File: d.file, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

// fields returns the values of a mapping node by key, reporting unknown and
// repeated keys. known lists the keys in the order the docs present them.
func (d *decoder) fields(n *yaml.Node, field string, known ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		d.fail(n, field, "want a mapping of %s, got %s", strings.Join(known, ", "), kind(n))
		return nil
	}
	out := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		name := join(field, k.Value)
		switch {
		case !slices.Contains(known, k.Value):
			d.fail(k, name, "unknown field (known fields: %s)", strings.Join(known, ", "))
		case out[k.Value] != nil:
			d.fail(k, name, "set twice (first on line %d)", out[k.Value].Line)
		default:
			out[k.Value] = v
		}
	}
	return out
}

func (d *decoder) scalar(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.fail(n, field, "want a single value, got %s", kind(n))
		return "", false
	}
	return n.Value, true
}

func (d *decoder) prefix(n *yaml.Node, field string) netip.Prefix {
	s, ok := d.scalar(n, field)
	if !ok {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		d.fail(n, field, "%q is not a CIDR prefix such as 10.0.0.0/16", s)
		return netip.Prefix{}
	}
	if p.Masked() != p {
		d.fail(n, field, "%s has host bits set; the prefix is %s", p, p.Masked())
		return netip.Prefix{}
	}
	if !p.Addr().Is4() {
		d.fail(n, field, "%s: only IPv4 prefixes are supported inside the mesh so far", p)
		return netip.Prefix{}
	}
	return p
}

func (d *decoder) mesh(data []byte) *Mesh {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		d.errs = append(d.errs, yamlError(d.file, err))
		return nil
	}
	if len(doc.Content) == 0 {
		d.fail(nil, "", "empty file: want globalCIDR and sites")
		return nil
	}
	top := d.fields(doc.Content[0], "", "globalCIDR", "sites")
	if top == nil {
		return nil
	}
	m := &Mesh{GlobalCIDR: netip.MustParsePrefix(natpool.DefaultGlobalCIDR)}
	if n := top["globalCIDR"]; n != nil {
		m.GlobalCIDR = d.prefix(n, "globalCIDR")
	}
	sites := top["sites"]
	if sites == nil {
		d.fail(doc.Content[0], "sites", "missing: a mesh needs at least one site")
		return m
	}
	if sites.Kind != yaml.SequenceNode {
		d.fail(sites, "sites", "want a list of sites, got %s", kind(sites))
		return m
	}
	var nodes []siteNodes
	for i, n := range sites.Content {
		s, sn := d.site(n, fmt.Sprintf("sites[%d]", i))
		m.Sites = append(m.Sites, s)
		nodes = append(nodes, sn)
	}
	if len(m.Sites) == 0 {
		d.fail(sites, "sites", "empty: a mesh needs at least one site")
	}
	d.crossCheck(m, nodes)
	return m
}

// siteNodes keeps where each field of a site was written, for messages
// about conflicts between sites.
type siteNodes struct {
	site   *yaml.Node
	fields map[string]*yaml.Node
}

var siteFields = []string{"name", "publicKey", "endpoint", "listenPort", "block", "podCIDR", "prefixes", "persistentKeepalive"}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func (d *decoder) site(n *yaml.Node, field string) (Site, siteNodes) {
	s := Site{Line: n.Line, PersistentKeepalive: DefaultPersistentKeepalive}
	f := d.fields(n, field, siteFields...)
	sn := siteNodes{site: n, fields: f}
	if f == nil {
		return s, sn
	}
	for _, req := range []string{"name", "publicKey", "block"} {
		if f[req] == nil {
			d.fail(n, join(field, req), "missing")
		}
	}
	if v := f["name"]; v != nil {
		if name, ok := d.scalar(v, field+".name"); ok {
			if len(name) > 63 || !nameRE.MatchString(name) {
				d.fail(v, field+".name", "%q is not a valid site name (lowercase letters, digits and '-', at most 63, like a DNS label)", name)
			}
			s.Name = name
		}
	}
	if v := f["publicKey"]; v != nil {
		if str, ok := d.scalar(v, field+".publicKey"); ok {
			k, err := wgtypes.ParseKey(str)
			if err != nil {
				d.fail(v, field+".publicKey", "not a WireGuard key (44 characters of base64, as `wg pubkey` prints)")
			}
			s.PublicKey = k
		}
	}
	if v := f["endpoint"]; v != nil {
		if str, ok := d.scalar(v, field+".endpoint"); ok && str != "" {
			if port, err := checkEndpoint(str); err != nil {
				d.fail(v, field+".endpoint", "%q: %v", str, err)
			} else {
				s.Endpoint, s.ListenPort = str, port
			}
		}
	}
	if s.ListenPort == 0 {
		s.ListenPort = DefaultListenPort
	}
	if v := f["listenPort"]; v != nil {
		if str, ok := d.scalar(v, field+".listenPort"); ok {
			p, err := strconv.Atoi(str)
			if err != nil || p < 1 || p > 65535 {
				d.fail(v, field+".listenPort", "%q is not a UDP port (1-65535)", str)
			} else {
				s.ListenPort = p
			}
		}
	}
	if v := f["block"]; v != nil {
		s.Block = d.prefix(v, field+".block")
	}
	if v := f["podCIDR"]; v != nil {
		s.PodCIDR = d.prefix(v, field+".podCIDR")
	}
	if v := f["prefixes"]; v != nil {
		if v.Kind != yaml.SequenceNode {
			d.fail(v, field+".prefixes", "want a list of prefixes, got %s", kind(v))
		} else {
			for i, pn := range v.Content {
				if p := d.prefix(pn, fmt.Sprintf("%s.prefixes[%d]", field, i)); p.IsValid() {
					s.Prefixes = append(s.Prefixes, p)
				}
			}
		}
	}
	if v := f["persistentKeepalive"]; v != nil {
		if str, ok := d.scalar(v, field+".persistentKeepalive"); ok {
			ka, err := time.ParseDuration(str)
			switch {
			case err != nil:
				d.fail(v, field+".persistentKeepalive", "%q is not a duration such as 25s", str)
			case ka < 0 || ka > 65535*time.Second || ka%time.Second != 0:
				d.fail(v, field+".persistentKeepalive", "%s: want whole seconds between 0s (off) and 65535s", ka)
			default:
				s.PersistentKeepalive = ka
			}
		}
	}
	return s, sn
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

// crossCheck validates what involves more than one field: uniqueness, blocks
// inside the global CIDR, and overlaps between what sites route.
func (d *decoder) crossCheck(m *Mesh, nodes []siteNodes) {
	type claim struct {
		p     netip.Prefix
		site  int
		field string
		node  *yaml.Node
	}
	var routed []claim // what peers route to a site: its AllowedIPs
	var inside []claim // translated real CIDRs; only ever seen inside their own site
	for i := range m.Sites {
		s, f := &m.Sites[i], nodes[i].fields
		field := fmt.Sprintf("sites[%d]", i)
		for j := range i {
			o := &m.Sites[j]
			if s.Name != "" && s.Name == o.Name {
				d.fail(f["name"], field+".name", "site %q is defined twice (also sites[%d], line %d)", s.Name, j, o.Line)
			}
			var zero wgtypes.Key
			if s.PublicKey != zero && s.PublicKey == o.PublicKey {
				d.fail(f["publicKey"], field+".publicKey", "same public key as sites[%d] (%s, line %d): every site needs its own key", j, o.Name, nodes[j].fields["publicKey"].Line)
			}
		}
		if s.Block.IsValid() {
			if m.GlobalCIDR.IsValid() && !natpool.Contains(m.GlobalCIDR, s.Block) {
				d.fail(f["block"], field+".block", "%s is outside the global CIDR %s", s.Block, m.GlobalCIDR)
			}
			if s.Block.Bits() > 30 {
				d.fail(f["block"], field+".block", "%s is too small: a block needs room for the site's tunnel address and hosts (at most /30)", s.Block)
			}
			routed = append(routed, claim{s.Block, i, field + ".block", f["block"]})
		}
		if s.PodCIDR.IsValid() {
			if s.Block.IsValid() && s.PodCIDR.Bits() != s.Block.Bits() {
				d.fail(f["podCIDR"], field+".podCIDR", "%s cannot be translated one-to-one into block %s: prefix lengths differ (/%d and /%d)",
					s.PodCIDR, s.Block, s.PodCIDR.Bits(), s.Block.Bits())
			}
			if m.GlobalCIDR.IsValid() && s.PodCIDR.Overlaps(m.GlobalCIDR) {
				d.fail(f["podCIDR"], field+".podCIDR", "%s overlaps the global CIDR %s, which is reserved for the mesh", s.PodCIDR, m.GlobalCIDR)
			}
			inside = append(inside, claim{s.PodCIDR, i, field + ".podCIDR", f["podCIDR"]})
		}
		for k, p := range s.Prefixes {
			pf := fmt.Sprintf("%s.prefixes[%d]", field, k)
			pn := f["prefixes"].Content[k]
			if m.GlobalCIDR.IsValid() && p.Overlaps(m.GlobalCIDR) {
				d.fail(pn, pf, "%s overlaps the global CIDR %s; addresses there belong in a block", p, m.GlobalCIDR)
				continue
			}
			routed = append(routed, claim{p, i, pf, pn})
		}
	}
	// Two sites routing overlapping prefixes would make WireGuard's
	// cryptokey routing ambiguous: refuse, naming both.
	for i, a := range routed {
		for _, b := range routed[:i] {
			if a.p.Overlaps(b.p) {
				d.fail(a.node, a.field, "%s overlaps %s of %s (%s, line %d)", a.p, b.p, b.field, m.Sites[b.site].Name, b.node.Line)
			}
		}
	}
	// A prefix routed into the mesh must not shadow a site's own real CIDR:
	// that site's gateway would send its own pods' traffic into the tunnel.
	for _, a := range routed {
		for _, b := range inside {
			if a.p.Overlaps(b.p) {
				d.fail(a.node, a.field, "%s overlaps %s of %s (%s, line %d); a site's real CIDR may not be routed to another site",
					a.p, b.p, b.field, m.Sites[b.site].Name, b.node.Line)
			}
		}
	}
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func kind(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "nothing"
}

// yamlError turns a YAML syntax error ("yaml: line 3: ...") into an Error
// with the line split out.
func yamlError(file string, err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := &Error{File: file, Msg: "not valid YAML: " + msg}
	var line int
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
		e.Line, e.Column = line, 1
		e.Msg = "not valid YAML:" + strings.SplitN(msg, ":", 2)[1]
	}
	return e
}
