// Package cni is strait's pod networking inside a node: cni/plugin is
// strait-cni (CNI spec 1.1.0: a veth, a /32 and /128 from the node's pod
// CIDRs, a default route through a link-local gateway), and cni/ipam keeps
// the node's address allocations, safe across parallel ADDs, crashes and
// restarts. strait-agent (package nodeagent) writes the plugin's conflist
// and its readiness.
package cni
