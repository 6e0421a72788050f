// Package bpf holds the eBPF programs of strait-agent, compiled with
// Debian's clang through bpf2go (`make generate`); the objects and their
// Go bindings are committed.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -tags linux -target bpfel -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" Policy src/policy.c
