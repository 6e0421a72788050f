package wanemu

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	l := Link{Latency: 20 * time.Millisecond, Jitter: 5 * time.Millisecond, Loss: 10}
	const n = 200000
	drops := 0
	var sum time.Duration
	for range n {
		drop, d := l.decide(r)
		if drop {
			drops++
			continue
		}
		if d < 15*time.Millisecond || d > 25*time.Millisecond {
			t.Fatalf("delay %s outside latency±jitter", d)
		}
		sum += d
	}
	if got := float64(drops) / n * 100; math.Abs(got-10) > 0.5 {
		t.Errorf("dropped %.2f%%, want 10%%", got)
	}
	if mean := sum / time.Duration(n-drops); mean < 19900*time.Microsecond || mean > 20100*time.Microsecond {
		t.Errorf("mean delay %s, want 20ms", mean)
	}
	if drop, d := (Link{Latency: 3 * time.Millisecond}).decide(r); drop || d != 3*time.Millisecond {
		t.Errorf("no jitter, no loss: drop %v delay %s", drop, d)
	}
	if drop, _ := (Link{Loss: 100}).decide(r); !drop {
		t.Error("100% loss let a packet through")
	}
	if drop, d := (Link{Jitter: time.Millisecond}).decide(r); drop || d < 0 {
		t.Errorf("negative delay %s", d)
	}
}

func TestValidate(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{Links: []Link{{Site: "a", Loss: 101}}}, "loss 101%"},
		{Config{Links: []Link{{Site: "a", Latency: -time.Second}}}, "latency -1s"},
		{Config{Links: []Link{{Site: "a", Queue: 0}, {Site: "b", Queue: 1}}}, "share queue 1"},
	} {
		if err := tt.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.cfg, err, tt.want)
		}
	}
	ok := Config{Links: []Link{{Site: "a", Queue: 0, Loss: 100}, {Site: "b", Queue: 2, Latency: time.Second}}}
	if err := ok.Validate(); err != nil {
		t.Error(err)
	}
}

func TestVerdictHeapOrder(t *testing.T) {
	base := time.Unix(0, 0)
	var h verdictHeap
	for _, ms := range []int{5, 1, 4, 2, 3} {
		h = append(h, pendingVerdict{due: base.Add(time.Duration(ms) * time.Millisecond), id: uint32(ms)})
	}
	heap.Init(&h)
	for want := uint32(1); want <= 5; want++ {
		if got := heap.Pop(&h).(pendingVerdict).id; got != want {
			t.Fatalf("popped %d, want %d", got, want)
		}
	}
}
