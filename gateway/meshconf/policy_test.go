package meshconf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

func withSections(sections string) string {
	return "globalCIDR: 242.0.0.0/8\n" + sections + `
sites:
  - name: cloud-a
    publicKey: ` + keyA + `
    block: 242.0.0.0/16
`
}

func TestParseLoadBalancerAndFirewall(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(withSections("loadBalancer:\n  vipRange: 242.255.0.0/24\n  tableSize: 4099\nfirewall:\n  defaultAction: deny")))
	if err != nil {
		t.Fatal(err)
	}
	if m.LoadBalancer == nil || m.LoadBalancer.VIPRange != netip.MustParsePrefix("242.255.0.0/24") || m.LoadBalancer.TableSize != 4099 {
		t.Fatalf("loadBalancer = %+v", m.LoadBalancer)
	}
	if m.Firewall == nil || m.Firewall.DefaultAction != meshpolicy.Deny {
		t.Fatalf("firewall = %+v", m.Firewall)
	}
	if !m.LoadBalancer.Balances("cloud-a") {
		t.Error("without a hub, every gateway balances")
	}
	m, err = Parse("mesh.yaml", []byte(withSections("loadBalancer: {vipRange: 242.255.0.0/24, hub: onprem}")))
	if err != nil {
		t.Fatal(err)
	}
	if m.LoadBalancer.Hub != "onprem" || m.LoadBalancer.Balances("cloud-a") || !m.LoadBalancer.Balances("onprem") {
		t.Fatalf("hub: %+v", m.LoadBalancer)
	}
	m, err = Parse("mesh.yaml", []byte(withSections("loadBalancer:\n  vipRange: 242.255.0.0/24\nfirewall: {}")))
	if err != nil {
		t.Fatal(err)
	}
	if m.LoadBalancer.TableSize != DefaultTableSize || m.Firewall.DefaultAction != meshpolicy.Allow {
		t.Fatalf("defaults: %+v %+v", m.LoadBalancer, m.Firewall)
	}
}

func TestParseLoadBalancerRefuses(t *testing.T) {
	for _, tt := range []struct{ name, section, want string }{
		{"no range", "loadBalancer: {tableSize: 4099}", "loadBalancer.vipRange: missing"},
		{"outside the global CIDR", "loadBalancer: {vipRange: 10.255.0.0/24}", "outside the global CIDR"},
		{"over a block", "loadBalancer: {vipRange: 242.0.255.0/24}", "overlaps the block 242.0.0.0/16 of site cloud-a"},
		{"too small", "loadBalancer: {vipRange: 242.255.0.0/31}", "too small"},
		{"not prime", "loadBalancer: {vipRange: 242.255.0.0/24, tableSize: 65536}", "65536 is not prime"},
		{"bad hub", "loadBalancer: {vipRange: 242.255.0.0/24, hub: On_Prem}", `loadBalancer.hub: "On_Prem" is not a site name`},
		{"bad action", "firewall: {defaultAction: maybe}", `firewall.defaultAction: "maybe" is neither allow nor deny`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("mesh.yaml", []byte(withSections(tt.section)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}

func TestLearnedSiteOverVIPRangeLeftOut(t *testing.T) {
	m, err := Parse("mesh.yaml", []byte(withSections("loadBalancer: {vipRange: 242.255.0.0/24}")))
	if err != nil {
		t.Fatal(err)
	}
	_, problems := m.WithLearned([]Site{{Name: "cloud-z", PublicKey: mustKey(keyB), Block: netip.MustParsePrefix("242.255.0.0/16")}})
	if len(problems) != 1 || !strings.Contains(problems[0], "overlaps the VIP range") {
		t.Fatalf("problems %q", problems)
	}
}
