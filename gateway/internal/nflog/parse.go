package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
)

// Wire values from the kernel's include/uapi/linux/netfilter/nfnetlink.h and
// nfnetlink_log.h; x/sys/unix has the netlink family and the subsystem but
// not these.
const (
	nfgenmsgLen = 4 // struct nfgenmsg: family, version, res_id (big endian)

	nfnetlinkV0 = 0
	subsysULOG  = 4 // NFNL_SUBSYS_ULOG

	msgPacket = 0 // NFULNL_MSG_PACKET
	msgConfig = 1 // NFULNL_MSG_CONFIG

	// Packet attributes (enum nfulnl_attr_type).
	attrTimestamp = 3 // NFULA_TIMESTAMP: be64 seconds, be64 microseconds
	attrPayload   = 9 // NFULA_PAYLOAD: the packet from its network header on
	attrPrefix    = 10

	// Config attributes (enum nfulnl_attr_config).
	cfgCmd     = 1 // NFULA_CFG_CMD: struct nfulnl_msg_config_cmd
	cfgMode    = 2 // NFULA_CFG_MODE: struct nfulnl_msg_config_mode
	cfgTimeout = 4 // NFULA_CFG_TIMEOUT: be32, hundredths of a second
	cfgQThresh = 5 // NFULA_CFG_QTHRESH: be32, packets

	// Config commands (enum nfulnl_msg_config_cmds).
	cmdBind   = 1
	cmdUnbind = 2

	copyPacket = 2 // NFULNL_COPY_PACKET

	protoTCP = 6
	protoUDP = 17
)

// packetType and configType are the netlink message types of the ULOG
// subsystem: subsystem in the high byte, message in the low byte.
const (
	packetType = netlink.HeaderType(subsysULOG<<8 | msgPacket)
	configType = netlink.HeaderType(subsysULOG<<8 | msgConfig)
)

// parse turns the body of one NFULNL_MSG_PACKET message (struct nfgenmsg and
// the NFULA attributes after it) into a Packet. It is pure and total: any
// input gives a Packet or an error, never a panic, because the bytes come
// from a socket. At is left zero when the kernel sent no timestamp; the
// caller knows the receive time.
func parse(msg []byte) (Packet, error) {
	if len(msg) < nfgenmsgLen {
		return Packet{}, fmt.Errorf("nflog: message of %d bytes is shorter than its %d-byte nfgenmsg header", len(msg), nfgenmsgLen)
	}
	ad, err := netlink.NewAttributeDecoder(msg[nfgenmsgLen:])
	if err != nil {
		return Packet{}, fmt.Errorf("nflog: attributes: %w", err)
	}
	var (
		p          Packet
		payload    []byte
		hasPayload bool
	)
	for ad.Next() {
		// The netlink header of each attribute is in host order, its
		// value in network order: decode values by hand.
		b := attrData(ad)
		switch ad.Type() {
		case attrPrefix:
			p.Prefix = cString(b)
		case attrPayload:
			payload, hasPayload = b, true
		case attrTimestamp:
			at, err := parseTimestamp(b)
			if err != nil {
				return Packet{}, err
			}
			p.At = at
		}
	}
	if err := ad.Err(); err != nil {
		return Packet{}, fmt.Errorf("nflog: attributes: %w", err)
	}
	if !hasPayload {
		return Packet{}, errors.New("nflog: message has no NFULA_PAYLOAD (is the group's copy mode \"packet\"?)")
	}
	if err := parseIP(payload, &p); err != nil {
		return Packet{}, err
	}
	return p, nil
}

// attrData returns the current attribute's value without the copy that
// AttributeDecoder.Bytes makes; parse reads it before the next Next.
func attrData(ad *netlink.AttributeDecoder) []byte {
	var b []byte
	ad.Do(func(v []byte) error {
		b = v
		return nil
	})
	return b
}

// cString returns b up to its first NUL: the kernel sends the prefix as a
// C string.
func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

func parseTimestamp(b []byte) (time.Time, error) {
	if len(b) != 16 {
		return time.Time{}, fmt.Errorf("nflog: NFULA_TIMESTAMP has %d bytes, want 16", len(b))
	}
	sec := binary.BigEndian.Uint64(b[0:8])
	usec := binary.BigEndian.Uint64(b[8:16])
	if usec >= 1e6 {
		return time.Time{}, fmt.Errorf("nflog: NFULA_TIMESTAMP has %d microseconds, want less than a second", usec)
	}
	if sec > 1<<62 {
		// Far beyond any real clock, and it would overflow time.Unix.
		return time.Time{}, fmt.Errorf("nflog: NFULA_TIMESTAMP second %d is out of range", sec)
	}
	return time.Unix(int64(sec), int64(usec)*1000), nil
}

// parseIP reads addresses, protocol and ports from the packet, which starts
// at its IP header. A packet whose headers were cut short (by the copy
// range or a bogus length field) is an error, not a Packet with zeros,
// so that port 0 in a Packet always means "not TCP or UDP" or "a later
// fragment".
func parseIP(b []byte, p *Packet) error {
	if len(b) == 0 {
		return errors.New("nflog: empty payload")
	}
	switch v := b[0] >> 4; v {
	case 4:
		return parseIPv4(b, p)
	case 6:
		return parseIPv6(b, p)
	default:
		return fmt.Errorf("nflog: payload is not IP: version %d", v)
	}
}

func parseIPv4(b []byte, p *Packet) error {
	if len(b) < 20 {
		return fmt.Errorf("nflog: IPv4 header cut short at %d bytes", len(b))
	}
	ihl := int(b[0]&0x0f) * 4
	if ihl < 20 {
		return fmt.Errorf("nflog: IPv4 header length %d is less than 20", ihl)
	}
	if len(b) < ihl {
		return fmt.Errorf("nflog: IPv4 header of %d bytes cut short at %d", ihl, len(b))
	}
	p.Src = netip.AddrFrom4([4]byte(b[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	p.Proto = b[9]
	// Total length is not checked: BIG TCP sends GSO packets with 0 there.
	if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
		return nil // a later fragment: no transport header
	}
	return parsePorts(b[ihl:], p)
}

// IPv6 extension headers that parseIPv6 walks past to find the transport
// header.
const (
	ip6HopByHop = 0
	ip6Routing  = 43
	ip6Fragment = 44
	ip6AH       = 51
	ip6DestOpts = 60
)

func parseIPv6(b []byte, p *Packet) error {
	if len(b) < 40 {
		return fmt.Errorf("nflog: IPv6 header cut short at %d bytes", len(b))
	}
	p.Src = netip.AddrFrom16([16]byte(b[8:24]))
	p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
	next, rest := b[6], b[40:]
	// Each extension header takes at least 8 bytes of rest, so the loop
	// ends within len(b)/8 rounds.
	for {
		switch next {
		case ip6HopByHop, ip6Routing, ip6DestOpts, ip6AH:
			if len(rest) < 2 {
				return fmt.Errorf("nflog: IPv6 extension header %d cut short at %d bytes", next, len(rest))
			}
			n := (int(rest[1]) + 1) * 8
			if next == ip6AH {
				n = (int(rest[1]) + 2) * 4
			}
			if len(rest) < n {
				return fmt.Errorf("nflog: IPv6 extension header %d of %d bytes cut short at %d", next, n, len(rest))
			}
			next, rest = rest[0], rest[n:]
		case ip6Fragment:
			if len(rest) < 8 {
				return fmt.Errorf("nflog: IPv6 fragment header cut short at %d bytes", len(rest))
			}
			offset := binary.BigEndian.Uint16(rest[2:4]) >> 3
			next, rest = rest[0], rest[8:]
			if offset != 0 {
				p.Proto = next
				return nil // a later fragment: no transport header
			}
		default:
			p.Proto = next
			return parsePorts(rest, p)
		}
	}
}

func parsePorts(b []byte, p *Packet) error {
	if p.Proto != protoTCP && p.Proto != protoUDP {
		return nil
	}
	if len(b) < 4 {
		return fmt.Errorf("nflog: ports of protocol %d cut short at %d bytes", p.Proto, len(b))
	}
	p.SrcPort = binary.BigEndian.Uint16(b[0:2])
	p.DstPort = binary.BigEndian.Uint16(b[2:4])
	return nil
}
