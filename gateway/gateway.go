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
	engine *tunnel.Engine
	nat    *nat.Table

	mu sync.Mutex // guards the fields below
	// current is what the gateway runs on: the last good configuration.
	current     desired
	currentHash string
	appliedAt   time.Time
	// seenHash is the file content last looked at, good or bad.
	seenHash string
	// configErr says why the file's content was refused; applyErr why
	// the last pass failed to bring the host to the configuration.
	configErr, applyErr Problem
	ready               bool
}

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
func Start(ctx context.Context, opts Options) (_ *Gateway, err error) {
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
	g := &Gateway{opts: opts, log: log, key: key}
	g.engine, err = tunnel.Open(tunnel.Options{
		Interface: opts.Interface, Mode: opts.WireGuard, WireGuardGo: opts.WireGuardGo, Logger: opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	defer func() {
		if err != nil {
			g.engine.Close()
		}
	}()
	g.nat, err = nat.New()
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := g.apply(ctx, want); err != nil {
		g.nat.Close()
		return nil, fmt.Errorf("gateway: %w", err)
	}
	h := hash(data)
	g.current, g.currentHash, g.seenHash, g.appliedAt, g.ready = want, h, h, time.Now(), true
	log.Info("gateway started", "interface", opts.Interface, "implementation", g.engine.Implementation(),
		"peers", len(want.tunnel.Peers), "config", h[:12])
	return g, nil
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

// reconcile is one pass of the loop.
func (g *Gateway) reconcile(ctx context.Context) {
	want := g.next()
	err := g.apply(ctx, want)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		if err.Error() != g.applyErr.Msg {
			g.log.Error("reconcile failed; retrying", "err", err)
		}
		g.applyErr = Problem{Msg: err.Error(), At: time.Now()}
		return
	}
	if g.applyErr.Msg != "" {
		g.log.Info("reconcile succeeded again")
	}
	g.applyErr = Problem{}
}

// Problem is an error the gateway reports in its status until it clears.
type Problem struct {
	Msg string    `json:"message,omitempty"`
	At  time.Time `json:"at,omitzero"`
}

// next returns the state to reconcile to: the mesh file's, if it changed
// and is valid, else the last good one.
func (g *Gateway) next() desired {
	g.mu.Lock()
	defer g.mu.Unlock()
	data, err := os.ReadFile(g.opts.MeshFile)
	if err != nil {
		g.refuse("", fmt.Errorf("%w; keeping the last good configuration", err))
		return g.current
	}
	h := hash(data)
	if h == g.currentHash {
		// Back to the configuration that runs (perhaps after a bad edit).
		g.seenHash, g.configErr = h, Problem{}
		return g.current
	}
	if h == g.seenHash {
		return g.current // refused before; said so then
	}
	g.seenHash = h
	m, err := meshconf.Parse(g.opts.MeshFile, data)
	if err == nil {
		var want desired
		want, err = derive(m, g.opts.Site, g.key, g.opts.Interface, g.opts.MTU)
		if err == nil {
			g.log.Info("mesh configuration changed", "config", h[:12], "peers", len(want.tunnel.Peers))
			g.current, g.currentHash, g.appliedAt = want, h, time.Now()
			g.configErr = Problem{}
			return want
		}
		err = fmt.Errorf("%s: %w", g.opts.MeshFile, err)
	}
	g.refuse(h, err)
	return g.current
}

// refuse records a refused configuration; it is logged once per content.
func (g *Gateway) refuse(h string, err error) {
	msg := err.Error()
	if msg != g.configErr.Msg {
		g.log.Error("mesh configuration refused; running on the last good one", "config", short(h), "current", short(g.currentHash), "err", msg)
	}
	g.configErr = Problem{Msg: msg, At: time.Now()}
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
