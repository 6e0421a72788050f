//go:build tools

// Package apiserver pins the kube-apiserver that strait's tests run, and
// the kube-proxy that the lab runs on its clusters' nodes: both built from
// k8s.io/kubernetes through the module proxy, with the k8s.io staging
// modules replaced by their published v0 versions (k8s.io/kubernetes
// replaces them with paths inside its own repository, which a dependent
// module cannot use). e2e/kube builds them once and caches the binaries.
package apiserver

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
