package kube

import (
	"net/netip"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestProxyConfig checks that the configuration is YAML with what the lab
// relies on: the node's name, nftables mode, the cluster's pod CIDR for
// masquerading, health on the node's loopback, conntrack left alone.
func TestProxyConfig(t *testing.T) {
	c := ProxyConfig{Node: "cloud-b-node1", Kubeconfig: "/run/strait/lab/demo/cloud-b/kube/kubeconfig", ClusterCIDR: netip.MustParsePrefix("10.0.0.0/16")}
	var got struct {
		Kind             string
		ClientConnection struct{ Kubeconfig string } `yaml:"clientConnection"`
		HostnameOverride string                      `yaml:"hostnameOverride"`
		Mode             string
		ClusterCIDR      string `yaml:"clusterCIDR"`
		DetectLocalMode  string `yaml:"detectLocalMode"`
		HealthzBind      string `yaml:"healthzBindAddress"`
		Conntrack        struct {
			MaxPerCore *int `yaml:"maxPerCore"`
		}
	}
	if err := yaml.Unmarshal(c.YAML(), &got); err != nil {
		t.Fatalf("%v\n%s", err, c.YAML())
	}
	if got.Kind != "KubeProxyConfiguration" || got.ClientConnection.Kubeconfig != c.Kubeconfig || got.HostnameOverride != c.Node ||
		got.Mode != "nftables" || got.ClusterCIDR != "10.0.0.0/16" || got.DetectLocalMode != "ClusterCIDR" ||
		got.HealthzBind != ProxyHealthz || got.Conntrack.MaxPerCore == nil || *got.Conntrack.MaxPerCore != 0 {
		t.Errorf("configuration read back as %+v:\n%s", got, c.YAML())
	}
	c.Mode = "iptables"
	if err := yaml.Unmarshal(c.YAML(), &got); err != nil || got.Mode != "iptables" {
		t.Errorf("mode iptables: %+v, %v", got, err)
	}
}
