// Package tunnel is the gateway's tunnel engine: one WireGuard device, its
// peers, its MTU, its address and the routes into it.
//
// The device is kernel WireGuard where the module exists, else
// golang.zx2c4.com/wireguard in userspace over TUN, serving the standard
// UAPI socket so that `wg show` works on it; an external wireguard-go binary
// can stand in for the userspace device. Whatever the device, the engine
// configures it the same way, through wgctrl, and applies a new
// configuration as a difference: peers that did not change are not touched
// and keep their sessions.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Mode chooses the WireGuard implementation.
type Mode string

const (
	// ModeAuto uses kernel WireGuard if the module is there, else userspace.
	ModeAuto Mode = "auto"
	// ModeKernel requires kernel WireGuard.
	ModeKernel Mode = "kernel"
	// ModeUserspace runs golang.zx2c4.com/wireguard inside the gateway.
	ModeUserspace Mode = "userspace"
	// ModeWireGuardGo runs an external wireguard-go binary (Options.WireGuardGo).
	ModeWireGuardGo Mode = "wireguard-go"
)

// ParseMode parses a --wireguard flag value.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(s); m {
	case ModeAuto, ModeKernel, ModeUserspace, ModeWireGuardGo:
		return m, nil
	}
	return "", fmt.Errorf("tunnel: unknown WireGuard mode %q (want auto, kernel, userspace or wireguard-go)", s)
}

// ErrNotSupported means the kernel has no WireGuard module.
var ErrNotSupported = errors.New("kernel WireGuard is not supported here")

// RouteProtocol marks the routes the engine owns ("proto 245" in `ip route`),
// so that it finds and removes its stale routes and leaves others' alone.
const RouteProtocol netlink.RouteProtocol = 245

// Options chooses and names the device. They are fixed for the engine's life.
type Options struct {
	// Interface is the device name; default "strait0".
	Interface string
	// Mode picks the implementation; default ModeAuto.
	Mode Mode
	// WireGuardGo is the binary ModeWireGuardGo runs.
	WireGuardGo string
	// Logger receives the engine's and the device's logs; default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Config is the state the engine brings the device to. Apply may be called
// with a new Config at any time.
type Config struct {
	PrivateKey wgtypes.Key
	ListenPort int
	// MTU of the device; 0 derives it from the underlay (see tunnelMTU).
	MTU int
	// Address is the gateway's own address in the mesh, put on the device
	// as a /32 and used as the source of routes into the tunnel.
	Address netip.Addr
	// Mesh is the global CIDR. What of it no peer claims is unreachable
	// (an "unreachable" route): traffic for a block whose site is gone
	// gets an ICMP error instead of leaving through the underlay
	// untranslated.
	Mesh  netip.Prefix
	Peers []Peer
	// Routes are more prefixes routed into the device although no peer
	// claims them: the VIP range at a load-balancing gateway, whose
	// connections are translated before routing, and refused in
	// forwarding when they are not (rather than unreachable).
	Routes []netip.Prefix
}

// Peer is one remote site.
type Peer struct {
	Name       string
	PublicKey  wgtypes.Key
	Endpoint   string // "host:port", or empty
	AllowedIPs []netip.Prefix
	// PersistentKeepalive of 0 turns keepalives off.
	PersistentKeepalive time.Duration
}

// device is one WireGuard implementation's lifecycle; configuration goes
// through wgctrl for all of them.
type device interface {
	kind() Mode
	// close stops the device. A kernel device is left in place so that
	// traffic keeps flowing while the gateway restarts.
	close() error
}

// Engine owns one WireGuard device.
type Engine struct {
	name string
	dev  device
	wg   *wgctrl.Client
	log  *slog.Logger
	now  func() time.Time

	// applyMu serialises Apply; mu guards the fields below, which Status
	// reads, and is never held across I/O that may block (DNS, netlink).
	applyMu sync.Mutex
	mu      sync.Mutex
	// applied is the resolved endpoint last set for each peer.
	applied map[wgtypes.Key]netip.AddrPort
	// names maps peer keys to site names, for status.
	names map[wgtypes.Key]string
	mtu   int
}

// Open creates the device (or adopts an existing kernel device of that name).
func Open(opts Options) (_ *Engine, err error) {
	if opts.Interface == "" {
		opts.Interface = "strait0"
	}
	if len(opts.Interface) > unix.IFNAMSIZ-1 {
		return nil, fmt.Errorf("tunnel: interface name %q is longer than %d characters", opts.Interface, unix.IFNAMSIZ-1)
	}
	if opts.Mode == "" {
		opts.Mode = ModeAuto
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger.With("component", "tunnel", "interface", opts.Interface)
	var dev device
	switch opts.Mode {
	case ModeKernel:
		dev, err = openKernel(opts.Interface)
	case ModeAuto:
		dev, err = openKernel(opts.Interface)
		if errors.Is(err, ErrNotSupported) {
			log.Info("no kernel WireGuard; using the userspace implementation")
			dev, err = openUserspace(opts.Interface, log)
		}
	case ModeUserspace:
		dev, err = openUserspace(opts.Interface, log)
	case ModeWireGuardGo:
		dev, err = openWireGuardGo(opts.Interface, opts.WireGuardGo, log)
	default:
		_, err = ParseMode(string(opts.Mode))
	}
	if err != nil {
		return nil, fmt.Errorf("tunnel: open %s (%s): %w", opts.Interface, opts.Mode, err)
	}
	defer func() {
		if err != nil {
			dev.close()
		}
	}()
	wg, err := wgctrl.New()
	if err != nil {
		return nil, fmt.Errorf("tunnel: wgctrl: %w", err)
	}
	log.Info("device ready", "implementation", dev.kind())
	return &Engine{
		name: opts.Interface, dev: dev, wg: wg, log: log, now: opts.Now,
		applied: map[wgtypes.Key]netip.AddrPort{},
		names:   map[wgtypes.Key]string{},
	}, nil
}

// Interface is the device's name.
func (e *Engine) Interface() string { return e.name }

// Implementation says which WireGuard runs the device.
func (e *Engine) Implementation() Mode { return e.dev.kind() }

// Close stops the engine and its device.
func (e *Engine) Close() error {
	return errors.Join(e.wg.Close(), e.dev.close())
}

// Apply brings the device to cfg: key, port, peers, MTU, address, routes.
// Peers that are the same in cfg as on the device are not touched.
func (e *Engine) Apply(ctx context.Context, cfg Config) error {
	e.applyMu.Lock()
	defer e.applyMu.Unlock()
	e.mu.Lock()
	applied := maps.Clone(e.applied)
	e.mu.Unlock()

	want := make([]wantPeer, 0, len(cfg.Peers))
	var underlay []int
	anyIPv6 := false
	for _, p := range cfg.Peers {
		w := wantPeer{Peer: p}
		if p.Endpoint != "" {
			ap, err := resolve(ctx, p.Endpoint)
			if err != nil {
				// Leave the peer's endpoint as it is; a later pass retries.
				e.log.Warn("cannot resolve peer endpoint", "peer", p.Name, "endpoint", p.Endpoint, "err", err)
				w.endpoint = applied[p.PublicKey]
			} else {
				w.endpoint = ap
			}
		}
		if w.endpoint.IsValid() {
			anyIPv6 = anyIPv6 || w.endpoint.Addr().Is6()
			if mtu, ok := underlayMTU(w.endpoint.Addr(), e.name); ok {
				underlay = append(underlay, mtu)
			}
		}
		want = append(want, w)
	}

	dev, err := e.wg.Device(e.name)
	if err != nil {
		return fmt.Errorf("tunnel: read %s: %w", e.name, err)
	}
	wc := wgtypes.Config{Peers: planPeers(dev.Peers, want, applied)}
	if dev.PrivateKey != cfg.PrivateKey {
		wc.PrivateKey = &cfg.PrivateKey
	}
	if cfg.ListenPort != 0 && dev.ListenPort != cfg.ListenPort {
		wc.ListenPort = &cfg.ListenPort
	}
	if wc.PrivateKey != nil || wc.ListenPort != nil || len(wc.Peers) > 0 {
		if err := e.wg.ConfigureDevice(e.name, wc); err != nil {
			return fmt.Errorf("tunnel: configure %s: %w", e.name, err)
		}
		for _, pc := range wc.Peers {
			e.log.Info("peer changed", "peer", peerName(cfg.Peers, pc.PublicKey), "key", pc.PublicKey.String(),
				"added", !pc.UpdateOnly && !pc.Remove, "removed", pc.Remove, "endpoint", pc.Endpoint)
		}
	}
	names := make(map[wgtypes.Key]string, len(want))
	newApplied := make(map[wgtypes.Key]netip.AddrPort, len(want))
	for _, w := range want {
		names[w.PublicKey] = w.Name
		if w.endpoint.IsValid() {
			newApplied[w.PublicKey] = w.endpoint
		}
	}
	e.mu.Lock()
	e.names, e.applied = names, newApplied
	e.mu.Unlock()

	mtu := cfg.MTU
	if mtu == 0 {
		if len(underlay) == 0 {
			if m, ok := defaultRouteMTU(); ok {
				underlay = append(underlay, m)
			}
		}
		mtu = tunnelMTU(underlay, anyIPv6)
	}
	routes := slices.Clone(cfg.Routes)
	for _, p := range cfg.Peers {
		routes = append(routes, p.AllowedIPs...)
	}
	if err := e.configureLink(mtu, cfg.Address, routes); err != nil {
		return err
	}
	if err := e.unreachable(cfg.Mesh); err != nil {
		return err
	}
	e.mu.Lock()
	e.mtu = mtu
	e.mu.Unlock()
	return nil
}

// unreachable keeps one "unreachable" route, owned by the engine, for the
// global CIDR, and removes any other it owns (the global CIDR changed).
func (e *Engine) unreachable(mesh netip.Prefix) error {
	current, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNREACHABLE},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if err != nil {
		return fmt.Errorf("tunnel: list unreachable routes: %w", err)
	}
	have := false
	for _, r := range current {
		if r.Dst != nil && mesh.IsValid() && prefixOf(*r.Dst) == mesh {
			have = true
			continue
		}
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("tunnel: remove stale unreachable route %v: %w", r.Dst, err)
		}
	}
	if !mesh.IsValid() || have {
		return nil
	}
	r := &netlink.Route{Dst: &ipNets([]netip.Prefix{mesh})[0], Type: unix.RTN_UNREACHABLE,
		Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("tunnel: unreachable route for %s: %w", mesh, err)
	}
	e.log.Info("global CIDR unreachable but for peers' blocks", "globalCIDR", mesh)
	return nil
}

func peerName(peers []Peer, k wgtypes.Key) string {
	for _, p := range peers {
		if p.PublicKey == k {
			return p.Name
		}
	}
	return "(not configured)"
}

// configureLink sets MTU, address and up state, and routes the peers'
// prefixes into the device.
func (e *Engine) configureLink(mtu int, addr netip.Addr, routes []netip.Prefix) error {
	link, err := netlink.LinkByName(e.name)
	if err != nil {
		return fmt.Errorf("tunnel: find %s: %w", e.name, err)
	}
	if link.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("tunnel: set MTU %d on %s: %w", mtu, e.name, err)
		}
		e.log.Info("MTU set", "mtu", mtu)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("tunnel: list addresses of %s: %w", e.name, err)
	}
	want := netip.PrefixFrom(addr, addr.BitLen())
	have := false
	for _, a := range addrs {
		p := prefixOf(*a.IPNet)
		if p == want {
			have = true
			continue
		}
		if p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("tunnel: remove stale address %s from %s: %w", p, e.name, err)
		}
	}
	if addr.IsValid() && !have {
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &ipNets([]netip.Prefix{want})[0]}); err != nil {
			return fmt.Errorf("tunnel: add address %s to %s: %w", want, e.name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("tunnel: bring %s up: %w", e.name, err)
		}
	}

	current, err := netlink.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{LinkIndex: link.Attrs().Index, Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("tunnel: list routes of %s: %w", e.name, err)
	}
	var actual []netip.Prefix
	srcOK := map[netip.Prefix]bool{}
	for _, r := range current {
		if r.Dst == nil {
			continue
		}
		p := prefixOf(*r.Dst)
		actual = append(actual, p)
		src, _ := netip.AddrFromSlice(r.Src)
		srcOK[p] = src.Unmap() == addr || !addr.IsValid()
	}
	add, del := planRoutes(actual, routes)
	for _, p := range routes {
		if slices.Contains(actual, p) && !srcOK[p] {
			add = append(add, p) // replace: the source address changed
		}
	}
	for _, p := range add {
		r := e.route(link, p, addr)
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("tunnel: route %s into %s: %w", p, e.name, err)
		}
	}
	for _, p := range del {
		if err := netlink.RouteDel(e.route(link, p, addr)); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("tunnel: remove route %s from %s: %w", p, e.name, err)
		}
	}
	if len(add)+len(del) > 0 {
		e.log.Info("routes changed", "added", add, "removed", del)
	}
	return nil
}

func (e *Engine) route(link netlink.Link, p netip.Prefix, src netip.Addr) *netlink.Route {
	r := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &ipNets([]netip.Prefix{p})[0],
		Scope:     netlink.SCOPE_LINK,
		Protocol:  RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
	if src.IsValid() {
		r.Src = src.AsSlice()
	}
	return r
}

// resolve turns "host:port" into an address, resolving DNS names.
func resolve(ctx context.Context, endpoint string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(endpoint); err == nil {
		return ap, nil
	}
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%s has no address", host)
	}
	// Prefer IPv4: its overhead is smaller and it is what most sites have.
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case a.Is4() && !b.Is4():
			return -1
		case !a.Is4() && b.Is4():
			return 1
		}
		return 0
	})
	return netip.ParseAddrPort(net.JoinHostPort(addrs[0].Unmap().String(), port))
}

// underlayMTU is the MTU of the device the kernel would send to dst through,
// unless that is the tunnel itself.
func underlayMTU(dst netip.Addr, tunnel string) (int, bool) {
	routes, err := netlink.RouteGet(dst.AsSlice())
	if err != nil || len(routes) == 0 {
		return 0, false
	}
	link, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil || link.Attrs().Name == tunnel {
		return 0, false
	}
	if routes[0].MTU > 0 {
		return min(routes[0].MTU, link.Attrs().MTU), true
	}
	return link.Attrs().MTU, true
}

func defaultRouteMTU() (int, bool) {
	return underlayMTU(netip.MustParseAddr("192.0.2.1"), "")
}

// Status is what the device reports.
type Status struct {
	Interface      string       `json:"interface"`
	Implementation Mode         `json:"implementation"`
	PublicKey      string       `json:"publicKey"`
	ListenPort     int          `json:"listenPort"`
	MTU            int          `json:"mtu"`
	Peers          []PeerStatus `json:"peers"`
}

// PeerStatus is one peer as the device sees it.
type PeerStatus struct {
	Site       string   `json:"site"`
	PublicKey  string   `json:"publicKey"`
	Endpoint   string   `json:"endpoint,omitempty"`
	AllowedIPs []string `json:"allowedIPs"`
	// LastHandshake is zero if there never was one.
	LastHandshake time.Time `json:"lastHandshake"`
	// HandshakeAge is seconds since the last handshake, or -1.
	HandshakeAge float64 `json:"handshakeAgeSeconds"`
	RxBytes      int64   `json:"rxBytes"`
	TxBytes      int64   `json:"txBytes"`
}

// Status reads the device.
func (e *Engine) Status() (Status, error) {
	dev, err := e.wg.Device(e.name)
	if err != nil {
		return Status{}, fmt.Errorf("tunnel: read %s: %w", e.name, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	st := Status{
		Interface:      e.name,
		Implementation: e.dev.kind(),
		PublicKey:      dev.PublicKey.String(),
		ListenPort:     dev.ListenPort,
		MTU:            e.mtu,
	}
	for _, p := range dev.Peers {
		ps := PeerStatus{
			Site:          e.names[p.PublicKey],
			PublicKey:     p.PublicKey.String(),
			LastHandshake: p.LastHandshakeTime,
			HandshakeAge:  handshakeAge(now, p.LastHandshakeTime),
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
		}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		for _, n := range p.AllowedIPs {
			ps.AllowedIPs = append(ps.AllowedIPs, prefixOf(n).String())
		}
		st.Peers = append(st.Peers, ps)
	}
	slices.SortFunc(st.Peers, func(a, b PeerStatus) int { return strings.Compare(a.Site, b.Site) })
	return st, nil
}
