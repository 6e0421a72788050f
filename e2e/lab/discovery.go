package lab

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/trustfile"
	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/gateway/meshconf"
)

// DNSPort is where lab gateways answer clusterset.local, on every address.
const DNSPort = 53

// DiscoveryDoc is the discovery section of a gateway's mesh file.
type DiscoveryDoc struct {
	CA         string   `yaml:"ca" json:"ca"`
	GossipKeys []string `yaml:"gossipKeys" json:"gossipKeys"`
	Bind       string   `yaml:"bind,omitempty" json:"bind,omitempty"`
	Seeds      []string `yaml:"seeds,omitempty" json:"seeds,omitempty"`
	DNS        string   `yaml:"dns,omitempty" json:"dns,omitempty"`
	Region     string   `yaml:"region,omitempty" json:"region,omitempty"`
}

// MeshFileOf is the mesh file a site's gateway runs on: its own with
// discovery, the lab's shared one without.
func (l *Lab) MeshFileOf(site string) string {
	if l.Discovery {
		return filepath.Join(l.Dir, site, "mesh.yaml")
	}
	return l.MeshFile()
}

// writeDiscovery sets the mesh up the way an operator would for
// discovery: a CA (`strait ca init`), an identity per strait site (`strait
// ca issue`), one gossip key, and per gateway a mesh file with only what
// cannot be learned: its own site, the plain WireGuard sites (they do not
// gossip), the CA, the key, and the other gateways as seeds.
func (l *Lab) writeDiscovery(full MeshDoc) error {
	ca, err := catalog.NewCA()
	if err != nil {
		return err
	}
	if err := trustfile.SaveCA(filepath.Join(l.Dir, "ca.json"), ca); err != nil {
		return err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	plain := map[string]bool{}
	for _, s := range l.Topology.Sites {
		plain[s.Name] = s.Kind == KindWireGuard
	}
	gossipAddr := func(site string) string {
		return netip.AddrPortFrom(l.edge(site).WAN, meshconf.DefaultGossipPort).String()
	}
	for _, s := range l.Topology.Sites {
		if plain[s.Name] {
			continue
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		id := catalog.Identity{Cert: ca.Issue(s.Name, s.Block, pub, time.Now().Add(-time.Minute), 365*24*time.Hour), Key: priv}
		if err := trustfile.SaveIdentity(filepath.Join(l.Dir, s.Name, gateway.IdentityName), id); err != nil {
			return err
		}
		doc := MeshDoc{GlobalCIDR: full.GlobalCIDR, LoadBalancer: full.LoadBalancer, Discovery: &DiscoveryDoc{
			CA: catalog.EncodeKey(ca.Public), GossipKeys: []string{catalog.EncodeKey(key)},
			DNS: ":" + strconv.Itoa(DNSPort),
		}}
		for _, o := range l.Topology.Sites {
			if o.Name != s.Name && !plain[o.Name] {
				doc.Discovery.Seeds = append(doc.Discovery.Seeds, gossipAddr(o.Name))
			}
		}
		for _, ms := range full.Sites {
			if ms.Name == s.Name || plain[ms.Name] {
				doc.Sites = append(doc.Sites, ms)
			}
		}
		data, err := yaml.Marshal(doc)
		if err != nil {
			return err
		}
		header := fmt.Sprintf("# strait mesh configuration of %s in lab %q: itself and the plain WireGuard sites; the rest is learned.\n", s.Name, l.Run)
		if err := writeFileAtomic(l.MeshFileOf(s.Name), append([]byte(header), data...), 0o644); err != nil {
			return err
		}
	}
	return nil
}
