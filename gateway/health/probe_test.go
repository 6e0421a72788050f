package health

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

func TestReasonFor(t *testing.T) {
	opErr := func(op string, err error) error {
		return &net.OpError{Op: op, Net: "tcp", Err: &os.SyscallError{Syscall: op, Err: err}}
	}
	tests := []struct {
		err  error
		want string
	}{
		{opErr("connect", syscall.ECONNREFUSED), ReasonRefused},
		{opErr("read", syscall.ECONNRESET), ReasonReset},
		{opErr("write", syscall.EPIPE), ReasonReset},
		{opErr("connect", syscall.EHOSTUNREACH), ReasonHostUnreachable},
		{opErr("connect", syscall.ENETUNREACH), ReasonNetworkUnreachable},
		{opErr("read", os.ErrDeadlineExceeded), ReasonTimeout},
		{fmt.Errorf("dial: %w", context.DeadlineExceeded), ReasonTimeout},
		{io.EOF, ReasonClosed},
		{fmt.Errorf("read: %w", io.ErrUnexpectedEOF), ReasonClosed},
		{errors.New("malformed HTTP status code"), "fallback"},
	}
	for _, tt := range tests {
		if got := reasonFor(context.Background(), tt.err, "fallback"); got != tt.want {
			t.Errorf("reasonFor(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}

	// Past the check's deadline, whatever the interrupted call returned
	// is a timeout.
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	if got := reasonFor(ctx, opErr("read", syscall.ECONNRESET), "fallback"); got != ReasonTimeout {
		t.Errorf("reasonFor past the deadline = %q, want %q", got, ReasonTimeout)
	}
}

func TestNormalize(t *testing.T) {
	ms := func(n int) meshpolicy.Duration { return meshpolicy.Duration(time.Duration(n) * time.Millisecond) }
	tests := []struct {
		name string
		in   meshpolicy.HealthCheck
		want meshpolicy.HealthCheck
	}{
		{"zero takes the defaults", meshpolicy.HealthCheck{},
			meshpolicy.HealthCheck{Protocol: "TCP", Interval: ms(500), Timeout: ms(300), UnhealthyAfter: 2, HealthyAfter: 2}},
		{"HTTP gets path /", meshpolicy.HealthCheck{Protocol: "HTTP"},
			meshpolicy.HealthCheck{Protocol: "HTTP", Path: "/", Interval: ms(500), Timeout: ms(300), UnhealthyAfter: 2, HealthyAfter: 2}},
		{"short interval bounds the default timeout", meshpolicy.HealthCheck{Interval: ms(100)},
			meshpolicy.HealthCheck{Protocol: "TCP", Interval: ms(100), Timeout: ms(100), UnhealthyAfter: 2, HealthyAfter: 2}},
		{"negatives are repaired", meshpolicy.HealthCheck{Interval: ms(-1), Timeout: ms(-1), UnhealthyAfter: -1, HealthyAfter: -1},
			meshpolicy.HealthCheck{Protocol: "TCP", Interval: ms(500), Timeout: ms(300), UnhealthyAfter: 2, HealthyAfter: 2}},
		{"explicit values stay", meshpolicy.HealthCheck{Protocol: "HTTP", Path: "/healthz", Interval: ms(1000), Timeout: ms(50), UnhealthyAfter: 3, HealthyAfter: 1},
			meshpolicy.HealthCheck{Protocol: "HTTP", Path: "/healthz", Interval: ms(1000), Timeout: ms(50), UnhealthyAfter: 3, HealthyAfter: 1}},
	}
	for _, tt := range tests {
		if got := normalize(Target{Check: tt.in}).Check; got != tt.want {
			t.Errorf("%s: normalize(%+v) = %+v, want %+v", tt.name, tt.in, got, tt.want)
		}
	}
}

// TestProbeInvalid covers targets that cannot be checked: they fail with a
// reason of their own instead of stopping the checker.
func TestProbeInvalid(t *testing.T) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		t.Errorf("dialed %s for a target that cannot be checked", addr)
		return nil, errors.New("no")
	}
	good := netip.MustParseAddrPort("127.0.0.1:9")
	tests := []struct {
		t    Target
		want string
	}{
		{Target{Key: "no addr", Check: meshpolicy.HealthCheck{Protocol: "TCP"}}, ReasonBadAddress},
		{Target{Key: "no port", Addr: netip.AddrPortFrom(good.Addr(), 0), Check: meshpolicy.HealthCheck{Protocol: "TCP"}}, ReasonBadAddress},
		{Target{Key: "udp", Addr: good, Check: meshpolicy.HealthCheck{Protocol: "UDP"}}, ReasonBadProtocol},
		{Target{Key: "path", Addr: good, Check: meshpolicy.HealthCheck{Protocol: "HTTP", Path: "healthz"}}, ReasonBadPath},
		{Target{Key: "bad escape", Addr: good, Check: meshpolicy.HealthCheck{Protocol: "HTTP", Path: "/%zz"}}, ReasonBadPath},
	}
	for _, tt := range tests {
		ok, reason, err := probe(context.Background(), dial, tt.t)
		if ok || reason != tt.want || err == nil {
			t.Errorf("probe(%s) = %v, %q, %v; want false, %q and an error", tt.t.Key, ok, reason, err, tt.want)
		}
	}
}
