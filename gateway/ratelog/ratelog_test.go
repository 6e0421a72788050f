package ratelog

import (
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(time.Second, 2, func() time.Time { return now })
	step := func(key string, wantOK bool, wantSupp int) {
		t.Helper()
		ok, s := l.Allow(key)
		if ok != wantOK || s != wantSupp {
			t.Fatalf("Allow(%q) at %s = %v, %d; want %v, %d", key, now.Format("05.000"), ok, s, wantOK, wantSupp)
		}
	}
	step("a", true, 0)
	step("a", true, 0)
	step("a", false, 0) // burst used up
	step("a", false, 0)
	step("b", true, 0) // keys are independent
	now = now.Add(999 * time.Millisecond)
	step("a", false, 0)
	now = now.Add(time.Millisecond)
	step("a", true, 3) // new interval: reports the three held back
	step("a", true, 0)
	step("a", false, 0)
}

func TestLimiterBoundsKeys(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(time.Second, 1, func() time.Time { return now })
	for i := range 5000 {
		l.Allow(string(rune(i)))
		if i%1000 == 999 {
			now = now.Add(2 * time.Second)
		}
	}
	if n := len(l.buckets); n > 2100 {
		t.Errorf("%d buckets kept for idle keys", n)
	}
}
