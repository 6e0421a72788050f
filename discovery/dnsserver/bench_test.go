package dnsserver

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"github.com/straitnet/strait/discovery/catalog"
)

// benchSnapshot has n services, each exported by two of three clusters.
func benchSnapshot(n int) catalog.Snapshot {
	clusters := []string{"a", "b", "c"}
	snap := catalog.Snapshot{Alive: map[string]bool{"a": true, "b": true, "c": true}}
	for i := range n {
		for k := range 2 {
			ci := (i + k) % 3
			snap.Services = append(snap.Services, catalog.ClusterService{Cluster: clusters[ci], Service: catalog.Service{
				Namespace: fmt.Sprintf("ns-%d", i/100), Name: fmt.Sprintf("svc-%d", i%100),
				Addr:  netip.AddrFrom4([4]byte{242, byte(ci), byte(128 + i/250), byte(1 + i%250)}),
				Ports: []catalog.Port{{Name: "http", Protocol: "TCP", Port: 80}}, Ready: 1,
			}})
		}
	}
	return snap
}

// BenchmarkServeDNS is the handler's cost per query, packing included,
// without the network: it should not depend on the number of services.
func BenchmarkServeDNS(b *testing.B) {
	for _, n := range []int{10, 10000} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeSRV} {
			b.Run(fmt.Sprintf("%d/%s", n, dns.TypeToString[qt]), func(b *testing.B) {
				s, err := New(Options{})
				if err != nil {
					b.Fatal(err)
				}
				s.Update(benchSnapshot(n))
				qs := make([]*dns.Msg, min(n, 1000))
				for i := range qs {
					name := fmt.Sprintf("svc-%d.ns-%d.svc.clusterset.local.", i%100, i/100)
					if qt == dns.TypeSRV {
						name = "_http._tcp." + name
					}
					qs[i] = new(dns.Msg).SetQuestion(name, qt)
				}
				w := &packer{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}}
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					s.ServeDNS(w, qs[i%len(qs)])
				}
			})
		}
	}
}

func BenchmarkBuildIndex(b *testing.B) {
	snap := benchSnapshot(10000)
	b.ReportAllocs()
	for b.Loop() {
		buildIndex(snap, testConfig)
	}
}

// packer is a dns.ResponseWriter that packs the reply, as the wire would.
type packer struct {
	recorder
	remote net.Addr
	buf    []byte
}

func (p *packer) RemoteAddr() net.Addr { return p.remote }
func (p *packer) WriteMsg(m *dns.Msg) error {
	b, err := m.PackBuffer(p.buf)
	p.buf = b
	return err
}
