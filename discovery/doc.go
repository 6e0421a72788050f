// Package discovery will hold strait's service catalog: gossip between
// gateways (hashicorp/memberlist), the Kubernetes and file sources, and DNS
// for clusterset.local.
//
// Nothing is implemented yet; gateways learn each other from the mesh
// configuration file meanwhile.
package discovery
