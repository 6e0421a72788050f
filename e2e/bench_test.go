package e2e_test

import (
	"cmp"
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
		name     string
		rounds   int
		size     int           // zero: the benchmark's default
		quick    bool          // skip the slowest baselines
		duration time.Duration // zero: 2s
		needs    []string      // commands beyond the ones above
	}{
		{name: "tunnel", rounds: 1},
		{name: "nat-sync", rounds: 10},
		{name: "nat-lookup", rounds: 1},
		// 1,000 services rather than 10,000, and no 10-service run:
		// about 5 s, every query still checked.
		{name: "dns", rounds: 1, size: 1000, quick: true, duration: time.Second, needs: []string{"dnsperf"}},
		// 10 members, 3 changes, without the WAN baseline's minute.
		{name: "gossip", rounds: 3, size: 10, quick: true},
		// 10 pods per plugin, one round: every ADD and DEL still checked
		// (the reference plugins are files, not commands in PATH).
		{name: "cni", rounds: 1, size: 10, needs: []string{"/usr/lib/cni/bridge", "/usr/lib/cni/host-local"}},
		// One round of each state (1,000 rules, no policy, detached), 2 s
		// each: the counters still checked.
		{name: "pod-throughput", rounds: 1},
		// 100,000 flows, 3 removals, no 655,373-entry table.
		{name: "lb", quick: true},
		// 1,000 rules, one round: the compiled program, the table and
		// the allowed connection still checked.
		{name: "firewall", rounds: 1, size: 1000},
		// 500 routes, one round: both sides still install and remove all.
		{name: "bgp", rounds: 1, size: 500, needs: []string{"bird", "birdc"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			nstest.RequireCommands(t, tt.needs...)
			b, ok := bench.Lookup(tt.name)
			if !ok {
				t.Fatalf("no benchmark %s", tt.name)
			}
			cfg := bench.Config{
				BinDir: bins.dir, StraitBin: bins.strait, GatewayBin: bins.gateway,
				Duration: cmp.Or(tt.duration, 2*time.Second), Rounds: tt.rounds, Size: tt.size, Quick: tt.quick,
			}
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
