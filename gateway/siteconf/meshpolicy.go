package siteconf

import (
	"bytes"
	"fmt"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/internal/yamlpos"
)

// The site file's globalServices and firewallPolicies sections are the file
// source of mesh policy for sites without Kubernetes: what they declare,
// the gateway publishes to the whole mesh, as it does GlobalService and
// FirewallPolicy objects. Their fields are the objects' specs, with the
// name (and namespace) inline.

// globalServices parses the globalServices section.
func globalServices(d *yamlpos.Decoder, n *yaml.Node) []meshpolicy.GlobalService {
	var out []meshpolicy.GlobalService
	seen := map[string]int{}
	for i, item := range d.List(n, "globalServices", "global services") {
		field := fmt.Sprintf("globalServices[%d]", i)
		var g meshpolicy.GlobalService
		if !strict(d, item, field, &g) {
			continue
		}
		for _, e := range g.Validate() {
			d.Fail(item, field+"."+e.Field, "%s", e.Msg)
		}
		if j, dup := seen[g.Key()]; dup {
			d.Fail(item, field, "global service %s is declared twice (also globalServices[%d])", g.Key(), j)
		}
		seen[g.Key()] = i
		out = append(out, g)
	}
	return out
}

// firewallPolicies parses the firewallPolicies section.
func firewallPolicies(d *yamlpos.Decoder, n *yaml.Node) []meshpolicy.Policy {
	var out []meshpolicy.Policy
	seen := map[string]int{}
	for i, item := range d.List(n, "firewallPolicies", "policies") {
		field := fmt.Sprintf("firewallPolicies[%d]", i)
		var p meshpolicy.Policy
		if !strict(d, item, field, &p) {
			continue
		}
		for _, e := range p.Validate() {
			d.Fail(item, field+"."+e.Field, "%s", e.Msg)
		}
		if j, dup := seen[p.Name]; dup {
			d.Fail(item, field, "policy %s is declared twice (also firewallPolicies[%d])", p.Name, j)
		}
		seen[p.Name] = i
		out = append(out, p)
	}
	return out
}

// strict decodes a node into v, refusing fields v does not have. Errors
// land on the node, with yaml's message (whose line numbers count from
// the node).
func strict(d *yamlpos.Decoder, n *yaml.Node, field string, v any) bool {
	b, err := yaml.Marshal(n)
	if err == nil {
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		err = dec.Decode(v)
	}
	if err != nil {
		d.Fail(n, field, "%v", err)
		return false
	}
	return true
}
