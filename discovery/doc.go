// Package discovery is how clusters learn about each other and about each
// other's services. Its packages:
//
//   - catalog: the records (clusters, services), signed by their owner
//     under the mesh CA's certificates, with deterministic merges,
//     tombstones and per-owner digests;
//   - gossip: the catalog between gateways over hashicorp/memberlist,
//     encrypted, tuned for WAN links, with digest anti-entropy;
//   - kubesource: ServiceExports, Services and EndpointSlices in, and
//     ServiceImports and export conditions out, through client-go;
//   - dnsserver: <svc>.<ns>.svc.clusterset.local from the catalog;
//   - trustfile: the CA key and cluster identity files.
//
// The gateway (package gateway) ties them together: the site file is the
// source of services where there is no Kubernetes.
package discovery
