package meshconf

import (
	"fmt"
	"net/netip"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/natpool"
)

// LoadBalancer is the mesh file's loadBalancer section: where the VIPs of
// global services come from and how large their Maglev tables are. Every
// gateway with the section balances the global services for the clients
// of its own site; without it, global services are not served here.
type LoadBalancer struct {
	// VIPRange is the mesh's range of VIPs, inside the global CIDR and
	// apart from every site's block. Every gateway must have the same.
	VIPRange netip.Prefix
	// TableSize is the Maglev table size, a prime; default 65537. Each
	// global service port takes that many elements in the kernel.
	TableSize int
	// Hub, when set, is the site set aside to balance for the whole
	// mesh: the other gateways route the VIP range to it instead of
	// balancing themselves. Empty: every gateway balances for its own
	// site's clients.
	Hub string
}

// DefaultTableSize is the Maglev table size unless configured.
const DefaultTableSize = 65537

// Firewall is the mesh file's firewall section.
type Firewall struct {
	// DefaultAction applies to new connections from the mesh that no
	// policy rule decides: allow (the default) or deny.
	DefaultAction meshpolicy.Action
}

func (d *decoder) loadBalancer(n *yaml.Node, m *Mesh) *LoadBalancer {
	const field = "loadBalancer"
	f := d.Fields(n, field, "vipRange", "tableSize", "hub")
	if f == nil {
		return nil
	}
	d.Require(n, f, field, "vipRange")
	lb := &LoadBalancer{TableSize: DefaultTableSize}
	if v := f["vipRange"]; v != nil {
		p := d.Prefix(v, field+".vipRange")
		switch {
		case !p.IsValid():
		case !p.Addr().Is4():
			d.Fail(v, field+".vipRange", "%s: VIPs are IPv4", p)
		case m.GlobalCIDR.IsValid() && !natpool.Contains(m.GlobalCIDR, p):
			d.Fail(v, field+".vipRange", "%s is outside the global CIDR %s: pods route only the global CIDR to their gateway", p, m.GlobalCIDR)
		case p.Bits() > 30:
			d.Fail(v, field+".vipRange", "%s is too small: want at most /30", p)
		default:
			lb.VIPRange = p
		}
	}
	if v := f["hub"]; v != nil {
		if s, ok := d.Scalar(v, field+".hub"); ok {
			if len(s) > 63 || !nameRE.MatchString(s) {
				d.Fail(v, field+".hub", "%q is not a site name", s)
			} else {
				lb.Hub = s
			}
		}
	}
	if v := f["tableSize"]; v != nil {
		if size := d.Int(v, field+".tableSize", 101, 1<<20, "a prime table size"); size != 0 {
			if !isPrime(size) {
				d.Fail(v, field+".tableSize", "%d is not prime: Maglev needs a prime table size (such as 65537)", size)
			} else {
				lb.TableSize = size
			}
		}
	}
	return lb
}

func (d *decoder) firewall(n *yaml.Node) *Firewall {
	const field = "firewall"
	f := d.Fields(n, field, "defaultAction")
	if f == nil {
		return nil
	}
	fw := &Firewall{DefaultAction: meshpolicy.Allow}
	if v := f["defaultAction"]; v != nil {
		if s, ok := d.Scalar(v, field+".defaultAction"); ok {
			switch a := meshpolicy.Action(s); a {
			case meshpolicy.Allow, meshpolicy.Deny:
				fw.DefaultAction = a
			default:
				d.Fail(v, field+".defaultAction", "%q is neither allow nor deny", s)
			}
		}
	}
	return fw
}

// checkVIPRange reports a VIP range that overlaps a site's block.
func (d *decoder) checkVIPRange(n *yaml.Node, m *Mesh) {
	if m.LoadBalancer == nil || !m.LoadBalancer.VIPRange.IsValid() {
		return
	}
	for i, s := range m.Sites {
		if s.Block.IsValid() && s.Block.Overlaps(m.LoadBalancer.VIPRange) {
			d.Fail(n, "loadBalancer.vipRange", "%s overlaps the block %s of site %s (sites[%d], line %d)", m.LoadBalancer.VIPRange, s.Block, s.Name, i, s.Line)
		}
	}
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for i := 2; i*i <= n; i++ {
		if n%i == 0 {
			return false
		}
	}
	return true
}

// Balances says whether the gateway of site self balances global
// services: with a hub, only the hub does.
func (lb *LoadBalancer) Balances(self string) bool {
	return lb != nil && (lb.Hub == "" || lb.Hub == self)
}

// vipConflict says why a learned site's block cannot be taken with the
// mesh's VIP range ("" if it can).
func (m *Mesh) vipConflict(s Site) string {
	if m.LoadBalancer != nil && m.LoadBalancer.VIPRange.IsValid() && s.Block.Overlaps(m.LoadBalancer.VIPRange) {
		return fmt.Sprintf("its block %s overlaps the VIP range %s", s.Block, m.LoadBalancer.VIPRange)
	}
	return ""
}
