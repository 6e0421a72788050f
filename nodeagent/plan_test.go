package nodeagent

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

func pfx(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, x := range s {
		out = append(out, netip.MustParsePrefix(x))
	}
	return out
}

var mac = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}

func TestPlan(t *testing.T) {
	self := Node{Name: "n1", InternalIP: netip.MustParseAddr("172.31.0.11"), PodCIDRs: pfx("10.0.1.0/24")}
	local := pfx("172.31.0.0/24")
	gw := netip.MustParseAddr("172.31.0.1")
	for _, tt := range []struct {
		name     string
		others   []Node
		mesh     []netip.Prefix
		routes   []string // "dst via kind"
		vteps    int
		problems []string
	}{
		{"same link: direct", []Node{{Name: "n2", InternalIP: netip.MustParseAddr("172.31.0.12"), PodCIDRs: pfx("10.0.2.0/24")}}, nil,
			[]string{"10.0.2.0/24 via 172.31.0.12 direct"}, 0, nil},
		{"elsewhere: VXLAN to its VTEP", []Node{{Name: "n3", InternalIP: netip.MustParseAddr("172.31.5.13"), PodCIDRs: pfx("10.0.3.0/24"), VTEPMAC: mac}}, nil,
			[]string{"10.0.3.0/24 via 10.0.3.0 vxlan"}, 1, nil},
		{"elsewhere without a MAC yet", []Node{{Name: "n3", InternalIP: netip.MustParseAddr("172.31.5.13"), PodCIDRs: pfx("10.0.3.0/24")}}, nil,
			nil, 0, []string{"has not published its VXLAN MAC"}},
		{"no address", []Node{{Name: "n4", PodCIDRs: pfx("10.0.4.0/24")}}, nil, nil, 0, []string{"node n4 has no InternalIP"}},
		{"no pod CIDR yet: nothing", []Node{{Name: "n5", InternalIP: netip.MustParseAddr("172.31.0.15")}}, nil, nil, 0, nil},
		{"overlapping pod CIDRs", []Node{
			{Name: "n2", InternalIP: netip.MustParseAddr("172.31.0.12"), PodCIDRs: pfx("10.0.2.0/24")},
			{Name: "n6", InternalIP: netip.MustParseAddr("172.31.0.16"), PodCIDRs: pfx("10.0.2.128/25")},
			{Name: "n7", InternalIP: netip.MustParseAddr("172.31.0.17"), PodCIDRs: pfx("10.0.1.0/24")},
		}, nil, []string{"10.0.2.0/24 via 172.31.0.12 direct"}, 0, []string{"n6's pod CIDR 10.0.2.128/25 overlaps 10.0.2.0/24 of n2", "n7's pod CIDR 10.0.1.0/24 overlaps 10.0.1.0/24 of n1"}},
		{"mesh to the gateway", nil, pfx("242.0.0.0/8", "192.168.0.0/16", "10.0.0.0/8"),
			[]string{"242.0.0.0/8 via 172.31.0.1 gateway", "192.168.0.0/16 via 172.31.0.1 gateway"}, 0, []string{"mesh destination 10.0.0.0/8 overlaps the pod CIDR 10.0.1.0/24"}},
		{"itself in the list", []Node{self}, nil, nil, 0, nil},
		{"gateway off the node's links", nil, pfx("242.0.0.0/8"), nil, 0, []string{"the gateway 172.31.0.1 is on none of this node's links"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := local
			if strings.Contains(tt.name, "off the node's links") {
				l = pfx("172.31.5.0/24")
			}
			d, problems := Plan(self, tt.others, l, gw, tt.mesh)
			var got []string
			for _, r := range d.Routes {
				got = append(got, r.Dst.String()+" via "+r.Via.String()+" "+string(r.Kind))
			}
			if strings.Join(got, "; ") != strings.Join(tt.routes, "; ") {
				t.Errorf("routes %q, want %q", got, tt.routes)
			}
			if len(d.VTEPs) != tt.vteps {
				t.Errorf("VTEPs %+v, want %d", d.VTEPs, tt.vteps)
			}
			if len(problems) != len(tt.problems) {
				t.Fatalf("problems %q, want %q", problems, tt.problems)
			}
			for i, want := range tt.problems {
				if !strings.Contains(problems[i], want) {
					t.Errorf("problem %q, want it to say %q", problems[i], want)
				}
			}
		})
	}
}

func TestConflist(t *testing.T) {
	for _, tt := range []struct {
		version, want string
		chain         []string
	}{
		{"", `"cniVersion": "1.0.0",`, nil},
		{"", `"cniVersions": [`, nil},
		{"", `"type": "portmap"`, []string{"portmap"}},
		{"1.1.0", `"cniVersion": "1.1.0",`, nil},
	} {
		got := string(Conflist(tt.version, pfx("10.0.1.0/24"), 1450, "/d", "/s", tt.chain))
		if !strings.Contains(got, tt.want) || !strings.Contains(got, `"podCIDRs": [`) {
			t.Errorf("Conflist(%q, chain %v) lacks %s:\n%s", tt.version, tt.chain, tt.want, got)
		}
		if len(tt.chain) > 0 && strings.Contains(got, "cniVersions") {
			t.Errorf("a chain offered 1.1.0:\n%s", got)
		}
	}
}
