package meshconf

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/straitnet/strait/natpool"
)

// WGQuick renders the wg-quick(8) configuration with which a plain
// WireGuard host, without strait, joins the mesh as site: its address is
// the site's tunnel address, its peers are every other site with its
// endpoint and AllowedIPs. The private key stays in privateKeyFile on that
// host; PostUp loads it, so the configuration itself holds no secret.
func WGQuick(m *Mesh, site, privateKeyFile string) (string, error) {
	s, ok := m.Site(site)
	if !ok {
		return "", fmt.Errorf("meshconf: site %q is not in the mesh configuration (sites: %s)", site, m.SiteNames())
	}
	if len(s.CIDRs) > 0 && !s.Routable {
		return "", fmt.Errorf("meshconf: site %q has real CIDRs (%s) that are not routable, so its traffic needs translating, "+
			"which needs a strait gateway; a plain WireGuard host reaches the mesh from its block's addresses, "+
			"or routes its CIDRs as they are: set routable: true", site, joinPrefixes(s.CIDRs))
	}
	if privateKeyFile == "" {
		privateKeyFile = "/etc/wireguard/" + site + ".key"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# wg-quick configuration for site %q of the strait mesh (strait config wg-quick %s).\n", site, site)
	fmt.Fprintf(&b, "# The private key stays on this host in %s; its public key must be\n", privateKeyFile)
	fmt.Fprintf(&b, "# the site's publicKey, %s (wg pubkey < %s).\n", s.PublicKey, privateKeyFile)
	if len(s.CIDRs) > 0 {
		fmt.Fprintf(&b, "# This host routes %s for the mesh: enable forwarding (sysctl net.ipv4.ip_forward=1).\n", joinPrefixes(s.CIDRs))
	}
	peers := m.Peers(site)
	// wg-quick brings the device up before PostUp loads the key, so the
	// first handshakes would fail and wait 5s for WireGuard's retry.
	// Turning keepalives on after the key makes WireGuard send one at once,
	// which starts every handshake right away.
	// Each peer gets the keepalive it asks for (its persistentKeepalive:
	// what peers send to it), as strait gateways do among themselves.
	postUp := "wg set %i private-key " + privateKeyFile
	for _, p := range peers {
		if ka := p.PersistentKeepalive; ka > 0 {
			postUp += fmt.Sprintf(" peer %s persistent-keepalive %d", p.PublicKey, int(ka.Seconds()))
		}
	}
	b.WriteString("[Interface]\n")
	fmt.Fprintf(&b, "Address = %s\n", netip.PrefixFrom(s.TunnelAddr(), 32))
	fmt.Fprintf(&b, "ListenPort = %d\n", s.ListenPort)
	b.WriteString("# Loads the private key, then turns on keepalives where peers want them.\n")
	fmt.Fprintf(&b, "PostUp = %s\n", postUp)
	for _, p := range peers {
		fmt.Fprintf(&b, "\n[Peer]\n# %s\n", p.Name)
		fmt.Fprintf(&b, "PublicKey = %s\n", p.PublicKey)
		if p.Endpoint != "" {
			fmt.Fprintf(&b, "Endpoint = %s\n", p.Endpoint)
		}
		allowed := natpool.RoutedTo(s.Plan(), p.Plan())
		if lb := m.LoadBalancer; lb != nil && lb.Hub == p.Name && lb.VIPRange.IsValid() {
			allowed = append(allowed, lb.VIPRange) // the hub balances the VIPs
		}
		fmt.Fprintf(&b, "AllowedIPs = %s\n", joinPrefixes(allowed))
	}
	return b.String(), nil
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}
