// Package natpool owns strait's address plan: the mesh's global CIDR, the
// block each site holds inside it (assigned, or derived from the site's
// name), which traffic between two sites keeps its real addresses and which
// is translated, the pools cut from a block, the allocator that hands their
// addresses to services and egress rules, and the store that keeps the
// allocations across restarts.
//
// Everything here but the store is pure Go: it decides, it does not touch
// the kernel. The gateway renders these decisions into nftables maps.
package natpool
