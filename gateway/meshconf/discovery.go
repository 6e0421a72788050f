package meshconf

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"

	"gopkg.in/yaml.v3"
)

// DefaultGossipPort is where gateways gossip (memberlist's usual port).
const DefaultGossipPort = 7946

// Discovery is the mesh file's discovery section. With it, a gateway
// learns the other strait sites from the gossip catalog instead of the
// file: the file keeps what cannot be learned (the site itself, the mesh's
// CA, the gossip keys, some peers to join through) and the plain WireGuard
// sites, which do not gossip.
type Discovery struct {
	// CA is the public key of the mesh's certificate authority (`strait ca
	// init` prints it).
	CA ed25519.PublicKey
	// Identity is the file of the cluster's certificate and signing key
	// (`strait ca issue`); empty means identity.json in the state directory.
	Identity string
	// GossipKeys encrypt gossip (AES, 16, 24 or 32 bytes). The first
	// encrypts what is sent; all of them decrypt, which is how keys rotate:
	// add the new one second, then make it first, then remove the old.
	GossipKeys [][]byte
	// Bind is where the gateway gossips ("host:port", UDP and TCP);
	// default 0.0.0.0:7946.
	Bind string
	// Advertise is the address peers reach Bind at; default the host of
	// the site's endpoint when it is an IP address, with Bind's port.
	Advertise string
	// Seeds are gateways to join through ("host:port"); any one that
	// answers is enough. The first gateway of a mesh has none.
	Seeds []string
	// DNS is where the gateway answers clusterset.local ("host:port");
	// empty means no DNS server.
	DNS string
	// Region places the cluster, for locality.
	Region string
}

var discoveryFields = []string{"ca", "identity", "gossipKeys", "bind", "advertise", "seeds", "dns", "region"}

func (d *decoder) discovery(n *yaml.Node) *Discovery {
	const field = "discovery"
	f := d.Fields(n, field, discoveryFields...)
	if f == nil {
		return nil
	}
	d.Require(n, f, field, "ca", "gossipKeys")
	disc := &Discovery{Bind: net.JoinHostPort("0.0.0.0", strconv.Itoa(DefaultGossipPort))}
	if v := f["ca"]; v != nil {
		if s, ok := d.Scalar(v, field+".ca"); ok {
			k, err := base64.StdEncoding.DecodeString(s)
			if err != nil || len(k) != ed25519.PublicKeySize {
				d.Fail(v, field+".ca", "not the CA's public key (%d bytes of base64, as `strait ca init` prints)", ed25519.PublicKeySize)
			} else {
				disc.CA = k
			}
		}
	}
	if v := f["identity"]; v != nil {
		disc.Identity, _ = d.Scalar(v, field+".identity")
	}
	if v := f["gossipKeys"]; v != nil {
		items := d.List(v, field+".gossipKeys", "base64 keys")
		for i, kn := range items {
			kf := fmt.Sprintf("%s.gossipKeys[%d]", field, i)
			s, ok := d.Scalar(kn, kf)
			if !ok {
				continue
			}
			k, err := base64.StdEncoding.DecodeString(s)
			switch {
			case err != nil:
				d.Fail(kn, kf, "not base64")
			case len(k) != 16 && len(k) != 24 && len(k) != 32:
				d.Fail(kn, kf, "%d bytes; a gossip key has 16, 24 or 32 (`head -c32 /dev/urandom | base64`)", len(k))
			case slices.ContainsFunc(disc.GossipKeys, func(o []byte) bool { return string(o) == string(k) }):
				d.Fail(kn, kf, "listed twice")
			default:
				disc.GossipKeys = append(disc.GossipKeys, k)
			}
		}
		if v.Kind == yaml.SequenceNode && len(items) == 0 {
			d.Fail(v, field+".gossipKeys", "empty: gossip is always encrypted; give at least one key")
		}
	}
	hostPort := func(key string, listen bool) string {
		v := f[key]
		if v == nil {
			return ""
		}
		s, ok := d.Scalar(v, field+"."+key)
		if !ok {
			return ""
		}
		if err := checkHostPort(s, listen); err != nil {
			d.Fail(v, field+"."+key, "%q: %v", s, err)
			return ""
		}
		host, port, _ := net.SplitHostPort(s)
		if host == "" {
			return net.JoinHostPort("0.0.0.0", port)
		}
		if _, err := netip.ParseAddr(host); err != nil && key != "dns" {
			d.Fail(v, field+"."+key, "%q: want an IP address, not a name: gossip binds and advertises addresses", s)
			return ""
		}
		return s
	}
	if s := hostPort("bind", true); s != "" {
		disc.Bind = s
	}
	disc.Advertise = hostPort("advertise", false)
	disc.DNS = hostPort("dns", true)
	if v := f["seeds"]; v != nil {
		for i, sn := range d.List(v, field+".seeds", "host:port addresses") {
			sf := fmt.Sprintf("%s.seeds[%d]", field, i)
			if s, ok := d.Scalar(sn, sf); ok {
				if err := checkHostPort(s, false); err != nil {
					d.Fail(sn, sf, "%q: %v", s, err)
					continue
				}
				disc.Seeds = append(disc.Seeds, s)
			}
		}
	}
	if v := f["region"]; v != nil {
		if s, ok := d.Scalar(v, field+".region"); ok {
			if len(s) > 63 || !nameRE.MatchString(s) {
				d.Fail(v, field+".region", "%q is not a region name (lowercase letters, digits and '-')", s)
			}
			disc.Region = s
		}
	}
	return disc
}

// checkHostPort checks "host:port" of a peer, or of a listener (whose host
// may be empty: every address).
func checkHostPort(s string, listen bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port, such as 198.18.0.2:%d", DefaultGossipPort)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q is not a port (1-65535)", port)
	}
	if host == "" && !listen {
		return fmt.Errorf("host is empty")
	}
	return nil
}

// AdvertiseAddr is where peers reach this gateway's gossip: Advertise, or
// the endpoint's host with Bind's port, or empty to let memberlist pick.
func (disc *Discovery) AdvertiseAddr(self *Site) string {
	if disc.Advertise != "" {
		return disc.Advertise
	}
	if self == nil || self.Endpoint == "" {
		return ""
	}
	host, _, err := net.SplitHostPort(self.Endpoint)
	if err != nil {
		return ""
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return ""
	}
	_, port, _ := net.SplitHostPort(disc.Bind)
	return net.JoinHostPort(host, port)
}
