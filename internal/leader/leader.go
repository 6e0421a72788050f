// Package leader runs a function only while this process holds a
// coordination.k8s.io Lease, so that of the replicas of a Deployment one
// works and the others stand by. It wraps client-go's leaderelection with
// the order a gateway needs on the way out: when leadership is lost, or
// the process is told to stop, the function's context ends and the lease
// is given up only after the function has returned, so that a standby
// never takes over from a leader still tearing down.
//
// It needs get, create and update on the Lease (coordination.k8s.io,
// namespaced); nothing else.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// ErrLost is returned by Run when this process held the lease and lost it
// (it could not renew it in time, or someone else took it): the caller
// should exit, to start again as a standby.
var ErrLost = errors.New("leader: lost the lease")

// Defaults of Config, those of Kubernetes' own controllers.
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Config configures an election. Zero durations take the defaults.
type Config struct {
	// Client reaches the API server. Required.
	Client kubernetes.Interface
	// Namespace and Name of the Lease. Required.
	Namespace, Name string
	// Identity of this candidate, unique among them (the pod's name).
	// Required.
	Identity string
	// LeaseDuration is how long a standby waits after the last renewal
	// before it takes the lease; default DefaultLeaseDuration.
	LeaseDuration time.Duration
	// RenewDeadline is how long the leader keeps trying to renew before
	// it gives up leading; default DefaultRenewDeadline. It must be
	// shorter than LeaseDuration.
	RenewDeadline time.Duration
	// RetryPeriod is the time between tries, of the standby to take the
	// lease and of the leader to renew it; default DefaultRetryPeriod.
	RetryPeriod time.Duration
	// Logger; default: none.
	Logger *slog.Logger
}

func (c *Config) defaults() error {
	if c.Client == nil {
		return errors.New("leader: a Kubernetes client is required")
	}
	if c.Namespace == "" || c.Name == "" {
		return errors.New("leader: the Lease's namespace and name are required")
	}
	if c.Identity == "" {
		return errors.New("leader: an identity is required (the pod's name)")
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	if c.LeaseDuration <= 0 || c.RenewDeadline <= 0 || c.RetryPeriod <= 0 {
		return fmt.Errorf("leader: durations must be positive (lease duration %s, renew deadline %s, retry period %s)",
			c.LeaseDuration, c.RenewDeadline, c.RetryPeriod)
	}
	if c.RenewDeadline >= c.LeaseDuration {
		return fmt.Errorf("leader: the renew deadline (%s) must be shorter than the lease duration (%s)", c.RenewDeadline, c.LeaseDuration)
	}
	// leaderelection jitters the retry period by up to this factor.
	if float64(c.RenewDeadline) <= leaderelection.JitterFactor*float64(c.RetryPeriod) {
		return fmt.Errorf("leader: the renew deadline (%s) must be longer than %.1f times the retry period (%s)",
			c.RenewDeadline, leaderelection.JitterFactor, c.RetryPeriod)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Run waits until this candidate holds the lease, then runs run. It
// returns:
//   - when ctx ends before this candidate leads: nil, without running run;
//   - when run returns (ctx ended, or run failed on its own): what run
//     returned, after giving up the lease so that a standby takes over at
//     once;
//   - when the lease is lost while run runs: run's context ends, and once
//     run has returned, an error that wraps ErrLost (and run's error, if
//     any).
//
// Run owns the election's goroutine and waits for it before returning.
func Run(ctx context.Context, cfg Config, run func(ctx context.Context) error) error {
	if err := cfg.defaults(); err != nil {
		return err
	}
	log := cfg.Logger.With("component", "leader", "lease", cfg.Namespace+"/"+cfg.Name, "identity", cfg.Identity)
	lock := &watchedLock{Interface: &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
		Client:     cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}}
	// OnStartedLeading is called at most once per elector run, on a
	// goroutine of its own: it only hands the leader's context over,
	// and run runs here.
	started := make(chan context.Context, 1)
	el, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cfg.LeaseDuration,
		RenewDeadline:   cfg.RenewDeadline,
		RetryPeriod:     cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            cfg.Namespace + "/" + cfg.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(lctx context.Context) { started <- lctx },
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != cfg.Identity && id != "" {
					log.Info("leader: standing by", "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader: %w", err)
	}

	// The election runs on a context of its own, which ends only once run
	// has returned (or never started): the lease is released when it ends.
	electCtx, stopElection := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElection()
	elected := make(chan struct{})
	go func() {
		defer close(elected)
		el.Run(electCtx)
	}()
	log.Info("leader: waiting for the lease")

	var lctx context.Context
	select {
	case <-ctx.Done():
		stopElection()
		<-elected
		log.Info("leader: stopped before leading")
		return nil
	case <-elected:
		// The elector returns on its own only after it led and could not
		// renew; whether or not the hand-over reached us, run never ran.
		return fmt.Errorf("%w %s/%s before it started", ErrLost, cfg.Namespace, cfg.Name)
	case lctx = <-started:
	}
	if ctx.Err() != nil {
		// Elected as we were told to stop: do not start only to stop.
		stopElection()
		<-elected
		log.Info("leader: stopped as it was elected; lease released")
		return nil
	}

	log.Info("leader: leading")
	runCtx, cancelRun := context.WithCancel(ctx)
	unwatch := context.AfterFunc(lctx, cancelRun) // the elector stopped renewing
	// client-go ends the leader's context only after its last renewal
	// attempt and a release attempt, which may hang on an unreachable API
	// server past the moment a standby may take the lease: run is stopped
	// here once the renew deadline has passed since the last renewal.
	expired := make(chan struct{})
	watchdog := make(chan struct{})
	go func() {
		defer close(watchdog)
		t := time.NewTicker(cfg.RetryPeriod / 4)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				if time.Since(lock.lastRenewal()) > cfg.RenewDeadline {
					log.Warn("leader: no renewal within the renew deadline; stopping before a standby may take over", "deadline", cfg.RenewDeadline)
					close(expired)
					cancelRun()
					return
				}
			}
		}
	}()
	begun := time.Now()
	runErr := run(runCtx)
	cancelRun()
	<-watchdog
	renewFailed := false
	select {
	case <-expired:
		renewFailed = true
	default:
	}
	lost := (!unwatch() || renewFailed) && ctx.Err() == nil
	stopElection() // releases the lease if it is still ours
	<-elected
	if lost {
		log.Warn("leader: lost the lease; stopped", "led", time.Since(begun).Round(time.Millisecond), "err", runErr)
		return errors.Join(fmt.Errorf("%w %s/%s", ErrLost, cfg.Namespace, cfg.Name), runErr)
	}
	log.Info("leader: stopped leading; lease released", "led", time.Since(begun).Round(time.Millisecond))
	return runErr
}

// watchedLock is a lock that remembers when it last wrote the lease: the
// acquisition and each renewal.
type watchedLock struct {
	resourcelock.Interface
	mu      sync.Mutex
	renewed time.Time
}

func (l *watchedLock) Create(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	at := time.Now() // before the write: the lease counts from no later
	err := l.Interface.Create(ctx, r)
	l.wrote(at, err)
	return err
}

func (l *watchedLock) Update(ctx context.Context, r resourcelock.LeaderElectionRecord) error {
	at := time.Now()
	err := l.Interface.Update(ctx, r)
	l.wrote(at, err)
	return err
}

func (l *watchedLock) wrote(at time.Time, err error) {
	if err != nil {
		return
	}
	l.mu.Lock()
	l.renewed = at
	l.mu.Unlock()
}

func (l *watchedLock) lastRenewal() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.renewed
}
