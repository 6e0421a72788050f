// Package nat programs the gateway's address translation into nftables:
// one table, "ip strait", replaced in one atomic transaction.
//
// This is the walking skeleton's translation: each cluster's real CIDR maps
// one-to-one onto its block of the global CIDR ("snat/dnat ip prefix to"),
// in both directions, and conntrack keeps replies on the same translation.
// TCP SYNs into the tunnel get their MSS clamped to the route's MTU so that
// pods with a full-size MTU never depend on ICMP to find the tunnel's.
package nat

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/straitnet/strait/natpool"
)

// TableName is the nftables table strait owns (family ip).
const TableName = "strait"

// Rules is the translation a gateway applies.
type Rules struct {
	// Tunnel is the WireGuard device: translation applies only to what
	// enters or leaves the mesh through it.
	Tunnel string
	// Maps translate real prefixes onto global ones: sources on the way
	// out, destinations on the way in.
	Maps []natpool.PrefixMap
	// Keep are global addresses inside a mapped block that belong to the
	// gateway itself and are not translated.
	Keep []netip.Addr
}

// Table applies Rules to one network namespace.
type Table struct {
	conn *nftables.Conn
}

// New returns a Table for the namespace the options name (the current one
// by default; nftables.WithNetNSFd for another).
func New(opts ...nftables.ConnOption) (*Table, error) {
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nat: nftables: %w", err)
	}
	return &Table{conn: c}, nil
}

// Close releases the netlink socket; the table stays in the kernel.
func (t *Table) Close() error { return t.conn.CloseLasting() }

var table = &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}

// chainSpec describes a base chain of the table.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority *nftables.ChainPriority
}

var chainSpecs = []chainSpec{
	{"prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest},
	{"postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource},
	{"forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityMangle},
}

// rule is one rule of the program with the comment that names it.
type rule struct {
	chain   string
	comment string
	exprs   []expr.Any
}

// programVersion changes whenever program compiles the same Rules into
// different rules, so that a gateway upgraded in place replaces the table a
// previous version left.
const programVersion = 1

// program compiles Rules into the table's rules, chain by chain in order.
// Each rule's comment says what it does and ends with a digest of the whole
// rule, by which InSync recognises it.
func program(r Rules) []rule {
	var out []rule
	for _, m := range r.Maps {
		exprs := slices.Concat(
			matchIfname(expr.MetaKeyIIFNAME, r.Tunnel),
			matchPrefix(offDaddr, m.Global),
		)
		desc := fmt.Sprintf("in: %s to %s", m.Global, m.Real)
		for _, k := range r.Keep {
			if m.Global.Contains(k) {
				exprs = append(exprs, notAddr(offDaddr, k)...)
				desc += fmt.Sprintf(", not %s", k)
			}
		}
		out = append(out, rule{chain: "prerouting", comment: desc,
			exprs: append(exprs, natPrefix(expr.NATTypeDestNAT, m.Real)...)})
	}
	for _, m := range r.Maps {
		out = append(out, rule{chain: "postrouting", comment: fmt.Sprintf("out: %s as %s", m.Real, m.Global),
			exprs: slices.Concat(
				matchIfname(expr.MetaKeyOIFNAME, r.Tunnel),
				matchPrefix(offSaddr, m.Real),
				natPrefix(expr.NATTypeSourceNAT, m.Global),
			)})
	}
	out = append(out, rule{chain: "forward", comment: "clamp TCP MSS to the tunnel MTU",
		exprs: append(matchIfname(expr.MetaKeyOIFNAME, r.Tunnel), clampMSS()...)})
	for i := range out {
		out[i].comment += " #" + digest(out[i])
	}
	return out
}

// digest identifies a compiled rule: its chain and every expression.
func digest(ru rule) string {
	h := sha256.New()
	fmt.Fprintf(h, "v%d %s", programVersion, ru.chain)
	for _, e := range ru.exprs {
		fmt.Fprintf(h, " %T%+v", e, e)
	}
	return hex.EncodeToString(h.Sum(nil))[:8]
}

// Apply replaces the table with the program for r, atomically: packets see
// either the old rules or the new ones, never none. Established flows keep
// their translation, which lives in conntrack, not in the rules.
func (t *Table) Apply(r Rules) error {
	c := t.conn
	// Adding before deleting makes the delete succeed whether or not the
	// table exists; the whole batch commits as one transaction.
	c.AddTable(table)
	c.DelTable(table)
	c.AddTable(table)
	chains := map[string]*nftables.Chain{}
	for _, s := range chainSpecs {
		chains[s.name] = c.AddChain(&nftables.Chain{
			Name: s.name, Table: table, Type: s.typ, Hooknum: s.hook, Priority: s.priority,
		})
	}
	for _, ru := range program(r) {
		c.AddRule(&nftables.Rule{
			Table:    table,
			Chain:    chains[ru.chain],
			Exprs:    ru.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, ru.comment),
		})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nat: apply table %s: %w", TableName, err)
	}
	return nil
}

// InSync reports whether the kernel still holds the program for r: the
// same base chains (type, hook, priority, policy) and in each the same
// rules in the same order, recognised by the digest in their comments.
// Someone flushing or deleting the table, adding, deleting or reordering
// rules or chains, or changing a chain's policy makes it false; so does a
// table an older program or another tunnel name left.
func (t *Table) InSync(r Rules) (bool, error) {
	chains, err := t.conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("nat: list chains: %w", err)
	}
	want := program(r)
	found := 0
	for _, ch := range chains {
		if ch.Table.Name != TableName {
			continue
		}
		found++
		i := slices.IndexFunc(chainSpecs, func(s chainSpec) bool { return s.name == ch.Name })
		if i < 0 || !chainSpecs[i].matches(ch) {
			return false, nil
		}
		rules, err := t.conn.GetRules(table, ch)
		if err != nil {
			return false, fmt.Errorf("nat: list rules of %s: %w", ch.Name, err)
		}
		var expect []string
		for _, w := range want {
			if w.chain == ch.Name {
				expect = append(expect, w.comment)
			}
		}
		if len(rules) != len(expect) {
			return false, nil
		}
		for i, got := range rules {
			if comment, _ := userdata.GetString(got.UserData, userdata.TypeComment); comment != expect[i] {
				return false, nil
			}
		}
	}
	return found == len(chainSpecs), nil
}

// matches reports whether a chain read from the kernel is this spec.
func (s chainSpec) matches(ch *nftables.Chain) bool {
	return ch.Type == s.typ &&
		ch.Hooknum != nil && *ch.Hooknum == *s.hook &&
		ch.Priority != nil && *ch.Priority == *s.priority &&
		(ch.Policy == nil || *ch.Policy == nftables.ChainPolicyAccept)
}

// Remove deletes the table, if it exists.
func (t *Table) Remove() error {
	t.conn.AddTable(table)
	t.conn.DelTable(table)
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("nat: remove table %s: %w", TableName, err)
	}
	return nil
}

// Offsets of the IPv4 source and destination address in the header.
const (
	offSaddr = 12
	offDaddr = 16
)

func matchIfname(key expr.MetaKey, name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(name)},
	}
}

// ifname pads an interface name the way the kernel compares it.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

// matchPrefix matches an address field against a prefix, encoded the way
// nft itself encodes it (whole bytes compared directly, else the full
// address masked), so that `nft list` prints "ip daddr 242.0.0.0/16".
func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	if p.Bits() == 0 {
		return nil // matches every address
	}
	a := p.Masked().Addr().As4()
	if p.Bits()%8 == 0 {
		n := uint32(p.Bits() / 8)
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:n]},
		}
	}
	var mask [4]byte
	binary.BigEndian.PutUint32(mask[:], ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

func notAddr(offset uint32, a netip.Addr) []expr.Any {
	b := a.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: b[:]},
	}
}

// natPrefix translates the address onto prefix to, keeping the host part.
func natPrefix(typ expr.NATType, to netip.Prefix) []expr.Any {
	lo, hi := to.Addr().As4(), natpool.LastAddr(to).As4()
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: lo[:]},
		&expr.Immediate{Register: 2, Data: hi[:]},
		&expr.NAT{Type: typ, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 2, Prefix: true},
	}
}

// clampMSS is "tcp flags syn / syn,rst tcp option maxseg size set rt mtu".
func clampMSS() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x02 | 0x04}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0x02}},
		&expr.Rt{Register: 1, Key: expr.RtTCPMSS},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 2, Size: 2},
		&expr.Exthdr{SourceRegister: 1, Type: 2, Offset: 2, Len: 2, Op: expr.ExthdrOpTcpopt},
	}
}
