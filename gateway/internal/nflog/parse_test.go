package nflog

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
)

// The test builds kernel messages by hand, from the layouts in the
// kernel's headers, independently of parse.

type attr struct {
	typ  uint16
	data []byte
}

// buildMsg returns an NFULNL_MSG_PACKET body: struct nfgenmsg for family
// and group 7100, then the attributes (header in host order, each padded
// to 4 bytes).
func buildMsg(family byte, attrs ...attr) []byte {
	b := []byte{family, 0, 0x1b, 0xbc}
	for _, a := range attrs {
		b = binary.NativeEndian.AppendUint16(b, uint16(4+len(a.data)))
		b = binary.NativeEndian.AppendUint16(b, a.typ)
		b = append(b, a.data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

func prefixAttr(s string) attr  { return attr{attrPrefix, append([]byte(s), 0)} }
func payloadAttr(b []byte) attr { return attr{attrPayload, b} }

func timestampAttr(sec, usec uint64) attr {
	b := binary.BigEndian.AppendUint64(nil, sec)
	return attr{attrTimestamp, binary.BigEndian.AppendUint64(b, usec)}
}

// Attributes the kernel sends that parse ignores.
var (
	hdrAttr  = attr{1, []byte{0x08, 0x00, 3, 0}}     // NFULA_PACKET_HDR: IPv4, hook 3
	markAttr = attr{2, []byte{0, 0, 0, 42}}          // NFULA_MARK
	uidAttr  = attr{11, []byte{0, 0, 3, 0xe8}}       // NFULA_UID
	seqAttr  = attr{13, []byte{0, 0, 0, 7}}          // NFULA_SEQ_GLOBAL
	hwAttr   = attr{8, make([]byte, 12)}             // NFULA_HWADDR
	zeroAttr = attr{0, nil}                          // NFULA_UNSPEC, empty
	oddAttr  = attr{20, []byte{1, 2, 3, 4, 5, 6, 7}} // unknown, padded
)

// ports is a TCP or UDP header's first 4 bytes, then filler.
func ports(src, dst uint16, filler int) []byte {
	b := binary.BigEndian.AppendUint16(nil, src)
	b = binary.BigEndian.AppendUint16(b, dst)
	return append(b, make([]byte, filler)...)
}

// ipv4 returns an IPv4 packet with optLen bytes of options (a multiple
// of 4) and the fragment offset field frag (flags and offset) in place.
func ipv4(src, dst string, proto byte, optLen int, frag uint16, l4 []byte) []byte {
	ihl := 20 + optLen
	b := make([]byte, ihl, ihl+len(l4))
	b[0] = 0x40 | byte(ihl/4)
	binary.BigEndian.PutUint16(b[2:4], uint16(ihl+len(l4)))
	binary.BigEndian.PutUint16(b[6:8], frag)
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	for i := 20; i < ihl; i++ {
		b[i] = 1 // NOP options
	}
	return append(b, l4...)
}

// ext is an IPv6 extension header: its type and its length in bytes.
type ext struct {
	typ byte
	len int
}

// ipv6 returns an IPv6 packet with the extension headers exts, then the
// upper-layer protocol proto. A fragment header (len 8) gets fragOff as its
// offset.
func ipv6(src, dst string, exts []ext, proto byte, fragOff uint16, l4 []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	first := proto
	if len(exts) > 0 {
		first = exts[0].typ
	}
	b[6], b[7] = first, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	for i, e := range exts {
		next := proto
		if i+1 < len(exts) {
			next = exts[i+1].typ
		}
		h := make([]byte, e.len)
		h[0] = next
		switch e.typ {
		case ip6Fragment:
			binary.BigEndian.PutUint16(h[2:4], fragOff<<3)
		case ip6AH:
			h[1] = byte(e.len/4 - 2)
		default:
			h[1] = byte(e.len/8 - 1)
		}
		b = append(b, h...)
	}
	binary.BigEndian.PutUint16(b[4:6], uint16(len(b)-40+len(l4)))
	return append(b, l4...)
}

func TestParse(t *testing.T) {
	v4tcp := ipv4("10.1.2.3", "242.0.0.9", 6, 0, 0x4000, ports(40001, 443, 16))
	tests := []struct {
		name    string
		msg     []byte
		want    Packet
		wantErr string // a part of the error; "" for none
	}{
		{
			name: "ipv4 tcp among other attributes",
			msg:  buildMsg(2, hdrAttr, markAttr, prefixAttr("strait-deny 42 "), uidAttr, payloadAttr(v4tcp), seqAttr, hwAttr),
			want: Packet{Prefix: "strait-deny 42 ", Src: ip("10.1.2.3"), Dst: ip("242.0.0.9"), Proto: 6, SrcPort: 40001, DstPort: 443},
		},
		{
			name: "ipv4 udp with options, timestamp",
			msg:  buildMsg(2, payloadAttr(ipv4("10.0.0.1", "10.0.0.2", 17, 8, 0, ports(53, 5353, 4))), timestampAttr(1700000000, 123456), prefixAttr("p")),
			want: Packet{Prefix: "p", Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 17, SrcPort: 53, DstPort: 5353, At: time.Unix(1700000000, 123456000)},
		},
		{
			name: "ipv4 icmp has no ports",
			msg:  buildMsg(2, prefixAttr("x"), payloadAttr(ipv4("10.0.0.1", "10.0.0.2", 1, 0, 0, []byte{8, 0}))),
			want: Packet{Prefix: "x", Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 1},
		},
		{
			name: "ipv4 first fragment has ports",
			msg:  buildMsg(2, payloadAttr(ipv4("10.0.0.1", "10.0.0.2", 17, 0, 0x2000, ports(1, 2, 0)))),
			want: Packet{Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 17, SrcPort: 1, DstPort: 2},
		},
		{
			name: "ipv4 later fragment has none",
			msg:  buildMsg(2, payloadAttr(ipv4("10.0.0.1", "10.0.0.2", 17, 0, 0x2010, []byte{9}))),
			want: Packet{Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 17},
		},
		{
			name: "ipv4 total length 0 (BIG TCP)",
			msg: buildMsg(2, payloadAttr(func() []byte {
				b := ipv4("10.0.0.1", "10.0.0.2", 6, 0, 0, ports(1, 2, 16))
				b[2], b[3] = 0, 0
				return b
			}())),
			want: Packet{Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 6, SrcPort: 1, DstPort: 2},
		},
		{
			name: "ipv6 udp",
			msg:  buildMsg(10, prefixAttr("six"), payloadAttr(ipv6("fd00::1", "2001:db8::2", nil, 17, 0, ports(5000, 53, 4)))),
			want: Packet{Prefix: "six", Src: ip("fd00::1"), Dst: ip("2001:db8::2"), Proto: 17, SrcPort: 5000, DstPort: 53},
		},
		{
			name: "ipv6 tcp after hop-by-hop, routing, destination options, AH",
			msg: buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2",
				[]ext{{ip6HopByHop, 8}, {ip6Routing, 24}, {ip6DestOpts, 16}, {ip6AH, 24}}, 6, 0, ports(1234, 80, 16)))),
			want: Packet{Src: ip("fd00::1"), Dst: ip("fd00::2"), Proto: 6, SrcPort: 1234, DstPort: 80},
		},
		{
			name: "ipv6 first fragment has ports",
			msg:  buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", []ext{{ip6Fragment, 8}}, 17, 0, ports(7, 8, 0)))),
			want: Packet{Src: ip("fd00::1"), Dst: ip("fd00::2"), Proto: 17, SrcPort: 7, DstPort: 8},
		},
		{
			name: "ipv6 later fragment has none",
			msg:  buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", []ext{{ip6Fragment, 8}}, 17, 185, nil))),
			want: Packet{Src: ip("fd00::1"), Dst: ip("fd00::2"), Proto: 17},
		},
		{
			name: "ipv6 icmpv6 and no next header",
			msg:  buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", []ext{{ip6DestOpts, 8}}, 59, 0, nil))),
			want: Packet{Src: ip("fd00::1"), Dst: ip("fd00::2"), Proto: 59},
		},
		{
			name: "prefix without NUL, empty attributes skipped",
			msg:  buildMsg(2, zeroAttr, attr{attrPrefix, []byte("no-nul")}, oddAttr, payloadAttr(v4tcp)),
			want: Packet{Prefix: "no-nul", Src: ip("10.1.2.3"), Dst: ip("242.0.0.9"), Proto: 6, SrcPort: 40001, DstPort: 443},
		},
		{
			name: "prefix ends at the first NUL",
			msg:  buildMsg(2, attr{attrPrefix, []byte("a\x00b\x00")}, payloadAttr(v4tcp)),
			want: Packet{Prefix: "a", Src: ip("10.1.2.3"), Dst: ip("242.0.0.9"), Proto: 6, SrcPort: 40001, DstPort: 443},
		},
		{
			name: "network byte order flag on the type",
			msg:  buildMsg(2, attr{attrPayload | netlink.NetByteOrder, v4tcp}),
			want: Packet{Src: ip("10.1.2.3"), Dst: ip("242.0.0.9"), Proto: 6, SrcPort: 40001, DstPort: 443},
		},

		{name: "empty", msg: nil, wantErr: "shorter than its 4-byte nfgenmsg"},
		{name: "nfgenmsg only", msg: []byte{2, 0, 0, 1}, wantErr: "no NFULA_PAYLOAD"},
		{name: "attribute header cut", msg: append(buildMsg(2, payloadAttr(v4tcp)), 8, 0), wantErr: "attributes"},
		{name: "attribute longer than the message", msg: buildMsg(2, payloadAttr(v4tcp))[:40], wantErr: "attributes"},
		{name: "attribute length below its header", msg: binary.NativeEndian.AppendUint16(binary.NativeEndian.AppendUint16([]byte{2, 0, 0, 1}, 2), attrPayload), wantErr: "attributes"},
		{name: "empty payload", msg: buildMsg(2, payloadAttr(nil)), wantErr: "empty payload"},
		{name: "not IP", msg: buildMsg(2, payloadAttr([]byte{0x00, 0x01, 0x08, 0x00})), wantErr: "not IP: version 0"},
		{name: "ipv4 short", msg: buildMsg(2, payloadAttr(v4tcp[:19])), wantErr: "IPv4 header cut short at 19"},
		{name: "ipv4 ihl 4", msg: buildMsg(2, payloadAttr(append([]byte{0x44}, v4tcp[1:]...))), wantErr: "header length 16"},
		{name: "ipv4 options cut", msg: buildMsg(2, payloadAttr(ipv4("10.0.0.1", "10.0.0.2", 6, 40, 0, nil)[:40])), wantErr: "IPv4 header of 60 bytes cut short at 40"},
		{name: "ipv4 tcp ports cut", msg: buildMsg(2, payloadAttr(v4tcp[:23])), wantErr: "ports of protocol 6 cut short at 3"},
		{name: "ipv4 udp no ports", msg: buildMsg(2, payloadAttr(ipv4("10.0.0.1", "10.0.0.2", 17, 0, 0, nil))), wantErr: "ports of protocol 17 cut short at 0"},
		{name: "ipv6 short", msg: buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", nil, 17, 0, nil)[:39])), wantErr: "IPv6 header cut short at 39"},
		{name: "ipv6 extension cut", msg: buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", []ext{{ip6HopByHop, 16}}, 6, 0, nil)[:50])), wantErr: "extension header 0 of 16 bytes cut short at 10"},
		{name: "ipv6 extension header header cut", msg: buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", []ext{{ip6DestOpts, 8}}, 6, 0, nil)[:41])), wantErr: "extension header 60 cut short at 1"},
		{name: "ipv6 fragment cut", msg: buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", []ext{{ip6Fragment, 8}}, 6, 0, nil)[:44])), wantErr: "fragment header cut short at 4"},
		{name: "ipv6 ports cut", msg: buildMsg(10, payloadAttr(ipv6("fd00::1", "fd00::2", nil, 6, 0, []byte{1, 2}))), wantErr: "ports of protocol 6 cut short at 2"},
		{name: "timestamp short", msg: buildMsg(2, attr{attrTimestamp, make([]byte, 8)}, payloadAttr(v4tcp)), wantErr: "NFULA_TIMESTAMP has 8 bytes"},
		{name: "timestamp microseconds", msg: buildMsg(2, timestampAttr(1, 1e6), payloadAttr(v4tcp)), wantErr: "1000000 microseconds"},
		{name: "timestamp seconds", msg: buildMsg(2, timestampAttr(1<<63, 0), payloadAttr(v4tcp)), wantErr: "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.msg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parse = %+v, %v; want an error with %q", got, err, tt.wantErr)
				}
				if !strings.HasPrefix(err.Error(), "nflog: ") {
					t.Errorf("error %q does not name the package", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if got != tt.want {
				t.Errorf("parse:\n got  %+v\n want %+v", got, tt.want)
			}
		})
	}
}

// TestParseCaptured parses messages the kernel sent in TestReadRealPackets
// (recorded with -record), so that the format is checked without root.
func TestParseCaptured(t *testing.T) {
	tests := map[string]Packet{
		"tcp4-output": {Prefix: "strait-deny 42 ", Src: ip("127.0.0.1"), Dst: ip("127.0.0.2"), Proto: 6, SrcPort: 40001, DstPort: 9},
		"udp4-output": {Prefix: "strait-deny 43 ", Src: ip("127.0.0.1"), Dst: ip("127.0.0.2"), Proto: 17, SrcPort: 40002, DstPort: 9},
		"udp6-output": {Prefix: "strait-deny 44 ", Src: ip("::1"), Dst: ip("::1"), Proto: 17, SrcPort: 40003, DstPort: 9},
		"udp4-input":  {Prefix: "strait-in 45 ", Src: ip("127.0.0.1"), Dst: ip("127.0.0.2"), Proto: 17, SrcPort: 40002, DstPort: 9},
	}
	for name, want := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parse(readCaptured(t, name))
			if err != nil {
				t.Fatal(err)
			}
			// Only packets the kernel received carry its timestamp.
			if hasTS := !got.At.IsZero(); hasTS != strings.HasSuffix(name, "-input") {
				t.Errorf("At = %v; want a timestamp only on input", got.At)
			}
			got.At = time.Time{}
			if got != want {
				t.Errorf("parse:\n got  %+v\n want %+v", got, want)
			}
		})
	}
}

func readCaptured(t testing.TB, name string) []byte {
	t.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name+".hex"))
	if err != nil {
		t.Fatal(err)
	}
	var h strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#") {
			h.WriteString(strings.TrimSpace(line))
		}
	}
	b, err := hex.DecodeString(h.String())
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

// randomCase is a message built from random choices, with the Packet it
// holds and the payload length below which parse must refuse it.
type randomCase struct {
	msg     []byte
	payload []byte
	attrs   []attr // with the payload attribute at payloadAt
	at      int
	want    Packet
	need    int
}

func randomAddr(rng *rand.Rand, v6 bool) netip.Addr {
	if v6 {
		var a [16]byte
		for i := range a {
			a[i] = byte(rng.IntN(256))
		}
		return netip.AddrFrom16(a)
	}
	return netip.AddrFrom4([4]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
}

func newRandomCase(rng *rand.Rand) randomCase {
	var c randomCase
	protos := []byte{6, 17, 1, 58, 132, 47}
	c.want.Proto = protos[rng.IntN(len(protos))]
	v6 := rng.IntN(2) == 0
	c.want.Src, c.want.Dst = randomAddr(rng, v6), randomAddr(rng, v6)
	later := rng.IntN(5) == 0 // a fragment after the first
	hasPorts := (c.want.Proto == 6 || c.want.Proto == 17) && !later
	if hasPorts {
		c.want.SrcPort, c.want.DstPort = uint16(rng.IntN(65536)), uint16(rng.IntN(65536))
	}
	l4 := ports(c.want.SrcPort, c.want.DstPort, rng.IntN(30))
	if v6 {
		var exts []ext
		for range rng.IntN(4) {
			switch rng.IntN(4) {
			case 0:
				exts = append(exts, ext{ip6HopByHop, 8 * (1 + rng.IntN(3))})
			case 1:
				exts = append(exts, ext{ip6Routing, 8 * (1 + rng.IntN(3))})
			case 2:
				exts = append(exts, ext{ip6DestOpts, 8 * (1 + rng.IntN(3))})
			case 3:
				exts = append(exts, ext{ip6AH, 4 * (3 + rng.IntN(4))})
			}
		}
		var frag uint16
		if later || rng.IntN(4) == 0 {
			exts = append(exts, ext{ip6Fragment, 8})
			if later {
				frag = uint16(1 + rng.IntN(8000))
			}
		}
		c.payload = ipv6(c.want.Src.String(), c.want.Dst.String(), exts, c.want.Proto, frag, l4)
		c.need = len(c.payload) - len(l4)
	} else {
		var frag uint16
		if later {
			frag = uint16(1 + rng.IntN(0x1fff))
		}
		if rng.IntN(2) == 0 {
			frag |= 0x4000 // DF
		}
		c.payload = ipv4(c.want.Src.String(), c.want.Dst.String(), c.want.Proto, 4*rng.IntN(11), frag, l4)
		c.need = len(c.payload) - len(l4)
	}
	if hasPorts {
		c.need += 4
	}
	others := []attr{hdrAttr, markAttr, uidAttr, seqAttr, hwAttr, zeroAttr, oddAttr}
	for _, a := range others {
		if rng.IntN(2) == 0 {
			c.attrs = append(c.attrs, a)
		}
	}
	if rng.IntN(4) != 0 {
		c.want.Prefix = strings.Repeat("deny ", rng.IntN(12))
		c.attrs = append(c.attrs, prefixAttr(c.want.Prefix))
	}
	if rng.IntN(2) == 0 {
		sec, usec := uint64(rng.Int64N(4e9)), uint64(rng.IntN(1e6))
		c.want.At = time.Unix(int64(sec), int64(usec)*1000)
		c.attrs = append(c.attrs, timestampAttr(sec, usec))
	}
	rng.Shuffle(len(c.attrs), func(i, j int) { c.attrs[i], c.attrs[j] = c.attrs[j], c.attrs[i] })
	c.at = rng.IntN(len(c.attrs) + 1)
	family := byte(2)
	if v6 {
		family = 10
	}
	c.msg = c.build(family, c.payload)
	return c
}

func (c randomCase) build(family byte, payload []byte) []byte {
	attrs := append([]attr{}, c.attrs[:c.at]...)
	attrs = append(attrs, payloadAttr(payload))
	return buildMsg(family, append(attrs, c.attrs[c.at:]...)...)
}

// TestParseRandom checks parse against messages built from random
// choices, whose content the builder knows, and against every cut of
// their payload: parse must refuse exactly the cuts that lose a header.
func TestParseRandom(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	for i := range 2000 {
		c := newRandomCase(rng)
		got, err := parse(c.msg)
		if err != nil || got != c.want {
			t.Fatalf("case %d (seed %d): parse(%x) = %+v, %v; want %+v", i, seed, c.msg, got, err, c.want)
		}
		cut := rng.IntN(len(c.payload))
		got, err = parse(c.build(c.msg[0], c.payload[:cut]))
		switch {
		case cut < c.need && err == nil:
			t.Fatalf("case %d (seed %d): payload cut at %d of %d needed parses: %+v", i, seed, cut, c.need, got)
		case cut >= c.need && (err != nil || got != c.want):
			t.Fatalf("case %d (seed %d): payload cut at %d (%d needed) = %+v, %v; want %+v", i, seed, cut, c.need, got, err, c.want)
		}
	}
}

func TestConfigMessages(t *testing.T) {
	m, err := bindMessage(7100, groupConfig{copyRange: 128, qthresh: 16, timeout: 10})
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Type != 0x0401 || m.Header.Flags != netlink.Request|netlink.Acknowledge {
		t.Errorf("bind header %+v, want type 0x0401 (ULOG config), flags request|ack", m.Header)
	}
	want := buildMsg(0,
		attr{cfgCmd, []byte{1}},                   // NFULNL_CFG_CMD_BIND
		attr{cfgMode, []byte{0, 0, 0, 128, 2, 0}}, // copy_range 128, NFULNL_COPY_PACKET
		attr{cfgQThresh, []byte{0, 0, 0, 16}},     // be32
		attr{cfgTimeout, []byte{0, 0, 0, 10}},     // be32, 1/100 s
	)
	if !bytes.Equal(m.Data, want) {
		t.Errorf("bind body\n got  %x\n want %x", m.Data, want)
	}
	m, err = unbindMessage(7100)
	if err != nil {
		t.Fatal(err)
	}
	if want := buildMsg(0, attr{cfgCmd, []byte{2}}); !bytes.Equal(m.Data, want) || m.Header.Flags != netlink.Request {
		t.Errorf("unbind %+v %x, want flags request and body %x", m.Header, m.Data, want)
	}
}

func TestOptions(t *testing.T) {
	o, err := Options{}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if got := o.groupConfig(); got != (groupConfig{copyRange: 128, qthresh: 16, timeout: 10}) {
		t.Errorf("default config %+v", got)
	}
	if o.ReadBuffer != 1<<20 || o.Now == nil || o.Logger == nil {
		t.Errorf("defaults %+v", o)
	}
	o, err = Options{FlushTimeout: 15 * time.Millisecond, QueueThreshold: 1, CopyRange: 64}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if got := o.groupConfig(); got != (groupConfig{copyRange: 64, qthresh: 1, timeout: 2}) {
		t.Errorf("config %+v, want the timeout rounded up to 2/100 s", got)
	}
	for _, tt := range []struct {
		o    Options
		want string
	}{
		{Options{NetNS: -1}, "NetNS -1"},
		{Options{CopyRange: 63}, "CopyRange 63"},
		{Options{CopyRange: 65532}, "CopyRange 65532"},
		{Options{ReadBuffer: 100}, "ReadBuffer 100"},
		{Options{QueueThreshold: -1}, "QueueThreshold -1"},
		{Options{FlushTimeout: time.Millisecond}, "FlushTimeout 1ms"},
		{Options{FlushTimeout: time.Hour}, "FlushTimeout 1h0m0s"},
	} {
		if _, err := tt.o.withDefaults(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: %v, want an error naming %q", tt.o, err, tt.want)
		}
		if _, err := Open(1, tt.o); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open with %+v: %v, want an error naming %q", tt.o, err, tt.want)
		}
	}
}

// TestHandle checks what Read does with each message, without a socket.
func TestHandle(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	r := &Reader{log: slog.New(slog.DiscardHandler)}
	v4 := ipv4("10.0.0.1", "10.0.0.2", 17, 0, 0, ports(1, 2, 4))
	msg := func(typ netlink.HeaderType, data []byte) netlink.Message {
		return netlink.Message{Header: netlink.Header{Type: typ}, Data: data}
	}
	for _, m := range []netlink.Message{
		msg(packetType, buildMsg(2, prefixAttr("a"), payloadAttr(v4))),
		msg(packetType, buildMsg(2, prefixAttr("b"), payloadAttr(v4), timestampAttr(1700000000, 0))),
		msg(packetType, buildMsg(2, prefixAttr("c"))),               // no payload: malformed
		msg(packetType, []byte{1}),                                  // malformed
		msg(netlink.Done, []byte{0, 0, 0, 0}),                       // end of a batch
		msg(netlink.Error, make([]byte, 20)),                        // acknowledgement
		msg(configType, buildMsg(0, attr{cfgCmd, []byte{cmdBind}})), // not ours to get
	} {
		r.handle(m, now)
	}
	want := []Packet{
		{Prefix: "a", Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 17, SrcPort: 1, DstPort: 2, At: now},
		{Prefix: "b", Src: ip("10.0.0.1"), Dst: ip("10.0.0.2"), Proto: 17, SrcPort: 1, DstPort: 2, At: time.Unix(1700000000, 0)},
	}
	if len(r.pending) != len(want) || r.pending[0] != want[0] || r.pending[1] != want[1] {
		t.Errorf("pending\n got  %+v\n want %+v", r.pending, want)
	}
	if s := r.Stats(); s != (Stats{Packets: 2, Malformed: 3}) {
		t.Errorf("Stats = %+v, want 2 packets, 3 malformed", s)
	}
}

func TestPacketLogValue(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime && a.Value.Time().Year() != 2030 {
				return slog.Attr{} // the record's own time
			}
			return a
		},
	}))
	p := Packet{Prefix: "strait-deny 42 ", Src: ip("10.0.0.1"), Dst: ip("fd00::2"), Proto: 6, SrcPort: 40001, DstPort: 9,
		At: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	log.Info("firewall deny", "packet", p)
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, buf.Bytes())
	}
	want := map[string]any{"prefix": "strait-deny 42 ", "src": "10.0.0.1", "dst": "fd00::2", "proto": 6.0, "sport": 40001.0, "dport": 9.0, "at": "2030-01-02T03:04:05Z"}
	pkt, _ := got["packet"].(map[string]any)
	for k, v := range want {
		if pkt[k] != v {
			t.Errorf("packet.%s = %v, want %v (line %s)", k, pkt[k], v, buf.Bytes())
		}
	}
}
