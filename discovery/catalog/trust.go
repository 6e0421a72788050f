package catalog

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The trust model. A mesh has one certificate authority: an Ed25519 key
// pair whose private half stays with the mesh's administrators and whose
// public half every gateway trusts. The CA issues each cluster a
// certificate binding the cluster's name and block to the cluster's own
// signing key. A gateway signs every record it publishes with its cluster's
// key and publishes its certificate in its cluster record; every gateway
// verifies both before it accepts a record. So a gateway can publish only
// for its own cluster, only the block it was given, and a forged record is
// told apart by its signature.

// CA is a mesh's certificate authority.
type CA struct {
	Public  ed25519.PublicKey
	private ed25519.PrivateKey
}

// NewCA makes a certificate authority.
func NewCA() (*CA, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("catalog: %w", err)
	}
	return &CA{Public: pub, private: priv}, nil
}

// CAFromPrivate rebuilds a CA from its private key.
func CAFromPrivate(priv ed25519.PrivateKey) *CA {
	return &CA{Public: priv.Public().(ed25519.PublicKey), private: priv}
}

// Private is the CA's private key, for keeping it.
func (ca *CA) Private() ed25519.PrivateKey { return ca.private }

// Certificate says that Key speaks for cluster Cluster, whose block is
// Block, between NotBefore and NotAfter.
type Certificate struct {
	Cluster   string            `json:"cluster"`
	Block     netip.Prefix      `json:"block"`
	Key       ed25519.PublicKey `json:"key"`
	NotBefore time.Time         `json:"notBefore"`
	NotAfter  time.Time         `json:"notAfter"`
	Sig       []byte            `json:"sig"`
}

func (c Certificate) signed() []byte {
	c.Sig = nil
	b, _ := json.Marshal(c)
	return append([]byte("strait-certificate-v1\n"), b...)
}

// Issue certifies key as cluster's, with block, for the given lifetime.
func (ca *CA) Issue(cluster string, block netip.Prefix, key ed25519.PublicKey, now time.Time, lifetime time.Duration) Certificate {
	c := Certificate{Cluster: cluster, Block: block, Key: key, NotBefore: now.UTC().Truncate(time.Second),
		NotAfter: now.Add(lifetime).UTC().Truncate(time.Second)}
	c.Sig = ed25519.Sign(ca.private, c.signed())
	return c
}

// Verify checks that ca signed the certificate and that it is valid now.
func (c Certificate) Verify(ca ed25519.PublicKey, now time.Time) error {
	if len(c.Key) != ed25519.PublicKeySize {
		return errors.New("certificate holds no valid key")
	}
	if !ed25519.Verify(ca, c.signed(), c.Sig) {
		return fmt.Errorf("certificate of %q is not signed by this mesh's CA", c.Cluster)
	}
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return fmt.Errorf("certificate of %q is valid from %s to %s, not now", c.Cluster, c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// Identity is a cluster's signing key and the certificate for it.
type Identity struct {
	Cert Certificate
	Key  ed25519.PrivateKey
}

// Check makes sure the key is the one the certificate certifies.
func (id Identity) Check() error {
	if len(id.Key) != ed25519.PrivateKeySize {
		return errors.New("catalog: identity has no valid private key")
	}
	if !id.Key.Public().(ed25519.PublicKey).Equal(id.Cert.Key) {
		return fmt.Errorf("catalog: the private key is not the one the certificate of %q certifies", id.Cert.Cluster)
	}
	return nil
}

// EncodeKey and DecodeKey carry keys in files and flags as base64.
func EncodeKey(k []byte) string { return base64.StdEncoding.EncodeToString(k) }

// DecodeKey parses a base64 key of the given size.
func DecodeKey(s string, size int) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	if len(b) != size {
		return nil, fmt.Errorf("%d bytes, want %d", len(b), size)
	}
	return b, nil
}
