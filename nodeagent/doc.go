// Package nodeagent is strait-agent, the node agent: it watches the
// cluster's Nodes through client-go, routes other nodes' pod CIDRs
// (directly when the nodes share a link, over VXLAN otherwise), routes the
// mesh's destinations to the cluster's gateway, writes strait-cni's
// conflist, and tells strait-cni whether the node is ready for pods and,
// when it is not, why.
//
// Plan decides (pure, unit tested); dataplane applies with netlink, owning
// the routes of protocol 246 and the VXLAN device strait.vx.
package nodeagent
