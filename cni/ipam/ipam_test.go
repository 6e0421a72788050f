package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ad(s string) netip.Addr    { return netip.MustParseAddr(s) }

func pfxs(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, pfx(s))
	}
	return out
}

func att(id string) Attachment { return Attachment{ContainerID: id, IfName: "eth0"} }

func openStore(t *testing.T, dir string, ranges ...string) *Store {
	t.Helper()
	s, err := Open(dir, pfxs(ranges...))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustAllocate(t *testing.T, s *Store, a Attachment) []netip.Addr {
	t.Helper()
	addrs, err := s.Allocate(a)
	if err != nil {
		t.Fatal(err)
	}
	return addrs
}

func TestOpenRanges(t *testing.T) {
	tests := []struct {
		ranges []netip.Prefix
		err    string // "" if accepted
	}{
		{pfxs("10.0.1.0/24"), ""},
		{pfxs("10.0.1.0/30"), ""},
		{pfxs("fd00::/64"), ""},
		{pfxs("fd00::/127"), ""},
		{pfxs("::/0"), ""},
		{pfxs("10.0.1.0/24", "fd00::/64"), ""},
		{pfxs("fd00::/64", "10.0.1.0/24"), ""},
		{nil, "no range to allocate from"},
		{[]netip.Prefix{{}}, "range invalid Prefix is not valid"},
		{pfxs("10.0.1.0/31"), "range 10.0.1.0/31 has no room for an address"},
		{pfxs("10.0.1.1/32"), "range 10.0.1.1/32 has no room for an address"},
		{pfxs("fd00::/128"), "range fd00::/128 has no room for an address"},
		{pfxs("10.0.1.5/24"), "range 10.0.1.5/24 has host bits set (the prefix is 10.0.1.0/24)"},
		{pfxs("::ffff:10.0.1.0/120"), "IPv4-mapped"},
		{pfxs("10.0.1.0/24", "10.0.2.0/24"), "range 10.0.2.0/24: a second range of the same family"},
		{pfxs("fd00::/64", "10.0.1.0/24", "fd01::/64"), "range fd01::/64: a second range of the same family"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.ranges), func(t *testing.T) {
			s, err := Open(t.TempDir(), tt.ranges)
			if tt.err == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if !slices.Equal(s.Ranges, tt.ranges) {
					t.Errorf("Ranges = %v", s.Ranges)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.HasPrefix(err.Error(), "ipam: ") {
				t.Fatalf("Open: %v, want an error with %q", err, tt.err)
			}
		})
	}
	if _, err := Open("", pfxs("10.0.1.0/24")); err == nil {
		t.Error("Open with no directory accepted")
	}
	// A Store made by hand is checked too.
	s := &Store{Dir: t.TempDir(), Ranges: pfxs("10.0.1.0/24", "10.0.2.0/24")}
	if _, err := s.Allocate(att("a")); err == nil || !strings.Contains(err.Error(), "second range") {
		t.Errorf("Allocate with two IPv4 ranges: %v", err)
	}
}

func TestAllocateLookupRelease(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, "10.0.1.0/24")
	a, b := att("a"), att("b")

	if _, ok, err := s.Lookup(a); ok || err != nil {
		t.Fatalf("Lookup on an empty store: %v %v", ok, err)
	}
	if got := mustAllocate(t, s, a); !slices.Equal(got, []netip.Addr{ad("10.0.1.1")}) {
		t.Fatalf("Allocate(a) = %v", got)
	}
	before, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	// Idempotent, and the file is not rewritten.
	if got := mustAllocate(t, s, a); !slices.Equal(got, []netip.Addr{ad("10.0.1.1")}) {
		t.Fatalf("Allocate(a) again = %v", got)
	}
	if after, _ := os.ReadFile(s.Path()); !bytes.Equal(before, after) {
		t.Error("an idempotent Allocate rewrote the file")
	}
	// Another interface of the same container is another attachment.
	if got := mustAllocate(t, s, Attachment{"a", "net1"}); !slices.Equal(got, []netip.Addr{ad("10.0.1.2")}) {
		t.Fatalf("Allocate(a/net1) = %v", got)
	}
	if got := mustAllocate(t, s, b); !slices.Equal(got, []netip.Addr{ad("10.0.1.3")}) {
		t.Fatalf("Allocate(b) = %v", got)
	}
	// Another Store on the same directory sees the same.
	s2 := openStore(t, dir, "10.0.1.0/24")
	if got, ok, err := s2.Lookup(a); !ok || err != nil || !slices.Equal(got, []netip.Addr{ad("10.0.1.1")}) {
		t.Fatalf("Lookup(a) = %v %v %v", got, ok, err)
	}
	if err := s2.Release(a); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Lookup(a); ok {
		t.Error("a still allocated after Release")
	}
	before, _ = os.ReadFile(s.Path())
	for _, x := range []Attachment{a, att("never"), {}} {
		if err := s.Release(x); err != nil {
			t.Errorf("Release(%v) of an attachment holding nothing: %v", x, err)
		}
	}
	if after, _ := os.ReadFile(s.Path()); !bytes.Equal(before, after) {
		t.Error("a Release of nothing rewrote the file")
	}
	all, err := s.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	want := map[Attachment][]netip.Addr{{"a", "net1"}: {ad("10.0.1.2")}, b: {ad("10.0.1.3")}}
	if len(all) != len(want) {
		t.Fatalf("Allocations = %v", all)
	}
	for k, v := range want {
		if !slices.Equal(all[k], v) {
			t.Errorf("Allocations[%v] = %v, want %v", k, all[k], v)
		}
	}
	// What callers get is theirs.
	all[b][0] = ad("10.9.9.9")
	got, _, _ := s.Lookup(b)
	got[0] = ad("10.9.9.9")
	if got, _, _ := s.Lookup(b); got[0] != ad("10.0.1.3") {
		t.Error("a caller changed the store's state")
	}

	for _, bad := range []Attachment{{"", "eth0"}, {"c", ""}} {
		if _, err := s.Allocate(bad); err == nil {
			t.Errorf("Allocate(%q) accepted", bad)
		}
	}
	// The lock file stays, and no temporary file is left.
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	hidden, _ := filepath.Glob(filepath.Join(dir, ".*"))
	if len(hidden) != 0 || !slices.Equal(names, []string{filepath.Join(dir, LockFile), s.Path()}) {
		t.Errorf("directory holds %v %v", names, hidden)
	}
	if fi, err := os.Stat(s.Path()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file: %v %v", fi.Mode(), err)
	}
}

func TestRoundRobin(t *testing.T) {
	// A /29 hands out .1 to .6.
	steps := []struct {
		op   string // "+id" allocate, "-id" release, "reopen"
		want string // address allocated, or error
	}{
		{"+a", "10.0.1.1"},
		{"+b", "10.0.1.2"},
		{"-a", ""},
		{"+c", "10.0.1.3"}, // not the just-released .1
		{"-c", ""},
		{"reopen", ""}, // where to go on is in the file
		{"+d", "10.0.1.4"},
		{"+e", "10.0.1.5"},
		{"+f", "10.0.1.6"},
		{"+g", "10.0.1.1"}, // wraps around, past broadcast and network
		{"+h", "10.0.1.3"},
		{"+b", "10.0.1.2"}, // has it already
		{"+i", "ipam: allocate i/eth0: 10.0.1.0/29 has no free address (6 in use)"},
		{"-e", ""},
		{"+i", "10.0.1.5"},
	}
	dir := t.TempDir()
	s := openStore(t, dir, "10.0.1.0/29")
	for i, st := range steps {
		id := strings.TrimLeft(st.op, "+-")
		switch st.op[0] {
		case 'r':
			s = openStore(t, dir, "10.0.1.0/29")
		case '-':
			if err := s.Release(att(id)); err != nil {
				t.Fatalf("step %d: %v", i, err)
			}
		case '+':
			addrs, err := s.Allocate(att(id))
			got := fmt.Sprint(err)
			if err == nil {
				got = fmt.Sprint(addrs[0])
			}
			if got != st.want {
				t.Fatalf("step %d, %s: got %s, want %s", i, st.op, got, st.want)
			}
		}
	}
}

func TestExhausted(t *testing.T) {
	s := openStore(t, t.TempDir(), "10.0.1.0/24")
	seen := map[netip.Addr]bool{}
	for i := range 254 {
		x := mustAllocate(t, s, att(fmt.Sprint("c", i)))[0]
		if seen[x] || x == ad("10.0.1.0") || x == ad("10.0.1.255") || !s.Ranges[0].Contains(x) {
			t.Fatalf("allocation %d got %s", i, x)
		}
		seen[x] = true
	}
	before, _ := os.ReadFile(s.Path())
	_, err := s.Allocate(att("c254"))
	const want = "ipam: allocate c254/eth0: 10.0.1.0/24 has no free address (254 in use)"
	if err == nil || err.Error() != want {
		t.Fatalf("Allocate from a full range: %v, want %q", err, want)
	}
	var ee *ExhaustedError
	if !errors.Is(err, ErrExhausted) || !errors.As(err, &ee) || ee.Range != pfx("10.0.1.0/24") || ee.InUse != 254 {
		t.Errorf("error %#v does not say which range is exhausted", err)
	}
	if after, _ := os.ReadFile(s.Path()); !bytes.Equal(before, after) {
		t.Error("a failed Allocate rewrote the file")
	}
}

func TestDualStack(t *testing.T) {
	// A /30 has two addresses, a /126 three (::0 is the subnet-router
	// anycast address).
	dir := t.TempDir()
	s := openStore(t, dir, "10.0.1.0/30", "fd00::/126")
	want := [][]netip.Addr{
		{ad("10.0.1.1"), ad("fd00::1")},
		{ad("10.0.1.2"), ad("fd00::2")},
	}
	for i, w := range want {
		if got := mustAllocate(t, s, att(fmt.Sprint(i))); !slices.Equal(got, w) {
			t.Fatalf("Allocate(%d) = %v, want %v", i, got, w)
		}
	}
	// The IPv4 range is full: nothing is allocated, not even from IPv6.
	_, err := s.Allocate(att("2"))
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "10.0.1.0/30 has no free address (2 in use)") {
		t.Fatalf("Allocate from a full IPv4 range: %v", err)
	}
	if all, _ := s.Allocations(); len(all) != 2 {
		t.Fatalf("Allocations = %v", all)
	}
	// Addresses come in the order of the ranges.
	s6 := openStore(t, dir, "fd00::/126", "10.0.1.0/30")
	if got := mustAllocate(t, s6, att("0")); !slices.Equal(got, []netip.Addr{ad("fd00::1"), ad("10.0.1.1")}) {
		t.Errorf("Allocate with IPv6 first = %v", got)
	}
	// An IPv6 /127 hands out ::1, then nothing.
	s = openStore(t, t.TempDir(), "fd00::/127")
	if got := mustAllocate(t, s, att("a")); !slices.Equal(got, []netip.Addr{ad("fd00::1")}) {
		t.Errorf("Allocate from a /127 = %v", got)
	}
	if _, err := s.Allocate(att("b")); err == nil || !strings.Contains(err.Error(), "fd00::/127 has no free address (1 in use)") {
		t.Errorf("second Allocate from a /127: %v", err)
	}
	// A /64 does not count its addresses one by one.
	s = openStore(t, t.TempDir(), "fd00::/64")
	if got := mustAllocate(t, s, att("a")); !slices.Equal(got, []netip.Addr{ad("fd00::1")}) {
		t.Errorf("Allocate from a /64 = %v", got)
	}
}

func TestRangesChange(t *testing.T) {
	dir := t.TempDir()
	a, b := att("a"), att("b")
	s := openStore(t, dir, "10.0.1.0/24")
	mustAllocate(t, s, a)
	mustAllocate(t, s, b)

	// The node's pod CIDR moved: the file is kept, and an attachment that
	// asks again gets an address from the new range, its old one dropped.
	s = openStore(t, dir, "10.0.2.0/24")
	if got, ok, err := s.Lookup(a); !ok || err != nil || !slices.Equal(got, []netip.Addr{ad("10.0.1.1")}) {
		t.Fatalf("Lookup(a) after the range changed = %v %v %v", got, ok, err)
	}
	if got := mustAllocate(t, s, a); !slices.Equal(got, []netip.Addr{ad("10.0.2.1")}) {
		t.Fatalf("Allocate(a) after the range changed = %v", got)
	}
	if got, _, _ := s.Lookup(a); !slices.Equal(got, []netip.Addr{ad("10.0.2.1")}) {
		t.Fatalf("Lookup(a) = %v", got)
	}
	if got, _, _ := s.Lookup(b); !slices.Equal(got, []netip.Addr{ad("10.0.1.2")}) {
		t.Fatalf("b, not asked again, holds %v", got)
	}

	// Going dual-stack keeps the IPv4 address and adds an IPv6 one.
	s = openStore(t, dir, "10.0.2.0/24", "fd00::/64")
	if got := mustAllocate(t, s, a); !slices.Equal(got, []netip.Addr{ad("10.0.2.1"), ad("fd00::1")}) {
		t.Fatalf("Allocate(a) going dual-stack = %v", got)
	}
	// Going IPv6-only drops the IPv4 address.
	s = openStore(t, dir, "fd00::/64")
	if got := mustAllocate(t, s, a); !slices.Equal(got, []netip.Addr{ad("fd00::1")}) {
		t.Fatalf("Allocate(a) going IPv6-only = %v", got)
	}
	if got, _, _ := s.Lookup(a); !slices.Equal(got, []netip.Addr{ad("fd00::1")}) {
		t.Fatalf("Lookup(a) = %v", got)
	}

	// An address inside the new range that is its network address is not
	// kept either.
	dir = t.TempDir()
	s = openStore(t, dir, "10.0.0.0/23")
	st := newState()
	st.allocs[a] = []netip.Addr{ad("10.0.1.0")}
	st.allocs[b] = []netip.Addr{ad("10.0.1.1")}
	if err := s.save(st); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, "10.0.1.0/24")
	if got := mustAllocate(t, s, b); !slices.Equal(got, []netip.Addr{ad("10.0.1.1")}) {
		t.Fatalf("Allocate(b) = %v", got)
	}
	if got := mustAllocate(t, s, a); !slices.Equal(got, []netip.Addr{ad("10.0.1.2")}) {
		t.Fatalf("Allocate(a) holding the new range's network address = %v", got)
	}
}

func TestGC(t *testing.T) {
	s := openStore(t, t.TempDir(), "10.0.1.0/24", "fd00::/64")
	for _, id := range []string{"d", "a", "c", "b"} {
		mustAllocate(t, s, att(id))
	}
	mustAllocate(t, s, Attachment{"b", "net1"})
	freed, err := s.GC([]Attachment{att("b"), att("d"), att("unknown")})
	if err != nil {
		t.Fatal(err)
	}
	if want := []Attachment{att("a"), {"b", "net1"}, att("c")}; !slices.Equal(freed, want) {
		t.Errorf("GC freed %v, want %v", freed, want)
	}
	all, err := s.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[att("b")] == nil || all[att("d")] == nil {
		t.Errorf("after GC: %v", all)
	}
	before, _ := os.ReadFile(s.Path())
	if freed, err := s.GC([]Attachment{att("b"), att("d")}); err != nil || len(freed) != 0 {
		t.Errorf("GC with nothing to free: %v %v", freed, err)
	}
	if after, _ := os.ReadFile(s.Path()); !bytes.Equal(before, after) {
		t.Error("a GC freeing nothing rewrote the file")
	}
	if freed, err := s.GC(nil); err != nil || len(freed) != 2 {
		t.Errorf("GC keeping nothing: %v %v", freed, err)
	}
	if all, _ := s.Allocations(); len(all) != 0 {
		t.Errorf("after GC keeping nothing: %v", all)
	}
}

// damagedFile writes a good state file holding a and b, then damages it.
func damagedFile(t *testing.T, s *Store, damage func([]byte) []byte) []byte {
	t.Helper()
	mustAllocate(t, s, att("a"))
	mustAllocate(t, s, att("b"))
	data, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	data = damage(data)
	if err := os.WriteFile(s.Path(), data, 0o600); err != nil {
		t.Fatal(err)
	}
	return data
}

// withBody encodes a body with a right checksum, whatever it says.
func withBody(t *testing.T, b body) []byte {
	t.Helper()
	data, err := encodeBody(b)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestDamaged(t *testing.T) {
	good := func(addrs ...string) allocation {
		var as []netip.Addr
		for _, x := range addrs {
			as = append(as, ad(x))
		}
		return allocation{ContainerID: "x" + addrs[0], IfName: "eth0", Addrs: as}
	}
	tests := []struct {
		name   string
		damage func(t *testing.T, data []byte) []byte
		reason string
	}{
		{"truncated", func(_ *testing.T, d []byte) []byte { return d[:len(d)/2] }, "not valid JSON"},
		{"empty", func(_ *testing.T, d []byte) []byte { return nil }, "the file is empty"},
		{"byte flipped", func(_ *testing.T, d []byte) []byte {
			return bytes.Replace(d, []byte(`"10.0.1.2"`), []byte(`"10.0.1.3"`), 1)
		}, "checksum mismatch"},
		{"checksum flipped", func(_ *testing.T, d []byte) []byte {
			i := bytes.Index(d, []byte(`"checksum": "`)) + len(`"checksum": "`)
			d[i] ^= 1
			return d
		}, "checksum mismatch"},
		{"something after", func(_ *testing.T, d []byte) []byte { return append(d, "{}"...) }, "not valid JSON"},
		{"unknown field", func(_ *testing.T, d []byte) []byte {
			return bytes.Replace(d, []byte(`"version"`), []byte(`"extra": 1, "version"`), 1)
		}, "unknown field"},
		{"no version", func(_ *testing.T, d []byte) []byte {
			return bytes.Replace(d, []byte(`"version"`), []byte(`"versio"`), 1)
		}, "no format version"},
		{"newer version", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 2, Allocations: []allocation{good("10.0.1.1")}})
		}, "format version 2, this strait-cni reads 1"},
		{"duplicate address", func(t *testing.T, _ []byte) []byte {
			b := good("10.0.1.1")
			b.ContainerID = "other"
			return withBody(t, body{Version: 1, Allocations: []allocation{good("10.0.1.1"), b}})
		}, "address 10.0.1.1 is held twice, by x10.0.1.1/eth0 and other/eth0"},
		{"duplicate address, two families", func(t *testing.T, _ []byte) []byte {
			b := good("fd00::1")
			return withBody(t, body{Version: 1, Allocations: []allocation{good("10.0.1.1", "fd00::1"), b}})
		}, "address fd00::1 is held twice"},
		{"duplicate attachment", func(t *testing.T, _ []byte) []byte {
			b := good("10.0.1.2")
			b.ContainerID = "x10.0.1.1"
			return withBody(t, body{Version: 1, Allocations: []allocation{good("10.0.1.1"), b}})
		}, "attachment x10.0.1.1/eth0 is listed twice"},
		{"two addresses of a family", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{good("10.0.1.1", "10.0.1.2")}})
		}, "holds two addresses of one family"},
		{"no address", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{{ContainerID: "a", IfName: "eth0"}}})
		}, "attachment a/eth0 holds no address"},
		{"empty address", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{{ContainerID: "a", IfName: "eth0", Addrs: []netip.Addr{{}}}}})
		}, "an empty address"},
		{"mapped address", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{good("::ffff:10.0.1.1")}})
		}, "IPv4-mapped"},
		{"no container ID", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{{IfName: "eth0", Addrs: []netip.Addr{ad("10.0.1.1")}}}})
		}, "without container ID"},
		{"last outside its range", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{good("10.0.1.1")},
				Last: map[netip.Prefix]netip.Addr{pfx("10.0.1.0/24"): ad("10.0.2.1")}})
		}, "outside it"},
		{"last of an unmasked range", func(t *testing.T, _ []byte) []byte {
			return withBody(t, body{Version: 1, Allocations: []allocation{good("10.0.1.1")},
				Last: map[netip.Prefix]netip.Addr{pfx("10.0.1.1/24"): ad("10.0.1.1")}})
		}, "not a masked prefix"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openStore(t, t.TempDir(), "10.0.1.0/24")
			data := damagedFile(t, s, func(d []byte) []byte { return tt.damage(t, d) })
			ops := map[string]func() error{
				"allocate new":  func() error { _, err := s.Allocate(att("c")); return err },
				"allocate held": func() error { _, err := s.Allocate(att("a")); return err },
				"lookup":        func() error { _, _, err := s.Lookup(att("a")); return err },
				"release":       func() error { return s.Release(att("a")) },
				"release none":  func() error { return s.Release(att("none")) },
				"gc":            func() error { _, err := s.GC(nil); return err },
				"allocations":   func() error { _, err := s.Allocations(); return err },
			}
			for name, op := range ops {
				err := op()
				if err == nil {
					t.Errorf("%s on a damaged file succeeded", name)
					continue
				}
				var de *DamagedError
				if !errors.Is(err, ErrDamaged) || !errors.As(err, &de) || de.Path != s.Path() ||
					!strings.Contains(err.Error(), s.Path()) || !strings.Contains(err.Error(), tt.reason) ||
					!strings.HasPrefix(err.Error(), "ipam: ") {
					t.Errorf("%s: %v; want the file named and %q", name, err, tt.reason)
				}
			}
			after, err := os.ReadFile(s.Path())
			if err != nil || !bytes.Equal(after, data) {
				t.Errorf("the damaged file was changed (%v)", err)
			}
		})
	}
}

// TestEveryByteFlipped: a state file with any one byte changed is refused.
func TestEveryByteFlipped(t *testing.T) {
	s := openStore(t, t.TempDir(), "10.0.1.0/24", "fd00::/64")
	mustAllocate(t, s, att("a"))
	mustAllocate(t, s, att("b"))
	mustAllocate(t, s, att("c"))
	s.Release(att("b"))
	data, err := os.ReadFile(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decode(data); err != nil {
		t.Fatal(err)
	}
	for i := range data {
		d := bytes.Clone(data)
		d[i] ^= 1
		if _, err := decode(d); err == nil {
			t.Errorf("byte %d (%q) flipped to %q: accepted", i, data[i], d[i])
		}
	}
}

func TestEncodeDecode(t *testing.T) {
	st := newState()
	st.allocs[att("a")] = []netip.Addr{ad("10.0.1.1"), ad("fd00::1")}
	st.allocs[Attachment{"b", "net1"}] = []netip.Addr{ad("fd00::2")}
	st.last[pfx("10.0.1.0/24")] = ad("10.0.1.1")
	st.last[pfx("fd00::/64")] = ad("fd00::2")
	data, err := encode(st)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if !sameState(st, got) {
		t.Errorf("decode(encode(%v)) = %v", st, got)
	}
	// The file is sorted, so one state is one file.
	again, _ := encode(got)
	if !bytes.Equal(data, again) {
		t.Errorf("encoding is not stable:\n%s\n%s", data, again)
	}
}

func sameState(x, y *state) bool {
	if len(x.allocs) != len(y.allocs) || len(x.last) != len(y.last) {
		return false
	}
	for a, addrs := range x.allocs {
		if !slices.Equal(addrs, y.allocs[a]) {
			return false
		}
	}
	for r, v := range x.last {
		if y.last[r] != v {
			return false
		}
	}
	return true
}

func TestParallelGoroutines(t *testing.T) {
	dir := t.TempDir()
	const n = 100
	var wg sync.WaitGroup
	got := make([][]netip.Addr, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			// Half share one Store, half open their own.
			s := &Store{Dir: dir, Ranges: pfxs("10.0.1.0/24", "fd00::/120")}
			if i%2 == 0 {
				var err error
				if s, err = Open(dir, s.Ranges); err != nil {
					errs[i] = err
					return
				}
			}
			got[i], errs[i] = s.Allocate(att(fmt.Sprint("c", i)))
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Allocate %d: %v", i, errs[i])
		}
		if len(got[i]) != 2 {
			t.Fatalf("Allocate %d = %v", i, got[i])
		}
		for _, x := range got[i] {
			if j, dup := seen[x]; dup {
				t.Errorf("%s handed to %d and %d", x, j, i)
			}
			seen[x] = i
		}
	}
	s := openStore(t, dir, "10.0.1.0/24", "fd00::/120")
	all, err := s.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Errorf("Allocations has %d entries, want %d", len(all), n)
	}
	for i := range n {
		if !slices.Equal(all[att(fmt.Sprint("c", i))], got[i]) {
			t.Errorf("c%d: stored %v, handed out %v", i, all[att(fmt.Sprint("c", i))], got[i])
		}
	}
}
