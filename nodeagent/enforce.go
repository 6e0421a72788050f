package nodeagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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
//
// With a pin directory (on a bpffs), the maps and the attachments are
// pinned there and outlive the agent: pods stay enforced while it
// restarts, and the next agent takes them over, maps, attachments and all.
type Enforcer struct {
	objs   bpf.PolicyObjects
	pinDir string

	mu       sync.Mutex
	links    map[string]attachment // by host veth
	enforced map[policy.PodDir]bool
	entries  map[policy.Entry]policy.PortSet
}

// NewEnforcer loads the programs and their maps. pinDir, if not empty, is
// a directory on a bpffs where the maps and attachments are pinned: what
// an earlier agent left there is taken over, its entries read back and its
// attachments moved to the programs just loaded.
func NewEnforcer(pinDir string) (*Enforcer, error) {
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("nodeagent: memlock: %w", err)
	}
	e := &Enforcer{pinDir: pinDir, links: map[string]attachment{}, enforced: map[policy.PodDir]bool{}, entries: map[policy.Entry]policy.PortSet{}}
	var opts *ebpf.CollectionOptions
	if pinDir != "" {
		if err := os.MkdirAll(filepath.Join(pinDir, "links"), 0o700); err != nil {
			return nil, fmt.Errorf("nodeagent: pin directory: %w", err)
		}
		opts = &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	}
	load := func() error {
		spec, err := bpf.LoadPolicy()
		if err != nil {
			return err
		}
		if pinDir == "" {
			for _, m := range spec.Maps {
				m.Pinning = ebpf.PinNone
			}
		}
		return spec.LoadAndAssign(&e.objs, opts)
	}
	err := load()
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Maps of another layout (an older agent): they go, and the
		// policies are written anew at the first sync.
		for _, m := range []string{bpf.PolicyMapPolicyRules, bpf.PolicyMapPolicyEnforced, bpf.PolicyMapPolicyCt, bpf.PolicyMapPolicyCounters, bpf.PolicyMapPolicyPods} {
			os.Remove(filepath.Join(pinDir, m))
		}
		err = load()
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("nodeagent: the kernel refused the policy program: %+v", ve)
		}
		return nil, fmt.Errorf("nodeagent: loading the policy program: %w", err)
	}
	if pinDir != "" {
		if err := e.takeOver(); err != nil {
			e.objs.Close()
			return nil, err
		}
	}
	return e, nil
}

// takeOver reads back the entries and attachments an earlier agent
// pinned.
func (e *Enforcer) takeOver() error {
	var k bpf.PolicyPolicyKey
	var v bpf.PolicyPortSet
	it := e.objs.PolicyRules.Iterate()
	for it.Next(&k, &v) {
		var ps policy.PortSet
		ps.Any = v.Any != 0
		for i := 0; i < int(v.N) && i < len(v.R); i++ {
			ps.Ranges = append(ps.Ranges, policy.PortRange{Proto: v.R[i].Proto, Lo: v.R[i].Lo, Hi: v.R[i].Hi})
		}
		e.entries[policy.Entry{Pod: keyAddr(k.Pod), Dir: policy.Direction(k.Dir), Peer: netip.PrefixFrom(keyAddr(k.Peer), int(k.Prefixlen)-64)}] = ps
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("nodeagent: reading pinned rules: %w", err)
	}
	var pd bpf.PolicyPodDir
	var one uint32
	it = e.objs.PolicyEnforced.Iterate()
	for it.Next(&pd, &one) {
		e.enforced[policy.PodDir{Pod: keyAddr(pd.Pod), Dir: policy.Direction(pd.Dir)}] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("nodeagent: reading pinned enforcement: %w", err)
	}
	dir := filepath.Join(e.pinDir, "links")
	files, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("nodeagent: %w", err)
	}
	byIndex := map[int]*attachment{}
	for _, f := range files {
		var idx int
		var end string
		if _, err := fmt.Sscanf(f.Name(), "%d-%s", &idx, &end); err != nil || (end != "to" && end != "from") {
			continue
		}
		path := filepath.Join(dir, f.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			os.Remove(path)
			continue
		}
		prog := e.objs.ToPod
		if end == "from" {
			prog = e.objs.FromPod
		}
		veth, err := netlink.LinkByIndex(idx)
		if err != nil || l.Update(prog) != nil {
			// The veth went while no agent ran.
			l.Unpin()
			l.Close()
			e.objs.PolicyPods.Delete(uint32(idx))
			continue
		}
		a := byIndex[idx]
		if a == nil {
			a = &attachment{ifindex: idx}
			byIndex[idx] = a
		}
		if end == "to" {
			a.links[0] = l
		} else {
			a.links[1] = l
		}
		e.links[veth.Attrs().Name] = *a
	}
	return nil
}

func keyAddr(k uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], k)
	return netip.AddrFrom4(b)
}

// attachment is the programs on one veth.
type attachment struct {
	ifindex int
	links   [2]link.Link
}

func (a attachment) close() {
	for _, l := range a.links {
		if l != nil {
			l.Close()
		}
	}
}

// remove detaches for good: unpinned, then closed.
func (a attachment) remove() {
	for _, l := range a.links {
		if l != nil {
			l.Unpin()
			l.Close()
		}
	}
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
		if a.ifindex == idx && a.links[0] != nil && a.links[1] != nil {
			return nil
		}
		a.remove()
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
	a := attachment{ifindex: idx, links: [2]link.Link{to, from}}
	if e.pinDir != "" {
		for i, end := range []string{"to", "from"} {
			if err := a.links[i].Pin(filepath.Join(e.pinDir, "links", fmt.Sprintf("%d-%s", idx, end))); err != nil {
				a.remove()
				return fmt.Errorf("nodeagent: pin the attachment to %s: %w", ifName, err)
			}
		}
	}
	e.links[ifName] = a
	return nil
}

// Detach takes the programs off a veth (gone with its pod, usually).
func (e *Enforcer) Detach(ifName string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a, ok := e.links[ifName]; ok {
		a.remove()
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

// Close lets go of the programs and maps. Unpinned, that detaches
// everything; pinned, the pods stay enforced for the next agent (Remove
// takes it all away).
func (e *Enforcer) Close() error {
	e.mu.Lock()
	for n, a := range e.links {
		a.close()
		delete(e.links, n)
	}
	e.mu.Unlock()
	return e.objs.Close()
}

// Remove detaches everything and removes the pins: enforcement ends.
func (e *Enforcer) Remove() error {
	e.mu.Lock()
	for n, a := range e.links {
		a.remove()
		delete(e.links, n)
	}
	e.mu.Unlock()
	var errs []error
	if e.pinDir != "" {
		for _, m := range []*ebpf.Map{e.objs.PolicyRules, e.objs.PolicyEnforced, e.objs.PolicyCt, e.objs.PolicyCounters, e.objs.PolicyPods} {
			errs = append(errs, m.Unpin())
		}
		errs = append(errs, os.RemoveAll(filepath.Join(e.pinDir, "links")))
	}
	return errors.Join(append(errs, e.objs.Close())...)
}
