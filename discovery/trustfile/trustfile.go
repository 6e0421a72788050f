// Package trustfile keeps a mesh's CA key and a cluster's identity (its
// certificate and signing key) in files, as `strait ca` writes them and
// gateways read them.
//
// Both hold private keys: they are written with mode 0600 and refused when
// others may read them, or when they do not decode to exactly what they
// should, naming the file and what is wrong. A gateway never makes an
// identity up: without a valid one it does not start.
package trustfile

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/internal/atomicfile"
)

// caFile is the CA key file's content.
type caFile struct {
	Kind    string `json:"kind"`
	Private string `json:"privateKey"`
	Public  string `json:"publicKey"`
}

// identityFile is the identity file's content.
type identityFile struct {
	Kind string              `json:"kind"`
	Cert catalog.Certificate `json:"certificate"`
	Key  string              `json:"signingKey"`
}

const (
	kindCA       = "strait-ca"
	kindIdentity = "strait-identity"
)

// SaveCA writes the CA's key to path, which must not exist yet.
func SaveCA(path string, ca *catalog.CA) error {
	data, err := json.MarshalIndent(caFile{Kind: kindCA, Private: catalog.EncodeKey(ca.Private()), Public: catalog.EncodeKey(ca.Public)}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o600, true); err != nil {
		return fmt.Errorf("trustfile: CA key: %w", err)
	}
	return nil
}

// LoadCA reads the CA key at path.
func LoadCA(path string) (*catalog.CA, error) {
	var f caFile
	if err := load(path, kindCA, &f); err != nil {
		return nil, err
	}
	priv, err := catalog.DecodeKey(f.Private, ed25519.PrivateKeySize)
	if err != nil {
		return nil, fmt.Errorf("trustfile: %s: privateKey: %w", path, err)
	}
	ca := catalog.CAFromPrivate(priv)
	if f.Public != catalog.EncodeKey(ca.Public) {
		return nil, fmt.Errorf("trustfile: %s: publicKey is not the private key's", path)
	}
	return ca, nil
}

// SaveIdentity writes an identity to path, replacing what is there (a
// renewed certificate).
func SaveIdentity(path string, id catalog.Identity) error {
	if err := id.Check(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(identityFile{Kind: kindIdentity, Cert: id.Cert, Key: catalog.EncodeKey(id.Key)}, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o600, false); err != nil {
		return fmt.Errorf("trustfile: identity: %w", err)
	}
	return nil
}

// LoadIdentity reads the identity at path and checks it: the key is the
// certificate's, and the certificate is ca's and valid at now.
func LoadIdentity(path string, ca ed25519.PublicKey, now time.Time) (catalog.Identity, error) {
	var f identityFile
	if err := load(path, kindIdentity, &f); err != nil {
		return catalog.Identity{}, err
	}
	key, err := catalog.DecodeKey(f.Key, ed25519.PrivateKeySize)
	if err != nil {
		return catalog.Identity{}, fmt.Errorf("trustfile: %s: signingKey: %w", path, err)
	}
	id := catalog.Identity{Cert: f.Cert, Key: key}
	if err := id.Check(); err != nil {
		return catalog.Identity{}, fmt.Errorf("trustfile: %s: %w", path, err)
	}
	if err := id.Cert.Verify(ca, now); err != nil {
		return catalog.Identity{}, fmt.Errorf("trustfile: %s: %w (issue a new one with `strait ca issue`)", path, err)
	}
	return id, nil
}

// load reads a key file strictly: private to its owner, the expected
// kind, no unknown fields.
func load(path, kind string, v any) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("trustfile: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("trustfile: %s is readable by others (mode %s); it holds a private key: chmod 600 it", path, fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("trustfile: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("trustfile: %s is not a %s file: %w", path, kind, err)
	}
	var got struct {
		Kind string `json:"kind"`
	}
	json.Unmarshal(data, &got)
	if got.Kind != kind {
		return fmt.Errorf("trustfile: %s holds %q, want a %s file", path, got.Kind, kind)
	}
	return nil
}
