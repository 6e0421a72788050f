package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/straitnet/strait/discovery/meshpolicy"
	"github.com/straitnet/strait/e2e/netns"
	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/natpool"
)

// MeshDoc is the mesh configuration file the lab writes for its gateways,
// in the format of package meshconf.
type MeshDoc struct {
	GlobalCIDR   string           `yaml:"globalCIDR" json:"globalCIDR"`
	Discovery    *DiscoveryDoc    `yaml:"discovery,omitempty" json:"discovery,omitempty"`
	LoadBalancer *LoadBalancerDoc `yaml:"loadBalancer,omitempty" json:"loadBalancer,omitempty"`
	Sites        []MeshSite       `yaml:"sites" json:"sites"`
}

// LoadBalancerDoc is the loadBalancer section of a mesh file.
type LoadBalancerDoc struct {
	VIPRange string `yaml:"vipRange" json:"vipRange"`
	Hub      string `yaml:"hub,omitempty" json:"hub,omitempty"`
}

// MeshSite is one site of a MeshDoc.
type MeshSite struct {
	Name                string   `yaml:"name" json:"name"`
	PublicKey           string   `yaml:"publicKey" json:"publicKey"`
	Endpoint            string   `yaml:"endpoint,omitempty" json:"endpoint,omitempty"`
	ListenPort          int      `yaml:"listenPort,omitempty" json:"listenPort,omitempty"`
	Block               string   `yaml:"block,omitempty" json:"block,omitempty"`
	CIDRs               []string `yaml:"cidrs,omitempty" json:"cidrs,omitempty"`
	Routable            bool     `yaml:"routable,omitempty" json:"routable,omitempty"`
	PersistentKeepalive string   `yaml:"persistentKeepalive,omitempty" json:"persistentKeepalive,omitempty"`
}

// MeshFile is the path of the lab's mesh configuration.
func (l *Lab) MeshFile() string { return filepath.Join(l.Dir, "mesh.yaml") }

// WriteMesh replaces the mesh configuration; the gateways pick it up on
// their next pass. It is written atomically: gateways never read half a file.
func (l *Lab) WriteMesh(m MeshDoc) error {
	data, err := yaml.Marshal(m)
	if err != nil {
		return err
	}
	header := fmt.Sprintf("# strait mesh configuration of lab %q (topology %s), written by the lab.\n", l.Run, l.Topology.Name)
	if err := l.WriteMeshRaw(append([]byte(header), data...)); err != nil {
		return err
	}
	l.Mesh = m
	return l.save()
}

// WriteMeshRaw writes the mesh file as given, valid or not.
func (l *Lab) WriteMeshRaw(data []byte) error {
	return writeFileAtomic(l.MeshFile(), data, 0o644)
}

// startGateways makes every site's key on the site itself, writes the mesh
// configuration from the public keys, and starts the gateways.
func (l *Lab) startGateways(ctx context.Context) error {
	doc := MeshDoc{GlobalCIDR: l.Topology.GlobalCIDR.String()}
	if l.VIPRange.IsValid() {
		doc.LoadBalancer = &LoadBalancerDoc{VIPRange: l.VIPRange.String(), Hub: l.Hub}
	}
	for _, s := range l.Topology.Sites {
		dir := filepath.Join(l.Dir, s.Name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		edge := l.edge(s.Name)
		ms := MeshSite{Name: s.Name, Routable: s.Routable,
			Endpoint: netip.AddrPortFrom(edge.WAN, meshconf.DefaultListenPort).String()}
		if !slices.Contains(l.DerivedBlocks, s.Name) {
			ms.Block = s.Block.String()
		}
		var pub []byte
		var err error
		if s.Kind == KindWireGuard {
			pub, err = wgGenkey(edge, filepath.Join(dir, "private.key"))
		} else {
			ms.CIDRs = []string{s.PodCIDR.String()}
			if err := l.writeSiteFile(s); err != nil {
				return err
			}
			pub, err = edge.Namespace().Command(l.Bins.Gateway, "keygen", "--state-dir", dir).Output()
		}
		if err != nil {
			return fmt.Errorf("lab: key for %s: %w", s.Name, exitError(err))
		}
		ms.PublicKey = strings.TrimSpace(string(pub))
		doc.Sites = append(doc.Sites, ms)
	}
	if err := l.WriteMesh(doc); err != nil {
		return err
	}
	if l.Discovery {
		if err := l.writeDiscovery(doc); err != nil {
			return fmt.Errorf("lab: discovery: %w", err)
		}
	}
	if l.beforeGateways != nil {
		if err := l.beforeGateways(l); err != nil {
			return err
		}
	}
	if err := l.startRouters(); err != nil {
		return err
	}
	// One after another, as real sites come up: a gateway's first
	// handshake initiation then meets a peer that is either not there yet
	// (it will initiate itself when it starts) or listening. Started
	// together, two gateways send crossing initiations, each turns
	// responder to the other's, both drop the response to their own, and
	// the pair waits for WireGuard's 5s retransmission.
	for _, h := range l.Hosts {
		if h.Role == RoleGateway {
			if err := l.StartGateway(h.Site); err != nil {
				return err
			}
			// With discovery, a gateway learns its peers as the others
			// come: each is waited for in full once all have started.
			peers := l.strait() - 1
			if l.Discovery {
				peers = -1
			}
			if err := l.waitGateway(ctx, h.Site, peers, 20*time.Second); err != nil {
				return err
			}
		}
	}
	if l.Discovery {
		for _, h := range l.Hosts {
			if h.Role == RoleGateway {
				if err := l.WaitGateway(ctx, h.Site, 30*time.Second); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// strait counts the sites: every one is every gateway's peer.
func (l *Lab) strait() int { return len(l.Topology.Sites) }

// waitMeshed waits until every gateway has completed a handshake with
// every peer that keeps its tunnel alive. A gateway that starts before its
// peer listens sees its first initiation lost, and WireGuard retries only
// after 5s (REKEY_TIMEOUT): without this wait, the first seconds of a lab
// would depend on start order.
func (l *Lab) waitMeshed(ctx context.Context, timeout time.Duration) error {
	keepalive := map[string]bool{}
	for _, s := range l.Mesh.Sites {
		keepalive[s.Name] = s.PersistentKeepalive != "0s"
	}
	deadline := time.Now().Add(timeout)
	for _, h := range l.Hosts {
		if h.Role != RoleGateway {
			continue
		}
		for {
			st, err := gateway.FetchStatus(ctx, l.SocketOf(h.Site))
			waiting := []string{}
			if err != nil {
				waiting = append(waiting, err.Error())
			}
			for _, p := range st.Tunnel.Peers {
				if p.LastHandshake.IsZero() && keepalive[p.Site] && keepalive[h.Site] {
					waiting = append(waiting, p.Site)
				}
			}
			if len(waiting) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("lab: gateway of %s has no handshake with %s after %s\n%s", h.Site, strings.Join(waiting, ", "), timeout,
					l.tail(filepath.Join(l.Dir, h.Site, "gateway.log")))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// wgGenkey makes a plain WireGuard host's key the way its admin would, with
// Debian's wg, and returns the public key.
func wgGenkey(h Host, path string) ([]byte, error) {
	priv, err := h.Namespace().Command("wg", "genkey").Output()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, priv, 0o600); err != nil {
		return nil, err
	}
	cmd := h.Namespace().Command("wg", "pubkey")
	cmd.Stdin = bytes.NewReader(priv)
	return cmd.Output()
}

// StartGateway starts the gateway of a site.
func (l *Lab) StartGateway(site string) error {
	gw, ok := l.GatewayOf(site)
	if !ok {
		return fmt.Errorf("lab: site %q has no gateway", site)
	}
	args := []string{"run", "--site", site, "--mesh", l.MeshFileOf(site), "--site-file", l.SiteFile(site), "--state-dir", filepath.Join(l.Dir, site),
		"--interface", TunnelInterface(l.Run, gw.Index), "--wireguard", l.Bins.WireGuard,
		"--interval", l.Bins.Interval, "--log-format", "text"}
	if l.Bins.WireGuardGo != "" {
		args = append(args, "--wireguard-go", l.Bins.WireGuardGo)
	}
	if kc := l.Kubeconfigs[site]; kc != "" {
		args = append(args, "--kubeconfig", kc)
	}
	return l.spawn(gw, "gateway", filepath.Join(l.Dir, site, "gateway.log"), l.Bins.Gateway, args...)
}

// StopGateway stops the gateway of a site (SIGTERM, as an operator would).
func (l *Lab) StopGateway(site string) error {
	return l.stop(site+"-gw", "gateway")
}

// KillGateway kills a site's gateway with SIGKILL: no shutdown at all, as
// a crash or an OOM kill leaves it.
func (l *Lab) KillGateway(site string) error {
	return l.signal(site+"-gw", "gateway", syscall.SIGKILL)
}

// WaitGateway waits until a site's gateway reports ready with all its peers.
func (l *Lab) WaitGateway(ctx context.Context, site string, timeout time.Duration) error {
	return l.waitGateway(ctx, site, l.strait()-1, timeout)
}

// waitGateway waits until a site's gateway is ready with want peers (any
// number if want < 0).
func (l *Lab) waitGateway(ctx context.Context, site string, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if pid := l.pidOf(site+"-gw", "gateway"); pid != 0 && !netns.Alive(pid) {
			return fmt.Errorf("lab: gateway of %s exited\n%s", site, l.tail(filepath.Join(l.Dir, site, "gateway.log")))
		}
		st, err := gateway.FetchStatus(ctx, l.SocketOf(site))
		switch {
		case err != nil:
			last = err
		case !st.Ready:
			last = errors.New("not ready")
		case want >= 0 && len(st.Tunnel.Peers) != want:
			last = fmt.Errorf("%d of %d peers configured", len(st.Tunnel.Peers), want)
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("lab: gateway of %s not ready after %s: %v\n%s", site, timeout, last, l.tail(filepath.Join(l.Dir, site, "gateway.log")))
}

// joinPlainSites brings up every plain WireGuard site the way its admin
// would: `strait config wg-quick SITE` for the configuration, then
// wg-quick with Debian's wireguard-go (there is no kernel module here).
func (l *Lab) joinPlainSites(ctx context.Context) error {
	for _, h := range l.Hosts {
		if h.Role != RolePlain {
			continue
		}
		dir := filepath.Join(l.Dir, h.Site)
		conf, err := exec.CommandContext(ctx, l.Bins.Strait, "config", "wg-quick", h.Site,
			"--mesh", l.MeshFile(), "--private-key-file", filepath.Join(dir, "private.key")).Output()
		if err != nil {
			return fmt.Errorf("lab: strait config wg-quick %s: %w", h.Site, exitError(err))
		}
		// wg-quick names the interface after the file.
		path := filepath.Join(dir, TunnelInterface(l.Run, h.Index)+".conf")
		if err := os.WriteFile(path, conf, 0o600); err != nil {
			return err
		}
		cmd := h.Namespace().Command("wg-quick", "up", path)
		cmd.Env = append(os.Environ(), "WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("lab: wg-quick up %s: %v\n%s", path, err, out)
		}
		l.logf("plain WireGuard site %s joined with wg-quick", h.Site)
	}
	return nil
}

// startServers starts the lab server in every pod and plain host and waits
// until each answers.
func (l *Lab) startServers(ctx context.Context) error {
	eps := append(l.Endpoints(), l.dcHosts()...)
	for _, h := range eps {
		if err := l.spawn(h, "server", filepath.Join(l.Dir, h.Name+".log"), l.Bins.Strait,
			"lab", "serve", "--name", h.Name, "--port", strconv.Itoa(ServePort)); err != nil {
			return err
		}
	}
	for _, h := range eps {
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, err := Request(ctx, h, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), ServePort), "tcp", time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("lab: server in %s does not answer: %v\n%s", h.Name, err, l.tail(filepath.Join(l.Dir, h.Name+".log")))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	l.logf("servers up in %d pods and hosts", len(eps))
	return nil
}

// spawn starts a long-running process inside a host, in a session of its
// own so that it outlives the command that started the lab.
func (l *Lab) spawn(h Host, what, logPath, bin string, args ...string) error {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := h.Namespace().Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("lab: start %s in %s: %w", what, h.Name, err)
	}
	go cmd.Wait() // reap it if it exits while this process lives
	// Forget earlier processes of the kind that are gone (a start that failed).
	l.Procs = slices.DeleteFunc(l.Procs, func(p Proc) bool {
		return p.Host == h.Name && p.What == what && !netns.Alive(p.Pid)
	})
	l.Procs = append(l.Procs, Proc{Host: h.Name, What: what, Pid: cmd.Process.Pid, Log: logPath})
	return nil
}

// stop sends SIGTERM to the processes of one kind in a host and waits for
// them to exit.
func (l *Lab) stop(host, what string) error { return l.signal(host, what, syscall.SIGTERM) }

// signal sends sig to the processes of one kind in a host and waits for
// them to exit.
func (l *Lab) signal(host, what string, sig syscall.Signal) error {
	var keep []Proc
	var errs []error
	for _, p := range l.Procs {
		if p.Host != host || p.What != what {
			keep = append(keep, p)
			continue
		}
		if err := syscall.Kill(p.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
			continue
		}
		deadline := time.Now().Add(5 * time.Second)
		for netns.Alive(p.Pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if netns.Alive(p.Pid) {
			errs = append(errs, fmt.Errorf("lab: %s in %s (pid %d) did not stop", what, host, p.Pid))
		}
	}
	l.Procs = keep
	return errors.Join(append(errs, l.save())...)
}

// pidOf returns the latest process of one kind in a host, or 0.
func (l *Lab) pidOf(host, what string) int {
	for i := len(l.Procs) - 1; i >= 0; i-- {
		if p := l.Procs[i]; p.Host == host && p.What == what {
			return p.Pid
		}
	}
	return 0
}

// tail returns the end of a log file, for error messages.
func (l *Lab) tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return path + ":\n  " + strings.Join(lines, "\n  ")
}

// Command returns a command that runs inside a host.
func (l *Lab) Command(host string, name string, args ...string) (*exec.Cmd, error) {
	h, ok := l.Host(host)
	if !ok {
		return nil, fmt.Errorf("lab: no host %q in lab %s (hosts: %s)", host, l.Run, l.hostNames())
	}
	return h.Namespace().Command(name, args...), nil
}

func (l *Lab) hostNames() string {
	var names []string
	for _, h := range l.Hosts {
		names = append(names, h.Name)
	}
	return strings.Join(names, ", ")
}

func exitError(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// SiteFile is the path of a site's site file.
func (l *Lab) SiteFile(site string) string { return filepath.Join(l.Dir, site, "site.yaml") }

// ClosedPort is a UDP port every pod's service exports but no one listens
// on: traffic to it draws an ICMP port unreachable from the pod.
const ClosedPort = 7779

// IperfPort is iperf3's port, which every pod's service exports too, for
// throughput measurements across sites.
const IperfPort = 5201

// SiteDoc is a site file as the lab writes it (see siteconf).
type SiteDoc struct {
	Services []ServiceDoc `yaml:"services,omitempty"`
	Egress   struct {
		Rules []EgressRule `yaml:"rules,omitempty"`
	} `yaml:"egress,omitempty"`
	Pods []PodDoc `yaml:"pods,omitempty"`
	// GlobalServices and FirewallPolicies are what the site declares for
	// the whole mesh.
	GlobalServices   []meshpolicy.GlobalService `yaml:"globalServices,omitempty"`
	FirewallPolicies []meshpolicy.Policy        `yaml:"firewallPolicies,omitempty"`
	// BGP peers the gateway with the site's router.
	BGP *BGPDoc `yaml:"bgp,omitempty"`
}

// EditSiteFile changes a site's file; its gateway takes the change on its
// next pass.
func (l *Lab) EditSiteFile(site string, edit func(*SiteDoc)) error {
	data, err := os.ReadFile(l.SiteFile(site))
	if err != nil {
		return fmt.Errorf("lab: %w", err)
	}
	var doc SiteDoc
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("lab: site file of %s: %w", site, err)
	}
	edit(&doc)
	out, err := yaml.Marshal(doc)
	if err != nil {
		return err
	}
	return writeFileAtomic(l.SiteFile(site), out, 0o644)
}

// StopServer stops the lab server of a pod or host: its services stop
// answering (health checks fail).
func (l *Lab) StopServer(host string) error { return l.stop(host, "server") }

// StartServer starts the lab server of a pod or host again.
func (l *Lab) StartServer(host string) error {
	h, ok := l.Host(host)
	if !ok {
		return fmt.Errorf("lab: no host %q", host)
	}
	if err := l.spawn(h, "server", filepath.Join(l.Dir, h.Name+".log"), l.Bins.Strait,
		"lab", "serve", "--name", h.Name, "--port", strconv.Itoa(ServePort)); err != nil {
		return err
	}
	return l.save()
}

// ServiceDoc is a service of a SiteDoc.
type ServiceDoc struct {
	Namespace string    `yaml:"namespace"`
	Name      string    `yaml:"name"`
	Backend   string    `yaml:"backend"`
	Ports     []PortDoc `yaml:"ports"`
}

// PortDoc is a port of a ServiceDoc.
type PortDoc struct {
	Port     int    `yaml:"port"`
	Protocol string `yaml:"protocol"`
}

// PodDoc is a pod of a SiteDoc.
type PodDoc struct {
	Namespace string            `yaml:"namespace"`
	Name      string            `yaml:"name"`
	IP        string            `yaml:"ip"`
	Labels    map[string]string `yaml:"labels,omitempty"`
}

// siteDoc is the site file of a site: every pod exports a service of its
// own name (the lab server's TCP and UDP port, a closed UDP port, and
// iperf3's port), the topology's egress rules, and the pods they select
// from.
func (l *Lab) siteDoc(s Site) SiteDoc {
	var doc SiteDoc
	doc.Egress.Rules = s.Egress
	if s.Router != nil {
		gw, _ := l.GatewayOf(s.Name)
		doc.BGP = siteBGP(s.Router, gw.Addr)
	}
	for _, h := range l.Hosts {
		if h.Site != s.Name || h.Role != RolePod {
			continue
		}
		doc.Services = append(doc.Services, ServiceDoc{Namespace: h.PodNamespace, Name: h.Service(), Backend: h.Addr.String(),
			Ports: []PortDoc{{ServePort, "TCP"}, {ServePort, "UDP"}, {ClosedPort, "UDP"}, {IperfPort, "TCP"}}})
		doc.Pods = append(doc.Pods, PodDoc{Namespace: h.PodNamespace, Name: h.Service(), IP: h.Addr.String(), Labels: h.Labels})
	}
	for _, g := range l.Topology.GlobalServices {
		for _, p := range g.Pods {
			if h, ok := l.Host(p); ok && h.Site == s.Name {
				doc.Services = append(doc.Services, ServiceDoc{Namespace: g.Namespace, Name: g.Name, Backend: h.Addr.String(),
					Ports: []PortDoc{{ServePort, "TCP"}, {ServePort, "UDP"}}})
			}
		}
		if g.DeclaredBy == s.Name {
			doc.GlobalServices = append(doc.GlobalServices, meshpolicy.GlobalService{Namespace: g.Namespace, Name: g.Name})
		}
	}
	return doc
}

func (l *Lab) writeSiteFile(s Site) error {
	data, err := yaml.Marshal(l.siteDoc(s))
	if err != nil {
		return err
	}
	header := fmt.Sprintf("# strait site file of %s in lab %q, written by the lab: services, egress rules, pods.\n", s.Name, l.Run)
	return writeFileAtomic(l.SiteFile(s.Name), append([]byte(header), data...), 0o644)
}

// readAllocations learns from the gateways the addresses they allocated:
// each pod's service (ingress) address and the address it leaves as.
func (l *Lab) readAllocations(ctx context.Context) error {
	byKey := map[string]netip.Addr{}
	for _, h := range l.Hosts {
		if h.Role != RoleGateway {
			continue
		}
		st, err := gateway.FetchStatus(ctx, l.SocketOf(h.Site))
		if err != nil {
			return err
		}
		for _, a := range st.Allocations {
			byKey[h.Site+" "+a.Key] = a.IP
		}
	}
	for i := range l.Hosts {
		h := &l.Hosts[i]
		switch h.Role {
		case RolePlain:
			h.Global, h.Egress = h.Addr, h.Addr
		case RolePod:
			s, _ := l.Topology.siteOf(h.Site)
			h.Global = byKey[h.Site+" "+natpool.IngressKey(h.PodNamespace, h.Service())]
			h.Egress = byKey[h.Site+" "+natpool.EgressDefaultKey()]
			for _, r := range s.Egress {
				rule := natpool.EgressRule{Name: r.Name, Namespace: r.Namespace, Selector: r.PodSelector}
				if rule.Matches(natpool.Pod{Namespace: h.PodNamespace, Name: h.Name, IP: h.Addr, Labels: h.Labels}) {
					h.Egress = byKey[h.Site+" "+natpool.EgressRuleKey(r.Name)]
					break
				}
			}
			if !h.Global.IsValid() || !h.Egress.IsValid() {
				return fmt.Errorf("lab: the gateway of %s allocated no service or egress address for %s", h.Site, h.Name)
			}
		}
	}
	return nil
}

// GatewayLog is the log file of a site's gateway.
func (l *Lab) GatewayLog(site string) string { return filepath.Join(l.Dir, site, "gateway.log") }

// waitBalanced waits, where the lab has a VIP range, until every strait
// gateway (or the hub) balances each global service over all its pods.
func (l *Lab) waitBalanced(ctx context.Context, timeout time.Duration) error {
	if !l.VIPRange.IsValid() || len(l.Topology.GlobalServices) == 0 || !l.Discovery {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for _, h := range l.Hosts {
		if h.Role != RoleGateway || (l.Hub != "" && h.Site != l.Hub) {
			continue
		}
		for _, g := range l.Topology.GlobalServices {
			for {
				st, err := gateway.FetchStatus(ctx, l.SocketOf(h.Site))
				serving := 0
				if err == nil && st.LoadBalancer != nil {
					for _, s := range st.LoadBalancer.Services {
						if s.Name == g.Namespace+"/"+g.Name {
							for _, b := range s.Backends {
								// Checked: a first check before the pod's
								// server was up has been overcome.
								if b.Serving && b.Checked {
									serving++
								}
							}
						}
					}
				}
				if serving == len(g.Pods) {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("lab: gateway of %s does not balance %s/%s over its %d pods after %s (%d serving): %v\n%s",
						h.Site, g.Namespace, g.Name, len(g.Pods), timeout, serving, err, l.tail(l.GatewayLog(h.Site)))
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	l.logf("global services balanced by every gateway")
	return nil
}
