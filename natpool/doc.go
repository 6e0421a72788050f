// Package natpool owns strait's address plan: the mesh's global CIDR, the
// block each cluster holds inside it, and how a cluster's real addresses map
// into its block.
//
// Everything here is pure Go: it decides, it does not touch the kernel. The
// gateway renders these decisions into nftables rules.
//
// The walking skeleton maps a cluster's pod CIDR one-to-one into its block
// (PrefixMap). Ingress and egress pools with persistent allocations replace
// that mapping in a later step.
package natpool
