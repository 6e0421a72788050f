// Package ratelog limits how often the same log message is written, so that
// a message logged per packet cannot flood the log or slow the data path.
package ratelog

import (
	"sync"
	"time"
)

// Limiter lets through at most Burst messages per key in each Interval and
// counts the ones it holds back, so the next message let through can say how
// many were suppressed.
type Limiter struct {
	interval time.Duration
	burst    int
	now      func() time.Time

	mu      sync.Mutex // guards buckets
	buckets map[string]*bucket
}

type bucket struct {
	start      time.Time
	sent       int
	suppressed int
}

// New returns a Limiter; now is the clock (time.Now outside tests).
func New(interval time.Duration, burst int, now func() time.Time) *Limiter {
	return &Limiter{interval: interval, burst: burst, now: now, buckets: map[string]*bucket{}}
}

// Allow reports whether a message with this key may be written now and, if
// so, how many messages with the key were held back since the last one.
func (l *Limiter) Allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) > 1024 {
			l.expire(now)
		}
		b = &bucket{start: now}
		l.buckets[key] = b
	}
	if now.Sub(b.start) >= l.interval {
		b.start, b.sent = now, 0
	}
	if b.sent >= l.burst {
		b.suppressed++
		return false, 0
	}
	b.sent++
	suppressed, b.suppressed = b.suppressed, 0
	return true, suppressed
}

// expire drops buckets idle for a whole interval, bounding memory when keys
// are many.
func (l *Limiter) expire(now time.Time) {
	for k, b := range l.buckets {
		if now.Sub(b.start) >= l.interval && b.suppressed == 0 {
			delete(l.buckets, k)
		}
	}
}
