package health

import "time"

// verdict turns the outcomes of one target's checks into its published
// state. It is pure: the checker feeds it outcomes and the time.
//
// The first outcome decides at once, because a gateway that has just
// started (or a target that just appeared) should not wait several
// intervals to say anything. Afterwards the state flips only after a streak
// of unhealthyAfter failures or healthyAfter successes, so that one lost
// check does not churn every Maglev table of the mesh.
type verdict struct {
	unhealthyAfter, healthyAfter int

	checked, healthy    bool
	reason              string
	since               time.Time
	failures, successes int
}

func newVerdict(unhealthyAfter, healthyAfter int) verdict {
	return verdict{unhealthyAfter: max(unhealthyAfter, 1), healthyAfter: max(healthyAfter, 1)}
}

// failedReason stands in for a failure that came without a reason: an
// unhealthy target always says something.
const failedReason = "check failed"

// observe records one check's outcome at now and says whether the
// published state (Checked, Healthy or Reason) changed.
//
// Reason is that of the latest failure while the target is unhealthy, so
// the catalog says why it is out now rather than why it went out; it is
// empty while the target is healthy (failures below the threshold do not
// show).
func (v *verdict) observe(ok bool, reason string, now time.Time) (changed bool) {
	if ok {
		v.successes++
		v.failures = 0
	} else {
		v.failures++
		v.successes = 0
		if reason == "" {
			reason = failedReason
		}
	}
	was := *v
	switch {
	case !v.checked:
		v.checked, v.healthy, v.since = true, ok, now
	case ok && !v.healthy && v.successes >= v.healthyAfter,
		!ok && v.healthy && v.failures >= v.unhealthyAfter:
		v.healthy, v.since = ok, now
	}
	switch {
	case v.healthy:
		v.reason = ""
	case !ok:
		v.reason = reason
	}
	return v.checked != was.checked || v.healthy != was.healthy || v.reason != was.reason
}

func (v *verdict) result() Result {
	return Result{
		Healthy:   v.healthy,
		Checked:   v.checked,
		Reason:    v.reason,
		Since:     v.since,
		Failures:  v.failures,
		Successes: v.successes,
	}
}
