package ipam

import (
	"bytes"
	"net/netip"
	"testing"
)

// FuzzDecode: the state decoder never panics, and what it accepts encodes
// back to a state it reads the same.
func FuzzDecode(f *testing.F) {
	st := newState()
	st.allocs[att("a")] = []netip.Addr{ad("10.0.1.1"), ad("fd00::1")}
	st.allocs[Attachment{"b", "net1"}] = []netip.Addr{ad("10.0.1.2")}
	st.last[pfx("10.0.1.0/24")] = ad("10.0.1.2")
	st.last[pfx("fd00::/64")] = ad("fd00::1")
	good, err := encode(st)
	if err != nil {
		f.Fatal(err)
	}
	empty, _ := encode(newState())
	f.Add(good)
	f.Add(empty)
	f.Add(good[:len(good)/2])
	f.Add(bytes.Replace(good, []byte("10.0.1.2"), []byte("10.0.1.1"), -1))
	f.Add([]byte(`{"version":1,"allocations":null,"checksum":""}`))
	f.Add([]byte(`{"version":1,"allocations":[{"containerID":"a","ifName":"eth0","addrs":["10.0.1.1","10.0.1.1"]}],"last":{"10.0.1.0/24":""},"checksum":"x"}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`null`))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := decode(data)
		if err != nil {
			return
		}
		again, err := encode(st)
		if err != nil {
			t.Fatalf("encoding an accepted state: %v", err)
		}
		st2, err := decode(again)
		if err != nil {
			t.Fatalf("an accepted state re-encoded is refused: %v\n%s", err, again)
		}
		if !sameState(st, st2) {
			t.Fatalf("state changed on re-encoding:\n%s\n%s", data, again)
		}
	})
}
