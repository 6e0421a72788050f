package tunnel

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func key(t *testing.T, b byte) wgtypes.Key {
	t.Helper()
	var k wgtypes.Key
	k[0] = b
	return k
}

// render prints a plan the way `wg set` arguments read, one peer a line,
// with keys shortened to their first byte.
func render(plan []wgtypes.PeerConfig) string {
	var lines []string
	for _, pc := range plan {
		s := fmt.Sprintf("peer %d", pc.PublicKey[0])
		switch {
		case pc.Remove:
			s += " remove"
		case pc.UpdateOnly:
			s += " update"
		default:
			s += " add"
		}
		if pc.Endpoint != nil {
			s += " endpoint " + pc.Endpoint.String()
		}
		if pc.PersistentKeepaliveInterval != nil {
			s += fmt.Sprintf(" keepalive %d", int(pc.PersistentKeepaliveInterval.Seconds()))
		}
		if pc.ReplaceAllowedIPs {
			var ips []string
			for _, n := range pc.AllowedIPs {
				ips = append(ips, n.String())
			}
			s += " allowed-ips " + strings.Join(ips, ",")
		}
		lines = append(lines, s)
	}
	return strings.Join(lines, "\n")
}

func TestPlanPeers(t *testing.T) {
	pfx := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	nets := func(ss ...string) []net.IPNet { return ipNets(pfx(ss...)) }
	ap := netip.MustParseAddrPort
	udp := func(s string) *net.UDPAddr { return net.UDPAddrFromAddrPort(ap(s)) }
	ka := 25 * time.Second
	k1, k2, k3 := key(t, 1), key(t, 2), key(t, 3)
	// The device as it runs: three peers, peer 1 roamed to .99.
	running := []wgtypes.Peer{
		{PublicKey: k1, Endpoint: udp("203.0.113.99:51820"), PersistentKeepaliveInterval: ka, AllowedIPs: nets("242.1.0.0/16")},
		{PublicKey: k2, Endpoint: udp("203.0.113.12:51820"), PersistentKeepaliveInterval: ka, AllowedIPs: nets("242.2.0.0/16", "192.168.50.0/24")},
		{PublicKey: k3, Endpoint: udp("203.0.113.13:51820"), PersistentKeepaliveInterval: ka, AllowedIPs: nets("242.3.0.0/16")},
	}
	applied := map[wgtypes.Key]netip.AddrPort{
		k1: ap("203.0.113.11:51820"), k2: ap("203.0.113.12:51820"), k3: ap("203.0.113.13:51820"),
	}
	same := []wantPeer{
		{Peer{PublicKey: k1, AllowedIPs: pfx("242.1.0.0/16"), PersistentKeepalive: ka}, ap("203.0.113.11:51820")},
		{Peer{PublicKey: k2, AllowedIPs: pfx("192.168.50.0/24", "242.2.0.0/16"), PersistentKeepalive: ka}, ap("203.0.113.12:51820")},
		{Peer{PublicKey: k3, AllowedIPs: pfx("242.3.0.0/16"), PersistentKeepalive: ka}, ap("203.0.113.13:51820")},
	}
	with := func(i int, f func(*wantPeer)) []wantPeer {
		out := slices.Clone(same)
		out[i].AllowedIPs = slices.Clone(out[i].AllowedIPs)
		f(&out[i])
		return out
	}
	tests := []struct {
		name    string
		actual  []wgtypes.Peer
		desired []wantPeer
		want    string
	}{
		{"nothing changed: a roamed peer is left where it went", running, same, ""},
		{"one endpoint changed: only that peer is touched",
			running, with(2, func(p *wantPeer) { p.endpoint = ap("203.0.113.23:51821") }),
			"peer 3 update endpoint 203.0.113.23:51821"},
		{"allowed IPs changed",
			running, with(1, func(p *wantPeer) { p.AllowedIPs = pfx("242.2.0.0/16") }),
			"peer 2 update allowed-ips 242.2.0.0/16"},
		{"keepalive turned off",
			running, with(0, func(p *wantPeer) { p.PersistentKeepalive = 0 }),
			"peer 1 update keepalive 0"},
		{"peer removed from the mesh", running, same[:2], "peer 3 remove"},
		{"empty device: everyone added",
			nil, same[:2],
			"peer 1 add endpoint 203.0.113.11:51820 keepalive 25 allowed-ips 242.1.0.0/16\n" +
				"peer 2 add endpoint 203.0.113.12:51820 keepalive 25 allowed-ips 192.168.50.0/24,242.2.0.0/16"},
		{"peer without endpoint added without one",
			nil, []wantPeer{{Peer: Peer{PublicKey: k3, AllowedIPs: pfx("242.3.0.0/16")}}},
			"peer 3 add keepalive 0 allowed-ips 242.3.0.0/16"},
		{"someone removed a peer by hand: put back",
			running[1:], same,
			"peer 1 add endpoint 203.0.113.11:51820 keepalive 25 allowed-ips 242.1.0.0/16"},
		{"someone cleared an endpoint by hand: set again",
			append([]wgtypes.Peer{{PublicKey: k1, PersistentKeepaliveInterval: ka, AllowedIPs: nets("242.1.0.0/16")}}, running[1:]...), same,
			"peer 1 update endpoint 203.0.113.11:51820"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := render(planPeers(tt.actual, tt.desired, applied))
			if got != tt.want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestPlanRoutes(t *testing.T) {
	p := netip.MustParsePrefix
	add, del := planRoutes(
		[]netip.Prefix{p("242.1.0.0/16"), p("242.9.0.0/16")},
		[]netip.Prefix{p("242.1.0.0/16"), p("242.2.0.0/16"), p("242.2.0.0/16")})
	if fmt.Sprint(add) != "[242.2.0.0/16]" || fmt.Sprint(del) != "[242.9.0.0/16]" {
		t.Errorf("add %v del %v", add, del)
	}
}

func TestTunnelMTU(t *testing.T) {
	tests := []struct {
		underlay []int
		v6       bool
		want     int
	}{
		{[]int{1500}, false, 1440},
		{[]int{1500}, true, 1420},
		{[]int{9001, 1500}, false, 1440}, // the smallest path wins
		{[]int{9001}, false, 8941},       // jumbo frames in one cloud
		{nil, false, 1440},               // nothing known: assume 1500
		{[]int{1300}, false, 1280},       // never below IPv6's minimum
	}
	for _, tt := range tests {
		if got := tunnelMTU(tt.underlay, tt.v6); got != tt.want {
			t.Errorf("tunnelMTU(%v, v6=%v) = %d, want %d", tt.underlay, tt.v6, got, tt.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for _, s := range []string{"auto", "kernel", "userspace", "wireguard-go"} {
		if m, err := ParseMode(s); err != nil || string(m) != s {
			t.Errorf("ParseMode(%q) = %q, %v", s, m, err)
		}
	}
	if _, err := ParseMode("boringtun"); err == nil || !strings.Contains(err.Error(), "boringtun") {
		t.Errorf("ParseMode(boringtun) = %v, want an error naming it", err)
	}
}

func TestHandshakeAge(t *testing.T) {
	now := time.Unix(1000, 0)
	if got := handshakeAge(now, time.Time{}); got != -1 {
		t.Errorf("never = %v, want -1", got)
	}
	if got := handshakeAge(now, now.Add(-3*time.Second)); got != 3 {
		t.Errorf("3s ago = %v", got)
	}
}
