package gateway

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/tunnel"
)

func TestBGPAnnouncements(t *testing.T) {
	p := netip.MustParsePrefix
	want := desired{
		block: p("242.2.0.0/16"),
		tunnel: tunnel.Config{Peers: []tunnel.Peer{
			{Name: "cloud-a", AllowedIPs: []netip.Prefix{p("242.0.0.0/16"), p("10.0.0.0/16")}},
			{Name: "cloud-b", AllowedIPs: []netip.Prefix{p("242.1.0.0/16"), p("242.255.0.0/24")}},
			{Name: "again", AllowedIPs: []netip.Prefix{p("242.1.0.0/16")}},
		}},
	}
	got := bgpAnnouncements(want, []netip.Addr{netip.MustParseAddr("242.255.0.187")})
	exp := []netip.Prefix{p("10.0.0.0/16"), p("242.0.0.0/16"), p("242.1.0.0/16"), p("242.2.0.0/16"), p("242.255.0.0/24"), p("242.255.0.187/32")}
	if !slices.Equal(got, exp) {
		t.Errorf("got %v\nwant %v", got, exp)
	}
}

func TestBGPReservedAndCIDRs(t *testing.T) {
	p := netip.MustParsePrefix
	m := &meshconf.Mesh{GlobalCIDR: p("242.0.0.0/8"), Sites: []meshconf.Site{
		{Name: "cloud-a", CIDRs: []netip.Prefix{p("10.0.0.0/16")}},
		{Name: "onprem", CIDRs: []netip.Prefix{p("192.168.0.0/16")}},
	}}
	want := desired{mesh: m, self: meshconf.Site{Name: "onprem"}, lb: &meshconf.LoadBalancer{VIPRange: p("242.255.0.0/24")}}
	var got []string
	for _, r := range bgpReserved(want) {
		got = append(got, r.What+" "+r.Prefix.String())
	}
	exp := []string{"the mesh's global CIDR 242.0.0.0/8", "cloud-a's CIDR 10.0.0.0/16", "the VIP range 242.255.0.0/24"}
	if !slices.Equal(got, exp) {
		t.Errorf("reserved %q\nwant %q", got, exp)
	}
	cidrs := withBGPRoutes([]netip.Prefix{p("192.168.0.0/16")}, []netip.Prefix{p("192.168.5.0/24"), p("172.16.10.0/24"), p("172.16.10.0/24")})
	if !slices.Equal(cidrs, []netip.Prefix{p("192.168.0.0/16"), p("172.16.10.0/24")}) {
		t.Errorf("CIDRs %v: a learned prefix inside a CIDR adds nothing, others join once", cidrs)
	}
}
