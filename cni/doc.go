// Package cni will hold strait-cni, the CNI plugin that gives each pod a
// veth, a /32 with a link-local default route, and an address from the
// node's pod CIDR.
//
// Nothing is implemented yet; the lab's pods are wired by e2e/lab meanwhile.
package cni
