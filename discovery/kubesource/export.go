package kubesource

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	mcsv1a1 "sigs.k8s.io/mcs-api/pkg/apis/v1alpha1"

	"github.com/straitnet/strait/discovery/catalog"
)

// Export is a Service of this cluster that a ServiceExport offers to the
// mesh, in the terms the catalog publishes.
type Export struct {
	Namespace, Name string
	// ClusterIP is the Service's IPv4 cluster IP, where the gateway sends
	// what arrives for the service; invalid for headless services.
	ClusterIP netip.Addr
	// Headless services (spec.clusterIP "None") are reached through their
	// endpoints directly.
	Headless bool
	// Ports are the Service's ports, in the Service's order.
	Ports []Port
	// Endpoints are the ready IPv4 endpoints of the Service's
	// EndpointSlices, sorted by address: headless services publish them,
	// the others only count them.
	Endpoints []catalog.Endpoint
	// Ready is the number of ready endpoint addresses (len(Endpoints));
	// Total counts them ready or not, for the load balancer's share of
	// an instance that is short of backends.
	Ready int
	Total int `json:",omitempty"`
}

// Port is a port of an exported service: the catalog's type, so that an
// Export becomes a catalog record without conversion.
type Port = catalog.Port

// Reasons a ServiceExport is not exported: the Reason of its Valid=False
// condition and the keys of Stats.Refused. The first two are the MCS API's.
const (
	ReasonNoService          = string(mcsv1a1.ServiceExportReasonNoService)
	ReasonInvalidServiceType = string(mcsv1a1.ServiceExportReasonInvalidServiceType)
	ReasonInvalidName        = "InvalidName"
	ReasonInvalidPort        = "InvalidServicePort"
	ReasonNoClusterIP        = "NoClusterIP"
	ReasonIPFamily           = "IPFamilyNotSupported"
)

// refusal says why a ServiceExport is not exported.
type refusal struct {
	Reason, Message string
}

// exportOf decides what a Service and its EndpointSlices export, or why
// they cannot be: the mesh carries IPv4 only, and the catalog accepts
// only what it can validate (DNS-label names, TCP/UDP/SCTP ports), so
// anything else is refused here, where it can be reported on the
// ServiceExport, rather than later in the catalog.
func exportOf(svc *corev1.Service, eps []*discoveryv1.EndpointSlice) (Export, *refusal) {
	e := Export{Namespace: svc.Namespace, Name: svc.Name}
	refuse := func(reason, format string, args ...any) (Export, *refusal) {
		return Export{}, &refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	if !dnsLabel(svc.Namespace) || !dnsLabel(svc.Name) {
		return refuse(ReasonInvalidName, "%s/%s: namespace and name must be DNS labels of at most 63 characters", svc.Namespace, svc.Name)
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return refuse(ReasonInvalidServiceType, "service %s/%s is of type ExternalName: it has no addresses to export", svc.Namespace, svc.Name)
	}
	if svc.Spec.ClusterIP == corev1.ClusterIPNone {
		e.Headless = true
	} else {
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		if len(ips) == 0 {
			return refuse(ReasonNoClusterIP, "service %s/%s has no cluster IP", svc.Namespace, svc.Name)
		}
		for _, s := range ips {
			if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
				e.ClusterIP = a
				break
			}
		}
		if !e.ClusterIP.IsValid() {
			return refuse(ReasonIPFamily, "service %s/%s has no IPv4 cluster IP (%s): the mesh carries IPv4 only", svc.Namespace, svc.Name, strings.Join(ips, ", "))
		}
	}
	for _, p := range svc.Spec.Ports {
		proto := string(p.Protocol)
		if proto == "" {
			proto = string(corev1.ProtocolTCP) // the API's default
		}
		switch proto {
		case "TCP", "UDP", "SCTP":
		default:
			return refuse(ReasonInvalidPort, "service %s/%s port %d: protocol %q is not TCP, UDP or SCTP", svc.Namespace, svc.Name, p.Port, proto)
		}
		if p.Name != "" && !dnsLabel(p.Name) {
			return refuse(ReasonInvalidPort, "service %s/%s port %d: name %q is not a DNS label", svc.Namespace, svc.Name, p.Port, p.Name)
		}
		if p.Port < 1 || p.Port > 65535 {
			return refuse(ReasonInvalidPort, "service %s/%s: port %d is out of range", svc.Namespace, svc.Name, p.Port)
		}
		e.Ports = append(e.Ports, Port{Name: p.Name, Protocol: proto, Port: uint16(p.Port)})
	}
	e.Endpoints = readyEndpoints(eps)
	e.Ready = len(e.Endpoints)
	e.Total = max(e.Ready, countEndpoints(eps))
	return e, nil
}

// readyEndpoints collects the ready IPv4 addresses of a Service's slices,
// each once: an endpoint moving between slices shows in both for a while.
// Only the first address of an endpoint counts, as the EndpointSlice API
// defines no meaning for the others.
func readyEndpoints(eps []*discoveryv1.EndpointSlice) []catalog.Endpoint {
	eps = slices.Clone(eps)
	slices.SortFunc(eps, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	var out []catalog.Endpoint
	seen := map[netip.Addr]int{}
	for _, sl := range eps {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, ep := range sl.Endpoints {
			// A nil Ready means ready, by the API's definition.
			if (ep.Conditions.Ready != nil && !*ep.Conditions.Ready) || len(ep.Addresses) == 0 {
				continue
			}
			a, err := netip.ParseAddr(ep.Addresses[0])
			if err != nil || !a.Is4() || !unicast(a) {
				continue
			}
			host := ""
			if ep.Hostname != nil && dnsLabel(*ep.Hostname) {
				host = *ep.Hostname
			}
			if i, ok := seen[a]; ok {
				if out[i].Hostname == "" {
					out[i].Hostname = host
				}
				continue
			}
			seen[a] = len(out)
			out = append(out, catalog.Endpoint{Hostname: host, Addr: a})
		}
	}
	slices.SortFunc(out, func(a, b catalog.Endpoint) int { return a.Addr.Compare(b.Addr) })
	return out
}

// countEndpoints counts the distinct IPv4 addresses of a Service's slices,
// ready or not.
func countEndpoints(eps []*discoveryv1.EndpointSlice) int {
	seen := map[string]bool{}
	for _, sl := range eps {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		for _, ep := range sl.Endpoints {
			if len(ep.Addresses) > 0 {
				seen[ep.Addresses[0]] = true
			}
		}
	}
	return len(seen)
}

// unicast is what the catalog accepts as an endpoint address.
func unicast(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// dnsLabel is an RFC 1123 label: what Kubernetes allows for namespaces
// and port names, and what the catalog requires.
func dnsLabel(s string) bool { return catalog.ValidName(s) }

func (e Export) equal(o Export) bool {
	return e.Namespace == o.Namespace && e.Name == o.Name && e.ClusterIP == o.ClusterIP &&
		e.Headless == o.Headless && e.Ready == o.Ready && e.Total == o.Total &&
		slices.Equal(e.Ports, o.Ports) && slices.Equal(e.Endpoints, o.Endpoints)
}

// samePorts says whether two port lists are the same set: the order of a
// Service's ports does not change what it serves.
func samePorts(a, b []Port) bool {
	return slices.Equal(sortedPorts(a), sortedPorts(b))
}

func sortedPorts(ps []Port) []Port {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b Port) int {
		return cmp.Or(cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Name, b.Name))
	})
	return ps
}

// portsString renders ports for messages: "80/TCP (http), 53/UDP".
func portsString(ps []Port) string {
	if len(ps) == 0 {
		return "no ports"
	}
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d/%s", p.Port, p.Protocol)
		if p.Name != "" {
			fmt.Fprintf(&b, " (%s)", p.Name)
		}
	}
	return b.String()
}
