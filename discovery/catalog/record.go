// Package catalog is the mesh's shared knowledge: what each cluster says
// about itself (its WireGuard key, endpoints, block, real CIDRs) and about
// the services it exports (their ingress addresses, ports, readiness).
//
// Each record has one owner, the cluster that publishes and signs it, and a
// version the owner's clock sets. Merging is deterministic: the higher
// version wins, whoever delivers it and in whatever order; deletions are
// tombstones that win like any newer version and expire after a while. A
// record is accepted only if its signature is its owner's, certified by the
// mesh's CA (trust.go). The package is pure: gossip (package gossip) moves
// the records, sources (Kubernetes, files) produce the local ones.
package catalog

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/netip"
	"strings"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// Kind is a kind of record.
type Kind uint8

const (
	// KindCluster is a cluster's record about itself; its name is "".
	KindCluster Kind = 1
	// KindService is a service a cluster exports; its name is "ns/name".
	KindService Kind = 2
	// KindGlobalService is a global service a cluster declares; its
	// name is "ns/name".
	KindGlobalService Kind = 3
	// KindPolicy is a firewall policy a cluster declares; its name is
	// the policy's.
	KindPolicy Kind = 4
)

func (k Kind) String() string {
	switch k {
	case KindCluster:
		return "cluster"
	case KindService:
		return "service"
	case KindGlobalService:
		return "globalservice"
	case KindPolicy:
		return "policy"
	}
	return fmt.Sprintf("kind %d", k)
}

// Key identifies a record.
type Key struct {
	Kind  Kind   `json:"kind"`
	Owner string `json:"owner"`
	Name  string `json:"name,omitempty"`
}

func (k Key) String() string {
	if k.Name == "" {
		return fmt.Sprintf("%s/%s", k.Kind, k.Owner)
	}
	return fmt.Sprintf("%s/%s/%s", k.Kind, k.Owner, k.Name)
}

// Cluster is what a cluster publishes about itself.
type Cluster struct {
	// Region places the cluster for locality (same region first).
	Region string `json:"region,omitempty"`
	// PublicKey is the cluster gateway's WireGuard public key.
	PublicKey string `json:"publicKey"`
	// Endpoints are where peers reach the gateway's WireGuard ("host:port").
	Endpoints []string `json:"endpoints,omitempty"`
	// Gossip is where the gateway gossips ("host:port").
	Gossip string `json:"gossip,omitempty"`
	// Block is the cluster's share of the global CIDR (its certificate's).
	Block netip.Prefix `json:"block"`
	// CIDRs are the cluster's real CIDRs; Routable says peers may route
	// them as they are where they collide with nothing.
	CIDRs    []netip.Prefix `json:"cidrs,omitempty"`
	Routable bool           `json:"routable,omitempty"`
	// Egress are the addresses the cluster's translated traffic leaves
	// as, and whose traffic each carries: firewalls elsewhere tell
	// namespaces and labels apart by them.
	Egress []Egress `json:"egress,omitempty"`
	// Cert is the cluster's certificate, which binds its signing key.
	Cert Certificate `json:"cert"`
}

// Egress is an egress address of a cluster and the pods whose traffic
// leaves as it: those of Namespace ("" any) with Labels (none: any). The
// cluster's default address has neither.
type Egress struct {
	Addr      netip.Addr        `json:"addr"`
	Namespace string            `json:"namespace,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Service is a service a cluster exports.
type Service struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Addr is where other clusters reach the service: its ingress
	// address. Headless services have none.
	Addr  netip.Addr `json:"addr,omitzero"`
	Ports []Port     `json:"ports,omitempty"`
	// Headless services publish their endpoints instead.
	Headless  bool       `json:"headless,omitempty"`
	Endpoints []Endpoint `json:"endpoints,omitempty"`
	// Ready counts the service's ready backends; 0 means it is exported
	// but cannot serve. Total counts them ready or not (0: unknown, as
	// many as are ready).
	Ready int `json:"ready"`
	Total int `json:"total,omitempty"`
	// Health is the result of the exporting gateway's own health check,
	// for services that back a global service; nil: not checked.
	Health *Health `json:"health,omitempty"`
}

// Health is a health check's verdict.
type Health struct {
	Healthy bool `json:"healthy"`
	// Reason says why not, stable from check to check ("connection
	// refused", "timeout", "HTTP 503").
	Reason string `json:"reason,omitempty"`
}

// Serving says whether the service can take connections: some backend
// ready, and the health check, if any, passing.
func (s Service) Serving() bool {
	return s.Ready > 0 && (s.Health == nil || s.Health.Healthy)
}

// Port is a port of a service.
type Port struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol"` // TCP, UDP or SCTP
	Port     uint16 `json:"port"`
}

// Endpoint is a backend of a headless service.
type Endpoint struct {
	Hostname string     `json:"hostname,omitempty"`
	Addr     netip.Addr `json:"addr"`
}

// Record is the unit the catalog stores and gossip moves.
type Record struct {
	Key
	// Version orders the owner's writes of this key (see Clock).
	Version uint64 `json:"version"`
	// Deleted marks a tombstone.
	Deleted       bool                      `json:"deleted,omitempty"`
	Cluster       *Cluster                  `json:"cluster,omitempty"`
	Service       *Service                  `json:"service,omitempty"`
	GlobalService *meshpolicy.GlobalService `json:"globalService,omitempty"`
	Policy        *meshpolicy.Policy        `json:"policy,omitempty"`
	// Sig is the owner's signature over everything else.
	Sig []byte `json:"sig,omitempty"`
}

// signed is what the signature covers.
func (r Record) signed() []byte {
	r.Sig = nil
	b, _ := json.Marshal(r)
	return append([]byte("strait-record-v1\n"), b...)
}

// digest identifies this write of the record, for OwnerSum.
func (r Record) digest() uint64 {
	h := fnv.New64a()
	h.Write([]byte(r.Key.String()))
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], r.Version)
	h.Write(v[:])
	h.Write(r.Sig)
	return h.Sum64()
}

// Sign signs the record with the owner's key.
func (r *Record) Sign(key ed25519.PrivateKey) {
	r.Sig = ed25519.Sign(key, r.signed())
}

func (r Record) verify(key ed25519.PublicKey) bool {
	return ed25519.Verify(key, r.signed(), r.Sig)
}

// Encode is the record's wire form.
func (r Record) Encode() ([]byte, error) { return json.Marshal(r) }

// MaxRecordSize bounds a record on the wire: a service with many ports or
// endpoints still fits; anything larger is refused as malformed.
const MaxRecordSize = 64 << 10

// Decode parses a record from the wire and checks its shape (not its
// signature: that takes the catalog's trust).
func Decode(b []byte) (Record, error) {
	if len(b) > MaxRecordSize {
		return Record{}, fmt.Errorf("record of %d bytes exceeds %d", len(b), MaxRecordSize)
	}
	var r Record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return Record{}, fmt.Errorf("not a record: %v", err)
	}
	r.normalize()
	if err := r.check(); err != nil {
		return Record{}, err
	}
	return r, nil
}

// normalize makes empty lists nil, as encoding leaves them out: a record
// decodes to the same value whichever way an empty list was written.
func (r *Record) normalize() {
	if c := r.Cluster; c != nil {
		if len(c.Endpoints) == 0 {
			c.Endpoints = nil
		}
		if len(c.CIDRs) == 0 {
			c.CIDRs = nil
		}
	}
	if c := r.Cluster; c != nil && len(c.Egress) == 0 {
		c.Egress = nil
	}
	if s := r.Service; s != nil {
		if len(s.Ports) == 0 {
			s.Ports = nil
		}
		if len(s.Endpoints) == 0 {
			s.Endpoints = nil
		}
	}
	if len(r.Sig) == 0 {
		r.Sig = nil
	}
}

// check validates a record's shape.
func (r Record) check() error {
	if !validName(r.Owner) {
		return fmt.Errorf("owner %q is not a valid cluster name", r.Owner)
	}
	if len(r.Sig) != ed25519.SignatureSize {
		return fmt.Errorf("%s: no valid signature", r.Key)
	}
	if r.Deleted {
		if r.content() > 0 {
			return fmt.Errorf("%s: a tombstone carries no content", r.Key)
		}
		return r.checkName()
	}
	switch r.Kind {
	case KindCluster:
		if r.Name != "" || r.Cluster == nil || r.content() != 1 {
			return fmt.Errorf("%s: a cluster record carries exactly its cluster", r.Key)
		}
		c := r.Cluster
		if !c.Block.IsValid() || !c.Block.Addr().Is4() {
			return fmt.Errorf("%s: block %s is not an IPv4 prefix", r.Key, c.Block)
		}
		if len(c.PublicKey) != 44 {
			return fmt.Errorf("%s: %q is not a WireGuard public key", r.Key, c.PublicKey)
		}
		if len(c.Endpoints) > 16 || len(c.CIDRs) > 64 {
			return fmt.Errorf("%s: too many endpoints or CIDRs", r.Key)
		}
		for _, p := range c.CIDRs {
			if !p.IsValid() || p.Masked() != p {
				return fmt.Errorf("%s: CIDR %s is not a masked prefix", r.Key, p)
			}
		}
		if len(c.Egress) > 1024 {
			return fmt.Errorf("%s: too many egress addresses", r.Key)
		}
		for _, e := range c.Egress {
			if !c.Block.Contains(e.Addr) {
				return fmt.Errorf("%s: egress address %s is outside the block %s", r.Key, e.Addr, c.Block)
			}
			if (e.Namespace != "" && !validName(e.Namespace)) || len(e.Labels) > meshpolicy.MaxLabels {
				return fmt.Errorf("%s: egress address %s: namespace %q or labels not valid", r.Key, e.Addr, e.Namespace)
			}
		}
	case KindGlobalService:
		if r.GlobalService == nil || r.content() != 1 {
			return fmt.Errorf("%s: a global service record carries exactly its global service", r.Key)
		}
		if err := r.checkName(); err != nil {
			return err
		}
		g := r.GlobalService
		if g.Key() != r.Name {
			return fmt.Errorf("%s: names global service %s", r.Key, g.Key())
		}
		if err := meshpolicy.Errors(g.Validate()); err != nil {
			return fmt.Errorf("%s: %w", r.Key, err)
		}
	case KindPolicy:
		if r.Policy == nil || r.content() != 1 {
			return fmt.Errorf("%s: a policy record carries exactly its policy", r.Key)
		}
		if err := r.checkName(); err != nil {
			return err
		}
		if r.Policy.Name != r.Name {
			return fmt.Errorf("%s: names policy %s", r.Key, r.Policy.Name)
		}
		if err := meshpolicy.Errors(r.Policy.Validate()); err != nil {
			return fmt.Errorf("%s: %w", r.Key, err)
		}
	case KindService:
		if r.Service == nil || r.content() != 1 {
			return fmt.Errorf("%s: a service record carries exactly its service", r.Key)
		}
		if err := r.checkName(); err != nil {
			return err
		}
		s := r.Service
		if s.Namespace+"/"+s.Name != r.Name {
			return fmt.Errorf("%s: names service %s/%s", r.Key, s.Namespace, s.Name)
		}
		if !s.Headless && !usableAddr(s.Addr) {
			return fmt.Errorf("%s: address %s is not a unicast IPv4 address", r.Key, s.Addr)
		}
		if len(s.Ports) > 256 || len(s.Endpoints) > 1000 || s.Ready < 0 || s.Total < 0 {
			return fmt.Errorf("%s: too many ports or endpoints, or negative readiness", r.Key)
		}
		if h := s.Health; h != nil && len(h.Reason) > 128 {
			return fmt.Errorf("%s: health reason longer than 128 bytes", r.Key)
		}
		for _, p := range s.Ports {
			if p.Port == 0 || (p.Protocol != "TCP" && p.Protocol != "UDP" && p.Protocol != "SCTP") {
				return fmt.Errorf("%s: port %d/%s is not valid", r.Key, p.Port, p.Protocol)
			}
			if p.Name != "" && !validName(p.Name) {
				return fmt.Errorf("%s: port name %q is not valid", r.Key, p.Name)
			}
		}
		for _, e := range s.Endpoints {
			if !usableAddr(e.Addr) || (e.Hostname != "" && !validName(e.Hostname)) {
				return fmt.Errorf("%s: endpoint %q %s is not valid", r.Key, e.Hostname, e.Addr)
			}
		}
	default:
		return fmt.Errorf("%s: unknown kind", r.Key)
	}
	return nil
}

// content counts the payloads a record carries.
func (r Record) content() int {
	n := 0
	for _, set := range []bool{r.Cluster != nil, r.Service != nil, r.GlobalService != nil, r.Policy != nil} {
		if set {
			n++
		}
	}
	return n
}

func (r Record) checkName() error {
	switch r.Kind {
	case KindCluster:
		if r.Name != "" {
			return fmt.Errorf("%s: a cluster record has no name", r.Key)
		}
	case KindService, KindGlobalService:
		ns, name, ok := strings.Cut(r.Name, "/")
		if !ok || !validName(ns) || !validName(name) {
			return fmt.Errorf("%s name %q is not namespace/name", r.Kind, r.Name)
		}
	case KindPolicy:
		if !validName(r.Name) {
			return fmt.Errorf("policy name %q is not a DNS label", r.Name)
		}
	default:
		return fmt.Errorf("%s: unknown kind", r.Key)
	}
	return nil
}

func usableAddr(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsMulticast() && !a.IsLoopback() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// validName is a DNS label: what Kubernetes allows for namespaces,
// services and port names, and strait for clusters.
func validName(s string) bool { return meshpolicy.ValidName(s) }

// Clock makes versions: milliseconds since the epoch in the upper bits and
// a counter below, never going back even if the wall clock does (a hybrid
// logical clock). A restart that loses the counter still moves forward with
// the wall clock.
type Clock struct {
	Now  func() time.Time
	last uint64
}

const counterBits = 16

// Next returns a version above every one this clock returned.
func (c *Clock) Next() uint64 {
	v := uint64(c.Now().UnixMilli()) << counterBits
	if v <= c.last {
		v = c.last + 1
	}
	c.last = v
	return v
}

// Observe moves the clock past a version seen elsewhere (a previous life's).
func (c *Clock) Observe(v uint64) {
	if v > c.last {
		c.last = v
	}
}

// VersionTime is the wall time a version was made at.
func VersionTime(v uint64) time.Time {
	return time.UnixMilli(int64(v >> counterBits))
}

// ValidName says whether s can name a cluster: a DNS label, lowercase.
func ValidName(s string) bool { return validName(s) }
