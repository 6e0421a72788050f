package trustfile

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
)

func TestRoundTripAndRefusals(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ca, err := catalog.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(dir, "ca.json")
	if err := SaveCA(caPath, ca); err != nil {
		t.Fatal(err)
	}
	if err := SaveCA(caPath, ca); err == nil {
		t.Error("SaveCA overwrote an existing CA key")
	}
	back, err := LoadCA(caPath)
	if err != nil {
		t.Fatal(err)
	}
	if !back.Public.Equal(ca.Public) {
		t.Fatal("CA key changed on the way through the file")
	}

	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := catalog.Identity{Cert: ca.Issue("cloud-a", netip.MustParsePrefix("242.1.0.0/16"), pub, now, time.Hour), Key: priv}
	idPath := filepath.Join(dir, "identity.json")
	if err := SaveIdentity(idPath, id); err != nil {
		t.Fatal(err)
	}
	got, err := LoadIdentity(idPath, ca.Public, now)
	if err != nil {
		t.Fatal(err)
	}
	if got.Cert.Cluster != "cloud-a" || !got.Key.Equal(priv) {
		t.Fatalf("identity changed on the way through the file: %+v", got.Cert)
	}

	other, _ := catalog.NewCA()
	for _, tt := range []struct {
		name string
		do   func() error
		want string
	}{
		{"another CA", func() error { _, err := LoadIdentity(idPath, other.Public, now); return err }, "not signed by this mesh's CA"},
		{"expired", func() error { _, err := LoadIdentity(idPath, ca.Public, now.Add(2*time.Hour)); return err }, "not now"},
		{"CA file as identity", func() error { _, err := LoadIdentity(caPath, ca.Public, now); return err }, "not a strait-identity file"},
		{"identity as CA file", func() error { _, err := LoadCA(idPath); return err }, "not a strait-ca file"},
		{"readable by others", func() error {
			os.Chmod(idPath, 0o644)
			defer os.Chmod(idPath, 0o600)
			_, err := LoadIdentity(idPath, ca.Public, now)
			return err
		}, "readable by others"},
		{"truncated", func() error {
			p := filepath.Join(dir, "cut.json")
			data, _ := os.ReadFile(idPath)
			os.WriteFile(p, data[:len(data)/2], 0o600)
			_, err := LoadIdentity(p, ca.Public, now)
			return err
		}, "cut.json is not a strait-identity file"},
		{"key of another cluster", func() error {
			p := filepath.Join(dir, "mixed.json")
			_, priv2, _ := ed25519.GenerateKey(rand.Reader)
			bad := id
			bad.Key = priv2
			if err := SaveIdentity(p, bad); err == nil {
				t.Error("SaveIdentity took a key the certificate does not certify")
			}
			return LoadErr(p, ca)
		}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.do()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// LoadErr loads an identity for its error.
func LoadErr(p string, ca *catalog.CA) error {
	_, err := LoadIdentity(p, ca.Public, time.Now())
	return err
}
