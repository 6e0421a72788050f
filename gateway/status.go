package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/straitnet/strait/gateway/tunnel"
)

// Status is what a gateway reports about itself on its status socket.
type Status struct {
	Site      string `json:"site"`
	PublicKey string `json:"publicKey"`
	Ready     bool   `json:"ready"`
	Config    struct {
		File string `json:"file"`
		// Hash identifies the configuration the host runs on, applied
		// in full at AppliedAt.
		Hash      string    `json:"hash"`
		AppliedAt time.Time `json:"appliedAt"`
		// Pending is a valid newer configuration that is not applied in
		// full yet (see ApplyError).
		Pending string `json:"pending,omitempty"`
		// Refused says why the file's current content was refused; the
		// gateway runs on the configuration of Hash meanwhile.
		Refused *Problem `json:"refused,omitempty"`
	} `json:"config"`
	// ApplyError says why the last pass failed to bring the host to the
	// configuration; it is retried every interval.
	ApplyError *Problem      `json:"applyError,omitempty"`
	Tunnel     tunnel.Status `json:"tunnel"`
	NAT        []NATMap      `json:"nat"`
}

// NATMap is one translation the gateway applies.
type NATMap struct {
	Real   string `json:"real"`
	Global string `json:"global"`
}

// Status returns the gateway's status.
func (g *Gateway) Status() Status {
	var st Status
	st.Site = g.opts.Site
	st.PublicKey = g.key.PublicKey().String()
	g.mu.Lock()
	st.Ready = g.ready
	st.Config.File = g.opts.MeshFile
	st.Config.Hash = short(g.currentHash)
	st.Config.AppliedAt = g.appliedAt
	if g.wantedHash != g.currentHash {
		st.Config.Pending = short(g.wantedHash)
	}
	if g.configErr.Msg != "" {
		p := g.configErr
		st.Config.Refused = &p
	}
	if g.applyErr.Msg != "" {
		p := g.applyErr
		st.ApplyError = &p
	}
	for _, m := range g.current.nat.Maps {
		st.NAT = append(st.NAT, NATMap{Real: m.Real.String(), Global: m.Global.String()})
	}
	g.mu.Unlock()
	ts, err := g.engine.Status()
	if err != nil {
		st.Ready = false
		st.ApplyError = &Problem{Msg: err.Error(), At: time.Now()}
	}
	st.Tunnel = ts
	return st
}

// statusServer serves GET /status as JSON on a unix socket.
type statusServer struct {
	srv  *http.Server
	done chan struct{}
}

func serveStatus(g *Gateway, path string, log *slog.Logger) (*statusServer, error) {
	os.Remove(path) // a socket a crashed run left; nobody listens on it
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("gateway: status socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("gateway: status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(g.Status())
	})
	s := &statusServer{
		srv:  &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("status server stopped", "err", err)
		}
	}()
	return s, nil
}

func (s *statusServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}

// FetchStatus asks the gateway behind the status socket at path.
func FetchStatus(ctx context.Context, path string) (Status, error) {
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://gateway/status", nil)
	if err != nil {
		return Status{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Status{}, fmt.Errorf("gateway status at %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Status{}, fmt.Errorf("gateway status at %s: %s", path, resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Status{}, fmt.Errorf("gateway status at %s: %w", path, err)
	}
	return st, nil
}
