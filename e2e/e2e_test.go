// Package e2e_test runs strait end to end in the lab: real namespaces, real
// WireGuard, real nftables, real packets. These tests need root; under
// CI=true they fail rather than skip without it.
package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/straitnet/strait/e2e/lab"
	"github.com/straitnet/strait/e2e/netns/nstest"
	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/gateway/tunnel"
)

// bins holds the binaries TestMain builds for the labs.
var bins struct{ dir, strait, gateway string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strait-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, pkg := range []string{"github.com/straitnet/strait/cmd/...", "golang.zx2c4.com/wireguard"} {
		out, err := exec.Command("go", "build", "-o", dir+"/", pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	// The upstream wireguard-go main package builds as "wireguard".
	if err := os.Rename(filepath.Join(dir, "wireguard"), filepath.Join(dir, "wireguard-go")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.dir, bins.strait, bins.gateway = dir, filepath.Join(dir, "strait"), filepath.Join(dir, "strait-gateway")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// newLab brings a topology up for one test and, when the test ends, takes
// it down and fails the test if anything of it is left.
func newLab(t *testing.T, topo lab.Topology) *lab.Lab {
	t.Helper()
	return newLabWith(t, topo, lab.Options{})
}

// newLabWith is newLab with options (the run, directory and binaries are
// the test's).
func newLabWith(t *testing.T, topo lab.Topology, o lab.Options) *lab.Lab {
	t.Helper()
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "ip", "nft", "wg", "wg-quick", "wireguard-go", "ping")
	run := "t" + nstest.RunID()
	timeout := time.Minute
	if o.Kube {
		timeout = 3 * time.Minute // clusters start on a machine busy with other labs
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	o.Run, o.GatewayBin, o.StraitBin, o.WireGuard = run, bins.gateway, bins.strait, "auto"
	l, err := lab.Up(ctx, topo, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, s := range topo.Sites {
				if data, err := os.ReadFile(filepath.Join(l.Dir, s.Name, "gateway.log")); err == nil {
					t.Logf("gateway log of %s:\n%s", s.Name, data)
				}
			}
		}
		if err := l.Down(); err != nil {
			t.Errorf("lab down: %v", err)
		}
		left, err := lab.Leftovers(run, "")
		if err != nil {
			t.Error(err)
		}
		if len(left) > 0 {
			t.Errorf("lab down left behind: %s", strings.Join(left, ", "))
		}
	})
	return l
}

// waitReachable retries a TCP request until it succeeds (the first packets
// to a peer wait for the WireGuard handshake) and returns the reply.
func waitReachable(t *testing.T, l *lab.Lab, from, to string) lab.Reply {
	t.Helper()
	src, dst := l.MustHost(from), l.MustHost(to)
	target := netip.AddrPortFrom(l.Topology.Target(src, dst), lab.ServePort)
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		var r lab.Reply
		if r, err = lab.Request(context.Background(), src, target, "tcp", time.Second); err == nil {
			return r
		}
	}
	t.Fatalf("%s cannot reach %s at %s: %v", from, to, target, err)
	return lab.Reply{}
}

func status(t *testing.T, l *lab.Lab, site string) gateway.Status {
	t.Helper()
	st, err := gateway.FetchStatus(context.Background(), l.SocketOf(site))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func peer(t *testing.T, st gateway.Status, site string) tunnel.PeerStatus {
	t.Helper()
	for _, p := range st.Tunnel.Peers {
		if p.Site == site {
			return p
		}
	}
	t.Fatalf("gateway %s has no peer %s", st.Site, site)
	return tunnel.PeerStatus{}
}
