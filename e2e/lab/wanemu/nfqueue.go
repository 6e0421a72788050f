package wanemu

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// The NFQUEUE netlink protocol (linux/netfilter/nfnetlink_queue.h): the
// kernel sends each queued packet to the socket bound to its queue, and
// holds it until the socket sends a verdict for its ID.
const (
	subsysQueue = 3 // NFNL_SUBSYS_QUEUE

	msgPacket  = subsysQueue<<8 | 0 // NFQNL_MSG_PACKET
	msgVerdict = subsysQueue<<8 | 1 // NFQNL_MSG_VERDICT
	msgConfig  = subsysQueue<<8 | 2 // NFQNL_MSG_CONFIG

	attrPacketHdr  = 1 // NFQA_PACKET_HDR: be32 id, be16 hw proto, u8 hook
	attrVerdictHdr = 2 // NFQA_VERDICT_HDR: be32 verdict, be32 id

	attrCfgCmd    = 1 // NFQA_CFG_CMD: u8 command, u8 pad, be16 pf
	attrCfgParams = 2 // NFQA_CFG_PARAMS: be32 copy range, u8 copy mode
	attrCfgMaxLen = 3 // NFQA_CFG_QUEUE_MAXLEN: be32

	cmdBind   = 1
	cmdUnbind = 2
	copyMeta  = 1 // NFQNL_COPY_META: metadata only, no payload

	verdictDrop   = 0 // NF_DROP
	verdictAccept = 1 // NF_ACCEPT
)

// queueSocket is a netlink socket bound to some NFQUEUE queues.
type queueSocket struct {
	fd  int
	seq uint32
}

// openQueues binds a new socket to the queues; each holds up to maxLen
// packets waiting for a verdict (the kernel drops what overflows, as a
// full router queue would).
func openQueues(nums []uint16, maxLen uint32) (_ *queueSocket, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("wanemu: netlink socket: %w", err)
	}
	q := &queueSocket{fd: fd}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("wanemu: bind: %w", err)
	}
	// A deep receive buffer, and no ENOBUFS: a packet whose message was
	// lost would wait for its verdict until the queue is unbound.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1)
	// Wake up now and then, so a reader notices it should stop.
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("wanemu: receive timeout: %w", err)
	}
	for _, n := range nums {
		params := make([]byte, 5)
		params[4] = copyMeta
		mlen := make([]byte, 4)
		binary.BigEndian.PutUint32(mlen, maxLen)
		for _, a := range [][]byte{
			attr(attrCfgCmd, []byte{cmdBind, 0, 0, 0}),
			attr(attrCfgParams, params),
			attr(attrCfgMaxLen, mlen),
		} {
			if err := q.request(n, a); err != nil {
				return nil, fmt.Errorf("wanemu: configure queue %d: %w", n, err)
			}
		}
	}
	return q, nil
}

// request sends a config message and waits for its acknowledgement.
func (q *queueSocket) request(queue uint16, attrs ...[]byte) error {
	q.seq++
	seq := q.seq
	if err := q.send(msgConfig, unix.NLM_F_REQUEST|unix.NLM_F_ACK, seq, queue, attrs...); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for range 100 {
		n, _, err := unix.Recvfrom(q.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		for _, m := range split(buf[:n]) {
			if m.typ == unix.NLMSG_ERROR && m.seq == seq && len(m.body) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(m.body)); errno != 0 {
					return unix.Errno(-errno)
				}
				return nil
			}
		}
	}
	return errors.New("no acknowledgement from the kernel")
}

func (q *queueSocket) send(typ, flags uint16, seq uint32, queue uint16, attrs ...[]byte) error {
	body := []byte{unix.AF_UNSPEC, 0 /* NFNETLINK_V0 */, byte(queue >> 8), byte(queue)}
	for _, a := range attrs {
		body = append(body, a...)
	}
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(b[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b = append(b, body...)
	return unix.Sendto(q.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// verdict releases (accept) or drops a held packet.
func (q *queueSocket) verdict(queue uint16, id, v uint32) error {
	hdr := make([]byte, 8)
	binary.BigEndian.PutUint32(hdr[0:], v)
	binary.BigEndian.PutUint32(hdr[4:], id)
	return q.send(msgVerdict, unix.NLM_F_REQUEST, 0, queue, attr(attrVerdictHdr, hdr))
}

// queued is a packet the kernel holds.
type queued struct {
	queue uint16
	id    uint32
}

// read returns the packets of one datagram from the kernel; none when the
// receive timeout expired.
func (q *queueSocket) read(buf []byte) ([]queued, error) {
	n, _, err := unix.Recvfrom(q.fd, buf, 0)
	if err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			return nil, nil
		}
		return nil, fmt.Errorf("wanemu: receive: %w", err)
	}
	var out []queued
	for _, m := range split(buf[:n]) {
		if m.typ != msgPacket || len(m.body) < 4 {
			continue
		}
		queue := binary.BigEndian.Uint16(m.body[2:4])
		for _, a := range attrs(m.body[4:]) {
			if a.typ == attrPacketHdr && len(a.data) >= 4 {
				out = append(out, queued{queue: queue, id: binary.BigEndian.Uint32(a.data)})
			}
		}
	}
	return out, nil
}

func (q *queueSocket) close(nums []uint16) error {
	for _, n := range nums {
		q.request(n, attr(attrCfgCmd, []byte{cmdUnbind, 0, 0, 0}))
	}
	return unix.Close(q.fd)
}

type nlmsg struct {
	typ  uint16
	seq  uint32
	body []byte
}

// split cuts a netlink datagram into its messages.
func split(b []byte) []nlmsg {
	var out []nlmsg
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			break
		}
		out = append(out, nlmsg{
			typ:  binary.NativeEndian.Uint16(b[4:]),
			seq:  binary.NativeEndian.Uint32(b[8:]),
			body: b[unix.NLMSG_HDRLEN:l],
		})
		b = b[min(nlAlign(l), len(b)):]
	}
	return out
}

type nlattr struct {
	typ  uint16
	data []byte
}

func attrs(b []byte) []nlattr {
	var out []nlattr
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < 4 || l > len(b) {
			break
		}
		out = append(out, nlattr{typ: binary.NativeEndian.Uint16(b[2:]) & 0x3fff, data: b[4:l]})
		b = b[min(nlAlign(l), len(b)):]
	}
	return out
}

func attr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, nlAlign(4+len(data)))
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func nlAlign(n int) int { return (n + 3) &^ 3 }
