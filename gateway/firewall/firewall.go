// Package firewall compiles the mesh's firewall policies into what one
// gateway enforces: a Program of interval maps, hash maps and short verdict
// chains that package fwtable writes into nftables, so that the cost of a
// packet does not grow with the number of rules.
//
// A gateway enforces the policies on the new connections that enter its
// site from the mesh (from its WireGuard device) toward its own services.
// Policies apply in order (priority, then name, as meshpolicy.Merge sorts
// them), their rules in order; the first rule that matches decides. A rule
// of a dry-run policy only counts what it matches: the next rule decides.
// What no rule decides takes the gateway's default action.
//
// # Sources
//
// A connection is known at the destination by its source address alone,
// after the source cluster's gateway translated it or not:
//
//   - Source{Cluster: c} is c's block (its egress and ingress addresses are
//     there), plus c's real CIDRs when c reaches this gateway on a real path
//     (pods keep their addresses).
//   - With a Namespace and/or Labels, it is the egress addresses of c whose
//     selector picks only pods that the source picks: the egress rule's
//     namespace is the source's (when the source names one) and its labels
//     include the source's. Where c has no such address, or c reaches this
//     gateway on a real path (its pods keep their own addresses, which cannot
//     be told apart), the compiler reports a Problem; the source then matches
//     only the addresses it found, possibly none. An egress address stands
//     only for the pods that leave by it: pods of the source that an egress
//     rule does not single out leave as c's default address, which the
//     source does not match.
//   - A source without a cluster stands for every cluster of
//     Input.Clusters. A source cluster not there is a Problem (the source
//     matches nothing), except this gateway's own: its connections do not
//     come through the mesh, so it matches nothing here, silently.
//   - No source at all (empty From) is any address.
//
// # Destinations
//
// A destination names a service of this gateway's cluster (Cluster empty or
// this cluster; a destination in another cluster is enforced there, and
// ignored here). Connections are matched after the ingress DNAT, on
// (backend, protocol, target port); Ports narrow to some of the service's
// ports, named by service port. A port the service does not have, or a
// service that this cluster, named explicitly, does not have, is a Problem.
// No destination at all (empty To) is anything forwarded from the mesh,
// services or not.
//
// # Conflicts
//
// Policies of the same priority apply in name order, which is seldom what
// their authors weighed. Where a rule decides some connections and a later
// policy of the same priority would decide them otherwise (its own first
// matching rule acts otherwise), the compiler reports both rules and which
// one wins. Dry-run policies decide nothing and conflict with nothing;
// policies shadowed by an earlier priority that decides the connections do
// not conflict either.
//
// # Program
//
// Compilation partitions the IPv4 space into intervals whose addresses the
// same rules' sources match (a source class), and the service ports into
// groups that the same rules' destinations match (a destination class, 0
// for everything else). Each (source class, destination class) pair where
// the rules decide something of their own maps to a chain: the rules to
// count, and the verdict. A pair absent from Verdicts takes the pair
// (source class, 0), which only rules without destinations match, and
// without that, the default; see Program.Decide, which the kernel table
// mirrors. A program needs at most MaxVerdicts pairs; past that, Compile
// gives up (Program.Failed) rather than exhaust memory.
package firewall

import (
	"net/netip"
	"slices"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// Cluster is another cluster of the mesh, as this gateway sees it.
type Cluster struct {
	// Block is its share of the mesh's global CIDR: its egress and
	// ingress addresses are there.
	Block netip.Prefix
	// CIDRs are its real CIDRs.
	CIDRs []netip.Prefix
	// RealPath says its traffic reaches this gateway with real (pod)
	// source addresses.
	RealPath bool
	// Egress are its egress addresses and what they stand for.
	Egress []Egress
}

// Egress is an egress address of a cluster and the pods that leave by it.
type Egress struct {
	Addr netip.Addr
	// Namespace is the pods' namespace; "" is any namespace.
	Namespace string
	// Labels is the pods' selector; empty is any pod (with Namespace ""
	// too: the cluster's default address).
	Labels map[string]string
}

// Service is one of this gateway's services: the destination side.
type Service struct {
	Namespace, Name string
	// Cluster is the cluster of the instance: "" for this gateway's own;
	// another's at a hub, which enforces the policies on the connections
	// it balances to other clusters' instances.
	Cluster string
	// Backend is where the gateway DNATs the service to; connections are
	// matched after DNAT.
	Backend netip.Addr
	Ports   []ServicePort
}

// ServicePort is a port of a service: connections to Port reach the
// backend on TargetPort (Port when 0). Proto is 6 (TCP) or 17 (UDP).
type ServicePort struct {
	Proto      uint8
	Port       uint16
	TargetPort uint16
}

// Protocol numbers of ServicePort.Proto and DestKey.Proto.
const (
	ProtoTCP = 6
	ProtoUDP = 17
)

// Input is everything a gateway compiles its firewall from.
type Input struct {
	// Self is this gateway's cluster.
	Self string
	// Default is what happens to connections no rule decides: Allow or
	// Deny (the default-deny switch). Anything else is a Problem and
	// denies.
	Default meshpolicy.Action
	// Policies in the order they apply (meshpolicy.Merge's).
	Policies []meshpolicy.DeclaredPolicy
	// Clusters are the other clusters of the mesh, by name.
	Clusters map[string]Cluster
	// Services are this cluster's services.
	Services []Service
}

// Program is what the kernel table needs to enforce the policies.
type Program struct {
	Default meshpolicy.Action
	// Sources partition the IPv4 space into disjoint, sorted, covering
	// intervals, each with a source class: addresses of one class are
	// matched by the same rules. Class 0 is never used for sources.
	Sources []SourceRange
	// Dests maps (backend, protocol, target port) to a destination class,
	// 1 or more: keys of one class are matched by the same rules.
	// Destination class 0 stands for anything else, which only rules
	// without destinations match.
	Dests map[DestKey]uint32
	// Verdicts maps (source class, destination class) to an index of
	// Chains. A pair (s, d) is there where a rule matches it and its chain
	// differs from that of (s, 0); (s, 0) is there where a rule without
	// destinations matches s. A pair absent takes (s, 0), and without
	// that the default (see Decide).
	Verdicts map[[2]uint32]uint32
	// Chains are the distinct chains, indexed by chain ID.
	Chains []Chain
	// Rules are every rule of every policy, in order: a rule's index is
	// its name in the kernel (counter "r<index>").
	Rules []RuleInfo
	// Problems say what could not be compiled as written, and which rules
	// conflict.
	Problems []string
	// Failed says compilation stopped (see Problems): the maps are empty
	// and every connection takes the default. A gateway should keep its
	// previous program rather than apply this one.
	Failed bool
}

// SourceRange is an interval of addresses, First to Last included, and
// its source class.
type SourceRange struct {
	First, Last netip.Addr
	Class       uint32
}

// DestKey is a connection's destination after DNAT.
type DestKey struct {
	Addr  netip.Addr
	Proto uint8
	Port  uint16
}

// Chain is what the kernel does with a connection of a (source class,
// destination class) pair.
type Chain struct {
	// Count are indexes into Rules: the dry-run rules that match before
	// the deciding one, then the deciding rule (if any); each counts the
	// connection.
	Count []int
	// Verdict is the deciding rule's action, or the default when no rule
	// decides.
	Verdict meshpolicy.Action
	// Decided is false when the default decides (the kernel counts the
	// connection as "default" then).
	Decided bool
}

// RuleInfo names a rule of the program.
type RuleInfo struct {
	// Name is meshpolicy.Policy.RuleName: "policy/name" or "policy/#i".
	Name   string
	Policy string
	Action meshpolicy.Action
	// DryRun says the rule only counts.
	DryRun bool
}

// MaxVerdicts bounds Program.Verdicts: past it, Compile gives up with a
// Problem instead of exhausting memory (and the kernel's).
const MaxVerdicts = 2_000_000

// verdictLimit is MaxVerdicts, lowered by tests.
var verdictLimit = MaxVerdicts

// Decide is what the program does with a new connection from src to dst,
// as the kernel table looks it up: the source class of src, the
// destination class of dst (0 if none), the chain of that pair, or else
// of (source class, 0), or else the default, undecided.
func (p Program) Decide(src netip.Addr, dst DestKey) Chain {
	dflt := Chain{Verdict: p.Default}
	if !src.Is4() {
		return dflt
	}
	i, found := slices.BinarySearchFunc(p.Sources, src, func(r SourceRange, a netip.Addr) int {
		switch {
		case r.Last.Less(a):
			return -1
		case a.Less(r.First):
			return 1
		}
		return 0
	})
	if !found {
		return dflt
	}
	s := p.Sources[i].Class
	if id, ok := p.Verdicts[[2]uint32{s, p.Dests[dst]}]; ok {
		return p.Chains[id]
	}
	if id, ok := p.Verdicts[[2]uint32{s, 0}]; ok {
		return p.Chains[id]
	}
	return dflt
}
