// Package meshpolicy is what a mesh agrees on besides its members and
// their services: global services (one virtual address for a service that
// several clusters export, and how its connections spread over them) and
// firewall policies (who in the mesh may reach which service).
//
// Any cluster may write them, as Kubernetes objects (package kubepolicy)
// or in its site file (package siteconf). Its gateway publishes them in
// the catalog, and every gateway takes the merge of what all clusters
// declared (Merge). The package is pure: the types, their validation, and
// the merge.
package meshpolicy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// GlobalService is a service that several clusters export under one
// namespace and name, reached at one virtual address (VIP): load-balancing
// gateways spread new connections over the healthy instances of every
// cluster.
type GlobalService struct {
	Namespace string `json:"namespace" yaml:"namespace"`
	Name      string `json:"name" yaml:"name"`
	// VIP is the service's virtual address, inside the mesh's VIP range.
	// Left out, the declaring cluster's gateway allocates one and
	// publishes it with Allocated set.
	VIP       netip.Addr `json:"vip,omitzero" yaml:"vip"`
	Allocated bool       `json:"allocated,omitempty" yaml:"-"`
	// Weights are relative weights by cluster name; a cluster not listed
	// weighs DefaultWeight, and weight 0 drains a cluster (no new
	// connections).
	Weights map[string]uint32 `json:"weights,omitempty" yaml:"weights"`
	// Locality is how connections prefer near instances; default
	// LocalityCluster.
	Locality Locality `json:"locality,omitempty" yaml:"locality"`
	// HealthCheck is how each cluster's gateway checks its own instance.
	HealthCheck HealthCheck `json:"healthCheck,omitzero" yaml:"healthCheck"`
}

// Key is "namespace/name".
func (g GlobalService) Key() string { return g.Namespace + "/" + g.Name }

// DefaultWeight is a cluster's weight when a global service lists none.
const DefaultWeight = 100

// MaxWeight bounds a weight.
const MaxWeight = 10000

// Weight is a cluster's weight for the service.
func (g GlobalService) Weight(cluster string) uint32 {
	if w, ok := g.Weights[cluster]; ok {
		return w
	}
	return DefaultWeight
}

// Locality says which instances a load-balancing gateway prefers.
type Locality string

const (
	// LocalityCluster prefers the gateway's own cluster, then clusters
	// of its region, then the rest, spilling over as the nearer ones
	// turn unhealthy or short of ready backends.
	LocalityCluster Locality = "cluster"
	// LocalityRegion prefers the gateway's region (its own cluster
	// included), then the rest.
	LocalityRegion Locality = "region"
	// LocalityNone spreads over every instance by weight alone.
	LocalityNone Locality = "none"
)

// HealthCheck is how the gateway of a cluster checks the cluster's
// instance of a global service. Zero fields take the defaults.
type HealthCheck struct {
	// Protocol is TCP (a connection opens) or HTTP (a GET answers
	// 2xx or 3xx); default TCP.
	Protocol string `json:"protocol,omitempty" yaml:"protocol"`
	// Port is the service port checked; default its first TCP port.
	Port uint16 `json:"port,omitempty" yaml:"port"`
	// Path of the HTTP check; default "/".
	Path string `json:"path,omitempty" yaml:"path"`
	// Interval between checks; default 500ms.
	Interval Duration `json:"interval,omitzero" yaml:"interval"`
	// Timeout of one check; default 300ms, at most Interval.
	Timeout Duration `json:"timeout,omitzero" yaml:"timeout"`
	// UnhealthyAfter failures in a row mark an instance unhealthy;
	// default 2. HealthyAfter successes mark it healthy again; default 2.
	UnhealthyAfter int `json:"unhealthyAfter,omitempty" yaml:"unhealthyAfter"`
	HealthyAfter   int `json:"healthyAfter,omitempty" yaml:"healthyAfter"`
}

// Health check defaults: an instance that stops answering is out within
// Interval*UnhealthyAfter+Timeout, 1.3s.
const (
	DefaultInterval       = 500 * time.Millisecond
	DefaultTimeout        = 300 * time.Millisecond
	DefaultUnhealthyAfter = 2
	DefaultHealthyAfter   = 2
)

// WithDefaults returns the check with its defaults filled in.
func (h HealthCheck) WithDefaults() HealthCheck {
	if h.Protocol == "" {
		h.Protocol = "TCP"
	}
	if h.Protocol == "HTTP" && h.Path == "" {
		h.Path = "/"
	}
	if h.Interval == 0 {
		h.Interval = Duration(DefaultInterval)
	}
	if h.Timeout == 0 {
		h.Timeout = Duration(min(DefaultTimeout, time.Duration(h.Interval)))
	}
	if h.UnhealthyAfter == 0 {
		h.UnhealthyAfter = DefaultUnhealthyAfter
	}
	if h.HealthyAfter == 0 {
		h.HealthyAfter = DefaultHealthyAfter
	}
	return h
}

// Duration is a time.Duration written as "500ms".
type Duration time.Duration

// MarshalText writes the duration as Go does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText reads "500ms", "2s".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 500ms", b)
	}
	*d = Duration(v)
	return nil
}

// Policy is an ordered list of firewall rules. Gateways enforce the
// policies of the whole mesh on the connections that reach their own
// services through the mesh: policies in order of Priority (lower first;
// equal priorities by name), the rules of each in order, and the first
// rule that matches a new connection decides it. What no rule matches
// takes the gateway's default action.
type Policy struct {
	Name     string `json:"name" yaml:"name"`
	Priority int32  `json:"priority,omitempty" yaml:"priority"`
	// DryRun has the rules count what they match without deciding
	// anything: the next rule decides.
	DryRun bool   `json:"dryRun,omitempty" yaml:"dryRun"`
	Rules  []Rule `json:"rules" yaml:"rules"`
}

// Rule allows or denies connections from some sources to some
// destinations.
type Rule struct {
	// Name names the rule in counters and logs; default its index.
	Name   string `json:"name,omitempty" yaml:"name"`
	Action Action `json:"action" yaml:"action"`
	// From are the sources; none means any source.
	From []Source `json:"from,omitempty" yaml:"from"`
	// To are the destinations; none means anything a gateway forwards
	// from the mesh into its site.
	To []Destination `json:"to,omitempty" yaml:"to"`
}

// Action is what a rule does.
type Action string

const (
	Allow Action = "allow"
	// Deny refuses a connection: a TCP reset, or ICMP administratively
	// prohibited for other protocols.
	Deny Action = "deny"
)

// Source selects where connections come from: pods of a cluster, of a
// namespace, with labels. Empty fields match anything. Namespaces and
// labels are known at the destination where the source cluster gives them
// an egress address of their own (egress rules); see package firewall.
type Source struct {
	Cluster   string            `json:"cluster,omitempty" yaml:"cluster"`
	Namespace string            `json:"namespace,omitempty" yaml:"namespace"`
	Labels    map[string]string `json:"labels,omitempty" yaml:"labels"`
}

// Destination selects exported services and their ports.
type Destination struct {
	Namespace string `json:"namespace" yaml:"namespace"`
	Service   string `json:"service" yaml:"service"`
	// Cluster narrows to one cluster's instance; default every one.
	Cluster string `json:"cluster,omitempty" yaml:"cluster"`
	// Ports narrow to some ports; default every port of the service.
	Ports []Port `json:"ports,omitempty" yaml:"ports"`
}

// Port is a service port.
type Port struct {
	// Protocol is TCP (default) or UDP.
	Protocol string `json:"protocol,omitempty" yaml:"protocol"`
	Port     uint16 `json:"port" yaml:"port"`
}

// Proto is the port's protocol with the default filled in.
func (p Port) Proto() string {
	if p.Protocol == "" {
		return "TCP"
	}
	return p.Protocol
}

// Limits keep a policy inside one catalog record.
const (
	MaxRules        = 256
	MaxPeers        = 64
	MaxLabels       = 16
	MaxPorts        = 64
	MaxPriority     = 1_000_000
	MaxWeightedSets = 256
)

// FieldError is one problem of an object, at a field path such as
// "rules[2].from[0].cluster".
type FieldError struct {
	Field string
	Msg   string
}

func (e FieldError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

// Errors joins field errors into one message.
func Errors(errs []FieldError) error {
	if len(errs) == 0 {
		return nil
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return fmt.Errorf("%s", strings.Join(msgs, "; "))
}

type checker struct{ errs []FieldError }

func (c *checker) fail(field, format string, args ...any) {
	c.errs = append(c.errs, FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) name(field, s string, required bool) {
	switch {
	case s == "" && required:
		c.fail(field, "required")
	case s != "" && !ValidName(s):
		c.fail(field, "%q is not a DNS label (lowercase letters, digits and '-', at most 63)", s)
	}
}

// Validate checks a global service; the errors name the fields.
func (g GlobalService) Validate() []FieldError {
	var c checker
	c.name("namespace", g.Namespace, true)
	c.name("name", g.Name, true)
	if g.VIP.IsValid() && (!g.VIP.Is4() || g.VIP.IsUnspecified() || g.VIP.IsMulticast() || g.VIP.IsLoopback()) {
		c.fail("vip", "%s is not a unicast IPv4 address", g.VIP)
	}
	if g.Allocated && !g.VIP.IsValid() {
		c.fail("vip", "marked allocated but empty")
	}
	if len(g.Weights) > MaxWeightedSets {
		c.fail("weights", "%d clusters; at most %d", len(g.Weights), MaxWeightedSets)
	}
	for cl, w := range g.Weights {
		c.name("weights["+cl+"]", cl, true)
		if w > MaxWeight {
			c.fail("weights["+cl+"]", "%d is above the largest weight, %d", w, MaxWeight)
		}
	}
	switch g.Locality {
	case "", LocalityCluster, LocalityRegion, LocalityNone:
	default:
		c.fail("locality", "%q is not cluster, region or none", g.Locality)
	}
	h := g.HealthCheck
	switch h.Protocol {
	case "", "TCP":
		if h.Path != "" {
			c.fail("healthCheck.path", "a TCP check has no path")
		}
	case "HTTP":
		if h.Path != "" && !strings.HasPrefix(h.Path, "/") {
			c.fail("healthCheck.path", "%q does not start with /", h.Path)
		}
		if len(h.Path) > 1024 {
			c.fail("healthCheck.path", "longer than 1024 bytes")
		}
	default:
		c.fail("healthCheck.protocol", "%q is not TCP or HTTP", h.Protocol)
	}
	if h.Interval < 0 || (h.Interval != 0 && (time.Duration(h.Interval) < 100*time.Millisecond || time.Duration(h.Interval) > time.Minute)) {
		c.fail("healthCheck.interval", "%s: want between 100ms and 1m", time.Duration(h.Interval))
	}
	d := h.WithDefaults()
	if h.Timeout < 0 || (h.Timeout != 0 && (h.Timeout < Duration(10*time.Millisecond) || h.Timeout > d.Interval)) {
		c.fail("healthCheck.timeout", "%s: want between 10ms and the interval (%s)", time.Duration(h.Timeout), time.Duration(d.Interval))
	}
	if h.UnhealthyAfter < 0 || h.UnhealthyAfter > 10 {
		c.fail("healthCheck.unhealthyAfter", "%d: want 1 to 10", h.UnhealthyAfter)
	}
	if h.HealthyAfter < 0 || h.HealthyAfter > 10 {
		c.fail("healthCheck.healthyAfter", "%d: want 1 to 10", h.HealthyAfter)
	}
	return c.errs
}

// Validate checks a policy; the errors name the fields.
func (p Policy) Validate() []FieldError {
	var c checker
	c.name("name", p.Name, true)
	if p.Priority < 0 || p.Priority > MaxPriority {
		c.fail("priority", "%d: want 0 to %d", p.Priority, MaxPriority)
	}
	if len(p.Rules) == 0 {
		c.fail("rules", "a policy needs at least one rule")
	}
	if len(p.Rules) > MaxRules {
		c.fail("rules", "%d rules; at most %d in one policy (split them over several)", len(p.Rules), MaxRules)
	}
	names := map[string]int{}
	for i, r := range p.Rules {
		f := fmt.Sprintf("rules[%d]", i)
		c.name(f+".name", r.Name, false)
		if j, dup := names[r.Name]; dup && r.Name != "" {
			c.fail(f+".name", "%q is also rules[%d]'s name", r.Name, j)
		}
		names[r.Name] = i
		if r.Action != Allow && r.Action != Deny {
			c.fail(f+".action", "%q is not allow or deny", r.Action)
		}
		if len(r.From) > MaxPeers || len(r.To) > MaxPeers {
			c.fail(f, "at most %d sources and %d destinations", MaxPeers, MaxPeers)
		}
		for j, s := range r.From {
			sf := fmt.Sprintf("%s.from[%d]", f, j)
			c.name(sf+".cluster", s.Cluster, false)
			c.name(sf+".namespace", s.Namespace, false)
			if len(s.Labels) > MaxLabels {
				c.fail(sf+".labels", "at most %d labels", MaxLabels)
			}
			for k, v := range s.Labels {
				if !validLabelKey(k) || !validLabelValue(v) {
					c.fail(sf+".labels", "%s=%s is not a valid label", k, v)
				}
			}
		}
		for j, d := range r.To {
			df := fmt.Sprintf("%s.to[%d]", f, j)
			c.name(df+".namespace", d.Namespace, true)
			c.name(df+".service", d.Service, true)
			c.name(df+".cluster", d.Cluster, false)
			if len(d.Ports) > MaxPorts {
				c.fail(df+".ports", "at most %d ports", MaxPorts)
			}
			for k, pt := range d.Ports {
				pf := fmt.Sprintf("%s.ports[%d]", df, k)
				if pt.Port == 0 {
					c.fail(pf+".port", "required, 1 to 65535")
				}
				if pr := pt.Proto(); pr != "TCP" && pr != "UDP" {
					c.fail(pf+".protocol", "%q is not TCP or UDP", pt.Protocol)
				}
			}
		}
	}
	return c.errs
}

// RuleName is the name a rule goes by in counters and logs:
// "policy/name", or "policy/#index" for a rule without a name.
func (p Policy) RuleName(i int) string {
	if n := p.Rules[i].Name; n != "" {
		return p.Name + "/" + n
	}
	return fmt.Sprintf("%s/#%d", p.Name, i)
}

// ValidName is a DNS label: what Kubernetes allows for namespaces and
// services, and strait for clusters.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// validLabelKey accepts Kubernetes label keys: an optional DNS prefix and
// "/", then a name of letters, digits, '-', '_' and '.'.
func validLabelKey(k string) bool {
	prefix, name, ok := strings.Cut(k, "/")
	if !ok {
		name, prefix = prefix, ""
	}
	if ok && (prefix == "" || len(prefix) > 253) {
		return false
	}
	return name != "" && validLabelValue(name)
}

func validLabelValue(v string) bool {
	if len(v) > 63 {
		return false
	}
	for i, c := range v {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '-' || c == '_' || c == '.') && i > 0 && i < len(v)-1:
		default:
			return false
		}
	}
	return true
}

// Equal says whether two declarations say the same; an allocated VIP does
// not count (two clusters declaring the same service allocate apart).
func (g GlobalService) Equal(o GlobalService) bool {
	if g.Allocated {
		g.VIP = netip.Addr{}
	}
	if o.Allocated {
		o.VIP = netip.Addr{}
	}
	g.Allocated, o.Allocated = false, false
	a, _ := json.Marshal(g)
	b, _ := json.Marshal(o)
	return string(a) == string(b)
}

// Equal says whether two policies say the same.
func (p Policy) Equal(o Policy) bool {
	a, _ := json.Marshal(p)
	b, _ := json.Marshal(o)
	return string(a) == string(b)
}
