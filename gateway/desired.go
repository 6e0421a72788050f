package gateway

import (
	"fmt"
	"net/netip"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/natpool"
)

// desired is what a gateway brings its host to for one mesh configuration.
type desired struct {
	tunnel tunnel.Config
	nat    nat.Rules
}

// derive computes the desired state of site self from the mesh
// configuration. It refuses a configuration in which self is missing or
// holds another public key than this gateway's: applying it would cut the
// site off from every peer.
func derive(m *meshconf.Mesh, self string, key wgtypes.Key, iface string, mtu int) (desired, error) {
	me, ok := m.Site(self)
	if !ok {
		return desired{}, fmt.Errorf("site %q is not in the mesh configuration (sites: %s)", self, m.SiteNames())
	}
	if pub := key.PublicKey(); me.PublicKey != pub {
		return desired{}, fmt.Errorf("site %q (line %d) has publicKey %s, but this gateway's key is %s: "+
			"put this gateway's public key in the mesh configuration (`strait-gateway keygen` prints it)", self, me.Line, me.PublicKey, pub)
	}
	d := desired{
		tunnel: tunnel.Config{
			PrivateKey: key,
			ListenPort: me.ListenPort,
			MTU:        mtu,
			Address:    me.TunnelAddr(),
			Mesh:       m.GlobalCIDR,
		},
		nat: nat.Rules{Tunnel: iface, Keep: []netip.Addr{me.TunnelAddr()}},
	}
	for _, p := range m.Peers(self) {
		d.tunnel.Peers = append(d.tunnel.Peers, tunnel.Peer{
			Name:                p.Name,
			PublicKey:           p.PublicKey,
			Endpoint:            p.Endpoint,
			AllowedIPs:          p.AllowedIPs(),
			PersistentKeepalive: p.PersistentKeepalive,
		})
	}
	if me.Translated() {
		pm, err := natpool.NewPrefixMap(me.PodCIDR, me.Block)
		if err != nil {
			return desired{}, err
		}
		d.nat.Maps = append(d.nat.Maps, pm)
	}
	return d, nil
}
