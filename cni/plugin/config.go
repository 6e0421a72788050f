package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults of the plugin's configuration.
const (
	DefaultDataDir    = "/var/lib/cni/strait"
	DefaultAgentState = "/run/strait/agent.json"
	DefaultMTU        = 1500
)

// Config is the plugin's network configuration, from the conflist the
// node agent writes.
type Config struct {
	types.PluginConf
	// PodCIDRs are the node's pod CIDRs (Node.spec.podCIDRs): at most one
	// IPv4 and one IPv6 prefix.
	PodCIDRs []string `json:"podCIDRs"`
	// MTU of the pods' interfaces.
	MTU int `json:"mtu,omitempty"`
	// DataDir keeps the address allocations.
	DataDir string `json:"dataDir,omitempty"`
	// AgentState is the node agent's state file: ADD waits for it to say
	// ready, and STATUS reports its reason otherwise.
	AgentState string `json:"agentState,omitempty"`

	ranges []netip.Prefix
}

// parseConfig decodes and validates stdin's configuration. Errors carry
// the spec's codes: 6 for what does not decode, 7 for what is invalid.
func parseConfig(data []byte) (*Config, error) {
	c := &Config{}
	if err := json.Unmarshal(data, c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "strait-cni: the network configuration does not decode", err.Error())
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 576 || c.MTU > 65535 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("strait-cni: mtu %d is out of range (576-65535)", c.MTU), "")
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.AgentState == "" {
		c.AgentState = DefaultAgentState
	}
	var v4, v6 bool
	for _, s := range c.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Masked() != p {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("strait-cni: podCIDRs: %q is not a masked prefix such as 10.0.1.0/24", s), "")
		}
		seen := &v4
		if p.Addr().Is6() {
			seen = &v6
		}
		if *seen {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("strait-cni: podCIDRs: %s is the second of its family; a node has one IPv4 and one IPv6 pod CIDR at most", p), "")
		}
		*seen = true
		c.ranges = append(c.ranges, p)
	}
	return c, nil
}

// AgentState is what the node agent says about the node's readiness for
// pods, in its state file.
type AgentState struct {
	Ready bool `json:"ready"`
	// Reason says what is missing while not ready.
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
}

// errNotReady is what ADD and STATUS say while the node is not ready.
var errNotReady = errors.New("not ready")

// agentReady reads the agent's state and says why pods cannot get their
// network yet, if they cannot: "network plugin not ready" with no reason
// is what users meet most often, so the reason is always named.
func agentReady(path string, ranges []netip.Prefix) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: strait-agent is not running on this node (%s does not exist)", errNotReady, path)
	}
	if err != nil {
		return fmt.Errorf("%w: reading strait-agent's state: %v", errNotReady, err)
	}
	var st AgentState
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%w: strait-agent's state %s is damaged: %v", errNotReady, path, err)
	}
	if !st.Ready {
		reason := st.Reason
		if reason == "" {
			reason = "strait-agent gave no reason"
		}
		return fmt.Errorf("%w since %s: %s", errNotReady, st.Since.Format(time.RFC3339), reason)
	}
	if len(ranges) == 0 {
		return fmt.Errorf("%w: the network configuration has no podCIDRs (the Node has no spec.podCIDRs yet?)", errNotReady)
	}
	return nil
}
