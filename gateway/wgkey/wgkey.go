// Package wgkey keeps a gateway's WireGuard private key on disk.
//
// The key is made on the gateway and never leaves it; only its public key
// travels. A missing key is generated once. A key file that exists but is
// unreadable, corrupt or readable by others stops the gateway: making a new
// key would silently change the site's identity and cut it off from every
// peer that knows the old public key.
package wgkey

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/internal/atomicfile"
)

// FileName is the key's file name inside a gateway's state directory.
const FileName = "private.key"

// Load reads the private key at path. It refuses a file that group or
// others may read, and one that does not hold exactly one base64 key.
func Load(path string) (wgtypes.Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("wgkey: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("wgkey: private key %s has mode %04o: group and others must have no access (chmod 600 %s)", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("wgkey: %w", err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(data)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("wgkey: private key %s is corrupt (want one base64 key as `wg genkey` writes); refusing to replace it, since a new key changes this site's identity: %w", path, err)
	}
	return k, nil
}

// LoadOrCreate returns the private key at path, generating and storing a
// new one if no file exists there. created reports whether it made one.
func LoadOrCreate(path string) (key wgtypes.Key, created bool, err error) {
	key, err = Load(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return key, false, err
	}
	key, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("wgkey: generate: %w", err)
	}
	if err := writeAtomic(path, []byte(key.String()+"\n")); err != nil {
		return wgtypes.Key{}, false, err
	}
	return key, true, nil
}

// writeAtomic writes data to path with mode 0600 so that a crash leaves
// either no file or the whole file: write a temporary file, fsync it,
// rename it into place, fsync the directory. It refuses to overwrite.
func writeAtomic(path string, data []byte) error {
	if err := atomicfile.Write(path, data, 0o600, true); err != nil {
		return fmt.Errorf("wgkey: %w", err)
	}
	return nil
}
