package wanemu

import (
	"encoding/binary"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// packetMsg builds the message the kernel sends for a queued packet.
func packetMsg(queue uint16, id uint32) []byte {
	hdr := make([]byte, 7)
	binary.BigEndian.PutUint32(hdr, id)
	body := append([]byte{unix.AF_INET, 0, byte(queue >> 8), byte(queue)}, attr(attrPacketHdr, hdr)...)
	b := make([]byte, unix.NLMSG_HDRLEN)
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(b[4:], msgPacket)
	return append(b, body...)
}

func TestSplitPackets(t *testing.T) {
	dgram := append(packetMsg(3, 7), packetMsg(4, 0xdeadbeef)...)
	msgs := split(dgram)
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
	for i, want := range []queued{{3, 7}, {4, 0xdeadbeef}} {
		m := msgs[i]
		if m.typ != msgPacket {
			t.Errorf("message %d type %#x", i, m.typ)
		}
		q := binary.BigEndian.Uint16(m.body[2:4])
		as := attrs(m.body[4:])
		if q != want.queue || len(as) != 1 || binary.BigEndian.Uint32(as[0].data) != want.id {
			t.Errorf("message %d: queue %d attrs %v; want %+v", i, q, as, want)
		}
	}
}

// FuzzDecode checks the decoders on arbitrary datagrams (no panic) and
// that packet messages survive whatever garbage follows them: the messages
// in front decode to exactly their queue and ID.
func FuzzDecode(f *testing.F) {
	f.Add(uint16(1), uint32(2), uint16(3), uint32(4), []byte{})
	f.Add(uint16(0xffff), uint32(0xffffffff), uint16(0), uint32(0), []byte{0xff, 0xff, 0xff})
	f.Add(uint16(7), uint32(9), uint16(8), uint32(10), packetMsg(5, 6)[:19])
	f.Fuzz(func(t *testing.T, q1 uint16, id1 uint32, q2 uint16, id2 uint32, tail []byte) {
		split(tail) // arbitrary input: must not panic
		dgram := slices.Concat(packetMsg(q1, id1), packetMsg(q2, id2), tail)
		msgs := split(dgram)
		if len(msgs) < 2 {
			t.Fatalf("%d messages decoded, want at least the 2 built", len(msgs))
		}
		for i, want := range []queued{{q1, id1}, {q2, id2}} {
			m := msgs[i]
			as := attrs(m.body[4:])
			if m.typ != msgPacket || binary.BigEndian.Uint16(m.body[2:4]) != want.queue ||
				len(as) != 1 || as[0].typ != attrPacketHdr || binary.BigEndian.Uint32(as[0].data) != want.id {
				t.Fatalf("message %d decoded as type %#x body %x, want %+v", i, m.typ, m.body, want)
			}
		}
	})
}
