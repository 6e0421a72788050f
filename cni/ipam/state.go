package ipam

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
)

// fileVersion is the format of the state file.
const fileVersion = 1

// body is what the checksum covers.
type body struct {
	Version     int                         `json:"version"`
	Allocations []allocation                `json:"allocations"`
	Last        map[netip.Prefix]netip.Addr `json:"last,omitempty"`
}

type allocation struct {
	ContainerID string       `json:"containerID"`
	IfName      string       `json:"ifName"`
	Addrs       []netip.Addr `json:"addrs"`
}

type stateFile struct {
	body
	Checksum string `json:"checksum"`
}

func checksum(b body) (string, error) {
	data, err := json.Marshal(b)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), nil
}

// encode writes a state file: allocations sorted, with its checksum.
func encode(st *state) ([]byte, error) {
	return encodeBody(toBody(st))
}

func toBody(st *state) body {
	b := body{Version: fileVersion, Allocations: make([]allocation, 0, len(st.allocs)), Last: st.last}
	for a, addrs := range st.allocs {
		b.Allocations = append(b.Allocations, allocation{ContainerID: a.ContainerID, IfName: a.IfName, Addrs: addrs})
	}
	slices.SortFunc(b.Allocations, func(x, y allocation) int {
		return compareAttachments(Attachment{x.ContainerID, x.IfName}, Attachment{y.ContainerID, y.IfName})
	})
	return b
}

// encodeBody writes b as it is, with its checksum; tests use it to make
// files that checksum right but are wrong otherwise.
func encodeBody(b body) ([]byte, error) {
	sum, err := checksum(b)
	if err != nil {
		return nil, err
	}
	data, err := json.MarshalIndent(stateFile{body: b, Checksum: sum}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// decode reads a state file, checking its format version, its checksum,
// and that it makes sense: no address held twice, no attachment twice, at
// most one address per family per attachment. It never panics, whatever
// the data.
func decode(data []byte) (*state, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("the file is empty")
	}
	// The version first, so that a newer format is named as such rather
	// than as unknown fields or a wrong checksum.
	var v struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("not valid JSON (%v)", err)
	}
	if v.Version == nil {
		return nil, errors.New("no format version")
	}
	if *v.Version != fileVersion {
		return nil, fmt.Errorf("format version %d, this strait-cni reads %d", *v.Version, fileVersion)
	}
	var f stateFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("not valid (%v)", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("not valid (something follows the state)")
	}
	want, err := checksum(f.body)
	if err != nil {
		return nil, err
	}
	if f.Checksum != want {
		return nil, errors.New("checksum mismatch (edited or damaged)")
	}

	st := newState()
	holder := map[netip.Addr]Attachment{}
	for _, al := range f.Allocations {
		a := Attachment{al.ContainerID, al.IfName}
		if a.ContainerID == "" || a.IfName == "" {
			return nil, fmt.Errorf("an allocation without container ID or interface name (%q, %q)", a.ContainerID, a.IfName)
		}
		if _, dup := st.allocs[a]; dup {
			return nil, fmt.Errorf("attachment %s is listed twice", a)
		}
		if len(al.Addrs) == 0 {
			return nil, fmt.Errorf("attachment %s holds no address", a)
		}
		var v4, v6 bool
		for _, x := range al.Addrs {
			if err := checkAddr(x); err != nil {
				return nil, fmt.Errorf("attachment %s: %w", a, err)
			}
			seen := &v6
			if x.Is4() {
				seen = &v4
			}
			if *seen {
				return nil, fmt.Errorf("attachment %s holds two addresses of one family (%s)", a, al.Addrs)
			}
			*seen = true
			if b, dup := holder[x]; dup {
				return nil, fmt.Errorf("address %s is held twice, by %s and %s", x, b, a)
			}
			holder[x] = a
		}
		st.allocs[a] = al.Addrs
	}
	for r, x := range f.Last {
		if !r.IsValid() || r.Addr().Is4In6() || r != r.Masked() {
			return nil, fmt.Errorf("last address handed out: range %s is not a masked prefix", r)
		}
		if err := checkAddr(x); err != nil {
			return nil, fmt.Errorf("last address handed out from %s: %w", r, err)
		}
		if !r.Contains(x) {
			return nil, fmt.Errorf("last address handed out from %s is %s, outside it", r, x)
		}
		st.last[r] = x
	}
	return st, nil
}

func checkAddr(x netip.Addr) error {
	switch {
	case !x.IsValid():
		return errors.New("an empty address")
	case x.Zone() != "":
		return fmt.Errorf("address %s has a zone", x)
	case x.Is4In6():
		return fmt.Errorf("address %s is IPv4-mapped", x)
	}
	return nil
}
