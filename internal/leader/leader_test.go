package leader_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/straitnet/strait/e2e/kube/kubetest"
	"github.com/straitnet/strait/internal/leader"
)

const ns = "strait-system"

// A short retry period, so that hand-overs take a fraction of a second;
// a lease duration and renew deadline long enough that a leader on a
// loaded machine keeps its lease, and that a hand-over that had to wait
// for the lease to expire (not released) would show.
func config(client kubernetes.Interface, name, id string) leader.Config {
	return leader.Config{
		Client: client, Namespace: ns, Name: name, Identity: id,
		LeaseDuration: 6 * time.Second, RenewDeadline: 4 * time.Second, RetryPeriod: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	}
}

// candidate is one elector running in the test: its run function reports
// when it starts and stops, and takes shutdown time before it returns.
type candidate struct {
	id       string
	cancel   context.CancelFunc
	started  chan struct{} // closed when run starts
	finished chan struct{} // closed when run has returned
	done     chan struct{} // closed when leader.Run has returned
	err      error         // what it returned, once done is closed
	shutdown time.Duration
	runErr   error // what run returns
}

func start(t *testing.T, cfg leader.Config, shutdown time.Duration, runErr error) *candidate {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{id: cfg.Identity, cancel: cancel, started: make(chan struct{}), finished: make(chan struct{}),
		done: make(chan struct{}), shutdown: shutdown, runErr: runErr}
	var once sync.Once
	go func() {
		defer close(c.done)
		c.err = leader.Run(ctx, cfg, func(ctx context.Context) error {
			once.Do(func() { close(c.started) })
			if c.runErr != nil {
				close(c.finished)
				return c.runErr
			}
			<-ctx.Done()
			time.Sleep(c.shutdown) // graceful shutdown
			close(c.finished)
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-c.done:
		case <-time.After(20 * time.Second):
			t.Errorf("%s: leader.Run did not return 20s after its context ended", c.id)
		}
	})
	return c
}

// wait is what leader.Run returned, waiting for it a while.
func (c *candidate) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: leader.Run did not return within 10s", c.id)
		return nil
	}
}

func holder(t *testing.T, client kubernetes.Interface, name string) string {
	t.Helper()
	l, err := client.CoordinationV1().Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("lease %s: %v", name, err)
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func waitStarted(t *testing.T, within time.Duration, cs ...*candidate) *candidate {
	t.Helper()
	deadline := time.After(within)
	for {
		for _, c := range cs {
			select {
			case <-c.started:
				return c
			default:
			}
		}
		select {
		case <-deadline:
			t.Fatalf("no candidate started leading within %s", within)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func running(c *candidate) bool {
	select {
	case <-c.started:
		return true
	default:
		return false
	}
}

// TestElection runs candidates against a real kube-apiserver: one leads
// and the Lease names it; cancelling it hands over to the other within a
// retry period or two, and only after the leader's run has returned; a
// stolen lease stops the leader with ErrLost; a run that fails on its own
// gives the lease up; a standby told to stop never runs.
func TestElection(t *testing.T) {
	srv := kubetest.Start(t)
	client, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("partition", func(t *testing.T) {
		// The API server becomes unreachable (requests hang until their
		// timeout): the leader must stop before a standby may take the
		// lease, a lease duration after its last renewal.
		var cut atomic.Bool
		rc := srv.Config()
		rc.Timeout = time.Second
		rc.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
			return roundTripper(func(r *http.Request) (*http.Response, error) {
				if cut.Load() {
					<-r.Context().Done()
					return nil, r.Context().Err()
				}
				return rt.RoundTrip(r)
			})
		}
		pc, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		cfg := config(pc, "partition", "a")
		cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod = 3*time.Second, 2*time.Second, 200*time.Millisecond
		a := start(t, cfg, 0, nil)
		waitStarted(t, 10*time.Second, a)
		time.Sleep(time.Second) // a few renewals
		cut.Store(true)
		at := time.Now()
		select {
		case <-a.finished:
		case <-time.After(10 * time.Second):
			t.Fatal("the leader still runs 10s after the API server became unreachable")
		}
		if took := time.Since(at); took >= cfg.LeaseDuration {
			t.Errorf("the leader stopped %s after the API server became unreachable; a standby may take the lease after %s", took, cfg.LeaseDuration)
		} else {
			t.Logf("the leader stopped %s after the API server became unreachable (lease %s)", took.Round(time.Millisecond), cfg.LeaseDuration)
		}
		if err := a.wait(t); !errors.Is(err, leader.ErrLost) {
			t.Errorf("Run returned %v, want ErrLost", err)
		}
	})

	t.Run("handover", func(t *testing.T) {
		a := start(t, config(client, "handover", "a"), 300*time.Millisecond, nil)
		b := start(t, config(client, "handover", "b"), 300*time.Millisecond, nil)
		first := waitStarted(t, 10*time.Second, a, b)
		second := b
		if first == b {
			second = a
		}
		// The other stands by for longer than a lease duration.
		time.Sleep(4 * time.Second)
		if running(second) {
			t.Fatalf("both %s and %s run", first.id, second.id)
		}
		if h := holder(t, client, "handover"); h != first.id {
			t.Fatalf("the Lease names %q, the leader is %q", h, first.id)
		}
		// Stop the leader (SIGTERM): its run ends, then it releases the
		// lease, and the other takes over well before the lease would
		// have expired.
		stopped := time.Now()
		first.cancel()
		waitStarted(t, 10*time.Second, second)
		took := time.Since(stopped)
		select {
		case <-first.finished:
		default:
			t.Fatalf("%s took over while %s was still shutting down", second.id, first.id)
		}
		if err := first.wait(t); err != nil {
			t.Fatalf("the stopped leader's Run: %v", err)
		}
		t.Logf("hand-over took %s (including the leader's %s shutdown)", took.Round(time.Millisecond), first.shutdown)
		if took > 3*time.Second {
			t.Errorf("hand-over took %s: the lease was not released", took)
		}
		if h := holder(t, client, "handover"); h != second.id {
			t.Fatalf("after the hand-over the Lease names %q, want %q", h, second.id)
		}
		second.cancel()
		if err := second.wait(t); err != nil {
			t.Fatalf("the second leader's Run: %v", err)
		}
		if h := holder(t, client, "handover"); h != "" {
			t.Errorf("after both stopped the Lease names %q, want no one", h)
		}
	})

	t.Run("lost", func(t *testing.T) {
		a := start(t, config(client, "lost", "a"), 500*time.Millisecond, nil)
		waitStarted(t, 10*time.Second, a)
		// Someone else takes the lease (as a partitioned leader would find
		// when it comes back): the leader cannot renew and stops.
		// The leader renews every retry period: a write between our read
		// and ours is a conflict, and the theft is tried again.
		thief, secs := "thief", int32(60)
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			l, err := client.CoordinationV1().Leases(ns).Get(ctx, "lost", metav1.GetOptions{})
			if err != nil {
				return err
			}
			now := metav1.NewMicroTime(time.Now())
			l.Spec = coordinationv1.LeaseSpec{HolderIdentity: &thief, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now}
			_, err = client.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-a.done:
			err := a.err
			if !errors.Is(err, leader.ErrLost) {
				t.Fatalf("Run after the lease was taken: %v, want ErrLost", err)
			}
			select {
			case <-a.finished:
			default:
				t.Fatal("Run returned before run finished its shutdown")
			}
			t.Logf("Run: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the leader still runs 10s after its lease was taken")
		}
		if h := holder(t, client, "lost"); h != thief {
			t.Errorf("the stopped leader changed the Lease's holder to %q", h)
		}
	})

	t.Run("run fails", func(t *testing.T) {
		boom := errors.New("boom")
		a := start(t, config(client, "fails", "a"), 0, boom)
		waitStarted(t, 10*time.Second, a)
		select {
		case <-a.done:
			err := a.err
			if !errors.Is(err, boom) || errors.Is(err, leader.ErrLost) {
				t.Fatalf("Run: %v, want run's error", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after run failed")
		}
		if h := holder(t, client, "fails"); h != "" {
			t.Errorf("after run failed the Lease names %q, want no one", h)
		}
	})

	t.Run("standby stops", func(t *testing.T) {
		a := start(t, config(client, "standby", "a"), 0, nil)
		waitStarted(t, 10*time.Second, a)
		b := start(t, config(client, "standby", "b"), 0, nil)
		time.Sleep(500 * time.Millisecond)
		b.cancel()
		select {
		case <-b.done:
			if err := b.err; err != nil {
				t.Fatalf("the standby's Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the standby's Run did not return after its context ended")
		}
		if running(b) {
			t.Fatal("the standby ran")
		}
		if h := holder(t, client, "standby"); h != "a" {
			t.Errorf("the Lease names %q, want a", h)
		}
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	client := kubernetes.New(nil)
	for _, tc := range []struct {
		name string
		cfg  leader.Config
		want string
	}{
		{"no client", leader.Config{Namespace: ns, Name: "x", Identity: "a"}, "client is required"},
		{"no name", leader.Config{Client: client, Namespace: ns, Identity: "a"}, "namespace and name are required"},
		{"no identity", leader.Config{Client: client, Namespace: ns, Name: "x"}, "identity is required"},
		{"renew after lease", leader.Config{Client: client, Namespace: ns, Name: "x", Identity: "a", LeaseDuration: 5 * time.Second}, "must be shorter than the lease duration"},
		{"retry too long", leader.Config{Client: client, Namespace: ns, Name: "x", Identity: "a", RetryPeriod: 9 * time.Second}, "times the retry period"},
		{"negative", leader.Config{Client: client, Namespace: ns, Name: "x", Identity: "a", RetryPeriod: -time.Second}, "must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := leader.Run(context.Background(), tc.cfg, func(context.Context) error {
				t.Error("run ran with a bad configuration")
				return nil
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
