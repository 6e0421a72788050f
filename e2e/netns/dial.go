package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
)

// DialContext connects to addr ("172.31.0.1:6443") from inside the
// namespace: the socket is made on a thread that entered it, and stays
// there. It has the signature of net.Dialer.DialContext, so that an HTTP
// transport or a client-go rest.Config (its Dial) reaches servers that
// live in a lab namespace from a process that does not.
//
// The host must be an IP address: resolving a name would run on other
// goroutines, outside the namespace.
func (ns NS) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("netns: dial %s in %s: %w", addr, ns.Name, err)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return nil, fmt.Errorf("netns: dial %s in %s: want an IP address, not a name", addr, ns.Name)
	}
	var c net.Conn
	err = ns.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
