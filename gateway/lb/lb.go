// Package lb decides how a gateway balances the global services of the
// mesh: for every VIP and port, which clusters' instances take new
// connections, in what shares, and the Maglev table that spreads them.
// It is pure; package lbtable programs the result into nftables.
//
// A gateway balances for the clients of its own site: a pod that connects
// to a VIP reaches its own gateway first. Instances are the clusters that
// export the service (same namespace and name), reached at their ingress
// addresses, or at the service's backend when it is this gateway's own.
// Locality (meshpolicy.Locality) ranks them in tiers: this cluster, its
// region, the rest. Each tier takes traffic by its health, the way Envoy
// spreads over priorities: a tier whose instances are all serving takes
// everything; one at health h takes min(1, h*Overprovisioning) of what
// is left, and the rest spills to the next tier. An instance's health is
// its ready share (ready over total backends) when its health check
// passes, else 0. Within a tier, instances share by their clusters'
// weights times their health.
package lb

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/gateway/lb/maglev"
)

// Overprovisioning is how much a tier's health is trusted: a tier at 72%
// health or more still takes all the traffic.
const Overprovisioning = 1.4

// Instance is one cluster's instance of a service.
type Instance struct {
	Cluster string
	Region  string
	// Addr is where connections go: the instance's ingress address, or
	// the service's backend for this gateway's own cluster.
	Addr netip.Addr
	// Ports are the instance's ports: service port to the port at Addr.
	Ports map[PortKey]uint16
	// Ready and Total count the instance's backends (Total 0: as many
	// as are ready).
	Ready, Total int
	// Healthy is the health check's verdict (true when not checked);
	// Checked says there is one.
	Healthy, Checked bool
}

// PortKey is a protocol (6, 17) and a port.
type PortKey struct {
	Proto uint8
	Port  uint16
}

func (k PortKey) String() string {
	if k.Proto == 17 {
		return fmt.Sprintf("%d/udp", k.Port)
	}
	return fmt.Sprintf("%d/tcp", k.Port)
}

// health is the instance's share of serving capacity, 0 to 1.
func (i Instance) health() float64 {
	if !i.Healthy || i.Ready <= 0 {
		return 0
	}
	if i.Total <= i.Ready {
		return 1
	}
	return float64(i.Ready) / float64(i.Total)
}

// Input is what a gateway knows when it plans.
type Input struct {
	// Self and Region place this gateway.
	Self, Region string
	// TableSize is the Maglev table size (prime).
	TableSize int
	// VIPRange is the mesh's VIP range; services whose VIP is outside
	// are refused.
	VIPRange netip.Prefix
	// Services are the mesh's global services (meshpolicy.Merge).
	Services []meshpolicy.DeclaredService
	// Instances by "namespace/name", from live clusters only.
	Instances map[string][]Instance
	// Prev is the plan the tables are programmed from, if any: new
	// tables move only the entries that must move from it (see
	// maglev.Rebuild).
	Prev []Service
}

// Service is a global service as this gateway serves it.
type Service struct {
	Key string
	VIP netip.Addr
	// Groups are the service's ports, grouped by the instances that have
	// them: one Maglev table per group.
	Groups []Group
}

// Group is ports of a service that the same instances serve.
type Group struct {
	Ports    []PortKey
	Backends []Backend
	// Table maps each of TableSize entries to an index of Backends;
	// nil when no backend takes connections (the ports are refused).
	Table []int32
}

// Backend is an instance in a group.
type Backend struct {
	Instance
	// Tier is its locality rank (0 nearest); Share the part of new
	// connections it takes (0 to 1); Serving whether it can take any
	// (its health is above 0), even if locality gives it none.
	Tier    int
	Share   float64
	Serving bool
}

// Plan decides every global service; problems say what is not served,
// and why.
func Plan(in Input) ([]Service, []string, error) {
	if !maglev.IsPrime(in.TableSize) {
		return nil, nil, fmt.Errorf("lb: table size %d is not prime", in.TableSize)
	}
	var out []Service
	var problems []string
	for _, g := range in.Services {
		if !in.VIPRange.IsValid() {
			problems = append(problems, fmt.Sprintf("global service %s: no loadBalancer.vipRange in the mesh file: not served here", g.Key()))
			continue
		}
		if !in.VIPRange.Contains(g.VIP) || g.VIP == in.VIPRange.Masked().Addr() {
			problems = append(problems, fmt.Sprintf("global service %s (declared by %s): VIP %s is outside the VIP range %s: not served", g.Key(), g.Owner, g.VIP, in.VIPRange))
			continue
		}
		insts := in.Instances[g.Key()]
		if len(insts) == 0 {
			problems = append(problems, fmt.Sprintf("global service %s: no cluster exports %s: its VIP %s refuses connections", g.Key(), g.Key(), g.VIP))
		}
		svc := Service{Key: g.Key(), VIP: g.VIP}
		// Group ports by the clusters that have them.
		byPort := map[PortKey][]int{}
		for i, inst := range insts {
			for k := range inst.Ports {
				byPort[k] = append(byPort[k], i)
			}
		}
		groups := map[string]*Group{}
		var order []string
		for _, k := range slices.SortedFunc(maps.Keys(byPort), comparePort) {
			sig := fmt.Sprint(byPort[k])
			grp, ok := groups[sig]
			if !ok {
				grp = &Group{}
				for _, i := range byPort[k] {
					grp.Backends = append(grp.Backends, Backend{Instance: insts[i]})
				}
				groups[sig] = grp
				order = append(order, sig)
			}
			grp.Ports = append(grp.Ports, k)
		}
		for _, sig := range order {
			grp := groups[sig]
			share(grp.Backends, g.GlobalService, in.Self, in.Region)
			table, err := build(grp.Backends, in.TableSize, prevGroup(in.Prev, g.Key(), grp.Ports))
			if err != nil {
				return nil, nil, fmt.Errorf("lb: %s: %w", g.Key(), err)
			}
			grp.Table = table
			if table == nil {
				problems = append(problems, fmt.Sprintf("global service %s: no instance of %s is serving (%s): connections to %s are refused",
					g.Key(), portList(grp.Ports), why(grp.Backends), g.VIP))
			}
			svc.Groups = append(svc.Groups, *grp)
		}
		out = append(out, svc)
	}
	return out, problems, nil
}

// share sets the tiers and shares of a group's backends.
func share(bs []Backend, g meshpolicy.GlobalService, self, region string) {
	loc := g.Locality
	if loc == "" {
		loc = meshpolicy.LocalityCluster
	}
	tiers := 0
	for i := range bs {
		b := &bs[i]
		b.Serving = b.health() > 0
		switch {
		case loc == meshpolicy.LocalityNone:
			b.Tier = 0
		case b.Cluster == self && loc == meshpolicy.LocalityCluster:
			b.Tier = 0
		case b.Cluster == self || (region != "" && b.Region == region):
			b.Tier = 1
		default:
			b.Tier = 2
		}
		tiers = max(tiers, b.Tier+1)
	}
	// Each tier's health: its backends' health weighted by cluster.
	load := make([]float64, tiers)
	weight := func(b Backend) float64 { return float64(g.Weight(b.Cluster)) }
	left := 1.0
	for t := range tiers {
		var w, h float64
		for _, b := range bs {
			if b.Tier == t && weight(b) > 0 {
				w += weight(b)
				h += weight(b) * b.health()
			}
		}
		if w == 0 {
			continue
		}
		load[t] = min(left, h/w*Overprovisioning)
		left -= load[t]
	}
	total := 0.0
	for _, l := range load {
		total += l
	}
	if total == 0 {
		return
	}
	for t := range tiers {
		var sum float64
		for _, b := range bs {
			if b.Tier == t {
				sum += weight(b) * b.health()
			}
		}
		for i := range bs {
			if b := &bs[i]; b.Tier == t && sum > 0 {
				b.Share = load[t] / total * weight(*b) * b.health() / sum
			}
		}
	}
}

// shareScale turns shares into Maglev weights.
const shareScale = 1_000_000

// prevGroup finds the group of a previous plan that held a service's
// first port: the table that port's connections were spread by, whatever
// ports joined or left the group since.
func prevGroup(prev []Service, key string, ports []PortKey) *Group {
	for _, s := range prev {
		if s.Key != key {
			continue
		}
		for i := range s.Groups {
			if slices.Contains(s.Groups[i].Ports, ports[0]) {
				return &s.Groups[i]
			}
		}
	}
	return nil
}

// build makes the group's Maglev table, moving as few entries as it can
// from prev's; nil when no backend has a share.
func build(bs []Backend, size int, prev *Group) ([]int32, error) {
	mb := make([]maglev.Backend, len(bs))
	any := false
	for i, b := range bs {
		w := uint32(math.Round(b.Share * shareScale))
		if b.Share > 0 && w == 0 {
			w = 1
		}
		mb[i] = maglev.Backend{Name: b.Cluster, Weight: w}
		any = any || w > 0
	}
	if !any {
		return nil, nil
	}
	if prev != nil && prev.Table != nil {
		names := make([]string, len(prev.Backends))
		for i, b := range prev.Backends {
			names[i] = b.Cluster
		}
		return maglev.Rebuild(prev.Table, names, mb, size)
	}
	return maglev.Build(mb, size)
}

func why(bs []Backend) string {
	var s []string
	for _, b := range bs {
		switch {
		case !b.Healthy:
			s = append(s, b.Cluster+" failing its health check")
		case b.Ready == 0:
			s = append(s, b.Cluster+" has no ready backend")
		case b.Share == 0:
			s = append(s, b.Cluster+" weighs 0")
		}
	}
	if len(s) == 0 {
		return "no cluster exports them"
	}
	return fmt.Sprint(s)
}

func portList(ps []PortKey) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return fmt.Sprint(s)
}

func comparePort(a, b PortKey) int {
	return cmp.Or(cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port))
}

// Gone lists the (VIP, backend address) pairs that served in prev and no
// longer serve in next: their established connections are dead ends, and
// the caller flushes them from conntrack so that the clients' next
// packets start over on a serving backend. Backends that still serve but
// lost their share to locality keep their connections.
func Gone(prev, next []Service) []VIPBackend {
	serving := func(ss []Service) map[VIPBackend]bool {
		m := map[VIPBackend]bool{}
		for _, s := range ss {
			for _, g := range s.Groups {
				for _, b := range g.Backends {
					if b.Serving {
						m[VIPBackend{s.VIP, b.Addr}] = true
					}
				}
			}
		}
		return m
	}
	before, after := serving(prev), serving(next)
	var out []VIPBackend
	for k := range before {
		if !after[k] {
			out = append(out, k)
		}
	}
	slices.SortFunc(out, func(a, b VIPBackend) int {
		return cmp.Or(a.VIP.Compare(b.VIP), a.Backend.Compare(b.Backend))
	})
	return out
}

// NotServing lists the (VIP, backend address) pairs of a plan whose
// backend does not serve: after a start, what may still have connections
// from before.
func NotServing(plan []Service) []VIPBackend {
	var out []VIPBackend
	for _, s := range plan {
		for _, g := range s.Groups {
			for _, b := range g.Backends {
				if !b.Serving && !slices.Contains(out, VIPBackend{s.VIP, b.Addr}) {
					out = append(out, VIPBackend{s.VIP, b.Addr})
				}
			}
		}
	}
	return out
}

// VIPBackend is a backend address behind a VIP.
type VIPBackend struct {
	VIP, Backend netip.Addr
}
