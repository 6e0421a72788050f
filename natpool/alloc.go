package natpool

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// DefaultHoldDown is how long a released address stays unused: long enough
// that caches, DNS answers and connections that knew it as another
// service's have expired.
const DefaultHoldDown = 10 * time.Minute

var (
	// ErrExhausted: the pool has no address left to give.
	ErrExhausted = errors.New("pool exhausted")
	// ErrNoPool: the request names a pool that does not exist.
	ErrNoPool = errors.New("no such pool")
	// ErrWrongKind: the request names a pool of the other kind.
	ErrWrongKind = errors.New("pool of the wrong kind")
)

// Allocation is one address handed out.
type Allocation struct {
	Key   string     `json:"key"`
	Pool  string     `json:"pool"`
	IP    netip.Addr `json:"ip"`
	Since time.Time  `json:"since"`
}

// Release is an address in hold-down after its key let it go.
type Release struct {
	Key  string     `json:"key"`
	Pool string     `json:"pool"`
	IP   netip.Addr `json:"ip"`
	At   time.Time  `json:"at"`
}

// State is everything an Allocator keeps: what persists across restarts.
type State struct {
	Allocations []Allocation `json:"allocations"`
	Released    []Release    `json:"released"`
}

// Request asks for an address for a key from a pool of a kind.
type Request struct {
	Key  string
	Pool string
	Kind Kind
	// Hint, if in the pool, is where the search for a free address
	// starts (wrapping around): allocators that do not talk to each
	// other, each starting at a hash of its key, rarely pick the same.
	Hint netip.Addr
}

// Allocator hands out pool addresses to keys (services, egress rules):
// the same key keeps its address for as long as it is requested, across
// restarts through State; a released address is not handed out again
// before the hold-down has passed; an exhausted pool is an error, never a
// reuse. It is pure: the caller persists State and supplies the clock.
type Allocator struct {
	pools    map[string]Pool
	block    netip.Prefix
	holdDown time.Duration
	now      func() time.Time

	byKey    map[string]Allocation
	byIP     map[netip.Addr]string
	released map[netip.Addr]Release
	// avoid are addresses others hold (VIPs other clusters allocated):
	// never handed out, though not this allocator's to release.
	avoid map[netip.Addr]bool
}

// Avoid makes the allocator hand out none of addrs from now on; addresses
// already allocated stay.
func (a *Allocator) Avoid(addrs []netip.Addr) {
	a.avoid = map[netip.Addr]bool{}
	for _, ip := range addrs {
		a.avoid[ip] = true
	}
}

// NewAllocator loads a state for a site whose block is block. It refuses a
// state that contradicts itself (an address held twice, a key twice).
// Allocations outside today's pools but inside the block are kept, and
// reported by Orphans, rather than moved under live traffic; allocations
// outside the block (it moved) are moved at the next Sync: peers no longer
// route them to this site, so nothing reaches them anyway.
func NewAllocator(block netip.Prefix, pools []Pool, st State, holdDown time.Duration, now func() time.Time) (*Allocator, error) {
	a := &Allocator{
		pools: map[string]Pool{}, block: block, holdDown: holdDown, now: now,
		byKey: map[string]Allocation{}, byIP: map[netip.Addr]string{}, released: map[netip.Addr]Release{},
	}
	for _, p := range pools {
		a.pools[p.Name] = p
	}
	for _, al := range st.Allocations {
		if !al.IP.IsValid() || al.Key == "" {
			return nil, fmt.Errorf("natpool: allocation %q has no valid address", al.Key)
		}
		if _, dup := a.byKey[al.Key]; dup {
			return nil, fmt.Errorf("natpool: key %q is allocated twice", al.Key)
		}
		if other, dup := a.byIP[al.IP]; dup {
			return nil, fmt.Errorf("natpool: %s is allocated to both %q and %q", al.IP, other, al.Key)
		}
		a.byKey[al.Key], a.byIP[al.IP] = al, al.Key
	}
	for _, r := range st.Released {
		if _, live := a.byIP[r.IP]; live || !r.IP.IsValid() {
			continue // handed out again since, or junk
		}
		a.released[r.IP] = r
	}
	return a, nil
}

// Sync makes the allocations match the requests: every requested key keeps
// or gets an address, every other key releases its address into hold-down.
// It returns the errors of requests it could not serve (the others are
// served) and whether anything changed.
func (a *Allocator) Sync(reqs []Request) (changed bool, errs []error) {
	now := a.now()
	for ip, r := range a.released {
		if now.Sub(r.At) >= a.holdDown {
			delete(a.released, ip)
			changed = true
		}
	}
	wanted := map[string]bool{}
	for _, r := range reqs {
		wanted[r.Key] = true
	}
	// Release first, so that a request never takes an address that a key
	// going away holds; it waits out the hold-down like any other.
	for _, key := range slices.Sorted(maps.Keys(a.byKey)) {
		if !wanted[key] {
			a.release(key, now)
			changed = true
		}
	}
	// An address outside the block is dead: drop it (no hold-down, it is
	// not ours to hold) so that its key gets one inside.
	for _, key := range slices.Sorted(maps.Keys(a.byKey)) {
		if al := a.byKey[key]; !a.block.Contains(al.IP) {
			delete(a.byKey, key)
			delete(a.byIP, al.IP)
			changed = true
		}
	}
	for ip := range a.released {
		if !a.block.Contains(ip) {
			delete(a.released, ip)
			changed = true
		}
	}
	// Within one pass addresses are only taken, never freed: each pool's
	// search resumes where its last allocation ended.
	from := map[string]netip.Addr{}
	for _, r := range reqs {
		c, err := a.ensure(r, now, from)
		changed = changed || c
		if err != nil {
			errs = append(errs, err)
		}
	}
	return changed, errs
}

func (a *Allocator) release(key string, now time.Time) {
	al := a.byKey[key]
	delete(a.byKey, key)
	delete(a.byIP, al.IP)
	a.released[al.IP] = Release{Key: key, Pool: al.Pool, IP: al.IP, At: now}
}

// ensure keeps a key's address, or gives it one.
// from holds, per pool, the address before which all are known taken.
func (a *Allocator) ensure(r Request, now time.Time, from map[string]netip.Addr) (changed bool, err error) {
	p, ok := a.pools[r.Pool]
	if !ok {
		return false, fmt.Errorf("natpool: %s: pool %q: %w", r.Key, r.Pool, ErrNoPool)
	}
	if p.Kind != r.Kind {
		return false, fmt.Errorf("natpool: %s: pool %q is an %s pool, not %s: %w", r.Key, r.Pool, p.Kind, r.Kind, ErrWrongKind)
	}
	old, had := a.byKey[r.Key]
	if had && old.Pool == r.Pool {
		return false, nil
	}
	// A key back within its own hold-down gets its address back: the
	// hold-down keeps addresses from other keys, not from their own.
	for ip, rel := range a.released {
		if rel.Key == r.Key && rel.Pool == r.Pool && p.CIDR.Contains(ip) && !a.avoid[ip] {
			delete(a.released, ip)
			a.take(r, ip, now, had)
			return true, nil
		}
	}
	var ip netip.Addr
	if r.Hint.IsValid() && p.CIDR.Contains(r.Hint) {
		ip, ok = a.freeAt(p, r.Hint)
	} else {
		ip, ok = a.free(p, from)
	}
	if !ok {
		// A key moving pools keeps its old address until it has a new one.
		held := 0
		for _, rel := range a.released {
			if p.CIDR.Contains(rel.IP) {
				held++
			}
		}
		return false, fmt.Errorf("natpool: %s: pool %q (%s) has no address left: %d in use, %d in hold-down: %w",
			r.Key, r.Pool, p.CIDR, a.used(p), held, ErrExhausted)
	}
	a.take(r, ip, now, had)
	return true, nil
}

// take gives ip to the request's key, releasing the address it had in
// another pool, if any.
func (a *Allocator) take(r Request, ip netip.Addr, now time.Time, had bool) {
	if had {
		a.release(r.Key, now)
	}
	al := Allocation{Key: r.Key, Pool: r.Pool, IP: ip, Since: now}
	a.byKey[r.Key], a.byIP[ip] = al, r.Key
}

// free finds the lowest usable address of p that is neither taken nor
// held down, resuming where this pass's last search of p ended.
func (a *Allocator) free(p Pool, from map[string]netip.Addr) (netip.Addr, bool) {
	start, ok := from[p.Name]
	if !ok {
		start = p.CIDR.Masked().Addr()
	}
	for ip := start; p.CIDR.Contains(ip); ip = ip.Next() {
		if !usable(ip) {
			continue
		}
		if _, taken := a.byIP[ip]; taken {
			continue
		}
		if _, held := a.released[ip]; held || a.avoid[ip] {
			continue
		}
		from[p.Name] = ip.Next()
		return ip, true
	}
	from[p.Name] = LastAddr(p.CIDR).Next()
	return netip.Addr{}, false
}

// freeAt finds the first usable address of p from start on, wrapping
// around, that is neither taken, held down nor avoided.
func (a *Allocator) freeAt(p Pool, start netip.Addr) (netip.Addr, bool) {
	ok := func(ip netip.Addr) bool {
		_, taken := a.byIP[ip]
		_, held := a.released[ip]
		return usable(ip) && !taken && !held && !a.avoid[ip]
	}
	for ip := start; p.CIDR.Contains(ip); ip = ip.Next() {
		if ok(ip) {
			return ip, true
		}
	}
	for ip := p.CIDR.Masked().Addr(); ip != start; ip = ip.Next() {
		if ok(ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

// Release lets a key's address go into hold-down now, as if it was no
// longer requested: the next request of the key gets another address (one
// it must not keep, such as a VIP another cluster holds).
func (a *Allocator) Release(key string) {
	if _, ok := a.byKey[key]; ok {
		a.release(key, a.now())
	}
}

func (a *Allocator) used(p Pool) int {
	n := 0
	for ip := range a.byIP {
		if p.CIDR.Contains(ip) {
			n++
		}
	}
	return n
}

// Lookup returns a key's address.
func (a *Allocator) Lookup(key string) (netip.Addr, bool) {
	al, ok := a.byKey[key]
	return al.IP, ok
}

// State returns what to persist, in a stable order.
func (a *Allocator) State() State {
	var st State
	for _, k := range slices.Sorted(maps.Keys(a.byKey)) {
		st.Allocations = append(st.Allocations, a.byKey[k])
	}
	for _, ip := range slices.SortedFunc(maps.Keys(a.released), netip.Addr.Compare) {
		st.Released = append(st.Released, a.released[ip])
	}
	return st
}

// Usage is how full a pool is.
type Usage struct {
	Pool string `json:"pool"`
	Kind Kind   `json:"kind"`
	CIDR string `json:"cidr"`
	Size int    `json:"size"`
	Used int    `json:"used"`
	Held int    `json:"held"`
}

// Usage reports every pool.
func (a *Allocator) Usage() []Usage {
	var out []Usage
	for _, name := range slices.Sorted(maps.Keys(a.pools)) {
		p := a.pools[name]
		u := Usage{Pool: name, Kind: p.Kind, CIDR: p.CIDR.String(), Size: p.size(), Used: a.used(p)}
		for _, r := range a.released {
			if p.CIDR.Contains(r.IP) {
				u.Held++
			}
		}
		out = append(out, u)
	}
	return out
}

// Orphans are allocations whose address no pool of today holds (a pool
// shrank or went away): they keep serving until their key goes.
func (a *Allocator) Orphans() []Allocation {
	var out []Allocation
	for _, k := range slices.Sorted(maps.Keys(a.byKey)) {
		al := a.byKey[k]
		if p, ok := a.pools[al.Pool]; !ok || !p.CIDR.Contains(al.IP) {
			out = append(out, al)
		}
	}
	return out
}
