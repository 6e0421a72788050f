// Package gateway is strait's per-site gateway: it keeps the site's
// WireGuard device, its peers and routes, and its address translation in
// line with the mesh configuration, and serves its status.
//
// One reconciler owns the host's state. At start it needs a valid
// configuration; afterwards a configuration that fails to parse or to
// validate is refused and reported, and the gateway keeps running on the
// last good one. Each pass also repairs drift: a peer someone removed by
// hand, a flushed nftables table.
package gateway

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/gateway/nat"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/gateway/wgkey"
)

// Options configure a gateway. Zero values take the documented defaults.
type Options struct {
	// Site is this gateway's site name in the mesh configuration. Required.
	Site string
	// MeshFile is the mesh configuration. Required.
	MeshFile string
	// StateDir holds the private key and the status socket; default /var/lib/strait.
	StateDir string
	// Interface is the WireGuard device; default strait0.
	Interface string
	// WireGuard picks the implementation; default auto.
	WireGuard tunnel.Mode
	// WireGuardGo is the binary for WireGuard mode wireguard-go.
	WireGuardGo string
	// MTU of the tunnel; 0 derives it from the underlay.
	MTU int
	// Interval is how often the gateway looks for a changed mesh file and
	// repairs drift; default 2s.
	Interval time.Duration
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// DefaultStateDir is where a gateway keeps its key and status socket.
const DefaultStateDir = "/var/lib/strait"

// SocketName is the status socket's name in the state directory.
const SocketName = "gateway.sock"

func (o *Options) setDefaults() error {
	if o.Site == "" {
		return errors.New("gateway: no site given (--site)")
	}
	if o.MeshFile == "" {
		return errors.New("gateway: no mesh configuration given (--mesh)")
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	if o.Interface == "" {
		o.Interface = "strait0"
	}
	if o.WireGuard == "" {
		o.WireGuard = tunnel.ModeAuto
	}
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Gateway is a running gateway.
type Gateway struct {
	opts   Options
	log    *slog.Logger
	key    wgtypes.Key
	engine engine
	nat    natTable

	mu sync.Mutex // guards the fields below
	// wanted is the last valid configuration read from the file;
	// current is the last one applied in full, what the host runs on.
	// They differ while applying wanted fails.
	wanted, current         desired
	wantedHash, currentHash string
	appliedAt               time.Time
	// seenHash is the file content last looked at, good or bad, and
	// seenErr why it was refused, if it was.
	seenHash string
	seenErr  Problem
	// configErr says why the file's content is refused; applyErr why the
	// last pass failed to bring the host to the wanted configuration.
	configErr, applyErr Problem
	ready               bool
}

// engine is what the gateway needs of the tunnel engine.
type engine interface {
	Apply(context.Context, tunnel.Config) error
	Status() (tunnel.Status, error)
	Implementation() tunnel.Mode
	Close() error
}

// natTable is what the gateway needs of the NAT table.
type natTable interface {
	Apply(nat.Rules) error
	InSync(nat.Rules) (bool, error)
	Close() error
}

var (
	_ engine   = (*tunnel.Engine)(nil)
	_ natTable = (*nat.Table)(nil)
)

// Keygen makes the gateway's private key in stateDir if there is none and
// returns its public key.
func Keygen(stateDir string) (wgtypes.Key, bool, error) {
	k, created, err := wgkey.LoadOrCreate(filepath.Join(stateDir, wgkey.FileName))
	if err != nil {
		return wgtypes.Key{}, false, err
	}
	return k.PublicKey(), created, nil
}

// Run starts the gateway and keeps it reconciled until ctx ends. A value on
// reload makes it read the mesh file at once (SIGHUP).
func Run(ctx context.Context, opts Options, reload <-chan struct{}) error {
	g, err := Start(ctx, opts)
	if err != nil {
		return err
	}
	defer g.Close()
	return g.Loop(ctx, reload)
}

// Start loads the key and the mesh configuration, opens the device and
// applies the configuration. Any failure here stops the start: there is no
// last good configuration yet.
func Start(ctx context.Context, opts Options) (*Gateway, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	log := opts.Logger.With("component", "gateway", "site", opts.Site)
	key, created, err := wgkey.LoadOrCreate(filepath.Join(opts.StateDir, wgkey.FileName))
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if created {
		log.Info("generated a private key", "publicKey", key.PublicKey().String())
	}
	data, err := os.ReadFile(opts.MeshFile)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	m, err := meshconf.Parse(opts.MeshFile, data)
	if err != nil {
		return nil, fmt.Errorf("gateway: mesh configuration refused:\n%w", err)
	}
	want, err := derive(m, opts.Site, key, opts.Interface, opts.MTU)
	if err != nil {
		return nil, fmt.Errorf("gateway: %s: %w", opts.MeshFile, err)
	}
	eng, err := tunnel.Open(tunnel.Options{
		Interface: opts.Interface, Mode: opts.WireGuard, WireGuardGo: opts.WireGuardGo, Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	tab, err := nat.New()
	if err != nil {
		eng.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g := newGateway(opts, log, key, eng, tab)
	if err := g.start(ctx, want, hash(data)); err != nil {
		g.Close()
		return nil, err
	}
	log.Info("gateway started", "interface", opts.Interface, "implementation", eng.Implementation(),
		"peers", len(want.tunnel.Peers), "config", short(g.currentHash))
	return g, nil
}

func newGateway(opts Options, log *slog.Logger, key wgtypes.Key, eng engine, tab natTable) *Gateway {
	return &Gateway{opts: opts, log: log, key: key, engine: eng, nat: tab}
}

// start applies the first configuration; it must succeed.
func (g *Gateway) start(ctx context.Context, want desired, h string) error {
	if err := g.apply(ctx, want); err != nil {
		return fmt.Errorf("gateway: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.wanted, g.wantedHash, g.current, g.currentHash, g.seenHash = want, h, want, h, h
	g.appliedAt, g.ready = time.Now(), true
	return nil
}

// Close stops the device. The NAT table stays: conntrack and the table keep
// established flows translated while the gateway restarts.
func (g *Gateway) Close() error {
	return errors.Join(g.nat.Close(), g.engine.Close())
}

// Loop reconciles until ctx ends: on every tick and every reload it reads
// the mesh file, applies it if it changed and is valid, and repairs drift.
func (g *Gateway) Loop(ctx context.Context, reload <-chan struct{}) error {
	srv, err := serveStatus(g, filepath.Join(g.opts.StateDir, SocketName), g.log)
	if err != nil {
		return err
	}
	defer srv.Close()
	t := time.NewTicker(g.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			g.log.Info("gateway stopping")
			return nil
		case <-reload:
			g.log.Info("reload requested")
		case <-t.C:
		}
		g.reconcile(ctx)
	}
}

// reconcile is one pass of the loop: read the file, apply what is wanted,
// and only then call it current.
func (g *Gateway) reconcile(ctx context.Context) {
	want, h := g.next()
	err := g.apply(ctx, want)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		if err.Error() != g.applyErr.Msg {
			g.log.Error("applying the configuration failed; retrying", "config", short(h), "running", short(g.currentHash), "err", err)
		}
		g.applyErr = Problem{Msg: err.Error(), At: time.Now()}
		return
	}
	if g.applyErr.Msg != "" {
		g.log.Info("configuration applied after failures", "config", short(h))
	}
	g.applyErr = Problem{}
	if h != g.currentHash {
		g.current, g.currentHash, g.appliedAt = want, h, time.Now()
		g.log.Info("configuration applied", "config", short(h), "peers", len(want.tunnel.Peers))
	}
}

// next reads the mesh file and returns the configuration to reconcile to:
// the file's, if it is valid, else the last valid one.
func (g *Gateway) next() (desired, string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	data, err := os.ReadFile(g.opts.MeshFile)
	if err != nil {
		g.refuse(Problem{Msg: fmt.Sprintf("%v; keeping the last good configuration", err), At: time.Now()})
		return g.wanted, g.wantedHash
	}
	h := hash(data)
	switch h {
	case g.wantedHash:
		// Unchanged, or back to it after a bad edit.
		g.seenHash, g.seenErr, g.configErr = h, Problem{}, Problem{}
		return g.wanted, g.wantedHash
	case g.seenHash:
		g.configErr = g.seenErr // refused before; said so then
		return g.wanted, g.wantedHash
	}
	g.seenHash = h
	m, err := meshconf.Parse(g.opts.MeshFile, data)
	if err == nil {
		var want desired
		if want, err = derive(m, g.opts.Site, g.key, g.opts.Interface, g.opts.MTU); err == nil {
			g.log.Info("mesh configuration changed", "config", short(h), "peers", len(want.tunnel.Peers))
			g.wanted, g.wantedHash = want, h
			g.seenErr, g.configErr = Problem{}, Problem{}
			return want, h
		}
		err = fmt.Errorf("%s: %w", g.opts.MeshFile, err)
	}
	g.seenErr = Problem{Msg: err.Error(), At: time.Now()}
	g.refuse(g.seenErr)
	return g.wanted, g.wantedHash
}

// refuse records a refused configuration; it is logged once per message.
func (g *Gateway) refuse(p Problem) {
	if p.Msg != g.configErr.Msg {
		g.log.Error("mesh configuration refused; running on the last good one", "running", short(g.currentHash), "err", p.Msg)
	}
	g.configErr = p
}

// apply brings the device and the NAT table to want; both are idempotent
// and touch only what differs.
func (g *Gateway) apply(ctx context.Context, want desired) error {
	if err := g.engine.Apply(ctx, want.tunnel); err != nil {
		return err
	}
	ok, err := g.nat.InSync(want.nat)
	if err != nil {
		return err
	}
	if !ok {
		if err := g.nat.Apply(want.nat); err != nil {
			return err
		}
		g.log.Info("NAT table programmed", "table", nat.TableName, "maps", len(want.nat.Maps))
	}
	return nil
}

func hash(data []byte) string {
	sum := sha256.Sum256(bytes.TrimSpace(data))
	return hex.EncodeToString(sum[:])
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// Problem is an error the gateway reports in its status until it clears.
type Problem struct {
	Msg string    `json:"message,omitempty"`
	At  time.Time `json:"at,omitzero"`
}
