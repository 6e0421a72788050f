package tunnel

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Overheads of a WireGuard packet on the wire: outer IP header, UDP header,
// and WireGuard's own 32 bytes (type, receiver index, counter, auth tag).
const (
	overheadIPv4 = 20 + 8 + 32
	overheadIPv6 = 40 + 8 + 32
	// minMTU is IPv6's minimum link MTU; below it the tunnel is useless
	// for IPv6 and fragile for IPv4.
	minMTU = 1280
	// fallbackUnderlayMTU is assumed when no route tells the real one.
	fallbackUnderlayMTU = 1500
)

// tunnelMTU returns the MTU of the tunnel device: the smallest underlay MTU
// on the way to any peer, less the encapsulation overhead of the outer
// address family (IPv6's if any peer is reached over IPv6).
func tunnelMTU(underlay []int, anyIPv6 bool) int {
	m := 0
	for _, u := range underlay {
		if u > 0 && (m == 0 || u < m) {
			m = u
		}
	}
	if m == 0 {
		m = fallbackUnderlayMTU
	}
	over := overheadIPv4
	if anyIPv6 {
		over = overheadIPv6
	}
	return max(m-over, minMTU)
}

// wantPeer is a configured peer with its endpoint resolved (invalid when the
// peer has none, or its name did not resolve).
type wantPeer struct {
	Peer
	endpoint netip.AddrPort
}

// planPeers returns the changes that turn the device's peers (actual) into
// the desired ones, touching only peers that differ: a peer left out of the
// plan keeps its session, its keys and its counters.
//
// Endpoints compare against what was last applied, not against the device:
// WireGuard follows a peer that roams to a new address, and resetting the
// endpoint to the configured one on every pass would undo that.
func planPeers(actual []wgtypes.Peer, desired []wantPeer, applied map[wgtypes.Key]netip.AddrPort) []wgtypes.PeerConfig {
	have := make(map[wgtypes.Key]*wgtypes.Peer, len(actual))
	for i := range actual {
		have[actual[i].PublicKey] = &actual[i]
	}
	var plan []wgtypes.PeerConfig
	want := make(map[wgtypes.Key]bool, len(desired))
	for _, d := range desired {
		want[d.PublicKey] = true
		ka := d.PersistentKeepalive
		a, ok := have[d.PublicKey]
		if !ok {
			pc := wgtypes.PeerConfig{
				PublicKey:                   d.PublicKey,
				PersistentKeepaliveInterval: &ka,
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  ipNets(d.AllowedIPs),
			}
			if d.endpoint.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(d.endpoint)
			}
			plan = append(plan, pc)
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: d.PublicKey, UpdateOnly: true}
		changed := false
		if !samePrefixes(a.AllowedIPs, d.AllowedIPs) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs = true, ipNets(d.AllowedIPs)
			changed = true
		}
		if a.PersistentKeepaliveInterval != ka {
			pc.PersistentKeepaliveInterval = &ka
			changed = true
		}
		if d.endpoint.IsValid() && (a.Endpoint == nil || applied[d.PublicKey] != d.endpoint) {
			pc.Endpoint = net.UDPAddrFromAddrPort(d.endpoint)
			changed = true
		}
		if changed {
			plan = append(plan, pc)
		}
	}
	for _, a := range actual {
		if !want[a.PublicKey] {
			plan = append(plan, wgtypes.PeerConfig{PublicKey: a.PublicKey, Remove: true})
		}
	}
	return plan
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	return out
}

func prefixOf(n net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func samePrefixes(a []net.IPNet, b []netip.Prefix) bool {
	if len(a) != len(b) {
		return false
	}
	x := make([]netip.Prefix, len(a))
	for i, n := range a {
		x[i] = prefixOf(n)
	}
	y := slices.Clone(b)
	slices.SortFunc(x, netip.Prefix.Compare)
	slices.SortFunc(y, netip.Prefix.Compare)
	return slices.Equal(x, y)
}

// planRoutes returns the prefixes to route into the tunnel that are not yet
// routed there (add) and the tunnel routes no peer needs any more (del).
func planRoutes(actual, desired []netip.Prefix) (add, del []netip.Prefix) {
	have := make(map[netip.Prefix]bool, len(actual))
	for _, p := range actual {
		have[p] = true
	}
	want := make(map[netip.Prefix]bool, len(desired))
	for _, p := range desired {
		if !want[p] && !have[p] {
			add = append(add, p)
		}
		want[p] = true
	}
	for _, p := range actual {
		if !want[p] {
			del = append(del, p)
		}
	}
	return add, del
}

// handshakeAge is how many seconds ago the last handshake with a peer
// completed, or -1 if it never did.
func handshakeAge(now, last time.Time) float64 {
	if last.IsZero() {
		return -1
	}
	return now.Sub(last).Seconds()
}
