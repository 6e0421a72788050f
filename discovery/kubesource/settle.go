package kubesource

import (
	"context"
	"fmt"
	"slices"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// written is a write that a sync waits to see in the informer cache
// before it returns. The syncs read the cache, not the API: if the next
// sync ran before the cache caught up, it would see the old object,
// write again and fail on its stale resourceVersion. The syncs are
// serialized, so waiting here is enough.
type written struct {
	ns, name string
	// stale are the resourceVersions the cache shows until it has caught
	// up: the one the sync started from, and any but the last of its own
	// writes. Any other version (its last write, or someone else's after
	// it) will do: resourceVersions are only compared for equality.
	stale []string
	// deleted is a deletion of the object with uid: caught up when the
	// cache has no such object.
	deleted bool
	uid     types.UID
}

// settle waits until the cache, read by get, shows every write, or
// returns an error after the settle timeout.
func (s *Source) settle(ctx context.Context, what string, get func(ns, name string) metav1.Object, ws []written) error {
	if len(ws) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.opts.SettleTimeout)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ws = slices.DeleteFunc(ws, func(w written) bool {
			o := get(w.ns, w.name)
			if w.deleted {
				return o == nil || o.GetUID() != w.uid
			}
			return o != nil && !slices.Contains(w.stale, o.GetResourceVersion())
		})
		if len(ws) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubesource: the %s cache does not show %d of this sync's writes (first %s/%s): %w", what, len(ws), ws[0].ns, ws[0].name, ctx.Err())
		case <-tick.C:
		}
	}
}
