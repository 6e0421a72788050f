// Package nstest gives tests their own network namespaces.
//
// Tests that need root skip on a developer's machine without it, and fail
// when CI=true: CI runs as root, so a skip there would hide a test that
// never ran.
package nstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/straitnet/strait/e2e/netns"
)

// RequireRoot skips the test without root, or fails it under CI=true.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root and network namespaces; CI runs as root, so this must not skip")
	}
	t.Skip("needs root (network namespaces); runs in CI")
}

// RequireCommands skips without the given programs, or fails under CI=true
// (`make deps` installs them).
func RequireCommands(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is missing; `make deps` installs it", n)
			}
			t.Skipf("%s is missing; run `make deps`", n)
		}
	}
}

// RunID returns a short random ID for names unique to one test.
func RunID() string {
	var b [3]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// New makes a namespace for this test and removes it, with every process
// inside, when the test ends.
func New(t testing.TB, name string) netns.NS {
	t.Helper()
	RequireRoot(t)
	ns, err := netns.Add(netns.Prefix + "t" + RunID() + "-" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := netns.Delete(ns.Name); err != nil {
			t.Error(err)
		}
	})
	return ns
}

// Eventually polls cond every 100ms until it holds, and fails the test
// with cond's last error, naming what, if it does not within the time.
func Eventually(t testing.TB, within time.Duration, what string, cond func() error) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if err = cond(); err == nil {
			return
		}
	}
	t.Fatalf("%s: not within %s: %v", what, within, err)
}
