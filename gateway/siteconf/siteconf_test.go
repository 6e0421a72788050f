package siteconf

import (
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/straitnet/strait/gateway/bgp"
	"github.com/straitnet/strait/gateway/internal/yamlpos"
	"github.com/straitnet/strait/natpool"
)

const good = `
pools:
  - {name: ingress, kind: ingress, cidr: 242.1.128.0/17}
  - {name: egress, kind: egress, cidr: 242.1.1.0/24}
  - {name: pci, kind: egress, cidr: 242.1.2.0/28}
holdDown: 2m
services:
  - namespace: default
    name: web
    backend: 10.0.1.10
    ports:
      - {port: 80, targetPort: 7777}
      - {port: 53, protocol: udp, targetPort: 5353}
  - {namespace: shop, name: db, backend: 10.96.0.12, pool: ingress, ports: [{port: 5432}]}
egress:
  pool: egress
  rules:
    - {name: payments, namespace: payments, podSelector: {app: api}, pool: pci}
pods:
  - {namespace: payments, name: api-1, ip: 10.0.2.10, labels: {app: api}}
`

var (
	block = netip.MustParsePrefix("242.1.0.0/16")
	cidrs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.96.0.0/12")}
	keep  = []netip.Addr{netip.MustParseAddr("242.1.0.1")}
)

func TestParseGood(t *testing.T) {
	c, err := Parse("site.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Check("cloud-b", block, cidrs, keep); err != nil {
		t.Fatal(err)
	}
	if c.HoldDown != 2*time.Minute || len(c.EffectivePools(block)) != 3 {
		t.Errorf("hold-down %s, pools %v", c.HoldDown, c.EffectivePools(block))
	}
	web := c.Services[0]
	if web.Pool != "ingress" || len(web.Ports) != 2 || web.Ports[0] != (Port{6, 80, 7777}) || web.Ports[1] != (Port{17, 53, 5353}) {
		t.Errorf("web = %+v", web)
	}
	if db := c.Services[1]; db.Ports[0] != (Port{6, 5432, 5432}) {
		t.Errorf("db = %+v", db)
	}
	r := c.Rules()
	if len(r) != 1 || r[0].Pool != "pci" || r[0].Selector["app"] != "api" {
		t.Errorf("rules %+v", r)
	}
	if len(c.Pods) != 1 || c.Pods[0].Labels["app"] != "api" {
		t.Errorf("pods %+v", c.Pods)
	}
}

func TestEmptyUsesDefaultPools(t *testing.T) {
	c := Empty()
	if err := c.Check("x", block, cidrs, keep); err != nil {
		t.Fatal(err)
	}
	if got := c.EffectivePools(block); len(got) != 2 || got[0].Name != natpool.DefaultEgressPool {
		t.Errorf("pools %v", got)
	}
}

func TestParseBGP(t *testing.T) {
	c, err := Parse("site.yaml", []byte(`
bgp:
  asn: 64512
  routerID: 172.31.0.1
  holdTime: 9s
  gracefulRestart: {restartTime: 60s}
  peers:
    - {name: dc-router, address: 172.31.0.254, asn: 64513}
  import:
    - {prefix: 172.16.0.0/12, maxLength: 24}
  export:
    - {prefix: 242.0.0.0/8, maxLength: 32}
    - {prefix: 192.168.0.0/16}
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &bgp.Config{
		ASN: 64512, RouterID: netip.MustParseAddr("172.31.0.1"), HoldTime: 9 * time.Second, RestartTime: time.Minute,
		Peers:  []bgp.Peer{{Name: "dc-router", Address: netip.MustParseAddr("172.31.0.254"), ASN: 64513}},
		Import: []bgp.PrefixRule{{Prefix: netip.MustParsePrefix("172.16.0.0/12"), MaxLength: 24}},
		Export: []bgp.PrefixRule{{Prefix: netip.MustParsePrefix("242.0.0.0/8"), MaxLength: 32}, {Prefix: netip.MustParsePrefix("192.168.0.0/16")}},
	}
	if !reflect.DeepEqual(c.BGP, want) {
		t.Errorf("got %+v\nwant %+v", c.BGP, want)
	}
}

func TestRefuses(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"pool outside the block", "pools: [{name: in, kind: ingress, cidr: 242.2.0.0/24}]", `site.yaml:1:9: pools[0]: 242.2.0.0/24 is outside the site's block 242.1.0.0/16`},
		{"pool overlaps another", "pools: [{name: a, kind: ingress, cidr: 242.1.128.0/24}, {name: b, kind: egress, cidr: 242.1.128.0/25}]", `pools[1]: 242.1.128.0/25 overlaps pool "a"`},
		{"pool holds the gateway", "pools: [{name: a, kind: ingress, cidr: 242.1.0.0/24}]", `holds the gateway's own address 242.1.0.1`},
		{"unknown kind", "pools: [{name: a, kind: snat, cidr: 242.1.0.0/24}]", `pools[0].kind: "snat" is neither ingress nor egress`},
		{"service names a missing pool", "services: [{namespace: d, name: w, backend: 10.0.1.1, pool: nope, ports: [{port: 80}]}]", `services[0].pool: pool "nope" does not exist (pools: egress, ingress)`},
		{"service names an egress pool", "services: [{namespace: d, name: w, backend: 10.0.1.1, pool: egress, ports: [{port: 80}]}]", `pool "egress" is an egress pool; this needs an ingress pool`},
		{"backend outside the site", "services: [{namespace: d, name: w, backend: 10.9.1.1, ports: [{port: 80}]}]", `services[0].backend: 10.9.1.1 is not in cloud-b's real CIDRs (10.0.0.0/16, 10.96.0.0/12)`},
		{"port twice", "services: [{namespace: d, name: w, backend: 10.0.1.1, ports: [{port: 80}, {port: 80, protocol: TCP}]}]", `TCP port 80 is listed twice`},
		{"bad protocol", "services: [{namespace: d, name: w, backend: 10.0.1.1, ports: [{port: 80, protocol: ICMP}]}]", `"ICMP": want TCP or UDP`},
		{"bad port", "services: [{namespace: d, name: w, backend: 10.0.1.1, ports: [{port: 70000}]}]", `"70000" is not a port`},
		{"no ports", "services: [{namespace: d, name: w, backend: 10.0.1.1, ports: []}]", `exports at least one port`},
		{"service twice", "services: [{namespace: d, name: w, backend: 10.0.1.1, ports: [{port: 1}]}, {namespace: d, name: w, backend: 10.0.1.2, ports: [{port: 1}]}]", `service d/w is exported twice`},
		{"rule selects everything", "egress: {rules: [{name: all}]}", `selects every pod`},
		{"rule names a missing pool", "egress: {rules: [{name: r, namespace: x, pool: nope}]}", `egress.rules[0].pool: pool "nope" does not exist`},
		{"egress default an ingress pool", "egress: {pool: ingress}", `site.yaml:1:16: egress.pool: pool "ingress" is an ingress pool`},
		{"pod outside the site", "pods: [{namespace: a, name: b, ip: 192.168.1.1}]", `site.yaml:1:36: pods[0].ip: 192.168.1.1 is not in cloud-b's real CIDRs`},
		{"unknown field", "service: []", `unknown field (known fields: pools, holdDown, services, egress, pods, globalServices, firewallPolicies, bgp)`},
		{"bad hold-down", "holdDown: forever", `"forever" is not a duration`},
		{"bgp without peers", "bgp: {asn: 64512, routerID: 10.0.0.1, peers: []}", `bgp: peers: at least one is required`},
		{"bgp peer twice", "bgp: {asn: 64512, routerID: 10.0.0.1, peers: [{name: a, address: 10.0.0.2, asn: 1}, {name: b, address: 10.0.0.2, asn: 1}]}", `peers[1].address: 10.0.0.2 appears twice`},
		{"bgp asn", "bgp: {asn: 0, routerID: 10.0.0.1, peers: [{name: a, address: 10.0.0.2, asn: 1}]}", `bgp.asn: "0" is not an AS number`},
		{"bgp router ID", "bgp: {asn: 1, routerID: nope, peers: [{name: a, address: 10.0.0.2, asn: 1}]}", `bgp.routerID: "nope"`},
		{"bgp import length", "bgp: {asn: 1, routerID: 10.0.0.1, peers: [{name: a, address: 10.0.0.2, asn: 1}], import: [{prefix: 172.16.0.0/12, maxLength: 8}]}", `bgp.import[0].maxLength: "8" is not a prefix length (12-32)`},
		{"bgp restart time", "bgp: {asn: 1, routerID: 10.0.0.1, gracefulRestart: {restartTime: 2h}, peers: [{name: a, address: 10.0.0.2, asn: 1}]}", `gracefulRestart.restartTime: 2h0m0s is outside 1s to 4095s`},
		{"bgp unknown field", "bgp: {asn: 1, routerID: 10.0.0.1, peers: [{name: a, address: 10.0.0.2, asn: 1, password: x}]}", `bgp.peers[0].password: unknown field`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("site.yaml", []byte(tt.in))
			if err == nil {
				err = c.Check("cloud-b", block, cidrs, keep)
			}
			var list yamlpos.ErrorList
			if !errors.As(err, &list) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v\nwant an error list saying %q", err, tt.want)
			}
		})
	}
}

// FuzzParse checks that no input panics the parser, and that what it
// accepts and Check passes keeps the invariants the gateway relies on.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("pools: [{name: a, kind: ingress, cidr: 242.1.0.0/24}]\nservices: [{namespace: d, name: w, backend: 10.0.1.1, ports: [{port: 1}]}]"))
	f.Add([]byte("egress: {rules: [{name: r, podSelector: {a: b}}]}"))
	f.Add([]byte(meshPolicyDoc))
	f.Add([]byte("bgp: {asn: 64512, routerID: 10.0.0.1, peers: [{name: r, address: 10.0.0.2, asn: 64513}], import: [{prefix: 172.16.0.0/12, maxLength: 24}]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		if c.BGP != nil {
			// What the parser takes, the speaker takes.
			if err := c.BGP.Validate(); err != nil {
				t.Fatalf("bgp section accepted that does not validate: %v", err)
			}
		}
		if c.Check("x", block, cidrs, keep) != nil {
			return
		}
		pools := c.EffectivePools(block)
		for i, p := range pools {
			if !block.Contains(p.CIDR.Addr()) || p.CIDR.Bits() < block.Bits() {
				t.Fatalf("pool %s outside the block accepted", p.CIDR)
			}
			for _, q := range pools[:i] {
				if p.CIDR.Overlaps(q.CIDR) {
					t.Fatalf("overlapping pools %s, %s accepted", p.CIDR, q.CIDR)
				}
			}
		}
		seen := map[string]bool{}
		for _, s := range c.Services {
			if seen[s.Namespace+"/"+s.Name] || len(s.Ports) == 0 {
				t.Fatalf("service %s/%s accepted twice or without ports", s.Namespace, s.Name)
			}
			seen[s.Namespace+"/"+s.Name] = true
		}
		// Whatever is declared for the mesh validates: the catalog
		// would refuse it otherwise.
		for _, g := range c.GlobalServices {
			if errs := g.Validate(); len(errs) > 0 {
				t.Fatalf("global service accepted with %v", errs)
			}
		}
		for _, p := range c.Policies {
			if errs := p.Validate(); len(errs) > 0 {
				t.Fatalf("policy accepted with %v", errs)
			}
		}
	})
}

const meshPolicyDoc = `
globalServices:
- namespace: default
  name: web
  vip: 242.255.0.10
  weights: {cloud-a: 200, cloud-b: 0}
  locality: region
  healthCheck: {protocol: HTTP, path: /healthz, interval: 400ms, timeout: 100ms, unhealthyAfter: 3}
firewallPolicies:
- name: protect-db
  priority: 10
  dryRun: true
  rules:
  - name: no-cloud-b
    action: deny
    from: [{cluster: cloud-b, namespace: batch, labels: {app: etl}}]
    to: [{namespace: default, service: db, cluster: onprem, ports: [{protocol: TCP, port: 5432}]}]
  - action: allow
`

func TestParseMeshPolicy(t *testing.T) {
	c, err := Parse("site.yaml", []byte(meshPolicyDoc))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.GlobalServices) != 1 || len(c.Policies) != 1 {
		t.Fatalf("declared %+v %+v", c.GlobalServices, c.Policies)
	}
	g, p := c.GlobalServices[0], c.Policies[0]
	if g.VIP.String() != "242.255.0.10" || g.Weights["cloud-b"] != 0 || g.Locality != "region" || g.HealthCheck.Path != "/healthz" ||
		time.Duration(g.HealthCheck.Interval) != 400*time.Millisecond || g.HealthCheck.UnhealthyAfter != 3 {
		t.Errorf("global service %+v", g)
	}
	if !p.DryRun || len(p.Rules) != 2 || p.Rules[0].From[0].Labels["app"] != "etl" || p.Rules[0].To[0].Ports[0].Port != 5432 || p.RuleName(1) != "protect-db/#1" {
		t.Errorf("policy %+v", p)
	}
	for _, tt := range []struct{ doc, want string }{
		{"globalServices: [{namespace: default, name: web, vip: nope}]", "globalServices[0]"},
		{"globalServices: [{namespace: default, name: web, bogus: 1}]", "field bogus not found"},
		{"globalServices: [{namespace: default, name: web}, {namespace: default, name: web}]", "declared twice"},
		{"firewallPolicies: [{name: p, rules: [{action: maybe}]}]", `firewallPolicies[0].rules[0].action: "maybe" is not allow or deny`},
		{"firewallPolicies: [{name: p, rules: []}]", "at least one rule"},
	} {
		if _, err := Parse("site.yaml", []byte(tt.doc)); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.doc, err, tt.want)
		}
	}
}
