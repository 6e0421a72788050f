// Package kubetest gives tests a real Kubernetes API server of their own.
package kubetest

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/straitnet/strait/e2e/kube"
)

// Start runs etcd and a kube-apiserver for the test and stops them when it
// ends. Without etcd it skips, or fails under CI=true (`make deps`
// installs it).
func Start(t testing.TB) *kube.Server {
	t.Helper()
	if _, err := exec.LookPath("etcd"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("etcd is missing; `make deps` installs it (Debian's etcd-server)")
		}
		t.Skip("etcd is missing; run `make deps`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	s, err := kube.Start(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	return s
}
