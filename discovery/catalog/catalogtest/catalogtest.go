// Package catalogtest makes meshes of cluster identities for tests and
// benchmarks: a CA, certificates, and catalogs that trust them.
package catalogtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/netip"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
)

// Mesh is a certificate authority and the clusters it certified.
type Mesh struct {
	CA  *catalog.CA
	Now func() time.Time
}

// NewMesh makes a mesh with a fresh CA on the wall clock.
func NewMesh() (*Mesh, error) {
	ca, err := catalog.NewCA()
	if err != nil {
		return nil, err
	}
	return &Mesh{CA: ca, Now: time.Now}, nil
}

// Block is the i-th /20 of the default global CIDR 242.0.0.0/8 (4,096 of
// them): distinct blocks for meshes of any size a test makes.
func Block(i int) netip.Prefix {
	if i < 0 || i >= 1<<12 {
		panic(fmt.Sprintf("catalogtest: block %d out of range", i))
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{242, byte(i >> 4), byte(i&15) << 4, 0}), 20)
}

// Identity certifies a fresh signing key as cluster name's, with block.
func (m *Mesh) Identity(name string, block netip.Prefix) (catalog.Identity, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return catalog.Identity{}, err
	}
	return catalog.Identity{Cert: m.CA.Issue(name, block, pub, m.Now().Add(-time.Minute), 24*time.Hour), Key: priv}, nil
}

// Catalog makes the catalog of cluster name, whose block is the i-th.
func (m *Mesh) Catalog(name string, i int) (*catalog.Catalog, error) {
	id, err := m.Identity(name, Block(i))
	if err != nil {
		return nil, err
	}
	return catalog.New(catalog.Options{CA: m.CA.Public, Identity: id, Now: m.Now})
}

// Cluster is a plausible record for a cluster with the given block.
func Cluster(block netip.Prefix) catalog.Cluster {
	return catalog.Cluster{
		PublicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
		Endpoints: []string{"198.18.0.2:51820"},
		Block:     block,
		CIDRs:     []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
	}
}

// Service is a one-port service at addr with ready backends.
func Service(ns, name string, addr netip.Addr, ready int) catalog.Service {
	return catalog.Service{Namespace: ns, Name: name, Addr: addr, Ready: ready,
		Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 80}}}
}
