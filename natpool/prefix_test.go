package natpool

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"
)

func TestPrefixMapTranslates(t *testing.T) {
	tests := []struct {
		real, global, in, want string
	}{
		{"10.0.0.0/16", "242.0.0.0/16", "10.0.1.10", "242.0.1.10"},
		{"10.0.0.0/16", "242.1.0.0/16", "10.0.255.255", "242.1.255.255"},
		{"192.168.0.0/16", "242.2.0.0/16", "192.168.7.9", "242.2.7.9"},
		{"10.0.0.0/20", "242.0.16.0/20", "10.0.15.3", "242.0.31.3"},
		{"10.0.0.8/29", "242.0.0.16/29", "10.0.0.13", "242.0.0.21"},
		{"10.0.0.0/8", "242.0.0.0/8", "10.200.3.4", "242.200.3.4"},
	}
	for _, tt := range tests {
		m, err := NewPrefixMap(netip.MustParsePrefix(tt.real), netip.MustParsePrefix(tt.global))
		if err != nil {
			t.Fatal(err)
		}
		got, ok := m.ToGlobal(netip.MustParseAddr(tt.in))
		if !ok || got.String() != tt.want {
			t.Errorf("%s→%s: ToGlobal(%s) = %s, %v; want %s", tt.real, tt.global, tt.in, got, ok, tt.want)
		}
		back, ok := m.ToReal(got)
		if !ok || back.String() != tt.in {
			t.Errorf("%s→%s: ToReal(%s) = %s, %v; want %s", tt.real, tt.global, got, back, ok, tt.in)
		}
	}
}

func TestPrefixMapOutside(t *testing.T) {
	m, err := NewPrefixMap(netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("242.0.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := m.ToGlobal(netip.MustParseAddr("10.1.0.1")); ok {
		t.Errorf("ToGlobal outside the real prefix = %s, want no translation", a)
	}
	if a, ok := m.ToReal(netip.MustParseAddr("242.1.0.1")); ok {
		t.Errorf("ToReal outside the block = %s, want no translation", a)
	}
}

func TestNewPrefixMapRefuses(t *testing.T) {
	tests := []struct{ real, global string }{
		{"10.0.0.0/16", "242.0.0.0/24"}, // lengths differ
		{"10.0.0.1/16", "242.0.0.0/16"}, // host bits
		{"fd00::/64", "242.0.0.0/16"},   // not IPv4
		{"10.0.0.0/16", "242.0.0.0/15"}, // lengths differ
	}
	for _, tt := range tests {
		if _, err := NewPrefixMap(netip.MustParsePrefix(tt.real), netip.MustParsePrefix(tt.global)); err == nil {
			t.Errorf("NewPrefixMap(%s, %s) accepted, want an error", tt.real, tt.global)
		}
	}
}

// TestPrefixMapAgainstArithmetic checks the byte-wise translation against
// plain integer arithmetic on random prefixes and addresses.
func TestPrefixMapAgainstArithmetic(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 0))
	u32 := func(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }
	for range 10000 {
		bits := r.IntN(33)
		mask := uint32(0)
		if bits > 0 {
			mask = ^uint32(0) << (32 - bits)
		}
		mk := func(v uint32) netip.Prefix {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], v&mask)
			return netip.PrefixFrom(netip.AddrFrom4(b), bits)
		}
		real, global := mk(r.Uint32()), mk(r.Uint32())
		m, err := NewPrefixMap(real, global)
		if err != nil {
			t.Fatal(err)
		}
		host := r.Uint32() &^ mask
		var in [4]byte
		binary.BigEndian.PutUint32(in[:], u32(real.Addr())|host)
		got, ok := m.ToGlobal(netip.AddrFrom4(in))
		if want := u32(global.Addr()) | host; !ok || u32(got) != want {
			t.Fatalf("%s→%s: ToGlobal(%s) = %s; want %08x", real, global, netip.AddrFrom4(in), got, want)
		}
	}
}

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
