package health

import (
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// step is one check's outcome, written "+" (success) or "-reason"
// (failure), and the published state expected after it.
type step struct {
	in      string
	healthy bool
	reason  string
	changed bool
	since   int // index of the step whose time Since should be
	f, s    int // streaks
}

func TestVerdict(t *testing.T) {
	tests := []struct {
		name       string
		unh, healt int
		steps      []step
	}{
		{
			name: "first success decides at once", unh: 2, healt: 2,
			steps: []step{
				{in: "+", healthy: true, changed: true, since: 0, s: 1},
				{in: "+", healthy: true, since: 0, s: 2},
				{in: "+", healthy: true, since: 0, s: 3},
			},
		},
		{
			name: "first failure decides at once", unh: 2, healt: 2,
			steps: []step{
				{in: "-connection refused", reason: "connection refused", changed: true, since: 0, f: 1},
				{in: "-connection refused", reason: "connection refused", since: 0, f: 2},
			},
		},
		{
			name: "one failure is not enough", unh: 2, healt: 2,
			steps: []step{
				{in: "+", healthy: true, changed: true, since: 0, s: 1},
				{in: "-timeout", healthy: true, since: 0, f: 1},
				{in: "+", healthy: true, since: 0, s: 1},
				{in: "-timeout", healthy: true, since: 0, f: 1},
				{in: "-timeout", reason: "timeout", changed: true, since: 4, f: 2},
				{in: "-timeout", reason: "timeout", since: 4, f: 3},
			},
		},
		{
			name: "back after healthyAfter successes", unh: 2, healt: 3,
			steps: []step{
				{in: "-HTTP 503", reason: "HTTP 503", changed: true, since: 0, f: 1},
				{in: "+", reason: "HTTP 503", since: 0, s: 1},
				{in: "+", reason: "HTTP 503", since: 0, s: 2},
				{in: "-HTTP 503", reason: "HTTP 503", since: 0, f: 1},
				{in: "+", reason: "HTTP 503", since: 0, s: 1},
				{in: "+", reason: "HTTP 503", since: 0, s: 2},
				{in: "+", healthy: true, changed: true, since: 6, s: 3},
			},
		},
		{
			name: "reason follows the latest failure while unhealthy", unh: 1, healt: 1,
			steps: []step{
				{in: "+", healthy: true, changed: true, since: 0, s: 1},
				{in: "-timeout", reason: "timeout", changed: true, since: 1, f: 1},
				{in: "-timeout", reason: "timeout", since: 1, f: 2},
				{in: "-connection refused", reason: "connection refused", changed: true, since: 1, f: 3},
				{in: "+", healthy: true, changed: true, since: 4, s: 1},
			},
		},
		{
			name: "failure without a reason still says something", unh: 1, healt: 1,
			steps: []step{
				{in: "-", reason: failedReason, changed: true, since: 0, f: 1},
			},
		},
		{
			name: "thresholds below 1 count as 1", unh: 0, healt: -3,
			steps: []step{
				{in: "+", healthy: true, changed: true, since: 0, s: 1},
				{in: "-x", reason: "x", changed: true, since: 1, f: 1},
				{in: "+", healthy: true, changed: true, since: 2, s: 1},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			at := func(i int) time.Time { return t0.Add(time.Duration(i) * 500 * time.Millisecond) }
			v := newVerdict(tt.unh, tt.healt)
			if r := v.result(); r.Checked || r.Healthy {
				t.Fatalf("before any check: %+v, want unknown", r)
			}
			for i, st := range tt.steps {
				ok := st.in == "+"
				changed := v.observe(ok, strings.TrimPrefix(st.in, "-"), at(i))
				got := v.result()
				want := Result{Healthy: st.healthy, Checked: true, Reason: st.reason, Since: at(st.since), Failures: st.f, Successes: st.s}
				if got != want || changed != st.changed {
					t.Fatalf("step %d (%q): got %+v changed=%v; want %+v changed=%v", i, st.in, got, changed, want, st.changed)
				}
			}
		})
	}
}

// TestVerdictRandom checks verdict against a reference that recomputes the
// state from the whole history at every step, counting streaks backwards.
func TestVerdictRandom(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	reasons := []string{"timeout", "connection refused", "HTTP 503"}
	for round := range 500 {
		unh, healt := 1+rng.IntN(4), 1+rng.IntN(4)
		v := newVerdict(unh, healt)
		var okHist []bool
		var reasonHist []string
		prev := Result{}
		for i := range 1 + rng.IntN(60) {
			ok := rng.IntN(3) != 0
			if round%2 == 0 { // also long runs of one kind
				ok = rng.IntN(10) < 5+(i/10)%2*4
			}
			reason := ""
			if !ok {
				reason = reasons[rng.IntN(len(reasons))]
			}
			okHist, reasonHist = append(okHist, ok), append(reasonHist, reason)
			now := time.Unix(int64(i), 0)
			changed := v.observe(ok, reason, now)
			want := reference(okHist, reasonHist, unh, healt)
			got := v.result()
			if got != want {
				t.Fatalf("round %d (unhealthyAfter %d, healthyAfter %d), history %v: got %+v, want %+v",
					round, unh, healt, okHist, got, want)
			}
			wantChanged := got.Checked != prev.Checked || got.Healthy != prev.Healthy || got.Reason != prev.Reason
			if changed != wantChanged {
				t.Fatalf("round %d, history %v: changed=%v, want %v", round, okHist, changed, wantChanged)
			}
			prev = got
		}
	}
}

// reference is the verdict after a history of outcomes, from the
// definition: the first outcome decides; after that, outcome i flips the
// state when it differs from the state and the run of equal outcomes
// ending at i is at least the threshold for that outcome.
func reference(ok []bool, reason []string, unh, healt int) Result {
	var r Result
	for i := range ok {
		run := 0
		for j := i; j >= 0 && ok[j] == ok[i]; j-- {
			run++
		}
		threshold := unh
		if ok[i] {
			threshold = healt
		}
		if i == 0 || (ok[i] != r.Healthy && run >= threshold) {
			r.Healthy, r.Since = ok[i], time.Unix(int64(i), 0)
		}
		r.Checked = true
		r.Failures, r.Successes = 0, 0
		if ok[i] {
			r.Successes = run
		} else {
			r.Failures = run
		}
		// The latest failure's reason, while unhealthy.
		r.Reason = ""
		if !r.Healthy {
			for j := i; j >= 0; j-- {
				if !ok[j] {
					r.Reason = reason[j]
					break
				}
			}
		}
	}
	return r
}
