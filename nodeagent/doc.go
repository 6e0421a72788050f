// Package nodeagent will hold strait's node agent: it watches the cluster's
// Nodes, routes other nodes' pod CIDRs (directly or over VXLAN), routes mesh
// destinations to the cluster's gateway, enforces NetworkPolicy with eBPF
// and writes the CNI configuration once the node is ready.
//
// Nothing is implemented yet; the lab's nodes are wired by e2e/lab meanwhile.
package nodeagent
