package wgkey

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestLoadOrCreateMakesOnceAndKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", FileName)
	k1, created, err := LoadOrCreate(path)
	if err != nil || !created {
		t.Fatalf("first LoadOrCreate = %v, created %v", err, created)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %04o, want 0600", perm)
	}
	if di, _ := os.Stat(filepath.Dir(path)); di.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %04o, want 0700", di.Mode().Perm())
	}
	k2, created, err := LoadOrCreate(path)
	if err != nil || created {
		t.Fatalf("second LoadOrCreate = %v, created %v", err, created)
	}
	if k1 != k2 {
		t.Error("second LoadOrCreate returned another key")
	}
	if k1.PublicKey() == (wgtypes.Key{}) {
		t.Error("zero public key")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only the key (temporary file left behind?)", len(entries))
	}
}

func TestLoadReadsWgGenkeyFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	// Output of `wg genkey`, trailing newline included.
	const priv = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n"
	if err := os.WriteFile(path, []byte(priv), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if k.String() != strings.TrimSpace(priv) {
		t.Errorf("Load = %s", k)
	}
}

func TestLoadRefuses(t *testing.T) {
	tests := []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
	}{
		{"readable by others", "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", 0o644, "mode 0644"},
		{"readable by group", "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", 0o640, "mode 0640"},
		{"truncated", "yAnz5TF+lXXJte14tji3zl", 0o600, "corrupt"},
		{"empty", "", 0o600, "corrupt"},
		{"garbage", "not a key at all, not at all!!!!!!!!!!!!!!!", 0o600, "corrupt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), FileName)
			if err := os.WriteFile(path, []byte(tt.content), tt.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			_, created, err := LoadOrCreate(path)
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), path) {
				t.Fatalf("LoadOrCreate = %v; want an error naming %s and saying %q", err, path, tt.want)
			}
			if created {
				t.Error("created a new key over a bad one")
			}
			if got, _ := os.ReadFile(path); string(got) != tt.content {
				t.Error("the bad key file was changed; it must be kept for inspection")
			}
		})
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), FileName))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file = %v, want fs.ErrNotExist", err)
	}
}
