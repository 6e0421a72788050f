package netns_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/straitnet/strait/e2e/netns/nstest"
)

// TestDialContext reaches a listener on a namespace's loopback from a
// process that is not inside, and refuses names it would have to resolve
// outside.
func TestDialContext(t *testing.T) {
	t.Parallel()
	ns := nstest.New(t, "dial")
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.WriteString(c, "inside\n")
			c.Close()
		}
	}()
	c, err := ns.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "inside\n" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := ns.DialContext(context.Background(), "tcp", "localhost:80"); err == nil {
		t.Error("dialed a name")
	}
}
