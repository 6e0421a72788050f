package e2e_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/straitnet/strait/e2e/bench"
	"github.com/straitnet/strait/e2e/netns/nstest"
)

// TestBenchmarksRun runs every benchmark briefly: not to measure anything
// (figures come from `strait bench`, never from tests), but so that a
// change that breaks a benchmark fails here rather than when someone runs
// it. Each must print the line the contract describes.
func TestBenchmarksRun(t *testing.T) {
	nstest.RequireRoot(t)
	nstest.RequireCommands(t, "iperf3", "nft")
	for _, tt := range []struct {
		name   string
		rounds int
	}{{"tunnel", 1}, {"nat-sync", 10}, {"nat-lookup", 1}} {
		t.Run(tt.name, func(t *testing.T) {
			b, ok := bench.Lookup(tt.name)
			if !ok {
				t.Fatalf("no benchmark %s", tt.name)
			}
			cfg := bench.Config{BinDir: bins.dir, StraitBin: bins.strait, GatewayBin: bins.gateway, Duration: 2 * time.Second, Rounds: tt.rounds}
			res, err := b.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			line, err := json.Marshal(res)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(line, &got); err != nil {
				t.Fatal(err)
			}
			for _, k := range []string{"bench", "value", "unit", "baseline", "baseline_value", "ratio"} {
				if _, ok := got[k]; !ok {
					t.Errorf("line lacks %q: %s", k, line)
				}
			}
			for _, k := range []string{"value", "baseline_value", "ratio"} {
				if v, _ := got[k].(float64); v <= 0 {
					t.Errorf("%s = %v: %s", k, got[k], line)
				}
			}
			t.Logf("%s", line)
		})
	}
}
