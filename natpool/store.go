package natpool

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/straitnet/strait/internal/atomicfile"
)

// Store keeps a site's allocations across restarts.
type Store interface {
	// Load returns the saved state, an empty one on a first start, or an
	// error if what is saved cannot be trusted.
	Load() (State, error)
	// Save replaces the saved state, durably, before it returns.
	Save(State) error
	// Where names the store in messages.
	Where() string
}

// FileStore keeps allocations in a JSON file, for sites without Kubernetes.
//
// A write goes to a temporary file, is fsynced and renamed over the file,
// and the directory fsynced, so that a crash leaves the old or the new
// state, never half of one; the previous good copy stays beside it as
// FILE.prev. The file carries a checksum of its content. A file that is
// truncated, corrupt, or checksums wrong stops the load, and so does a
// missing file next to a .prev: re-allocating would move addresses under
// live traffic.
type FileStore struct {
	Path string
	// Site is written into the file and checked on load, so a state file
	// copied from another site is refused.
	Site string
	Now  func() time.Time
}

var _ Store = (*FileStore)(nil)

// fileVersion is the format of the file.
const fileVersion = 1

type stateFile struct {
	Version  int       `json:"version"`
	Site     string    `json:"site"`
	Written  time.Time `json:"written"`
	State    State     `json:"state"`
	Checksum string    `json:"checksum"`
}

func checksum(site string, st State) (string, error) {
	b, err := json.Marshal(struct {
		Site  string `json:"site"`
		State State  `json:"state"`
	}{site, st})
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// Where is the file's path.
func (s *FileStore) Where() string { return s.Path }

func (s *FileStore) prev() string { return s.Path + ".prev" }

// Load reads the state file.
func (s *FileStore) Load() (State, error) {
	data, err := os.ReadFile(s.Path)
	if errors.Is(err, fs.ErrNotExist) {
		if _, perr := os.Stat(s.prev()); perr == nil {
			return State{}, fmt.Errorf("natpool: %s is missing but its previous copy %s exists: refusing to start with no allocations, "+
				"which would hand out addresses again under live traffic; restore %s as %s, or remove both to start anew",
				s.Path, s.prev(), s.prev(), s.Path)
		}
		return State{}, nil // first start
	}
	if err != nil {
		return State{}, fmt.Errorf("natpool: %w", err)
	}
	st, err := s.decode(data)
	if err != nil {
		hint := ""
		if prev, perr := os.ReadFile(s.prev()); perr == nil {
			if pst, derr := s.decode(prev); derr == nil {
				hint = fmt.Sprintf("; the previous good copy %s holds %d allocations", s.prev(), len(pst.Allocations))
			}
		}
		return State{}, fmt.Errorf("natpool: allocation state %s cannot be trusted: %w; refusing to start rather than re-allocate addresses under live traffic (the file is left as it is%s)", s.Path, err, hint)
	}
	return st, nil
}

func (s *FileStore) decode(data []byte) (State, error) { return DecodeState(s.Site, data) }

// DecodeState reads a state as FileStore writes it, checking its format
// version, that it belongs to site (if given), and its checksum.
func DecodeState(site string, data []byte) (State, error) {
	var f stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return State{}, fmt.Errorf("not valid (%v)", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return State{}, errors.New("not valid (something follows the state)")
	}
	if f.Version != fileVersion {
		return State{}, fmt.Errorf("format version %d, this gateway reads %d", f.Version, fileVersion)
	}
	if site != "" && f.Site != site {
		return State{}, fmt.Errorf("it belongs to site %q, not %q", f.Site, site)
	}
	want, err := checksum(f.Site, f.State)
	if err != nil {
		return State{}, err
	}
	if want != f.Checksum {
		return State{}, errors.New("checksum mismatch (edited or damaged)")
	}
	return f.State, nil
}

// EncodeState writes a state with its site, time and checksum.
func EncodeState(site string, st State, now time.Time) ([]byte, error) {
	sum, err := checksum(site, st)
	if err != nil {
		return nil, fmt.Errorf("natpool: %w", err)
	}
	data, err := json.MarshalIndent(stateFile{Version: fileVersion, Site: site, Written: now.UTC(), State: st, Checksum: sum}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("natpool: %w", err)
	}
	return append(data, '\n'), nil
}

// Save writes the state durably; the file it replaces becomes FILE.prev.
func (s *FileStore) Save(st State) error {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	data, err := EncodeState(s.Site, st, now())
	if err != nil {
		return err
	}
	// Keep the current file, known good (it loaded or was written by us),
	// as the previous copy.
	if _, err := os.Stat(s.Path); err == nil {
		os.Remove(s.prev())
		if err := os.Link(s.Path, s.prev()); err != nil {
			return fmt.Errorf("natpool: keep previous copy: %w", err)
		}
	}
	if err := atomicfile.Write(s.Path, data, 0o600, false); err != nil {
		return fmt.Errorf("natpool: %w", err)
	}
	return nil
}
