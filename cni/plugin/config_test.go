package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseConfig(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		code     uint
		want     string
	}{
		{"dual stack", `{"cniVersion":"1.1.0","name":"n","type":"strait-cni","podCIDRs":["10.0.1.0/24","fd00:1::/64"]}`, 0, ""},
		{"not json", `{"cniVersion":`, types.ErrDecodingFailure, "does not decode"},
		{"host bits", `{"podCIDRs":["10.0.1.1/24"]}`, types.ErrInvalidNetworkConfig, "not a masked prefix"},
		{"two v6", `{"podCIDRs":["fd00:1::/64","fd00:2::/64"]}`, types.ErrInvalidNetworkConfig, "second of its family"},
		{"mtu", `{"mtu":100}`, types.ErrInvalidNetworkConfig, "mtu 100"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tt.in))
			if tt.code == 0 {
				if err != nil || len(c.ranges) != 2 || c.MTU != DefaultMTU || c.DataDir != DefaultDataDir || c.AgentState != DefaultAgentState {
					t.Fatalf("%+v %v", c, err)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Msg, tt.want) {
				t.Fatalf("got %v, want code %d with %q", err, tt.code, tt.want)
			}
		})
	}
}

func TestAgentReady(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "agent.json")
	c, _ := parseConfig([]byte(`{"podCIDRs":["10.0.1.0/24"]}`))
	for _, tt := range []struct{ name, file, want string }{
		{"no agent", "", "strait-agent is not running on this node"},
		{"damaged", "{", "is damaged"},
		{"not ready", `{"ready":false,"reason":"no route to the gateway yet"}`, "no route to the gateway yet"},
		{"no reason", `{"ready":false}`, "gave no reason"},
		{"ready", `{"ready":true}`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(p)
			if tt.file != "" {
				os.WriteFile(p, []byte(tt.file), 0o644)
			}
			err := agentReady(p, c.ranges)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errNotReady) {
				t.Fatalf("got %v, want %q", err, tt.want)
			}
		})
	}
}

func TestHostVethAndAlias(t *testing.T) {
	a, b := HostVeth("container-1", "eth0"), HostVeth("container-1", "eth1")
	if a == b || len(a) > 15 || !strings.HasPrefix(a, HostPrefix) || a != HostVeth("container-1", "eth0") {
		t.Errorf("host veth names %q, %q", a, b)
	}
	for _, tt := range []struct {
		alias string
		ok    bool
	}{{"strait-cni:abc/eth0", true}, {"strait-cni:a/b/eth0", true}, {"strait-cni:abc/", false}, {"other:abc/eth0", false}, {"strait-cni:/eth0", false}} {
		at, ok := attachmentOf(tt.alias)
		if ok != tt.ok {
			t.Errorf("attachmentOf(%q) = %v, %v", tt.alias, at, ok)
		}
	}
}
