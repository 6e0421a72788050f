package wanemu

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// TableName is the WAN router's nftables table.
const TableName = "wan"

var wanTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

// rules are the router's NFQUEUE rules.
type rules struct{ conn *nftables.Conn }

// newRules opens a lasting netlink connection: it stays in the network
// namespace it was opened in, whichever thread later uses it.
func newRules() (*rules, error) {
	c, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("wanemu: nftables: %w", err)
	}
	return &rules{conn: c}, nil
}

func (r *rules) close() { r.conn.CloseLasting() }

// apply replaces the table: packets arriving from an impaired site go to
// its "from" queue at prerouting, packets leaving toward one to its "to"
// queue at postrouting. The bypass flag lets packets through unimpaired if
// the emulator is gone.
func (r *rules) apply(links []Link) error {
	c := r.conn
	c.AddTable(wanTable)
	c.DelTable(wanTable)
	c.AddTable(wanTable)
	pre := c.AddChain(&nftables.Chain{Name: "from-site", Table: wanTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter})
	post := c.AddChain(&nftables.Chain{Name: "to-site", Table: wanTable, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityFilter})
	for _, l := range links {
		if !l.Impaired() {
			continue
		}
		comment := fmt.Sprintf("%s: latency %s jitter %s loss %g%%", l.Site, l.Latency, l.Jitter, l.Loss)
		c.AddRule(&nftables.Rule{Table: wanTable, Chain: pre, UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
			Exprs: append(ifname(expr.MetaKeyIIFNAME, l.Iface), nfqueue(l.Queue))})
		c.AddRule(&nftables.Rule{Table: wanTable, Chain: post, UserData: userdata.AppendString(nil, userdata.TypeComment, comment),
			Exprs: append(ifname(expr.MetaKeyOIFNAME, l.Iface), nfqueue(l.Queue+1))})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("wanemu: program table %s: %w", TableName, err)
	}
	return nil
}

func (r *rules) remove() error {
	r.conn.AddTable(wanTable)
	r.conn.DelTable(wanTable)
	if err := r.conn.Flush(); err != nil {
		return fmt.Errorf("wanemu: remove table %s: %w", TableName, err)
	}
	return nil
}

func ifname(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// nfqueue is the xtables NFQUEUE target, revision 3, through nft_compat:
// struct xt_NFQ_info_v3 { u16 queuenum; u16 queues_total; u16 flags; },
// host byte order, padded to 8 bytes (XT_ALIGN).
func nfqueue(num uint16) expr.Any {
	const flagBypass = 0x01 // NFQ_FLAG_BYPASS
	info := make(xt.Unknown, 8)
	binary.NativeEndian.PutUint16(info[0:], num)
	binary.NativeEndian.PutUint16(info[2:], 1)
	binary.NativeEndian.PutUint16(info[4:], flagBypass)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}
