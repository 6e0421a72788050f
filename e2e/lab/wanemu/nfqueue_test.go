package wanemu

import (
	"encoding/binary"
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

// FuzzDecode feeds arbitrary datagrams to the decoders: they must never
// panic nor read past what they were given.
func FuzzDecode(f *testing.F) {
	f.Add(packetMsg(1, 2))
	f.Add(append(packetMsg(1, 2), 0xff, 0xff, 0xff))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, m := range split(b) {
			if len(m.body) > len(b) {
				t.Fatal("message body longer than the datagram")
			}
			if len(m.body) >= 4 {
				for _, a := range attrs(m.body[4:]) {
					if len(a.data) > len(m.body) {
						t.Fatal("attribute longer than its message")
					}
				}
			}
		}
	})
}
