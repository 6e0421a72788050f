//go:build tools

// Package apiserver pins the kube-apiserver that strait's tests run: built
// from k8s.io/kubernetes through the module proxy, with the k8s.io staging
// modules replaced by their published v0 versions (k8s.io/kubernetes
// replaces them with paths inside its own repository, which a dependent
// module cannot use). e2e/kube builds it once and caches the binary.
package apiserver

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
