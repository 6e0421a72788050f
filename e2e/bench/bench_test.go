package bench

import (
	"encoding/json"
	"testing"
)

func TestResultJSON(t *testing.T) {
	r := Result{Bench: "tunnel", Value: 3.51234, Unit: "Gbit/s", Baseline: "upstream", BaselineValue: 3.6,
		Extra: map[string]any{"raw_veth_gbps": 22.8, "a_first": 1}}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"bench":"tunnel","value":3.512,"unit":"Gbit/s","baseline":"upstream","baseline_value":3.6,"ratio":0.9757,"a_first":1,"raw_veth_gbps":22.8}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

func TestMedian(t *testing.T) {
	for _, tt := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}, {nil, 0}} {
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestRegistered(t *testing.T) {
	if _, ok := Lookup("tunnel"); !ok {
		t.Error("tunnel benchmark not registered")
	}
}

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	for _, tt := range []struct{ p, want float64 }{{0.5, 5}, {0.99, 10}, {0.1, 1}, {0, 1}, {1, 10}} {
		if got := percentile(xs, tt.p); got != tt.want {
			t.Errorf("percentile(%v) = %v, want %v", tt.p, got, tt.want)
		}
	}
	if percentile(nil, 0.5) != 0 {
		t.Error("empty sample")
	}
}
