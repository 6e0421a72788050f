package siteconf

import (
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/gateway/bgp"
	"github.com/straitnet/strait/gateway/internal/yamlpos"
)

// bgpSection reads the bgp section: the gateway's BGP speaker, its peers
// (the site's routers) and its prefix filters.
func bgpSection(d *yamlpos.Decoder, n *yaml.Node) *bgp.Config {
	f := d.Fields(n, "bgp", "asn", "routerID", "listenPort", "holdTime", "gracefulRestart", "peers", "import", "export")
	if f == nil {
		return nil
	}
	d.Require(n, f, "bgp", "asn", "routerID", "peers")
	c := &bgp.Config{}
	if v := f["asn"]; v != nil {
		c.ASN = uint32(d.Int(v, "bgp.asn", 1, 1<<32-1, "an AS number"))
	}
	if v := f["routerID"]; v != nil {
		c.RouterID = d.Addr(v, "bgp.routerID")
	}
	if v := f["listenPort"]; v != nil {
		c.ListenPort = d.Int(v, "bgp.listenPort", -1, 65535, "a port (-1: do not listen)")
	}
	if v := f["holdTime"]; v != nil {
		c.HoldTime, _ = d.Duration(v, "bgp.holdTime")
	}
	if v := f["gracefulRestart"]; v != nil {
		if gf := d.Fields(v, "bgp.gracefulRestart", "restartTime"); gf != nil && gf["restartTime"] != nil {
			c.RestartTime, _ = d.Duration(gf["restartTime"], "bgp.gracefulRestart.restartTime")
		}
	}
	if v := f["peers"]; v != nil {
		for i, pn := range d.List(v, "bgp.peers", "peers") {
			field := fmt.Sprintf("bgp.peers[%d]", i)
			pf := d.Fields(pn, field, "name", "address", "asn", "port")
			if pf == nil {
				continue
			}
			d.Require(pn, pf, field, "name", "address", "asn")
			var p bgp.Peer
			if x := pf["name"]; x != nil {
				p.Name = name(d, x, field+".name")
			}
			if x := pf["address"]; x != nil {
				p.Address = d.Addr(x, field+".address")
			}
			if x := pf["asn"]; x != nil {
				p.ASN = uint32(d.Int(x, field+".asn", 1, 1<<32-1, "an AS number"))
			}
			if x := pf["port"]; x != nil {
				p.Port = uint16(d.Int(x, field+".port", 1, 65535, "a port"))
			}
			c.Peers = append(c.Peers, p)
		}
	}
	c.Import = prefixRules(d, f["import"], "bgp.import")
	c.Export = prefixRules(d, f["export"], "bgp.export")
	if d.Err() == nil {
		if err := c.Validate(); err != nil {
			d.Fail(n, "bgp", "%s", strings.TrimPrefix(err.Error(), "bgp: "))
		}
	}
	return c
}

func prefixRules(d *yamlpos.Decoder, n *yaml.Node, field string) []bgp.PrefixRule {
	if n == nil {
		return nil
	}
	var out []bgp.PrefixRule
	for i, rn := range d.List(n, field, "prefix rules") {
		at := fmt.Sprintf("%s[%d]", field, i)
		rf := d.Fields(rn, at, "prefix", "maxLength")
		if rf == nil {
			continue
		}
		d.Require(rn, rf, at, "prefix")
		var r bgp.PrefixRule
		if v := rf["prefix"]; v != nil {
			r.Prefix = d.Prefix(v, at+".prefix")
		}
		if v := rf["maxLength"]; v != nil {
			r.MaxLength = d.Int(v, at+".maxLength", max(r.Prefix.Bits(), 0), 32, "a prefix length")
		}
		out = append(out, r)
	}
	return out
}
