package nodeagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"

	"github.com/straitnet/strait/nodeagent/bpf"
	"github.com/straitnet/strait/nodeagent/policy"
)

// Enforcer holds the NetworkPolicy programs and maps, attached to the
// host side of every pod's veth, and programs the maps incrementally.
type Enforcer struct {
	objs bpf.PolicyObjects

	mu       sync.Mutex
	links    map[string][2]link.Link // by host veth
	enforced map[policy.PodDir]bool
	entries  map[policy.Entry]policy.PortSet
}

// NewEnforcer loads the programs and their maps.
func NewEnforcer() (*Enforcer, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("nodeagent: memlock: %w", err)
	}
	e := &Enforcer{links: map[string][2]link.Link{}, enforced: map[policy.PodDir]bool{}, entries: map[policy.Entry]policy.PortSet{}}
	if err := bpf.LoadPolicyObjects(&e.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("nodeagent: the kernel refused the policy program: %+v", ve)
		}
		return nil, fmt.Errorf("nodeagent: loading the policy program: %w", err)
	}
	return e, nil
}

// Attach puts the programs on a pod's host-side veth (TCX): what goes to
// the pod and what comes from it. Attaching again is a no-op.
func (e *Enforcer) Attach(ifName string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.links[ifName]; ok {
		return nil
	}
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("nodeagent: attach to %s: %w", ifName, err)
	}
	to, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: e.objs.ToPod, Attach: ebpf.AttachTCXEgress})
	if err != nil {
		return fmt.Errorf("nodeagent: attach to %s (egress): %w", ifName, err)
	}
	from, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: e.objs.FromPod, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		to.Close()
		return fmt.Errorf("nodeagent: attach to %s (ingress): %w", ifName, err)
	}
	e.links[ifName] = [2]link.Link{to, from}
	return nil
}

// Detach takes the programs off a veth (gone with its pod, usually).
func (e *Enforcer) Detach(ifName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ls, ok := e.links[ifName]; ok {
		ls[0].Close()
		ls[1].Close()
		delete(e.links, ifName)
	}
}

// Attached lists the veths the programs are on.
func (e *Enforcer) Attached() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for n := range e.links {
		out = append(out, n)
	}
	return out
}

func addrKey(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func ruleKey(k policy.Entry) bpf.PolicyPolicyKey {
	return bpf.PolicyPolicyKey{Prefixlen: 64 + uint32(k.Peer.Bits()), Pod: addrKey(k.Pod), Dir: uint32(k.Dir), Peer: addrKey(k.Peer.Addr())}
}

func portSet(s policy.PortSet) bpf.PolicyPortSet {
	var v bpf.PolicyPortSet
	if s.Any {
		v.Any = 1
	}
	for i, r := range s.Ranges {
		if i >= len(v.R) {
			break
		}
		v.R[i].Proto, v.R[i].Lo, v.R[i].Hi = r.Proto, r.Lo, r.Hi
		v.N++
	}
	return v
}

func samePorts(a, b policy.PortSet) bool {
	if a.Any != b.Any || len(a.Ranges) != len(b.Ranges) {
		return false
	}
	for i := range a.Ranges {
		if a.Ranges[i] != b.Ranges[i] {
			return false
		}
	}
	return true
}

// SyncStats says what a Sync changed.
type SyncStats struct{ Updated, Deleted int }

// Sync brings the maps to p, writing only the entries that differ. New
// entries go in before enforcement starts and old ones leave after it
// stops, so no packet meets a half-written policy that denies more than
// either the old or the new one.
func (e *Enforcer) Sync(p policy.Program) (SyncStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var st SyncStats
	var errs []error
	for k, v := range p.Entries {
		if old, ok := e.entries[k]; ok && samePorts(old, v) {
			continue
		}
		key, val := ruleKey(k), portSet(v)
		if err := e.objs.PolicyRules.Put(&key, &val); err != nil {
			errs = append(errs, fmt.Errorf("rule %s %d %s: %w", k.Pod, k.Dir, k.Peer, err))
			continue
		}
		e.entries[k] = v
		st.Updated++
	}
	one := uint32(1)
	for k := range p.Enforced {
		if e.enforced[k] {
			continue
		}
		key := bpf.PolicyPodDir{Pod: addrKey(k.Pod), Dir: uint32(k.Dir)}
		if err := e.objs.PolicyEnforced.Put(&key, &one); err != nil {
			errs = append(errs, err)
			continue
		}
		e.enforced[k] = true
		st.Updated++
	}
	for k := range e.enforced {
		if p.Enforced[k] {
			continue
		}
		key := bpf.PolicyPodDir{Pod: addrKey(k.Pod), Dir: uint32(k.Dir)}
		if err := e.objs.PolicyEnforced.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(e.enforced, k)
		st.Deleted++
	}
	for k := range e.entries {
		if _, ok := p.Entries[k]; ok {
			continue
		}
		key := ruleKey(k)
		if err := e.objs.PolicyRules.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(e.entries, k)
		st.Deleted++
	}
	return st, errors.Join(errs...)
}

// Counters are the programs' verdicts since they were loaded.
type Counters struct{ Allowed, Denied, Tracked, Unenforced uint64 }

// Counters sums the per-CPU counters.
func (e *Enforcer) Counters() (Counters, error) {
	var c Counters
	for i, dst := range []*uint64{&c.Allowed, &c.Denied, &c.Tracked, &c.Unenforced} {
		var per []uint64
		if err := e.objs.PolicyCounters.Lookup(uint32(i), &per); err != nil {
			return c, err
		}
		for _, v := range per {
			*dst += v
		}
	}
	return c, nil
}

// Close detaches everything and unloads the programs.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	for n, ls := range e.links {
		ls[0].Close()
		ls[1].Close()
		delete(e.links, n)
	}
	e.mu.Unlock()
	return e.objs.Close()
}
