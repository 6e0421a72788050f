// Package atomicfile writes files that are either wholly there or not at
// all, and durable once written: a crash or a concurrent reader never sees
// half a key or half a state file.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write stores data at path with mode perm: written to a temporary file in
// the same directory, synced, then put in place, and the directory synced.
// With create, it fails if path exists (also if it appeared meanwhile):
// nothing another process just made is overwritten. The directory is made
// (0700) if missing.
func Write(path string, data []byte, perm os.FileMode, create bool) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if create {
		// Link, unlike rename, fails if path exists.
		if err := os.Link(f.Name(), path); err != nil {
			return fmt.Errorf("store %s: %w", path, err)
		}
		os.Remove(f.Name())
	} else if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("store %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
