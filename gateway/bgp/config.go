// Package bgp is the gateway's BGP speaker: it peers with a site's routers
// (gobgp, in process), announces what the mesh reaches through the gateway
// and learns the site's prefixes, both through prefix filters, with
// graceful restart both ways.
//
// What decides is pure and tested without a network: the filters
// (PrefixRule), the screening of learned routes against the mesh's own
// addresses (Screen) and the policy handed to gobgp (policies). The
// speaker wraps gobgp; the kernel's routes sit behind RouteTable.
package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Config is a gateway's BGP configuration (the site file's bgp section).
type Config struct {
	// ASN is the gateway's autonomous system number.
	ASN uint32
	// RouterID identifies the gateway; an IPv4 address.
	RouterID netip.Addr
	// ListenPort is where the gateway accepts sessions; 0 means 179, -1
	// that it only connects.
	ListenPort int
	// HoldTime of sessions; 0 means 90s. Keepalives go every third of it.
	HoldTime time.Duration
	// RestartTime is how long the routers keep the gateway's routes when
	// it dies (graceful restart, RFC 4724), and how long the gateway
	// waits for theirs after its own restart; 0 means 120s.
	RestartTime time.Duration
	Peers       []Peer
	// Import are the prefixes the gateway accepts from its peers; none
	// means it accepts nothing.
	Import []PrefixRule
	// Export are the prefixes the gateway may announce; none means all
	// it has to announce.
	Export []PrefixRule
}

// Peer is one router the gateway peers with.
type Peer struct {
	Name    string
	Address netip.Addr
	ASN     uint32
	// Port is the peer's BGP port; 0 means 179.
	Port uint16
}

// PrefixRule matches a prefix inside Prefix whose length is at most
// MaxLength (Prefix's own length when zero or less).
type PrefixRule struct {
	Prefix    netip.Prefix
	MaxLength int
}

// Defaults of the configuration.
const (
	DefaultHoldTime    = 90 * time.Second
	DefaultRestartTime = 120 * time.Second
	DefaultPort        = 179
)

// Max is the longest prefix the rule matches.
func (r PrefixRule) Max() int {
	if r.MaxLength <= 0 {
		return r.Prefix.Bits()
	}
	return r.MaxLength
}

// Matches reports whether p is inside the rule's prefix and at most its
// maximum length.
func (r PrefixRule) Matches(p netip.Prefix) bool {
	return p.Bits() >= r.Prefix.Bits() && p.Bits() <= r.Max() && r.Prefix.Contains(p.Addr())
}

func (r PrefixRule) String() string {
	if r.Max() == r.Prefix.Bits() {
		return r.Prefix.String()
	}
	return fmt.Sprintf("%s le %d", r.Prefix, r.Max())
}

// MatchesAny reports whether a rule of rules matches p.
func MatchesAny(rules []PrefixRule, p netip.Prefix) bool {
	return slices.ContainsFunc(rules, func(r PrefixRule) bool { return r.Matches(p) })
}

// WithDefaults returns c with its zero values replaced by the defaults.
func (c Config) WithDefaults() Config {
	if c.ListenPort == 0 {
		c.ListenPort = DefaultPort
	}
	if c.HoldTime == 0 {
		c.HoldTime = DefaultHoldTime
	}
	if c.RestartTime == 0 {
		c.RestartTime = DefaultRestartTime
	}
	c.Peers = slices.Clone(c.Peers)
	for i := range c.Peers {
		if c.Peers[i].Port == 0 {
			c.Peers[i].Port = DefaultPort
		}
	}
	return c
}

// Validate checks what parsing each field cannot: the router ID, hold
// and restart times within what BGP carries, peers unique and apart from
// the gateway, and rules that can match.
func (c Config) Validate() error {
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	if c.ASN == 0 {
		fail("asn: required (1 to 4294967295)")
	}
	if !unicast4(c.RouterID) {
		fail("routerID: %q is not a unicast IPv4 address", c.RouterID)
	}
	if c.ListenPort < -1 || c.ListenPort > 65535 {
		fail("listenPort: %d is not a port (-1: do not listen)", c.ListenPort)
	}
	if c.HoldTime != 0 && (c.HoldTime < 3*time.Second || c.HoldTime > 65535*time.Second) {
		fail("holdTime: %s is outside 3s to 65535s", c.HoldTime)
	}
	// The capability carries 12 bits of seconds.
	if c.RestartTime != 0 && (c.RestartTime < time.Second || c.RestartTime > 4095*time.Second) {
		fail("gracefulRestart.restartTime: %s is outside 1s to 4095s", c.RestartTime)
	}
	if len(c.Peers) == 0 {
		fail("peers: at least one is required")
	}
	names, addrs := map[string]bool{}, map[netip.Addr]bool{}
	for i, p := range c.Peers {
		at := fmt.Sprintf("peers[%d]", i)
		if p.Name == "" {
			fail("%s.name: required", at)
		} else if names[p.Name] {
			fail("%s.name: %q appears twice", at, p.Name)
		}
		names[p.Name] = true
		if !unicast4(p.Address) {
			fail("%s.address: %q is not a unicast IPv4 address", at, p.Address)
		} else if p.Address == c.RouterID {
			fail("%s.address: %s is the gateway's own router ID", at, p.Address)
		} else if addrs[p.Address] {
			fail("%s.address: %s appears twice", at, p.Address)
		}
		addrs[p.Address] = true
		if p.ASN == 0 {
			fail("%s.asn: required", at)
		}
	}
	for _, rs := range []struct {
		name  string
		rules []PrefixRule
	}{{"import", c.Import}, {"export", c.Export}} {
		for i, r := range rs.rules {
			if !r.Prefix.IsValid() || !r.Prefix.Addr().Is4() || r.Prefix.Masked() != r.Prefix {
				fail("%s[%d].prefix: %q is not a masked IPv4 prefix", rs.name, i, r.Prefix)
				continue
			}
			if r.MaxLength != 0 && (r.MaxLength < r.Prefix.Bits() || r.MaxLength > 32) {
				fail("%s[%d].maxLength: %d is outside %d to 32", rs.name, i, r.MaxLength, r.Prefix.Bits())
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bgp: %s", strings.Join(errs, "; "))
	}
	return nil
}

// unicast4 says whether a is an IPv4 address a host can have: not
// unspecified, multicast or the broadcast address.
func unicast4(a netip.Addr) bool {
	return a.Is4() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}
