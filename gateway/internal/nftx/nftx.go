// Package nftx holds what strait's nftables tables (NAT, load balancer,
// firewall) share: the connection with a send buffer large enough for a
// whole table, element chunking, interval encoding, and the expressions
// every table uses.
package nftx

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/natpool"
)

// Conn opens a lasting nftables connection for the namespace the options
// name (the current one by default; nftables.WithNetNSFd for another),
// with SendBuffer and ReceiveBuffer.
func Conn(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	return nftables.New(append(opts, nftables.AsLasting(), nftables.WithSockOptions(bigSendBuffer))...)
}

// SendBuffer is the socket's send buffer: a transaction is one sendmsg,
// and a table with 10,000 services, pods or rules is a few hundred
// kilobytes to megabytes, beyond the default. nft raises it the same way.
// Memory is charged only for what a send uses.
const SendBuffer = 64 << 20

func bigSendBuffer(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, SendBuffer)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ReceiveBuffer)
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("nftables: socket buffers: %w", serr)
	}
	return nil
}

// Chunk is how many elements go in one netlink message. A message's
// element list is one attribute, whose length is 16 bits: past 64 KiB it
// wraps, and the kernel silently takes only the first elements. Each
// element costs its key and value, its comment, its verdict's chain name,
// and some 64 bytes of attribute headers; all of a batch's messages still
// commit as one transaction.
func Chunk(els []nftables.SetElement) int {
	per := 1
	for _, e := range els {
		size := len(e.Key) + len(e.Val) + len(e.Comment) + 64
		if e.VerdictData != nil {
			size += len(e.VerdictData.Chain)
		}
		per = max(per, size)
	}
	return max(1, 60000/per)
}

// AddElements queues els for set s in chunks (see Chunk).
func AddElements(c *nftables.Conn, s *nftables.Set, els []nftables.SetElement) error {
	n := Chunk(els)
	for i := 0; i < len(els); i += n {
		if err := c.SetAddElements(s, els[i:min(i+n, len(els))]); err != nil {
			return fmt.Errorf("add to %s: %w", s.Name, err)
		}
	}
	return nil
}

// DeleteElements queues the removal of els from set s in chunks.
func DeleteElements(c *nftables.Conn, s *nftables.Set, els []nftables.SetElement) error {
	n := Chunk(els)
	for i := 0; i < len(els); i += n {
		if err := c.SetDeleteElements(s, els[i:min(i+n, len(els))]); err != nil {
			return fmt.Errorf("remove from %s: %w", s.Name, err)
		}
	}
	return nil
}

// Interval encodes a prefix as an interval set's two elements: its first
// address, and the address after its last, flagged as the end.
func Interval(p netip.Prefix, val []byte) []nftables.SetElement {
	return Range(p.Masked().Addr(), natpool.LastAddr(p), val)
}

// Range encodes the addresses first..last as an interval set's elements.
func Range(first, last netip.Addr, val []byte) []nftables.SetElement {
	start := nftables.SetElement{Key: first.AsSlice(), Val: val}
	end := last.Next()
	if !end.IsValid() {
		return []nftables.SetElement{start} // runs to the end of the space
	}
	return []nftables.SetElement{start, {Key: end.AsSlice(), IntervalEnd: true}}
}

// MatchIfname compares the input or output interface name with name.
func MatchIfname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// NotIfname matches any other input or output interface than name.
func NotIfname(key expr.MetaKey, name string) []expr.Any {
	m := MatchIfname(key, name)
	m[1].(*expr.Cmp).Op = expr.CmpOpNeq
	return m
}

// U32 is a 4-byte big-endian value, as maps of integers and marks hold.
func U32(v uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}

// Offsets of the IPv4 source and destination address in the header.
const (
	OffSaddr = 12
	OffDaddr = 16
)

// RemoveTable deletes a table if it exists, in one transaction.
func RemoveTable(c *nftables.Conn, t *nftables.Table) error {
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove table %s: %w", t.Name, err)
	}
	return nil
}
