package nat

import (
	"net/netip"
	"testing"
)

func BenchmarkIndex10k(b *testing.B) {
	prog := Program{Tunnel: "t"}
	for i := range 10000 {
		prog.Services = append(prog.Services, Service{Addr: netip.AddrFrom4([4]byte{242, 1, byte(128 + i/250), byte(1 + i%250)}), Proto: 6, Port: 80, Backend: netip.MustParseAddr("10.0.1.10"), BackendPort: 7777})
	}
	b.ReportAllocs()
	for b.Loop() {
		index(prog)
	}
}
