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
	links    map[string]attachment // by host veth
	enforced map[policy.PodDir]bool
	entries  map[policy.Entry]policy.PortSet
}

// NewEnforcer loads the programs and their maps.
func NewEnforcer() (*Enforcer, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("nodeagent: memlock: %w", err)
	}
	e := &Enforcer{links: map[string]attachment{}, enforced: map[policy.PodDir]bool{}, entries: map[policy.Entry]policy.PortSet{}}
	if err := bpf.LoadPolicyObjects(&e.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("nodeagent: the kernel refused the policy program: %+v", ve)
		}
		return nil, fmt.Errorf("nodeagent: loading the policy program: %w", err)
	}
	return e, nil
}

// attachment is the programs on one veth.
type attachment struct {
	ifindex int
	links   [2]link.Link
}

func (a attachment) close() {
	a.links[0].Close()
	a.links[1].Close()
}

// Attach puts the programs on a pod's host-side veth (TCX): what goes to
// the pod and what comes from it. pod is the pod's IPv4 address, when
// known: the programs then take the pod's identity from the veth, and drop
// what the pod sends from any other address. Attaching again is a no-op,
// unless the veth was made anew under the same name.
func (e *Enforcer) Attach(ifName string, pod netip.Addr) error {
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("nodeagent: attach to %s: %w", ifName, err)
	}
	idx := l.Attrs().Index
	e.mu.Lock()
	defer e.mu.Unlock()
	if a, ok := e.links[ifName]; ok {
		if a.ifindex == idx {
			return nil
		}
		a.close()
		e.objs.PolicyPods.Delete(uint32(a.ifindex))
		delete(e.links, ifName)
	}
	if pod.Is4() {
		// Before the programs: the first packet already finds its pod.
		if err := e.objs.PolicyPods.Put(uint32(idx), addrKey(pod)); err != nil {
			return fmt.Errorf("nodeagent: pod of %s: %w", ifName, err)
		}
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
	e.links[ifName] = attachment{ifindex: idx, links: [2]link.Link{to, from}}
	return nil
}

// Detach takes the programs off a veth (gone with its pod, usually).
func (e *Enforcer) Detach(ifName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a, ok := e.links[ifName]; ok {
		a.close()
		e.objs.PolicyPods.Delete(uint32(a.ifindex))
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
	changed := map[uint32]bool{} // pods whose policy changed
	for k, v := range p.Entries {
		if old, ok := e.entries[k]; ok && samePorts(old, v) {
			continue
		}
		changed[addrKey(k.Pod)] = true
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
		changed[addrKey(k.Pod)] = true
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
		changed[addrKey(k.Pod)] = true
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
		changed[addrKey(k.Pod)] = true
		key := ruleKey(k)
		if err := e.objs.PolicyRules.Delete(&key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
			continue
		}
		delete(e.entries, k)
		st.Deleted++
	}
	// Connections of pods whose policy changed pass the new rules again:
	// a revoked permission does not live on in the conntrack map.
	if len(changed) > 0 {
		errs = append(errs, e.forget(changed))
	}
	return st, errors.Join(errs...)
}

// forget removes the conntrack entries of pods.
func (e *Enforcer) forget(pods map[uint32]bool) error {
	var k bpf.PolicyCtKey
	var v uint64
	var stale []bpf.PolicyCtKey
	it := e.objs.PolicyCt.Iterate()
	for it.Next(&k, &v) {
		if pods[k.Pod] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading conntrack entries: %w", err)
	}
	for _, k := range stale {
		e.objs.PolicyCt.Delete(&k)
	}
	return nil
}

// Counters are the programs' verdicts since they were loaded.
type Counters struct{ Allowed, Denied, Tracked, Unenforced, Spoofed, IPv6Denied uint64 }

// Counters sums the per-CPU counters.
func (e *Enforcer) Counters() (Counters, error) {
	var c Counters
	for i, dst := range []*uint64{&c.Allowed, &c.Denied, &c.Tracked, &c.Unenforced, &c.Spoofed, &c.IPv6Denied} {
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
	for n, a := range e.links {
		a.close()
		delete(e.links, n)
	}
	e.mu.Unlock()
	return e.objs.Close()
}
