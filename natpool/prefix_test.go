package natpool

import (
	"net/netip"
	"testing"
)

func TestLastAddr(t *testing.T) {
	for in, want := range map[string]string{
		"242.0.0.0/16": "242.0.255.255",
		"10.0.0.0/8":   "10.255.255.255",
		"10.0.0.8/29":  "10.0.0.15",
		"10.0.0.1/32":  "10.0.0.1",
		"0.0.0.0/0":    "255.255.255.255",
	} {
		if got := LastAddr(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("LastAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestContains(t *testing.T) {
	g := netip.MustParsePrefix("242.0.0.0/8")
	if !Contains(g, netip.MustParsePrefix("242.3.0.0/16")) {
		t.Error("242.3.0.0/16 should lie inside 242.0.0.0/8")
	}
	if Contains(g, netip.MustParsePrefix("240.0.0.0/4")) {
		t.Error("240.0.0.0/4 is larger than 242.0.0.0/8")
	}
	if Contains(g, netip.MustParsePrefix("10.0.0.0/16")) {
		t.Error("10.0.0.0/16 is outside 242.0.0.0/8")
	}
}
