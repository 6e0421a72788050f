package health

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/straitnet/strait/discovery/meshpolicy"
)

// Reasons a check fails. They are gossiped with the instance's health, so
// they are few and fixed: an error's text would carry ephemeral ports and
// change from one check to the next.
const (
	ReasonTimeout            = "timeout"
	ReasonRefused            = "connection refused"
	ReasonReset              = "connection reset"
	ReasonClosed             = "connection closed"
	ReasonHostUnreachable    = "host unreachable"
	ReasonNetworkUnreachable = "network unreachable"
	ReasonConnectFailed      = "connect failed"
	ReasonBadResponse        = "bad HTTP response"
	ReasonBadAddress         = "invalid address"
	ReasonBadPath            = "invalid HTTP path"
	ReasonBadProtocol        = "unsupported protocol"
)

// dialFunc is Options.Dial.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// probe runs one check of t within ctx, which carries the check's timeout.
// ok says whether the target passed; otherwise reason is one of the stable
// reasons above (or "HTTP <code>") and err, if any, the detail for the log.
func probe(ctx context.Context, dial dialFunc, t Target) (ok bool, reason string, err error) {
	if !t.Addr.IsValid() || t.Addr.Port() == 0 {
		return false, ReasonBadAddress, fmt.Errorf("health: target %q: address %s has no IP or port", t.Key, t.Addr)
	}
	switch t.Check.Protocol {
	case "TCP":
		return probeTCP(ctx, dial, t)
	case "HTTP":
		return probeHTTP(ctx, dial, t)
	default:
		return false, ReasonBadProtocol, fmt.Errorf("health: target %q: protocol %q is not TCP or HTTP", t.Key, t.Check.Protocol)
	}
}

// probeTCP passes if a connection opens; it is closed at once.
func probeTCP(ctx context.Context, dial dialFunc, t Target) (bool, string, error) {
	conn, err := dial(ctx, "tcp", t.Addr.String())
	if err != nil {
		return false, reasonFor(ctx, err, ReasonConnectFailed), fmt.Errorf("health: connect to %s: %w", t.Addr, err)
	}
	conn.Close()
	return true, "", nil
}

// longAgo is a deadline in the past: setting it aborts a blocked read or
// write at once.
var longAgo = time.Unix(1, 0)

// probeHTTP passes if GET path answers 2xx or 3xx. It writes the request on
// a connection of its own and reads one response by hand instead of using
// an http.Transport: no connection pool, no goroutines of the transport to
// outlive the check, and redirects are not followed by construction.
func probeHTTP(ctx context.Context, dial dialFunc, t Target) (_ bool, _ string, err error) {
	addr := t.Addr.String()
	u, err := url.Parse("http://" + addr + t.Check.Path)
	if err != nil || !strings.HasPrefix(t.Check.Path, "/") || u.Host != addr {
		return false, ReasonBadPath, fmt.Errorf("health: target %q: HTTP path %q is not a path starting with /", t.Key, t.Check.Path)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, ReasonBadPath, fmt.Errorf("health: target %q: HTTP request for %q: %w", t.Key, t.Check.Path, err)
	}
	req.Close = true // "Connection: close": the server must not wait for a next request
	req.Header.Set("User-Agent", "strait-health/1")

	conn, err := dial(ctx, "tcp", addr)
	if err != nil {
		return false, reasonFor(ctx, err, ReasonConnectFailed), fmt.Errorf("health: connect to %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	// The deadline covers the timeout; this covers Close and Set, which
	// cancel the context before the deadline.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(longAgo) })
	defer stop()

	if err := req.Write(conn); err != nil {
		return false, reasonFor(ctx, err, ReasonBadResponse), fmt.Errorf("health: GET %s: write request: %w", u, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return false, reasonFor(ctx, err, ReasonBadResponse), fmt.Errorf("health: GET %s: read response: %w", u, err)
	}
	resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return false, fmt.Sprintf("HTTP %d", resp.StatusCode), fmt.Errorf("health: GET %s: %s", u, resp.Status)
	}
	return true, "", nil
}

// reasonFor names the cause of a failed check; fallback names causes it
// does not know. The check's context decides "timeout" first, because once
// the deadline passes the error could be anything the interrupted call
// returns.
func reasonFor(ctx context.Context, err error, fallback string) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ReasonTimeout
	}
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return ReasonTimeout
	case errors.Is(err, syscall.ECONNREFUSED):
		return ReasonRefused
	// A peer that resets at once fails the write (EPIPE) or the read
	// (ECONNRESET) depending on timing; one cause, one reason.
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, syscall.ECONNABORTED):
		return ReasonReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ReasonClosed
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.EHOSTDOWN):
		return ReasonHostUnreachable
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENETDOWN):
		return ReasonNetworkUnreachable
	}
	return fallback
}

// normalize fills in the check's defaults and repairs what would stop the
// checker (a non-positive interval would panic the ticker). Validation
// proper is meshpolicy's; this only keeps the goroutine sane.
func normalize(t Target) Target {
	h := t.Check.WithDefaults()
	if h.Interval <= 0 {
		h.Interval = meshpolicy.Duration(meshpolicy.DefaultInterval)
	}
	if h.Timeout <= 0 {
		h.Timeout = meshpolicy.Duration(min(meshpolicy.DefaultTimeout, time.Duration(h.Interval)))
	}
	if h.UnhealthyAfter < 1 {
		h.UnhealthyAfter = meshpolicy.DefaultUnhealthyAfter
	}
	if h.HealthyAfter < 1 {
		h.HealthyAfter = meshpolicy.DefaultHealthyAfter
	}
	t.Check = h
	return t
}
