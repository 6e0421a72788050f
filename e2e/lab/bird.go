package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Router is an on-premises router at a site: BIRD 2 on the site's LAN,
// peering over BGP with the site's gateway. Behind it is the data
// center's LAN with one host; the router announces that LAN (and its own
// networks, and Bogus) to the gateway and installs what the gateway
// announces. The gateway's filters let in the data center's LAN only, and
// give the router the mesh's global addresses only.
type Router struct {
	// ASN is the router's; GatewayASN the gateway's.
	ASN        uint32 `yaml:"asn" json:"asn"`
	GatewayASN uint32 `yaml:"gatewayASN" json:"gatewayASN"`
	// LAN is the data center's network behind the router: the router is
	// its .1, the host its .10.
	LAN netip.Prefix `yaml:"lan" json:"lan"`
	// Bogus are prefixes the router announces too, which the gateway's
	// import filter must keep out.
	Bogus []netip.Prefix `yaml:"bogus" json:"bogus,omitempty"`
	// Import are the prefixes the gateway accepts (its import filter),
	// as "prefix le N"; Export those it announces (its export filter).
	Import []PrefixRuleDoc `yaml:"import" json:"import,omitempty"`
	Export []PrefixRuleDoc `yaml:"export" json:"export,omitempty"`
}

// PrefixRuleDoc is a prefix filter rule of a site file's bgp section.
type PrefixRuleDoc struct {
	Prefix    string `yaml:"prefix" json:"prefix"`
	MaxLength int    `yaml:"maxLength,omitempty" json:"maxLength,omitempty"`
}

// Roles of the hosts a Router adds.
const (
	RoleRouter = "router" // a site's BIRD router
	RoleDCHost = "dchost" // a host on the data center's LAN behind it
)

// routerAddr is the router's address on the site's LAN.
var routerAddr = netip.MustParseAddr("172.31.0.254")

// BGP timers of the lab: a session that dies is noticed within seconds,
// and a gateway that dies keeps its routes at the router for a minute.
const (
	labHoldTime    = 9 * time.Second
	labRestartTime = time.Minute
)

// routerHosts are the hosts of a site's router: the router and the data
// center's host.
func routerHosts(s Site, ns func(string) string) []Host {
	lan := s.Router.LAN.Addr().As4()
	lan[3] = 1
	gw := netip.AddrFrom4(lan)
	lan[3] = 10
	return []Host{
		{Name: s.Name + "-router", Site: s.Name, Role: RoleRouter, NS: ns(s.Name + "-router"), Addr: routerAddr, Global: gw},
		{Name: s.Name + "-dc1", Site: s.Name, Role: RoleDCHost, NS: ns(s.Name + "-dc1"), Addr: netip.AddrFrom4(lan), Node: s.Name + "-router", Index: 1},
	}
}

// checkRouter validates a site's router.
func checkRouter(s Site, global netip.Prefix) error {
	r := s.Router
	if r.ASN == 0 || r.GatewayASN == 0 {
		return fmt.Errorf("lab: site %s: router: asn and gatewayASN are required", s.Name)
	}
	if !r.LAN.IsValid() || !r.LAN.Addr().Is4() || r.LAN.Bits() > 24 || r.LAN.Masked() != r.LAN {
		return fmt.Errorf("lab: site %s: router: lan %s is not a masked IPv4 prefix of at most /24", s.Name, r.LAN)
	}
	if r.LAN.Overlaps(global) || r.LAN.Overlaps(lanNet) || (s.PodCIDR.IsValid() && r.LAN.Overlaps(s.PodCIDR)) {
		return fmt.Errorf("lab: site %s: router: lan %s overlaps the global CIDR, the site's LAN or its pod CIDR", s.Name, r.LAN)
	}
	return nil
}

// buildRouter wires a site's router: into the site's LAN switch, and to
// the data center's host.
func (l *Lab) buildRouter(b *builder, s Site, lan Host) error {
	var router, host Host
	for _, h := range l.Hosts {
		switch {
		case h.Site == s.Name && h.Role == RoleRouter:
			router = h
		case h.Site == s.Name && h.Role == RoleDCHost:
			host = h
		}
	}
	if err := b.veth(router.NS, "eth0", lan.NS, "router"); err != nil {
		return err
	}
	if err := b.port(lan.NS, "router"); err != nil {
		return err
	}
	if err := b.addr(router.NS, "eth0", router.Addr, lanNet.Bits()); err != nil {
		return err
	}
	if err := b.veth(router.NS, "dc0", host.NS, "eth0"); err != nil {
		return err
	}
	if err := b.addr(router.NS, "dc0", router.Global, s.Router.LAN.Bits()); err != nil {
		return err
	}
	if err := b.addr(host.NS, "eth0", host.Addr, s.Router.LAN.Bits()); err != nil {
		return err
	}
	return b.route(host.NS, netip.Prefix{}, router.Global, "")
}

// birdConfig is the router's BIRD configuration: it announces its
// networks and Bogus to the gateway, takes the mesh's global addresses
// from it into the kernel, and helps it restart gracefully.
func birdConfig(s Site, router Host, gateway netip.Addr, global netip.Prefix) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# BIRD of %s's router, written by the strait lab.\n", s.Name)
	fmt.Fprintf(&b, "router id %s;\nlog stderr all;\n\n", router.Addr)
	b.WriteString("protocol device {}\n\n")
	b.WriteString("# The data center's LAN, and the LAN the gateway is on.\nprotocol direct {\n\tipv4;\n\tinterface \"dc0\", \"eth0\";\n}\n\n")
	b.WriteString("# What BGP learns goes into the kernel.\nprotocol kernel {\n\tipv4 { import none; export where source = RTS_BGP; };\n}\n\n")
	if len(s.Router.Bogus) > 0 {
		b.WriteString("# Announcements the gateway must refuse.\nprotocol static bogus {\n\tipv4;\n")
		for _, p := range s.Router.Bogus {
			fmt.Fprintf(&b, "\troute %s blackhole;\n", p)
		}
		b.WriteString("}\n\n")
	}
	fmt.Fprintf(&b, "protocol bgp strait_gateway {\n\tlocal %s as %d;\n\tneighbor %s as %d;\n", router.Addr, s.Router.ASN, gateway, s.Router.GatewayASN)
	fmt.Fprintf(&b, "\thold time %d;\n\tkeepalive time %d;\n\tconnect retry time 2;\n\terror wait time 1, 5;\n", int(labHoldTime/time.Second), int(labHoldTime/time.Second/3))
	fmt.Fprintf(&b, "\tgraceful restart on;\n\tgraceful restart time %d;\n", int(labRestartTime/time.Second))
	// The router takes what the gateway's export filter lets out, or the
	// mesh's global addresses.
	var set []string
	for _, r := range s.Router.Export {
		if p, err := netip.ParsePrefix(r.Prefix); err == nil {
			set = append(set, fmt.Sprintf("%s{%d,%d}", p, p.Bits(), max(r.MaxLength, p.Bits())))
		}
	}
	if len(set) == 0 {
		set = []string{fmt.Sprintf("%s{%d,32}", global, global.Bits())}
	}
	fmt.Fprintf(&b, "\tipv4 {\n\t\timport filter { if net ~ [ %s ] then accept; reject; };\n", strings.Join(set, ", "))
	b.WriteString("\t\texport where source ~ [ RTS_DEVICE, RTS_STATIC ];\n\t};\n}\n")
	return b.String()
}

// BirdSocket is the control socket of a site's router (birdc -s).
func (l *Lab) BirdSocket(site string) string { return filepath.Join(l.Dir, site, "bird.ctl") }

// StartRouter starts BIRD in a site's router.
func (l *Lab) StartRouter(site string) error {
	s, ok := l.Topology.siteOf(site)
	if !ok || s.Router == nil {
		return fmt.Errorf("lab: site %q has no router", site)
	}
	router := l.MustHost(site + "-router")
	gw, _ := l.GatewayOf(site)
	dir := filepath.Join(l.Dir, site)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	conf := filepath.Join(dir, "bird.conf")
	if err := writeFileAtomic(conf, []byte(birdConfig(s, router, gw.Addr, l.Topology.GlobalCIDR)), 0o644); err != nil {
		return err
	}
	bin, err := exec.LookPath("bird")
	if err != nil {
		return fmt.Errorf("lab: bird is missing (Debian's bird2; `make deps` installs it)")
	}
	logPath := filepath.Join(dir, "bird.log")
	if err := l.spawn(router, "bird", logPath, bin, "-f", "-c", conf, "-s", l.BirdSocket(site), "-P", filepath.Join(dir, "bird.pid")); err != nil {
		return err
	}
	if err := l.save(); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := l.Birdc(site, "show", "status"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("lab: BIRD in %s does not answer\n%s", router.Name, l.tail(logPath))
		}
	}
}

// KillRouter kills a site's BIRD without a word to its peers.
func (l *Lab) KillRouter(site string) error {
	return l.signal(site+"-router", "bird", 9)
}

// startRouters starts the routers of the sites that have one, and the lab
// server on each data center host.
func (l *Lab) startRouters() error {
	for _, s := range l.Topology.Sites {
		if s.Router == nil {
			continue
		}
		if err := l.StartRouter(s.Name); err != nil {
			return err
		}
		l.logf("%s: BIRD router at %s, data center LAN %s", s.Name, routerAddr, s.Router.LAN)
	}
	return nil
}

// Birdc runs a birdc command against a site's router and returns its
// output.
func (l *Lab) Birdc(site string, args ...string) (string, error) {
	router, ok := l.Host(site + "-router")
	if !ok {
		return "", fmt.Errorf("lab: site %q has no router", site)
	}
	cmd := router.Namespace().Command("birdc", append([]string{"-s", l.BirdSocket(site)}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("lab: birdc %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// RouterRoutes returns the routes BIRD installed in the router's kernel
// (protocol bird), by destination, with their next hop.
func (l *Lab) RouterRoutes(site string) (map[netip.Prefix]netip.Addr, error) {
	router, ok := l.Host(site + "-router")
	if !ok {
		return nil, fmt.Errorf("lab: site %q has no router", site)
	}
	out, err := router.Namespace().Command("ip", "-4", "route", "show", "proto", "bird").Output()
	if err != nil {
		return nil, fmt.Errorf("lab: routes of %s's router: %w", site, exitError(err))
	}
	return parseRoutes(string(out)), nil
}

// parseRoutes reads `ip route` lines: "242.0.0.0/16 via 172.31.0.1 dev
// eth0 ...". Lines without a next hop map to the zero address.
func parseRoutes(out string) map[netip.Prefix]netip.Addr {
	m := map[netip.Prefix]netip.Addr{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		if dst == "default" {
			dst = "0.0.0.0/0"
		} else if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			continue
		}
		var via netip.Addr
		for i := 1; i+1 < len(f); i++ {
			if f[i] == "via" {
				via, _ = netip.ParseAddr(f[i+1])
			}
		}
		m[p] = via
	}
	return m
}

// siteBGP is the bgp section of a site file for its router.
func siteBGP(r *Router, gateway netip.Addr) *BGPDoc {
	return &BGPDoc{
		ASN: r.GatewayASN, RouterID: gateway.String(), HoldTime: labHoldTime.String(),
		GracefulRestart: &GracefulRestartDoc{RestartTime: labRestartTime.String()},
		Peers:           []BGPPeerDoc{{Name: "dc-router", Address: routerAddr.String(), ASN: r.ASN}},
		Import:          r.Import, Export: r.Export,
	}
}

// BGPDoc is the bgp section of a SiteDoc.
type BGPDoc struct {
	ASN             uint32              `yaml:"asn"`
	RouterID        string              `yaml:"routerID"`
	HoldTime        string              `yaml:"holdTime,omitempty"`
	GracefulRestart *GracefulRestartDoc `yaml:"gracefulRestart,omitempty"`
	Peers           []BGPPeerDoc        `yaml:"peers"`
	Import          []PrefixRuleDoc     `yaml:"import,omitempty"`
	Export          []PrefixRuleDoc     `yaml:"export,omitempty"`
}

// GracefulRestartDoc is the gracefulRestart part of a BGPDoc.
type GracefulRestartDoc struct {
	RestartTime string `yaml:"restartTime"`
}

// BGPPeerDoc is a peer of a BGPDoc.
type BGPPeerDoc struct {
	Name    string `yaml:"name"`
	Address string `yaml:"address"`
	ASN     uint32 `yaml:"asn"`
}

// dcHosts are the data center hosts behind routers.
func (l *Lab) dcHosts() []Host {
	var out []Host
	for _, h := range l.Hosts {
		if h.Role == RoleDCHost {
			out = append(out, h)
		}
	}
	return out
}
