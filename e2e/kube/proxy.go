package kube

import (
	"fmt"
	"net/netip"
)

// ProxyHealthz is where a kube-proxy that ProxyConfig configures answers
// /healthz, inside its node's namespace: 200 once it has programmed the
// cluster's Services.
const ProxyHealthz = "127.0.0.1:10256"

// ProxyConfig configures the kube-proxy of one node.
type ProxyConfig struct {
	// Node is the node's name, as its Node object has it.
	Node string
	// Kubeconfig reaches the cluster's API server from the node.
	Kubeconfig string
	// ClusterCIDR is the cluster's pod CIDR. Traffic to a ClusterIP from
	// outside it is masqueraded to the node's address, as kube-proxy
	// does in a real cluster, so that replies come back through the node
	// that translated the ClusterIP.
	ClusterCIDR netip.Prefix
	// Mode is kube-proxy's mode; default nftables.
	Mode string
}

// YAML renders the configuration as kube-proxy reads it (--config).
// kube-proxy leaves the kernel's conntrack settings alone: the maximum is
// the machine's, shared by every namespace. Its metrics and health
// endpoints listen on the node's loopback.
func (c ProxyConfig) YAML() []byte {
	mode := c.Mode
	if mode == "" {
		mode = "nftables"
	}
	return fmt.Appendf(nil, `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
hostnameOverride: %q
mode: %q
clusterCIDR: %q
detectLocalMode: ClusterCIDR
metricsBindAddress: "127.0.0.1:10249"
healthzBindAddress: %q
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, c.Kubeconfig, c.Node, mode, c.ClusterCIDR.String(), ProxyHealthz)
}
