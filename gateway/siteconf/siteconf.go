// Package siteconf reads a gateway's site file: what the gateway's own
// site exports and how its traffic is translated. The address pools cut
// from the site's block, the services exported through ingress addresses,
// the egress rules that narrow which address pods leave as, and the pods
// those rules select (the file source; Kubernetes informers replace it
// where there is a cluster).
//
// Like the mesh file, a site file that does not parse or validate is
// refused with every problem named by file, line, column and field.
package siteconf

import (
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/bgp"
	"github.com/straitnet/strait/gateway/internal/yamlpos"
	"github.com/straitnet/strait/natpool"
)

// Config is a validated site file.
type Config struct {
	File string
	// Pools, if empty, are natpool.DefaultPools of the site's block.
	Pools    []Pool
	HoldDown time.Duration
	Services []Service
	Egress   Egress
	Pods     []natpool.Pod
	podsAt   []pos // where each pod's ip is
	// GlobalServices and Policies are the mesh policy this site
	// declares (the file source of GlobalService and FirewallPolicy
	// objects).
	GlobalServices []meshpolicy.GlobalService
	Policies       []meshpolicy.Policy
	// BGP, when set, has the gateway peer with the site's routers.
	BGP *bgp.Config
}

// Pool is a pool and where the file defines it.
type Pool struct {
	natpool.Pool
	at pos
}

// Service is an exported service: one ingress address, its ports
// translated to the backend's.
type Service struct {
	Namespace, Name string
	// Backend is where the service's traffic goes inside the site: the
	// Service's ClusterIP in a cluster, a host's address elsewhere.
	Backend netip.Addr
	Ports   []Port
	// Pool is the ingress pool of its address.
	Pool string
	at   pos
}

// Port maps a port of the ingress address to one of the backend.
type Port struct {
	Protocol   uint8 // 6 (TCP) or 17 (UDP)
	Port       uint16
	TargetPort uint16
}

// Egress is how the site's traffic leaves: by the default pool's address,
// or by a rule's.
type Egress struct {
	Pool  string
	Rules []Rule
	at    pos // where pool is set, if it is
}

// Rule is an egress rule and where the file defines it.
type Rule struct {
	natpool.EgressRule
	at pos
}

type pos struct {
	field        string
	line, column int
}

// HoldDown default and bounds.
const maxHoldDown = 30 * 24 * time.Hour

// Empty is the configuration of a site without a site file: default pools,
// nothing exported, one egress address for all.
func Empty() *Config {
	return &Config{HoldDown: natpool.DefaultHoldDown, Egress: Egress{Pool: natpool.DefaultEgressPool}}
}

// Load reads and parses the site file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("siteconf: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a site file; the error, if any, is a yamlpos.ErrorList.
func Parse(file string, data []byte) (*Config, error) {
	d := &yamlpos.Decoder{File: file}
	c := parse(d, data)
	if err := d.Err(); err != nil {
		return nil, err
	}
	c.File = file
	return c, nil
}

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	protoOf = map[string]uint8{"TCP": 6, "UDP": 17}
)

func here(n *yaml.Node, field string) pos { return pos{field: field, line: n.Line, column: n.Column} }

func name(d *yamlpos.Decoder, n *yaml.Node, field string) string {
	s, ok := d.Scalar(n, field)
	if ok && (len(s) > 63 || !nameRE.MatchString(s)) {
		d.Fail(n, field, "%q is not a valid name (lowercase letters, digits and '-', at most 63)", s)
	}
	return s
}

func parse(d *yamlpos.Decoder, data []byte) *Config {
	c := Empty()
	top := d.Document(data, "pools, services, egress, pods, globalServices, firewallPolicies or bgp")
	if top == nil {
		return c
	}
	f := d.Fields(top, "", "pools", "holdDown", "services", "egress", "pods", "globalServices", "firewallPolicies", "bgp")
	if f == nil {
		return c
	}
	if n := f["pools"]; n != nil {
		for i, pn := range d.List(n, "pools", "pools") {
			field := fmt.Sprintf("pools[%d]", i)
			pf := d.Fields(pn, field, "name", "kind", "cidr")
			if pf == nil {
				continue
			}
			d.Require(pn, pf, field, "name", "kind", "cidr")
			p := Pool{at: here(pn, field)}
			if v := pf["name"]; v != nil {
				p.Name = name(d, v, field+".name")
			}
			if v := pf["kind"]; v != nil {
				if k, ok := d.Scalar(v, field+".kind"); ok {
					p.Kind = natpool.Kind(k)
					if p.Kind != natpool.Ingress && p.Kind != natpool.Egress {
						d.Fail(v, field+".kind", "%q is neither ingress nor egress", k)
					}
				}
			}
			if v := pf["cidr"]; v != nil {
				p.CIDR = d.Prefix(v, field+".cidr")
			}
			c.Pools = append(c.Pools, p)
		}
	}
	if n := f["holdDown"]; n != nil {
		if h, ok := d.Duration(n, "holdDown"); ok {
			if h < 0 || h > maxHoldDown {
				d.Fail(n, "holdDown", "%s: want between 0s and %s", h, maxHoldDown)
			}
			c.HoldDown = h
		}
	}
	if n := f["services"]; n != nil {
		seen := map[string]int{}
		for i, sn := range d.List(n, "services", "services") {
			s := service(d, sn, fmt.Sprintf("services[%d]", i))
			key := s.Namespace + "/" + s.Name
			if j, dup := seen[key]; dup && s.Name != "" {
				d.Fail(sn, fmt.Sprintf("services[%d]", i), "service %s is exported twice (also services[%d], line %d)", key, j, c.Services[j].at.line)
			}
			seen[key] = i
			c.Services = append(c.Services, s)
		}
	}
	if n := f["egress"]; n != nil {
		ef := d.Fields(n, "egress", "pool", "rules")
		if v := ef["pool"]; v != nil {
			c.Egress.Pool = name(d, v, "egress.pool")
			c.Egress.at = here(v, "egress.pool")
		}
		if v := ef["rules"]; v != nil {
			seen := map[string]int{}
			for i, rn := range d.List(v, "egress.rules", "rules") {
				r := rule(d, rn, fmt.Sprintf("egress.rules[%d]", i))
				if j, dup := seen[r.Name]; dup && r.Name != "" {
					d.Fail(rn, r.at.field+".name", "rule %q is defined twice (also egress.rules[%d], line %d)", r.Name, j, c.Egress.Rules[j].at.line)
				}
				seen[r.Name] = i
				c.Egress.Rules = append(c.Egress.Rules, r)
			}
		}
	}
	if n := f["globalServices"]; n != nil {
		c.GlobalServices = globalServices(d, n)
	}
	if n := f["firewallPolicies"]; n != nil {
		c.Policies = firewallPolicies(d, n)
	}
	if n := f["bgp"]; n != nil {
		c.BGP = bgpSection(d, n)
	}
	if n := f["pods"]; n != nil {
		seen := map[netip.Addr]int{}
		for i, pn := range d.List(n, "pods", "pods") {
			field := fmt.Sprintf("pods[%d]", i)
			pf := d.Fields(pn, field, "namespace", "name", "ip", "labels")
			if pf == nil {
				continue
			}
			d.Require(pn, pf, field, "namespace", "name", "ip")
			var p natpool.Pod
			at := here(pn, field+".ip")
			if v := pf["namespace"]; v != nil {
				p.Namespace = name(d, v, field+".namespace")
			}
			if v := pf["name"]; v != nil {
				p.Name = name(d, v, field+".name")
			}
			if v := pf["ip"]; v != nil {
				at = here(v, field+".ip")
				p.IP = d.Addr(v, field+".ip")
				if j, dup := seen[p.IP]; dup && p.IP.IsValid() {
					d.Fail(v, field+".ip", "%s is also pods[%d]'s address", p.IP, j)
				}
				seen[p.IP] = i
			}
			if v := pf["labels"]; v != nil {
				p.Labels = d.StringMap(v, field+".labels")
			}
			c.Pods = append(c.Pods, p)
			c.podsAt = append(c.podsAt, at)
		}
	}
	return c
}

func service(d *yamlpos.Decoder, n *yaml.Node, field string) Service {
	s := Service{Pool: natpool.DefaultIngressPool, at: here(n, field)}
	f := d.Fields(n, field, "namespace", "name", "backend", "pool", "ports")
	if f == nil {
		return s
	}
	d.Require(n, f, field, "namespace", "name", "backend", "ports")
	if v := f["namespace"]; v != nil {
		s.Namespace = name(d, v, field+".namespace")
	}
	if v := f["name"]; v != nil {
		s.Name = name(d, v, field+".name")
	}
	if v := f["backend"]; v != nil {
		s.Backend = d.Addr(v, field+".backend")
	}
	if v := f["pool"]; v != nil {
		s.Pool = name(d, v, field+".pool")
	}
	if v := f["ports"]; v != nil {
		seen := map[[2]uint16]int{}
		items := d.List(v, field+".ports", "ports")
		if v.Kind == yaml.SequenceNode && len(items) == 0 {
			d.Fail(v, field+".ports", "empty: a service exports at least one port")
		}
		for i, pn := range items {
			pfield := fmt.Sprintf("%s.ports[%d]", field, i)
			pf := d.Fields(pn, pfield, "port", "protocol", "targetPort")
			if pf == nil {
				continue
			}
			d.Require(pn, pf, pfield, "port")
			p := Port{Protocol: protoOf["TCP"]}
			if x := pf["port"]; x != nil {
				p.Port = uint16(d.Int(x, pfield+".port", 1, 65535, "a port"))
			}
			p.TargetPort = p.Port
			if x := pf["targetPort"]; x != nil {
				p.TargetPort = uint16(d.Int(x, pfield+".targetPort", 1, 65535, "a port"))
			}
			if x := pf["protocol"]; x != nil {
				if ps, ok := d.Scalar(x, pfield+".protocol"); ok {
					proto, known := protoOf[strings.ToUpper(ps)]
					if !known {
						d.Fail(x, pfield+".protocol", "%q: want TCP or UDP", ps)
					}
					p.Protocol = proto
				}
			}
			k := [2]uint16{uint16(p.Protocol), p.Port}
			if j, dup := seen[k]; dup && p.Port != 0 {
				d.Fail(pn, pfield, "%s port %d is listed twice (also ports[%d])", protoName(p.Protocol), p.Port, j)
			}
			seen[k] = i
			s.Ports = append(s.Ports, p)
		}
	}
	return s
}

func rule(d *yamlpos.Decoder, n *yaml.Node, field string) Rule {
	r := Rule{EgressRule: natpool.EgressRule{Pool: natpool.DefaultEgressPool}, at: here(n, field)}
	f := d.Fields(n, field, "name", "namespace", "podSelector", "pool")
	if f == nil {
		return r
	}
	d.Require(n, f, field, "name")
	if v := f["name"]; v != nil {
		r.Name = name(d, v, field+".name")
	}
	if v := f["namespace"]; v != nil {
		r.Namespace = name(d, v, field+".namespace")
	}
	if v := f["podSelector"]; v != nil {
		r.Selector = d.StringMap(v, field+".podSelector")
	}
	if v := f["pool"]; v != nil {
		r.Pool = name(d, v, field+".pool")
	}
	if r.Namespace == "" && len(r.Selector) == 0 {
		d.Fail(n, field, "selects every pod: give a namespace or a podSelector (egress.pool sets the address of all the others)")
	}
	return r
}

func protoName(p uint8) string {
	for k, v := range protoOf {
		if v == p {
			return k
		}
	}
	return fmt.Sprint(p)
}

// ProtoName is "TCP" or "UDP".
func ProtoName(p uint8) string { return protoName(p) }

// EffectivePools are the pools the site uses: the file's, or the defaults
// cut from its block.
func (c *Config) EffectivePools(block netip.Prefix) []natpool.Pool {
	if len(c.Pools) == 0 {
		return natpool.DefaultPools(block)
	}
	out := make([]natpool.Pool, len(c.Pools))
	for i, p := range c.Pools {
		out[i] = p.Pool
	}
	return out
}

// Check validates the file against the site it belongs to: pools inside
// its block and clear of its real CIDRs and of the gateway's own address,
// backends and pods inside its real CIDRs, and every pool a service or
// rule names existing, of the right kind. The error is a yamlpos.ErrorList.
func (c *Config) Check(site string, block netip.Prefix, cidrs []netip.Prefix, keep []netip.Addr) error {
	d := &yamlpos.Decoder{File: c.File}
	fail := func(at pos, format string, args ...any) {
		d.Errs = append(d.Errs, &yamlpos.Error{File: c.File, Line: at.line, Column: at.column, Field: at.field, Msg: fmt.Sprintf(format, args...)})
	}
	pools := c.EffectivePools(block)
	// Check pool by pool, so each problem lands on its pool's line; the
	// default pools, which no line defines, too.
	for i, p := range pools {
		at := pos{field: "pools (default)"}
		if i < len(c.Pools) {
			at = c.Pools[i].at
		}
		for _, err := range natpool.CheckPools(block, cidrs, keep, pools[:i+1]) {
			if strings.HasPrefix(err.Error(), fmt.Sprintf("pool %q", p.Name)) {
				fail(at, "%v", strings.TrimPrefix(err.Error(), fmt.Sprintf("pool %q: ", p.Name)))
			}
		}
	}
	kind := map[string]natpool.Kind{}
	var names []string
	for _, p := range pools {
		kind[p.Name] = p.Kind
		names = append(names, p.Name)
	}
	want := func(at pos, pool string, k natpool.Kind) {
		switch got, ok := kind[pool]; {
		case !ok:
			fail(at, "pool %q does not exist (pools: %s)", pool, strings.Join(names, ", "))
		case got != k:
			fail(at, "pool %q is an %s pool; this needs an %s pool", pool, got, k)
		}
	}
	inside := func(a netip.Addr) bool {
		for _, p := range cidrs {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	for _, s := range c.Services {
		want(pos{s.at.field + ".pool", s.at.line, s.at.column}, s.Pool, natpool.Ingress)
		if s.Backend.IsValid() && !inside(s.Backend) {
			fail(pos{s.at.field + ".backend", s.at.line, s.at.column}, "%s is not in %s's real CIDRs (%s)", s.Backend, site, prefixes(cidrs))
		}
	}
	at := c.Egress.at
	if at.field == "" {
		at = pos{field: "egress.pool (default)"}
	}
	want(at, c.Egress.Pool, natpool.Egress)
	for _, r := range c.Egress.Rules {
		want(pos{r.at.field + ".pool", r.at.line, r.at.column}, r.Pool, natpool.Egress)
	}
	for i, p := range c.Pods {
		if p.IP.IsValid() && !inside(p.IP) {
			fail(c.podsAt[i], "%s is not in %s's real CIDRs (%s)", p.IP, site, prefixes(cidrs))
		}
	}
	return d.Err()
}

func prefixes(ps []netip.Prefix) string {
	if len(ps) == 0 {
		return "none"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

// Rules returns the egress rules.
func (c *Config) Rules() []natpool.EgressRule {
	out := make([]natpool.EgressRule, len(c.Egress.Rules))
	for i, r := range c.Egress.Rules {
		out[i] = r.EgressRule
	}
	return out
}
