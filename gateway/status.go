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

	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/natpool"
)

// Status is what a gateway reports about itself on its status socket.
type Status struct {
	Site      string `json:"site"`
	PublicKey string `json:"publicKey"`
	Ready     bool   `json:"ready"`
	Config    struct {
		MeshFile string `json:"meshFile"`
		SiteFile string `json:"siteFile,omitempty"`
		// Hash identifies the configuration the host runs on, applied
		// in full at AppliedAt.
		Hash      string    `json:"hash"`
		AppliedAt time.Time `json:"appliedAt"`
		// Pending is a valid newer configuration that is not applied in
		// full yet (see ApplyError).
		Pending string `json:"pending,omitempty"`
		// Refused says why the files' current content was refused; the
		// gateway runs on the configuration of Hash meanwhile.
		Refused *Problem `json:"refused,omitempty"`
	} `json:"config"`
	// ApplyError says why the last pass failed to bring the host to the
	// configuration; it is retried every interval.
	ApplyError *Problem `json:"applyError,omitempty"`
	// Conditions are what the gateway could not do although the
	// configuration is valid: an exhausted pool, an orphaned address.
	Conditions []string `json:"conditions,omitempty"`
	// Paths says, for every peer, whether traffic keeps its real
	// addresses or is translated, each way, and why.
	Paths []Path `json:"paths"`
	// Matrix is the same for every two sites of the mesh: the collision
	// matrix.
	Matrix      []natpool.Pair       `json:"matrix"`
	Pools       []natpool.Usage      `json:"pools"`
	Allocations []natpool.Allocation `json:"allocations"`
	NAT         NATStatus            `json:"nat"`
	Tunnel      tunnel.Status        `json:"tunnel"`
	// Discovery is the catalog and its gossip, with a discovery section.
	Discovery *DiscoveryStatus `json:"discovery,omitempty"`
	// LoadBalancer is the global services this gateway balances.
	LoadBalancer *LBStatus `json:"loadBalancer,omitempty"`
	// Firewall is the mesh firewall this gateway enforces.
	Firewall *FirewallStatus `json:"firewall,omitempty"`
	// BGP is the speaker that peers with the site's routers.
	BGP *BGPStatus `json:"bgp,omitempty"`
}

// Path is how traffic flows between this site and a peer.
type Path struct {
	Peer     string `json:"peer"`
	Outbound string `json:"outbound"` // "real" or "translated"
	Inbound  string `json:"inbound"`
	Why      string `json:"why,omitempty"`
}

// NATStatus summarises the translation programmed.
type NATStatus struct {
	Table      string   `json:"table"`
	Services   int      `json:"serviceMappings"`
	EgressPods int      `json:"egressPods"`
	EgressNets []string `json:"egressNets"`
	Translated []string `json:"translatedDestinations"`
	// Drifts counts the times the table was found edited and rewritten.
	Drifts int `json:"drifts"`
}

// Status returns the gateway's status.
func (g *Gateway) Status() Status {
	var st Status
	st.Site = g.opts.Site
	st.PublicKey = g.key.PublicKey().String()
	g.mu.Lock()
	st.Ready = g.ready
	st.Config.MeshFile, st.Config.SiteFile = g.opts.MeshFile, g.opts.SiteFile
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
	st.Conditions = append(st.Conditions, g.allocErrs...)
	st.Conditions = append(st.Conditions, g.wanted.problems...)
	if g.publishErr != "" {
		st.Conditions = append(st.Conditions, g.publishErr)
	}
	if g.disc == nil && g.wanted.discovery != nil {
		st.Conditions = append(st.Conditions, "the mesh file has a discovery section now: restart the gateway to join the catalog")
	}
	if g.alloc != nil {
		for _, o := range g.alloc.Orphans() {
			st.Conditions = append(st.Conditions, fmt.Sprintf("%s keeps %s, which no pool holds any more (pool %q changed); it moves when %s goes", o.Key, o.IP, o.Pool, o.Key))
		}
		st.Pools = g.alloc.Usage()
		st.Allocations = g.alloc.State().Allocations
	}
	st.Matrix = g.current.pairs
	for _, pr := range g.current.pairs {
		switch st.Site {
		case pr.A:
			st.Paths = append(st.Paths, Path{Peer: pr.B, Outbound: pr.AB, Inbound: pr.BA, Why: pr.Why})
		case pr.B:
			st.Paths = append(st.Paths, Path{Peer: pr.A, Outbound: pr.BA, Inbound: pr.AB, Why: pr.Why})
		}
	}
	st.NAT = NATStatus{Table: nat.TableName, Services: len(g.prog.Services), EgressPods: len(g.prog.EgressPods), Drifts: g.drifts}
	for _, e := range g.prog.EgressNets {
		st.NAT.EgressNets = append(st.NAT.EgressNets, fmt.Sprintf("%s as %s", e.Source, e.As))
	}
	for _, d := range g.prog.Translated {
		st.NAT.Translated = append(st.NAT.Translated, d.String())
	}
	if g.lbStatus != nil {
		l := *g.lbStatus
		st.LoadBalancer = &l
	} else if len(g.meshProblems) > 0 {
		st.LoadBalancer = &LBStatus{Problems: g.meshProblems}
	}
	if g.fwStatus != nil {
		f := *g.fwStatus
		st.Firewall = &f
	}
	b := g.bgp
	g.mu.Unlock()
	if g.disc != nil {
		st.Discovery = g.disc.status()
	}
	st.BGP = b.statusOf()
	ts, err := g.engine.Status()
	if err != nil {
		st.Ready = false
		st.ApplyError = &Problem{Msg: err.Error(), At: g.opts.Now()}
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
