package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/natpool"
)

// Tuple is one direction of a connection as a namespace sees it.
type Tuple struct {
	Src, Dst netip.AddrPort
}

func (t Tuple) String() string { return t.Src.String() + " -> " + t.Dst.String() }

// Flow is a TCP conntrack entry of one namespace: the tuple its first
// packet had when it came (Orig) and the one replies come back with
// (Reply). Where the two do not mirror each other, the namespace
// translated the connection.
type Flow struct {
	Orig, Reply Tuple
}

// Out is the connection as the namespace lets it go on: the reply tuple,
// turned around.
func (f Flow) Out() Tuple { return Tuple{Src: f.Reply.Dst, Dst: f.Reply.Src} }

// Seen is what one namespace of the lab tracks.
type Seen struct {
	Host, Site string
	Flows      []Flow
}

// Hop is one namespace the connection crossed, with the connection as it
// came in and as it went on.
type Hop struct {
	Host, Site string
	// Via says where the hop was read: "socket" for the client's and the
	// server's own sockets, "conntrack" for a namespace's conntrack table.
	Via     string
	In, Out Tuple
}

// SNAT and DNAT say whether the hop translated the source or the
// destination.
func (h Hop) SNAT() bool { return h.In.Src != h.Out.Src }
func (h Hop) DNAT() bool { return h.In.Dst != h.Out.Dst }

// Path follows a connection from the tuple it left its client with
// through the conntrack tables of the namespaces it may have crossed,
// listed in the order it would cross them. Each step takes the first
// namespace not taken yet that tracks the connection as the last one let
// it go, so a namespace that saw the connection but left it as it was is
// a hop too. Namespaces that never saw it are left out.
func Path(start Tuple, seen []Seen) []Hop {
	var hops []Hop
	taken := make([]bool, len(seen))
	cur := start
	for {
		found := false
		for i, s := range seen {
			if taken[i] {
				continue
			}
			j := slices.IndexFunc(s.Flows, func(f Flow) bool { return f.Orig == cur })
			if j < 0 {
				continue
			}
			f := s.Flows[j]
			hops = append(hops, Hop{Host: s.Host, Site: s.Site, Via: "conntrack", In: f.Orig, Out: f.Out()})
			taken[i], cur, found = true, f.Out(), true
			break
		}
		if !found {
			return hops
		}
	}
}

// Address roles, as a trace names them.
const (
	AddrPod     = "pod IP"
	AddrBackend = "backend pod"
	AddrEgress  = "egress IP"
	AddrIngress = "ingress IP"
	AddrVIP     = "VIP"
	AddrCluster = "ClusterIP"
	AddrNode    = "node address"
	AddrOther   = "address"
)

// AddrInfo says what an address is: its role, and what it belongs to
// ("cloud-b-pod1", "cloud-b, demo/app").
type AddrInfo struct {
	Role, Of string
}

// Classifier says what an address is at a site (LAN and pod addresses
// depend on the site: they repeat from one to the next).
type Classifier func(site string, a netip.Addr) AddrInfo

// Stop is an address the connection took on its way.
type Stop struct {
	AddrInfo
	Addr netip.AddrPort
	// At is the host where the connection took it.
	At string
}

func (s Stop) String() string {
	if s.Of == "" {
		return fmt.Sprintf("%s %s", s.Role, s.Addr)
	}
	return fmt.Sprintf("%s %s (%s)", s.Role, s.Addr, s.Of)
}

// Stops lists the addresses of a connection's path in the order a reader
// follows them: the client's address and what its own site translates it
// to (pod IP, egress IP), then the address it dialed (an ingress IP) and
// every destination after it, to the backend. seenAs is the source the
// backend saw, At the host that last translated it. hops starts with the
// client's socket.
func Stops(hops []Hop, classify Classifier) (path []Stop, seenAs Stop) {
	if len(hops) == 0 {
		return nil, Stop{}
	}
	first, last := hops[0], hops[len(hops)-1]
	stop := func(h Hop, a netip.AddrPort) Stop {
		return Stop{AddrInfo: classify(h.Site, a.Addr()), Addr: a, At: h.Host}
	}
	src := []Stop{stop(first, first.In.Src)}
	dst := []Stop{stop(first, first.In.Dst)}
	seenAs = src[0]
	for _, h := range hops[1:] {
		if h.DNAT() {
			dst = append(dst, stop(h, h.Out.Dst))
		}
		if h.SNAT() {
			seenAs = stop(h, h.Out.Src)
			if h.Site == first.Site {
				src = append(src, seenAs)
			}
		}
	}
	seenAs.AddrInfo = classify(last.Site, seenAs.Addr.Addr())
	if b := &dst[len(dst)-1]; b.Role == AddrPod {
		b.Role = AddrBackend
	}
	return slices.Concat(src, dst), seenAs
}

// Trace is the path of one TCP connection through the lab, read from the
// kernel: the client's socket, the conntrack table of every gateway and
// node it crossed, and the server's socket as its reply tells it.
type Trace struct {
	From string
	// Name is what was resolved, if a name was given; Resolver the
	// gateway's DNS server that answered it.
	Name     string
	Resolver netip.AddrPort
	// Target is where the client connected.
	Target netip.AddrPort
	// Reply is what the lab server answered.
	Reply Reply
	Hops  []Hop
	// Stops are the addresses of the path (see Stops); SeenAs is the
	// source the backend saw.
	Stops  []Stop
	SeenAs Stop
	// Complete says that the conntrack hops lead to the server's socket.
	Complete bool
}

// Resolve asks the DNS server of from's site gateway for the A record of
// name, from inside from's namespace, as a pod's resolver would.
func (l *Lab) Resolve(ctx context.Context, from Host, name string) (netip.Addr, netip.AddrPort, error) {
	gw, ok := l.GatewayOf(from.Site)
	if !ok {
		return netip.Addr{}, netip.AddrPort{}, fmt.Errorf("lab: %s has no site gateway to ask", from.Name)
	}
	server := netip.AddrPortFrom(gw.Addr, DNSPort)
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	var r *dns.Msg
	err := from.Namespace().Do(func() error {
		c := &dns.Client{Timeout: 2 * time.Second}
		var err error
		r, _, err = c.ExchangeContext(ctx, m, server.String())
		return err
	})
	if err != nil {
		return netip.Addr{}, server, fmt.Errorf("lab: resolve %s at %s: %w", name, server, err)
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			if addr, ok := netip.AddrFromSlice(a.A.To4()); ok {
				return addr, server, nil
			}
		}
	}
	return netip.Addr{}, server, fmt.Errorf("lab: %s at %s: %s, no address", name, server, dns.RcodeToString[r.Rcode])
}

// ParseTarget reads a trace's target: "NAME[:PORT]" or "ADDR[:PORT]",
// port defaulting to def.
func ParseTarget(s string, def uint16) (name string, addr netip.Addr, port uint16, err error) {
	host, p := s, ""
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, p = s[:i], s[i+1:]
	}
	port = def
	if p != "" {
		var n uint64
		if _, err := fmt.Sscan(p, &n); err != nil || n == 0 || n > 65535 || fmt.Sprint(n) != p {
			return "", netip.Addr{}, 0, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, p)
		}
		port = uint16(n)
	}
	if host == "" {
		return "", netip.Addr{}, 0, fmt.Errorf("%q: no name or address", s)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if !a.Is4() {
			return "", netip.Addr{}, 0, fmt.Errorf("%q: the lab is IPv4", s)
		}
		return "", a, port, nil
	}
	if !hostnameRE.MatchString(strings.TrimSuffix(host, ".")) || len(host) > 253 {
		return "", netip.Addr{}, 0, fmt.Errorf("%q: not a name or an IPv4 address", s)
	}
	return host, netip.Addr{}, port, nil
}

// hostnameRE is a DNS name of letters, digits and hyphens.
var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$`)

// TraceConnection resolves target ("app.demo.svc.clusterset.local:80",
// or an address) through the DNS of host from's site gateway, opens a TCP
// connection from from to it (trying again for up to 10 s while that
// fails), reads what the lab server answers, and assembles the
// connection's path from the conntrack tables of the lab's gateways and
// nodes.
func (l *Lab) TraceConnection(ctx context.Context, from, target string) (*Trace, error) {
	h, ok := l.Host(from)
	if !ok {
		return nil, fmt.Errorf("lab: no host %q in lab %s (hosts: %s)", from, l.Run, l.hostNames())
	}
	name, addr, port, err := ParseTarget(target, ServePort)
	if err != nil {
		return nil, fmt.Errorf("lab trace: %w", err)
	}
	t := &Trace{From: h.Name, Name: name}
	if name != "" {
		if addr, t.Resolver, err = l.Resolve(ctx, h, name); err != nil {
			return nil, err
		}
	}
	t.Target = netip.AddrPortFrom(addr, port)
	// A path that has just come up may not carry the first connection
	// yet (a node's kube-proxy programs a new Service within a second
	// or so; until then the node has no route to its ClusterIP), so
	// connecting is tried again for a while, as a client would.
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		err = h.Namespace().Do(func() error {
			d := net.Dialer{Timeout: 2 * time.Second}
			var err error
			conn, err = d.DialContext(ctx, "tcp4", t.Target.String())
			return err
		})
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("lab trace: connect from %s to %s: %w", h.Name, t.Target, err)
	}
	local := conn.LocalAddr().(*net.TCPAddr).AddrPort()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil {
		return nil, fmt.Errorf("lab trace: %s to %s: no answer: %w", h.Name, t.Target, err)
	}
	if t.Reply, err = parseReply(line); err != nil {
		return nil, fmt.Errorf("lab trace: %w", err)
	}
	start := Tuple{Src: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), Dst: t.Target}
	seen, err := l.conntrack(h)
	if err != nil {
		return nil, err
	}
	t.Hops = append([]Hop{{Host: h.Name, Site: h.Site, Via: "socket", In: start, Out: start}}, Path(start, seen)...)
	last := t.Hops[len(t.Hops)-1].Out
	server := Tuple{Src: t.Reply.Peer, Dst: t.Reply.Local}
	t.Complete = last == server
	if srv, ok := l.Host(t.Reply.Name); ok && t.Reply.Local.IsValid() {
		t.Hops = append(t.Hops, Hop{Host: srv.Name, Site: srv.Site, Via: "socket", In: server, Out: server})
	}
	classify, err := l.classifier(ctx)
	if err != nil {
		return nil, err
	}
	t.Stops, t.SeenAs = Stops(t.Hops, classify)
	return t, nil
}

// conntrack reads the TCP conntrack entries of the lab's gateways and
// nodes, in the order a connection from host would cross them: host's
// node, the other nodes and the gateway of its site, then each other
// site's gateway and nodes.
func (l *Lab) conntrack(from Host) ([]Seen, error) {
	var order []Host
	add := func(h Host) {
		if !slices.ContainsFunc(order, func(o Host) bool { return o.Name == h.Name }) {
			order = append(order, h)
		}
	}
	if n, ok := l.Host(from.Node); ok {
		add(n)
	}
	sites := []string{from.Site}
	for _, s := range l.Topology.Sites {
		if s.Name != from.Site {
			sites = append(sites, s.Name)
		}
	}
	for i, site := range sites {
		gw, hasGW := l.GatewayOf(site)
		if i == 0 {
			for _, n := range l.nodesOf(site) {
				add(n)
			}
		}
		if hasGW {
			add(gw)
		}
		for _, n := range l.nodesOf(site) {
			add(n)
		}
	}
	var seen []Seen
	for _, h := range order {
		flows, err := readConntrack(h)
		if err != nil {
			return nil, err
		}
		seen = append(seen, Seen{Host: h.Name, Site: h.Site, Flows: flows})
	}
	return seen, nil
}

// readConntrack lists a host's TCP conntrack entries over netlink.
func readConntrack(h Host) ([]Flow, error) {
	nh, err := h.Namespace().Handle()
	if err != nil {
		return nil, err
	}
	defer nh.Close()
	// A table that changes during the dump interrupts it: dump again.
	var entries []*netlink.ConntrackFlow
	for try := 0; ; try++ {
		entries, err = nh.ConntrackTableList(netlink.ConntrackTable, netlink.FAMILY_V4)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
		if try == 4 {
			return nil, fmt.Errorf("lab: conntrack of %s: interrupted 5 times: %w", h.Name, err)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("lab: conntrack of %s: %w", h.Name, err)
	}
	var flows []Flow
	for _, e := range entries {
		if e.Forward.Protocol != unix.IPPROTO_TCP {
			continue
		}
		flows = append(flows, Flow{Orig: tuple(e.Forward), Reply: tuple(e.Reverse)})
	}
	return flows, nil
}

func tuple(t netlink.IPTuple) Tuple {
	src, _ := netip.AddrFromSlice(t.SrcIP.To4())
	dst, _ := netip.AddrFromSlice(t.DstIP.To4())
	return Tuple{Src: netip.AddrPortFrom(src, t.SrcPort), Dst: netip.AddrPortFrom(dst, t.DstPort)}
}

// classifier names addresses from the lab's hosts, the gateways'
// allocations, and the Services of the lab's clusters.
func (l *Lab) classifier(ctx context.Context) (Classifier, error) {
	allocs := map[string][]natpool.Allocation{}
	for _, s := range l.Topology.Sites {
		if _, ok := l.GatewayOf(s.Name); !ok {
			continue
		}
		st, err := gateway.FetchStatus(ctx, l.SocketOf(s.Name))
		if err != nil {
			return nil, fmt.Errorf("lab: status of %s's gateway: %w", s.Name, err)
		}
		allocs[s.Name] = st.Allocations
	}
	clusterIPs := map[string]map[netip.Addr]string{}
	for _, site := range l.KubeSites() {
		cfg, err := l.KubeConfig(site)
		if err != nil {
			return nil, err
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("lab: services of %s: %w", site, err)
		}
		clusterIPs[site] = map[netip.Addr]string{}
		for _, s := range svcs.Items {
			if a, err := netip.ParseAddr(s.Spec.ClusterIP); err == nil {
				clusterIPs[site][a] = s.Namespace + "/" + s.Name
			}
		}
	}
	return NewClassifier(l.Topology, l.Hosts, l.VIPRange, allocs, clusterIPs), nil
}

// NewClassifier names addresses from what a lab knows: its hosts, the
// sites' blocks and allocations (by site), the VIP range, and the
// ClusterIPs of its clusters' Services (by site).
func NewClassifier(t Topology, hosts []Host, vips netip.Prefix, allocs map[string][]natpool.Allocation, clusterIPs map[string]map[netip.Addr]string) Classifier {
	return func(site string, a netip.Addr) AddrInfo {
		if vips.IsValid() && vips.Contains(a) {
			return AddrInfo{Role: AddrVIP}
		}
		for _, s := range t.Sites {
			if !s.Block.Contains(a) {
				continue
			}
			for _, al := range allocs[s.Name] {
				if al.IP != a {
					continue
				}
				switch {
				case strings.HasPrefix(al.Key, "ingress/"):
					return AddrInfo{Role: AddrIngress, Of: s.Name + ", " + strings.TrimPrefix(al.Key, "ingress/")}
				case al.Key == natpool.EgressDefaultKey():
					return AddrInfo{Role: AddrEgress, Of: s.Name + ", default"}
				case strings.HasPrefix(al.Key, "egress/rule/"):
					return AddrInfo{Role: AddrEgress, Of: s.Name + ", rule " + strings.TrimPrefix(al.Key, "egress/rule/")}
				}
			}
			return AddrInfo{Role: AddrOther, Of: s.Name + "'s block"}
		}
		for _, h := range hosts {
			if h.Addr != a || (h.Site != site && h.Role != RolePlain) {
				continue
			}
			switch h.Role {
			case RolePod, RolePlain:
				return AddrInfo{Role: AddrPod, Of: h.Name}
			case RoleNode, RoleGateway:
				return AddrInfo{Role: AddrNode, Of: h.Name}
			}
		}
		if s, ok := t.siteOf(site); ok && s.Kubernetes && KubeServiceCIDR.Contains(a) {
			if svc := clusterIPs[site][a]; svc != "" {
				return AddrInfo{Role: AddrCluster, Of: site + ", " + svc}
			}
			return AddrInfo{Role: AddrCluster, Of: site}
		}
		// A pod of another site, reached by its real address.
		for _, h := range hosts {
			if h.Addr == a && h.Role == RolePod {
				if s, ok := t.siteOf(h.Site); ok && s.Routable {
					return AddrInfo{Role: AddrPod, Of: h.Name}
				}
			}
		}
		return AddrInfo{Role: AddrOther}
	}
}

// PrintTrace writes a trace: what was resolved and who answered, each hop
// with the connection as it came and what the hop changed, and the path
// of addresses.
func PrintTrace(w io.Writer, t *Trace) {
	if t.Name != "" {
		fmt.Fprintf(w, "%s is %s: %s's gateway answered at %s\n", t.Name, t.Target.Addr(), siteOfHost(t.Hops), t.Resolver)
	}
	fmt.Fprintf(w, "%s connected to %s; %s answered: it saw the client at %s\n\n", t.From, t.Target, t.Reply.Name, t.Reply.Peer)
	width := 8
	for _, h := range t.Hops {
		width = max(width, len(h.Host)+2)
	}
	fmt.Fprintf(w, "  %-*s%-10s %-44s %s\n", width, "host", "read in", "the connection as it came", "what the host did")
	for i, h := range t.Hops {
		did := "passed it on as it came"
		switch {
		case i == 0:
			did = "opened it"
		case i == len(t.Hops)-1 && h.Via == "socket":
			did = "accepted it"
		case h.SNAT() && h.DNAT():
			did = fmt.Sprintf("source -> %s, destination -> %s", h.Out.Src, h.Out.Dst)
		case h.SNAT():
			did = fmt.Sprintf("source -> %s", h.Out.Src)
		case h.DNAT():
			did = fmt.Sprintf("destination -> %s", h.Out.Dst)
		}
		fmt.Fprintf(w, "  %-*s%-10s %-44s %s\n", width, h.Host, h.Via, h.In.String(), did)
	}
	fmt.Fprintln(w)
	var path []string
	for _, s := range t.Stops {
		path = append(path, s.String())
	}
	fmt.Fprintf(w, "path: %s\n", strings.Join(path, "\n   -> "))
	fmt.Fprintf(w, "the backend saw the client as %s", t.SeenAs)
	if t.SeenAs.At != t.From {
		fmt.Fprintf(w, ", translated by %s", t.SeenAs.At)
	}
	fmt.Fprintln(w)
	if !t.Complete {
		fmt.Fprintf(w, "INCOMPLETE: the conntrack entries found do not lead to the server's socket (%s -> %s)\n", t.Reply.Peer, t.Reply.Local)
	}
}

func siteOfHost(hops []Hop) string {
	if len(hops) == 0 {
		return ""
	}
	return hops[0].Site
}
