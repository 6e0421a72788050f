// Package ipam hands out pod addresses from a node's pod CIDRs
// (Node.spec.podCIDRs: at most one IPv4 and one IPv6 prefix) for
// strait-cni.
//
// Allocations live in a state file in the store's directory. Every
// operation takes an flock on a lock file next to it for its whole
// read-modify-write, so parallel CNI ADDs, whether goroutines or separate
// plugin processes, never hand one address to two containers; the kernel
// drops the lock of a process that dies, so a crash blocks nobody. The
// state file is replaced atomically (written aside, synced, renamed) and
// carries a checksum: a crash leaves the old or the new state, never half
// of one, and a file that is damaged anyway is refused by every operation
// rather than started over, which could hand out addresses still in use.
package ipam

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/internal/atomicfile"
)

const (
	// StateFile is the name of the state file in a store's directory.
	StateFile = "state.json"
	// LockFile is the name of the lock file in a store's directory. It is
	// never removed: a process holding the lock on a removed file would no
	// longer exclude one that makes a new one.
	LockFile = "lock"
)

// Attachment names one interface of one container, as CNI does.
type Attachment struct{ ContainerID, IfName string }

func (a Attachment) String() string { return a.ContainerID + "/" + a.IfName }

func compareAttachments(x, y Attachment) int {
	if c := strings.Compare(x.ContainerID, y.ContainerID); c != 0 {
		return c
	}
	return strings.Compare(x.IfName, y.IfName)
}

// ErrExhausted is what an allocation from a full range wraps; the error
// returned is an *ExhaustedError, which names the range.
var ErrExhausted = errors.New("ipam: no free address")

// ExhaustedError says a range has no address left to hand out.
type ExhaustedError struct {
	Range netip.Prefix
	InUse uint64 // addresses of the range held by attachments
}

func (e *ExhaustedError) Error() string {
	return fmt.Sprintf("%s has no free address (%d in use)", e.Range, e.InUse)
}

// Is makes errors.Is(err, ErrExhausted) hold.
func (e *ExhaustedError) Is(target error) bool { return target == ErrExhausted }

// ErrDamaged is what a refused state file wraps; the error returned is a
// *DamagedError, which names the file and what is wrong with it.
var ErrDamaged = errors.New("ipam: state file cannot be trusted")

// DamagedError says the state file cannot be read as a sound state. The
// file is left as it is: someone must look at it, since starting over
// could hand out addresses that running pods still have.
type DamagedError struct {
	Path   string
	Reason error
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("state file %s cannot be trusted: %v; refusing to go on rather than hand out addresses that may be in use (the file is left as it is: repair it, or remove it once no pod on this node holds an address from it)", e.Path, e.Reason)
}

// Is makes errors.Is(err, ErrDamaged) hold.
func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

func (e *DamagedError) Unwrap() error { return e.Reason }

// Store keeps a node's allocations in Dir: a state file written atomically
// with a checksum, under an exclusive flock on a lock file in Dir, held for
// the whole read-modify-write.
//
// Ranges are the ranges addresses are handed out from, one per family, in
// the order Allocate returns addresses. Opening a store with other ranges
// than before (the node's pod CIDRs changed) keeps the file: Allocate hands
// out addresses only inside the current ranges, and gives an attachment
// whose stored address lies outside them a new one, dropping the old.
type Store struct {
	Dir    string
	Ranges []netip.Prefix
}

// Open returns the store in dir, made (0700) if missing, handing out
// addresses from ranges. A range must be masked, at most one per family,
// and have room for at least one address: IPv4 ranges skip their network
// and broadcast addresses, IPv6 ranges their subnet-router anycast address
// (the one with a host part of zero). The state file is not read until the
// first operation.
func Open(dir string, ranges []netip.Prefix) (*Store, error) {
	if dir == "" {
		return nil, errors.New("ipam: no directory")
	}
	if err := checkRanges(ranges); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ipam: %w", err)
	}
	return &Store{Dir: dir, Ranges: slices.Clone(ranges)}, nil
}

func checkRanges(ranges []netip.Prefix) error {
	if len(ranges) == 0 {
		return errors.New("no range to allocate from")
	}
	var v4, v6 bool
	for _, r := range ranges {
		switch {
		case !r.IsValid():
			return fmt.Errorf("range %s is not valid", r)
		case r.Addr().Is4In6():
			return fmt.Errorf("range %s: an IPv4-mapped IPv6 prefix; give the IPv4 prefix", r)
		case r != r.Masked():
			return fmt.Errorf("range %s has host bits set (the prefix is %s)", r, r.Masked())
		case usable(r) == 0:
			return fmt.Errorf("range %s has no room for an address", r)
		}
		seen := &v6
		if r.Addr().Is4() {
			seen = &v4
		}
		if *seen {
			return fmt.Errorf("range %s: a second range of the same family (at most one IPv4 and one IPv6)", r)
		}
		*seen = true
	}
	return nil
}

// usable is how many addresses of r can be handed out, capped at the
// largest uint64.
func usable(r netip.Prefix) uint64 {
	host := r.Addr().BitLen() - r.Bits()
	if r.Addr().Is4() {
		if host < 2 {
			return 0 // a /31 or /32 is only network and broadcast
		}
		return 1<<host - 2
	}
	if host >= 64 {
		return ^uint64(0)
	}
	return 1<<host - 1
}

// reserved says whether a, inside r, is never handed out: the network
// address (for IPv6 the subnet-router anycast), and for IPv4 the broadcast.
func reserved(r netip.Prefix, a netip.Addr) bool {
	if a == r.Addr() {
		return true
	}
	return a.Is4() && !r.Contains(a.Next())
}

// assignable says whether a may be held from r: inside it and not reserved.
func assignable(r netip.Prefix, a netip.Addr) bool {
	return r.Contains(a) && !reserved(r, a)
}

// Path is the state file's path.
func (s *Store) Path() string { return filepath.Join(s.Dir, StateFile) }

// Allocate returns the addresses of a, one per range in the order of
// Ranges, handing out what it has not got yet. It is idempotent: an
// attachment gets what it already has (and the file is not written). An
// address is picked round-robin, after the last one handed out from its
// range, so a just-released address is not reused at once. If any range
// is exhausted nothing is allocated and the error wraps ErrExhausted.
func (s *Store) Allocate(a Attachment) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := s.update(func(st *state) (bool, error) {
		if a.ContainerID == "" || a.IfName == "" {
			return false, errors.New("the container ID and the interface name must both be given")
		}
		var changed bool
		var err error
		addrs, changed, err = st.allocate(a, s.Ranges)
		return changed, err
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: allocate %s: %w", a, err)
	}
	return addrs, nil
}

// Lookup returns the addresses stored for a, as stored: after the node's
// ranges changed they may lie outside the current ones. Like every
// operation it fails if the state file cannot be trusted.
func (s *Store) Lookup(a Attachment) ([]netip.Addr, bool, error) {
	st, err := s.read()
	if err != nil {
		return nil, false, fmt.Errorf("ipam: lookup %s: %w", a, err)
	}
	addrs, ok := st.allocs[a]
	return slices.Clone(addrs), ok, nil
}

// Release frees the addresses of a. An attachment that holds none is fine.
func (s *Store) Release(a Attachment) error {
	err := s.update(func(st *state) (bool, error) {
		_, ok := st.allocs[a]
		delete(st.allocs, a)
		return ok, nil
	})
	if err != nil {
		return fmt.Errorf("ipam: release %s: %w", a, err)
	}
	return nil
}

// GC frees the addresses of every attachment not in keep (the valid
// attachments of a CNI GC) and returns those freed, sorted.
func (s *Store) GC(keep []Attachment) (freed []Attachment, err error) {
	valid := make(map[Attachment]bool, len(keep))
	for _, a := range keep {
		valid[a] = true
	}
	err = s.update(func(st *state) (bool, error) {
		for a := range st.allocs {
			if !valid[a] {
				freed = append(freed, a)
				delete(st.allocs, a)
			}
		}
		return len(freed) > 0, nil
	})
	if err != nil {
		return nil, fmt.Errorf("ipam: gc: %w", err)
	}
	slices.SortFunc(freed, compareAttachments)
	return freed, nil
}

// Allocations returns every attachment's addresses.
func (s *Store) Allocations() (map[Attachment][]netip.Addr, error) {
	st, err := s.read()
	if err != nil {
		return nil, fmt.Errorf("ipam: allocations: %w", err)
	}
	out := make(map[Attachment][]netip.Addr, len(st.allocs))
	for a, addrs := range st.allocs {
		out[a] = slices.Clone(addrs)
	}
	return out, nil
}

// state is what the state file holds.
type state struct {
	allocs map[Attachment][]netip.Addr
	// last is the address last handed out from each range, where the next
	// search starts.
	last map[netip.Prefix]netip.Addr
}

func newState() *state {
	return &state{allocs: map[Attachment][]netip.Addr{}, last: map[netip.Prefix]netip.Addr{}}
}

// allocate gives a one address per range, keeping those it has inside
// them, and says whether anything changed. On an error nothing has.
func (st *state) allocate(a Attachment, ranges []netip.Prefix) ([]netip.Addr, bool, error) {
	had, ok := st.allocs[a]
	used := make(map[netip.Addr]bool)
	for b, addrs := range st.allocs {
		if b == a {
			continue
		}
		for _, x := range addrs {
			used[x] = true
		}
	}
	addrs := make([]netip.Addr, 0, len(ranges))
	picked := make(map[netip.Prefix]netip.Addr)
	for _, r := range ranges {
		i := slices.IndexFunc(had, func(x netip.Addr) bool { return assignable(r, x) })
		if i >= 0 {
			addrs = append(addrs, had[i])
			continue
		}
		x, err := pick(r, used, st.last[r])
		if err != nil {
			return nil, false, err
		}
		used[x] = true
		picked[r] = x
		addrs = append(addrs, x)
	}
	if ok && slices.Equal(had, addrs) {
		return slices.Clone(addrs), false, nil
	}
	st.allocs[a] = addrs
	maps.Copy(st.last, picked)
	return slices.Clone(addrs), true, nil
}

// pick returns the first address of r after last (wrapping around) that
// is neither reserved nor used.
func pick(r netip.Prefix, used map[netip.Addr]bool, last netip.Addr) (netip.Addr, error) {
	var inUse uint64
	for x := range used {
		if assignable(r, x) {
			inUse++
		}
	}
	if inUse >= usable(r) {
		return netip.Addr{}, &ExhaustedError{Range: r, InUse: inUse}
	}
	x := last
	if !r.Contains(x) {
		x = r.Addr()
	}
	// Among inUse+1 assignable addresses one is free, and a lap of the
	// range passes at most two reserved ones.
	for range inUse + 3 {
		x = x.Next()
		if !r.Contains(x) {
			x = r.Addr() // wrap around; also past the end of the space
		}
		if !reserved(r, x) && !used[x] {
			return x, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("internal error: no free address found in %s with %d of %d in use", r, inUse, usable(r))
}

// update runs change on the state under the exclusive lock and writes the
// state back if change says it changed it.
func (s *Store) update(change func(*state) (bool, error)) error {
	if err := checkRanges(s.Ranges); err != nil {
		return err
	}
	unlock, err := s.lock(unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := s.load()
	if err != nil {
		return err
	}
	changed, err := change(st)
	if err != nil || !changed {
		return err
	}
	return s.save(st)
}

// read returns the state under a shared lock.
func (s *Store) read() (*state, error) {
	unlock, err := s.lock(unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return s.load()
}

// lock takes an flock of the given kind on the lock file, waiting for it.
func (s *Store) lock(how int) (unlock func(), err error) {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(s.Dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// Closing the file drops the lock.
	return func() { f.Close() }, nil
}

// load reads the state file; a missing one is an empty state.
func (s *Store) load() (*state, error) {
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return newState(), nil
	}
	if err != nil {
		return nil, err
	}
	st, err := decode(data)
	if err != nil {
		return nil, &DamagedError{Path: s.Path(), Reason: err}
	}
	return st, nil
}

// save replaces the state file. It runs under the exclusive lock, so the
// temporary files of writers that crashed are removed first.
func (s *Store) save(st *state) error {
	data, err := encode(st)
	if err != nil {
		return err
	}
	if stale, _ := filepath.Glob(filepath.Join(s.Dir, "."+StateFile+".tmp*")); len(stale) > 0 {
		for _, f := range stale {
			os.Remove(f)
		}
	}
	return atomicfile.Write(s.Path(), data, 0o600, false)
}
