package gateway

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/kubepolicy"
	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/health"
	"github.com/straitnet/strait/gateway/lb"
	"github.com/straitnet/strait/gateway/lbtable"
	"github.com/straitnet/strait/gateway/siteconf"
	"github.com/straitnet/strait/internal/atomicfile"
	"github.com/straitnet/strait/natpool"
)

// VIPsName is the file in the state directory that keeps the VIPs this
// gateway allocated to the global services its site declares.
const VIPsName = "vips.json"

// lbTable is what the gateway needs of the load balancer's table.
type lbTable interface {
	Sync(lbtable.Program) (lbtable.SyncStats, error)
	Verify() (bool, error)
	Flush([]lb.VIPBackend) (int, error)
	Counters() (map[string]lbtable.Counter, error)
	Remove() error
	Close() error
}

var _ lbTable = (*lbtable.Table)(nil)

// balancer is the gateway's load balancer: the VIPs its site allocates,
// the health checks of its own instances, and the table. The reconcile
// loop owns it; status reads its last results under Gateway.mu.
type balancer struct {
	tab     lbTable
	checker *health.Checker
	store   natpool.Store
	ids     lbtable.IDs
	// vips is the allocator of the site's VIPs, over the VIP range it
	// was made for.
	vips      *natpool.Allocator
	vipsRange netip.Prefix
	// plan is the last plan programmed; removed whether the table was.
	plan     []lb.Service
	problems []string
	applied  bool
	// cleared says a table left from before this process is gone or
	// replaced; flushed counts the connections flushed since the start.
	cleared bool
	flushed int
	// lastInput is what plan was made from, as text.
	lastInput string
}

// LBStatus is the load balancer as the gateway serves it.
type LBStatus struct {
	VIPRange string `json:"vipRange,omitempty"`
	// Hub is the site that balances for the mesh, if one does.
	Hub       string            `json:"hub,omitempty"`
	Services  []LBService       `json:"services"`
	Health    map[string]Health `json:"health,omitempty"`
	Balanced  uint64            `json:"balanced"`
	Refused   uint64            `json:"refused"`
	Flushed   int               `json:"flushedConnections"`
	Problems  []string          `json:"problems,omitempty"`
	UpdatedAt time.Time         `json:"updatedAt,omitzero"`
}

// LBService is a global service and its backends' shares.
type LBService struct {
	Name     string      `json:"name"`
	VIP      netip.Addr  `json:"vip"`
	Ports    []string    `json:"ports"`
	Backends []LBBackend `json:"backends"`
}

// LBBackend is one cluster's instance behind a VIP.
type LBBackend struct {
	Cluster string     `json:"cluster"`
	Addr    netip.Addr `json:"addr"`
	Tier    int        `json:"tier"`
	Share   float64    `json:"share"`
	Serving bool       `json:"serving"`
	Ready   int        `json:"ready"`
	Healthy bool       `json:"healthy"`
	// Checked says its health check has a verdict (else it counts as
	// healthy).
	Checked bool `json:"checked"`
}

// Health is a health check of one of this site's instances.
type Health struct {
	Target  string    `json:"target"`
	Checked bool      `json:"checked"`
	Healthy bool      `json:"healthy"`
	Reason  string    `json:"reason,omitempty"`
	Since   time.Time `json:"since,omitzero"`
}

func newBalancer(stateDir, site string, now func() time.Time, tab lbTable, log *slog.Logger, kick func()) (*balancer, error) {
	b := &balancer{tab: tab, store: &natpool.FileStore{Path: filepath.Join(stateDir, VIPsName), Site: site, Now: now}}
	// A damaged file stops the start: VIPs in use must not move.
	if _, err := b.store.Load(); err != nil {
		return nil, err
	}
	b.checker = health.New(health.Options{Logger: log, Now: now, OnChange: kick})
	return b, nil
}

func (b *balancer) close() {
	b.checker.Close()
	if b.tab != nil {
		b.tab.Close()
	}
}

// declare fills in the VIPs of the global services this site declares:
// theirs when written, else the one allocated to them. Allocation starts
// at a hash of the service's name and avoids every VIP the catalog shows
// other clusters holding; an allocated VIP another cluster's service holds
// too (both allocated at once) is given up for another. New VIPs are
// allocated only once allocate says the catalog can be trusted. What goes
// wrong (the store, an exhausted range) is a problem, and the allocations
// stay as they were: a VIP in use never moves for it.
func (b *balancer) declare(want desired, snap catalog.Snapshot, allocate bool, now func() time.Time) ([]meshpolicy.GlobalService, []string) {
	var problems []string
	if want.lb == nil {
		var kept []meshpolicy.GlobalService
		for _, g := range want.globalServices {
			if !g.VIP.IsValid() {
				problems = append(problems, fmt.Sprintf("global service %s has no vip, and without loadBalancer.vipRange in the mesh file none is allocated", g.Key()))
				continue
			}
			kept = append(kept, g)
		}
		return kept, problems
	}
	rng := want.lb.VIPRange
	pools := []natpool.Pool{{Name: "vip", Kind: natpool.VIP, CIDR: rng}}
	if b.vips == nil || b.vipsRange != rng {
		st, err := b.store.Load()
		var a *natpool.Allocator
		if err == nil {
			a, err = natpool.NewAllocator(rng, pools, st, natpool.DefaultHoldDown, now)
		}
		if err != nil {
			return withVIPs(want.globalServices), []string{fmt.Sprintf("VIPs in %s: %v; only written VIPs are published", b.store.Where(), err)}
		}
		b.vips, b.vipsRange = a, rng
	}
	// Who holds which VIP elsewhere.
	type holder struct {
		key, owner string
		allocated  bool
	}
	// Per VIP, the service that keeps it by Merge's rule: written before
	// allocated, then the first name; among other clusters' declarations
	// and this site's written VIPs.
	held := map[netip.Addr]holder{}
	keeps := func(a, b holder) bool {
		if a.allocated != b.allocated {
			return !a.allocated
		}
		return a.key < b.key
	}
	claim := func(ip netip.Addr, h holder) {
		if cur, ok := held[ip]; !ok || keeps(h, cur) {
			held[ip] = h
		}
	}
	for _, d := range snap.GlobalServices {
		if d.Owner != snap.Self && d.VIP.IsValid() {
			claim(d.VIP, holder{d.Key(), d.Owner, d.Allocated})
		}
	}
	for _, g := range want.globalServices {
		if g.VIP.IsValid() {
			claim(g.VIP, holder{g.Key(), snap.Self, false})
		}
	}
	next, err := natpool.NewAllocator(rng, pools, b.vips.State(), natpool.DefaultHoldDown, now)
	if err != nil {
		return withVIPs(want.globalServices), []string{fmt.Sprintf("VIPs: %v", err)}
	}
	var avoid []netip.Addr
	for ip := range held {
		avoid = append(avoid, ip)
	}
	var reqs []natpool.Request
	for _, g := range want.globalServices {
		if g.VIP.IsValid() {
			avoid = append(avoid, g.VIP)
			if !rng.Contains(g.VIP) {
				problems = append(problems, fmt.Sprintf("global service %s: vip %s is outside the VIP range %s", g.Key(), g.VIP, rng))
			}
			continue
		}
		key := "vip/" + g.Key()
		ip, had := next.Lookup(key)
		// Another service has the same VIP, written, or allocated at
		// the same time: a written one keeps it, else the first name,
		// as Merge decides.
		if h, clash := held[ip]; had && clash && h.key != g.Key() && keeps(h, holder{g.Key(), snap.Self, true}) {
			problems = append(problems, fmt.Sprintf("global service %s: its VIP %s is also %s's (declared by %s); allocating another", g.Key(), ip, h.key, h.owner))
			next.Release(key)
			had = false
		}
		if !had && !allocate {
			problems = append(problems, fmt.Sprintf("global service %s: waiting for the catalog to settle before allocating its VIP", g.Key()))
			continue
		}
		reqs = append(reqs, natpool.Request{Key: key, Pool: "vip", Kind: natpool.VIP, Hint: hintIn(rng, g.Key())})
	}
	next.Avoid(avoid)
	changed, errs := next.Sync(reqs)
	for _, e := range errs {
		problems = append(problems, "allocating VIPs: "+e.Error())
	}
	if changed {
		if err := b.store.Save(next.State()); err != nil {
			// Not saved, not used.
			problems = append(problems, fmt.Sprintf("saving VIPs to %s: %v; new VIPs wait", b.store.Where(), err))
			next = b.vips
		}
	}
	b.vips = next
	out := slices.Clone(want.globalServices)
	kept := out[:0]
	for _, g := range out {
		if !g.VIP.IsValid() {
			ip, ok := next.Lookup("vip/" + g.Key())
			if !ok {
				continue
			}
			g.VIP, g.Allocated = ip, true
		}
		kept = append(kept, g)
	}
	return kept, problems
}

// withVIPs keeps the global services that have a VIP written.
func withVIPs(gs []meshpolicy.GlobalService) []meshpolicy.GlobalService {
	var out []meshpolicy.GlobalService
	for _, g := range gs {
		if g.VIP.IsValid() {
			out = append(out, g)
		}
	}
	return out
}

// hintIn is where the search for a service's VIP starts: a hash of its
// name into the range, so that clusters allocating at once rarely collide.
func hintIn(rng netip.Prefix, key string) netip.Addr {
	h := fnv.New32a()
	h.Write([]byte(key))
	base := binary.BigEndian.Uint32(rng.Masked().Addr().AsSlice())
	size := uint32(1) << (32 - rng.Bits())
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], base+h.Sum32()%size)
	return netip.AddrFrom4(b)
}

// local is how this gateway reaches its own instance of a service.
type local struct {
	backend netip.Addr
	ports   map[lb.PortKey]uint16
}

func localServices(services []siteconf.Service) map[string]local {
	out := map[string]local{}
	for _, s := range services {
		l := local{backend: s.Backend, ports: map[lb.PortKey]uint16{}}
		for _, p := range s.Ports {
			l.ports[lb.PortKey{Proto: p.Protocol, Port: p.Port}] = p.TargetPort
		}
		out[s.Namespace+"/"+s.Name] = l
	}
	return out
}

// checks are the health checks of this site's instances of the mesh's
// global services.
func checks(set meshpolicy.Set, locals map[string]local) []health.Target {
	var out []health.Target
	for _, g := range set.Services {
		l, ok := locals[g.Key()]
		if !ok {
			continue
		}
		hc := g.HealthCheck.WithDefaults()
		port, ok := l.ports[lb.PortKey{Proto: 6, Port: hc.Port}]
		if hc.Port == 0 {
			// The first TCP port.
			for _, k := range slices.SortedFunc(maps.Keys(l.ports), func(a, b lb.PortKey) int { return int(a.Port) - int(b.Port) }) {
				if k.Proto == 6 {
					port, ok = l.ports[k], true
					break
				}
			}
		}
		if !ok {
			// Checked at a port the instance does not have: it would
			// never fail. A target with no address fails every check,
			// and says why.
			out = append(out, health.Target{Key: g.Key(), Check: hc})
			continue
		}
		out = append(out, health.Target{Key: g.Key(), Addr: netip.AddrPortFrom(l.backend, port), Check: hc})
	}
	return out
}

// instances are the instances of every global service: this site's own,
// reached at its backend with its health checked here (from what the
// gateway knows, with or without a catalog), and those of the other live
// clusters, reached at their ingress addresses.
func instances(snap catalog.Snapshot, set meshpolicy.Set, locals map[string]local, results map[string]health.Result, selfReady map[string][2]int) map[string][]lb.Instance {
	want := map[string]bool{}
	out := map[string][]lb.Instance{}
	for _, g := range set.Services {
		key := g.Key()
		want[key] = true
		l, ok := locals[key]
		if !ok {
			continue
		}
		inst := lb.Instance{Cluster: snap.Self, Region: snap.Clusters[snap.Self].Region, Addr: l.backend, Ports: l.ports, Ready: 1, Healthy: true}
		if n, ok := selfReady[key]; ok {
			inst.Ready, inst.Total = n[0], n[1]
		}
		if r, ok := results[key]; ok && r.Checked {
			inst.Healthy, inst.Checked = r.Healthy, true
		}
		out[key] = append(out[key], inst)
	}
	for _, cs := range snap.Services {
		key := cs.Namespace + "/" + cs.Name
		if !want[key] || cs.Headless || cs.Cluster == snap.Self || !snap.Alive[cs.Cluster] {
			continue
		}
		inst := lb.Instance{Cluster: cs.Cluster, Region: snap.Clusters[cs.Cluster].Region, Addr: cs.Addr,
			Ports: map[lb.PortKey]uint16{}, Ready: cs.Ready, Total: cs.Total, Healthy: cs.Health == nil || cs.Health.Healthy, Checked: cs.Health != nil}
		for _, p := range cs.Ports {
			if pr := protoNumber(p.Protocol); pr != 0 {
				inst.Ports[lb.PortKey{Proto: pr, Port: p.Port}] = p.Port
			}
		}
		out[key] = append(out[key], inst)
	}
	return out
}

func protoNumber(p string) uint8 {
	switch p {
	case "TCP", "":
		return 6
	case "UDP":
		return 17
	}
	return 0
}

// syncLB plans and programs the load balancer; it returns the status to
// report. Without a loadBalancer section the table is removed.
func (g *Gateway) syncLB(want desired, snap catalog.Snapshot, set meshpolicy.Set) (*LBStatus, error) {
	b := g.lb
	if b == nil {
		return nil, nil
	}
	locals := localServices(want.services)
	targets := checks(set, locals)
	b.checker.Set(targets)
	if !want.lb.Balances(snap.Self) {
		// Also a table left from before a restart.
		if b.applied || !b.cleared {
			if err := b.tab.Remove(); err != nil {
				return nil, err
			}
			b.applied, b.cleared, b.plan, b.lastInput = false, true, nil, ""
		}
		switch {
		case want.lb != nil:
			return &LBStatus{VIPRange: want.lb.VIPRange.String(), Hub: want.lb.Hub}, nil
		case len(set.Services) > 0:
			return &LBStatus{Problems: []string{"global services are declared, but the mesh file has no loadBalancer section: this gateway does not serve them"}}, nil
		}
		return nil, nil
	}
	results := b.checker.Results()
	ready := map[string][2]int{}
	for _, e := range want.exports {
		ready[e.Namespace+"/"+e.Name] = [2]int{e.Ready, e.Total}
	}
	in := lb.Input{Self: snap.Self, Region: snap.Clusters[snap.Self].Region, TableSize: want.lb.TableSize,
		VIPRange: want.lb.VIPRange, Services: set.Services, Instances: instances(snap, set, locals, results, ready)}
	// Planning a 65,537-entry table per VIP port is not free: only when
	// what it derives from changed, or the kernel lost it.
	key := fmt.Sprint(in)
	drifted := false
	if b.applied {
		ok, err := b.tab.Verify()
		if err != nil {
			return nil, err
		}
		if drifted = !ok; drifted {
			g.log.Warn("load balancer table drifted from what was programmed; rewriting it", "table", lbtable.TableName)
		}
	}
	if !b.applied || drifted || key != b.lastInput {
		in.Prev = b.plan
		plan, problems, err := lb.Plan(in)
		if err != nil {
			return nil, err
		}
		prog, err := lbtable.Compile(g.opts.Interface, want.lb.VIPRange, want.lb.TableSize, plan, &b.ids)
		if err != nil {
			return nil, err
		}
		st, err := b.tab.Sync(prog)
		if err != nil {
			return nil, err
		}
		gone := lb.Gone(b.plan, plan)
		if b.plan == nil {
			// After a start: backends that stopped serving while the
			// gateway was down still have their connections.
			gone = lb.NotServing(plan)
		}
		if len(gone) > 0 {
			n, err := b.tab.Flush(gone)
			if err != nil {
				return nil, err
			}
			b.flushed += n
			g.log.Info("backends stopped serving; their connections flushed", "backends", fmt.Sprint(gone), "connections", n)
		}
		if st.Full || st.Added+st.Removed > 0 {
			g.log.Info("load balancer programmed", "table", lbtable.TableName, "whole", st.Full, "added", st.Added, "removed", st.Removed, "services", len(plan))
		}
		b.plan, b.problems, b.applied, b.cleared, b.lastInput = plan, problems, true, true, key
	}
	plan, problems := b.plan, b.problems
	status := &LBStatus{VIPRange: want.lb.VIPRange.String(), Hub: want.lb.Hub, Problems: problems, Flushed: b.flushed, UpdatedAt: g.opts.Now(), Health: map[string]Health{}}
	for _, s := range plan {
		ls := LBService{Name: s.Key, VIP: s.VIP}
		for _, grp := range s.Groups {
			for _, p := range grp.Ports {
				ls.Ports = append(ls.Ports, p.String())
			}
			if len(ls.Backends) > 0 {
				continue // the first group's backends stand for all
			}
			for _, be := range grp.Backends {
				ls.Backends = append(ls.Backends, LBBackend{Cluster: be.Cluster, Addr: be.Addr, Tier: be.Tier,
					Share: round3(be.Share), Serving: be.Serving, Ready: be.Ready, Healthy: be.Healthy, Checked: be.Checked})
			}
		}
		status.Services = append(status.Services, ls)
	}
	for _, t := range targets {
		r := results[t.Key]
		status.Health[t.Key] = Health{Target: t.Addr.String(), Checked: r.Checked, Healthy: r.Healthy, Reason: r.Reason, Since: r.Since}
	}
	if cs, err := b.tab.Counters(); err == nil {
		status.Balanced, status.Refused = cs["balanced"].Packets, cs["refused"].Packets
	}
	return status, nil
}

func round3(f float64) float64 { return float64(int(f*1000+0.5)) / 1000 }

// withHealth gives the exports that back a global service their health
// check's verdict, as published.
func withHealth(svcs []catalog.Service, results map[string]health.Result) []catalog.Service {
	out := slices.Clone(svcs)
	for i := range out {
		r, ok := results[out[i].Namespace+"/"+out[i].Name]
		if !ok || !r.Checked {
			continue
		}
		out[i].Health = &catalog.Health{Healthy: r.Healthy, Reason: r.Reason}
	}
	return out
}

// snapshot is the catalog as the load balancer and firewall see it;
// without discovery, this site alone with its own declarations.
func (g *Gateway) snapshot(mp meshDeclared) catalog.Snapshot {
	if g.disc != nil {
		return g.disc.cat.Snapshot()
	}
	snap := catalog.Snapshot{Self: g.opts.Site, Clusters: map[string]catalog.Cluster{}, Alive: map[string]bool{g.opts.Site: true}}
	for _, d := range mp.globalServices {
		snap.GlobalServices = append(snap.GlobalServices, meshpolicy.DeclaredService{Owner: g.opts.Site, GlobalService: d})
	}
	for _, p := range mp.policies {
		snap.Policies = append(snap.Policies, meshpolicy.DeclaredPolicy{Owner: g.opts.Site, Policy: p})
	}
	return snap
}

// declare is what this site declares for the mesh this pass, VIPs
// allocated, with its instances' health. It cannot fail: what goes wrong
// is a problem in the status, and the rest is published regardless.
func (g *Gateway) declare(want desired) meshDeclared {
	mp := meshDeclared{policies: want.policies, globalServices: want.globalServices}
	var problems []string
	if g.lb != nil {
		mp.health = g.lb.checker.Results()
		var snap catalog.Snapshot
		settled := true
		if g.disc != nil {
			snap = g.disc.cat.Snapshot()
			g.withRemembered(&snap, want)
			settled = g.disc.settled()
		}
		mp.globalServices, problems = g.lb.declare(want, snap, settled, g.opts.Now)
	}
	g.mu.Lock()
	g.meshProblems = problems
	g.mu.Unlock()
	g.lastDeclared = mp
	return mp
}

// syncMesh programs the load balancer and the firewall from the catalog:
// the mesh's merged declarations, its clusters, their instances. Until the
// catalog has settled after a start, the kernel keeps what it holds.
func (g *Gateway) syncMesh(want desired) (lbErr, fwErr error) {
	if g.disc != nil && g.disc.dns != nil {
		var vips netip.Prefix
		if want.lb != nil && g.lb != nil {
			vips = want.lb.VIPRange
		}
		g.disc.dns.SetVIPRange(vips)
	}
	if g.disc != nil && !g.disc.settled() {
		g.mu.Lock()
		g.lbStatus = &LBStatus{Problems: []string{"waiting for the catalog to settle before programming the load balancer and firewall"}}
		g.mu.Unlock()
		return nil, nil
	}
	snap := g.snapshot(g.lastDeclared)
	g.withRemembered(&snap, want)
	set := meshpolicy.Merge(snap.GlobalServices, snap.Policies)
	if g.disc != nil && g.disc.policy != nil {
		g.disc.setPolicyStatus(objectStatus(g.lastDeclared, set, snap.Self))
	}
	lbSt, lbErr := g.syncLB(want, snap, set)
	fwSt, fwErr := g.syncFirewall(want, snap, set)
	g.mu.Lock()
	defer g.mu.Unlock()
	if lbErr == nil {
		g.lbStatus = lbSt
		if g.lbStatus != nil {
			g.lbStatus.Problems = append(slices.Concat(g.meshProblems, set.Problems), g.lbStatus.Problems...)
		}
	}
	if fwErr == nil {
		g.fwStatus = fwSt
	}
	if lbErr != nil {
		lbErr = fmt.Errorf("load balancer: %w", lbErr)
	}
	if fwErr != nil {
		fwErr = fmt.Errorf("firewall: %w", fwErr)
	}
	return lbErr, fwErr
}

// objectStatus is what the status of this cluster's strait.io objects
// says: each global service's VIP in use (the one that applies, which may
// be another cluster's declaration's), and the declarations that do not
// apply as written: another cluster's different declaration overrides
// them, or they are left out (no VIP, a VIP another service holds).
func objectStatus(mp meshDeclared, set meshpolicy.Set, self string) (map[string]netip.Addr, map[string]string) {
	vips, conflicts := map[string]netip.Addr{}, map[string]string{}
	for _, g := range mp.globalServices {
		key := kubepolicy.ConflictKey(kubepolicy.KindGlobalService, g.Key())
		w, ok := set.Service(g.Namespace, g.Name)
		switch {
		case !ok:
			for _, p := range set.Problems {
				if strings.HasPrefix(p, "global service "+g.Key()+" ") {
					conflicts[key] = p
				}
			}
		case w.Owner != self && !w.Equal(g):
			vips[g.Key()] = w.VIP
			conflicts[key] = fmt.Sprintf("%s declares %s differently, and its declaration applies (the first cluster name)", w.Owner, g.Key())
		default:
			vips[g.Key()] = w.VIP
		}
	}
	for _, p := range mp.policies {
		for _, w := range set.Policies {
			if w.Name == p.Name && w.Owner != self && !w.Equal(p) {
				conflicts[kubepolicy.ConflictKey(kubepolicy.KindFirewallPolicy, p.Name)] = fmt.Sprintf("%s declares policy %s differently, and its declaration applies (the first cluster name)", w.Owner, p.Name)
			}
		}
	}
	return vips, conflicts
}

// DeclarationsName is the file in the state directory that keeps the mesh
// policy other clusters declared, as last seen.
const DeclarationsName = "declarations.json"

// declarations are other clusters' declarations, as saved.
type declarations struct {
	GlobalServices []meshpolicy.DeclaredService `json:"globalServices,omitempty"`
	Policies       []meshpolicy.DeclaredPolicy  `json:"policies,omitempty"`
}

// loadDeclarations reads what other clusters declared, as last seen; none
// if there is no file. A damaged file stops the start, named: without it a
// gateway that starts alone would stop enforcing their policies.
func loadDeclarations(path string) (*declarations, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &declarations{}, nil
	}
	if err != nil {
		return nil, err
	}
	var d declarations
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v): remove it to start from what the catalog brings (other clusters' policies are not enforced until it does)", path, err)
	}
	return &d, nil
}

// withRemembered adds to snap the declarations of clusters of the mesh
// that the catalog does not know (yet), as last seen: a gateway that
// starts alone, or whose peers are slow to answer, keeps enforcing the
// policies it enforced, rather than failing open. Declarations of
// clusters no longer in the mesh are forgotten. What the catalog shows
// of the clusters it knows is saved for the next start when it changes.
func (g *Gateway) withRemembered(snap *catalog.Snapshot, want desired) {
	if g.disc == nil || g.remembered == nil {
		return
	}
	inMesh := map[string]bool{}
	if want.mesh != nil {
		for _, s := range want.mesh.Sites {
			inMesh[s.Name] = true
		}
	}
	var seen declarations
	for _, d := range snap.GlobalServices {
		if d.Owner != snap.Self {
			seen.GlobalServices = append(seen.GlobalServices, d)
		}
	}
	for _, d := range snap.Policies {
		if d.Owner != snap.Self {
			seen.Policies = append(seen.Policies, d)
		}
	}
	use := func(owner string) bool {
		_, known := snap.Clusters[owner]
		return !known && inMesh[owner] && owner != snap.Self
	}
	for _, d := range g.remembered.GlobalServices {
		if use(d.Owner) {
			snap.GlobalServices = append(snap.GlobalServices, d)
			seen.GlobalServices = append(seen.GlobalServices, d)
		}
	}
	for _, d := range g.remembered.Policies {
		if use(d.Owner) {
			snap.Policies = append(snap.Policies, d)
			seen.Policies = append(seen.Policies, d)
		}
	}
	before, _ := json.Marshal(g.remembered)
	after, _ := json.Marshal(seen)
	if string(before) != string(after) {
		path := filepath.Join(g.opts.StateDir, DeclarationsName)
		if err := atomicfile.Write(path, after, 0o600, false); err != nil {
			g.log.Warn("saving other clusters' declarations", "file", path, "err", err)
		}
		g.remembered = &seen
	}
}
