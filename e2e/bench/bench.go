// Package bench holds strait's benchmarks, run by `strait bench NAME`.
//
// Every benchmark measures its baseline in the same run on the same
// machine and prints one JSON line:
//
//	{"bench":NAME,"value":V,"unit":U,"baseline":WHAT,"baseline_value":B,"ratio":V/B, ...}
//
// Absolute figures drift on shared machines; the ratio is what to compare.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/straitnet/strait/e2e/netns"
)

// Config is what every benchmark gets from the command line.
type Config struct {
	// BinDir holds strait's binaries (and the upstream wireguard-go).
	BinDir     string
	StraitBin  string
	GatewayBin string
	// Log receives progress; the result goes to stdout.
	Log io.Writer
	// Duration of one measurement, and how many rounds to take the median of.
	Duration time.Duration
	Rounds   int
	// Size is the scale of what is measured, for benchmarks that have one
	// (members of a mesh, services loaded); zero takes the benchmark's
	// default.
	Size int
	// Quick skips the slowest baselines (for smoke runs in tests); the
	// line then says which it skipped.
	Quick bool
}

func (c Config) logf(format string, args ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format+"\n", args...)
	}
}

// Bench is one benchmark.
type Bench struct {
	Name  string
	Doc   string
	Flags func(*flag.FlagSet, *Config)
	Run   func(context.Context, Config) (Result, error)
}

var registry = map[string]Bench{}

func register(b Bench) { registry[b.Name] = b }

// Lookup finds a benchmark by name.
func Lookup(name string) (Bench, bool) {
	b, ok := registry[name]
	return b, ok
}

// Names lists the benchmarks.
func Names() string {
	var n []string
	for k := range registry {
		n = append(n, k)
	}
	slices.Sort(n)
	return strings.Join(n, ", ")
}

// Result is a benchmark's line. Extra fields follow the contract's.
type Result struct {
	Bench         string
	Value         float64
	Unit          string
	Baseline      string
	BaselineValue float64
	Extra         map[string]any
}

// Ratio is Value over BaselineValue.
func (r Result) Ratio() float64 {
	if r.BaselineValue == 0 {
		return 0
	}
	return r.Value / r.BaselineValue
}

// MarshalJSON writes the contract's fields first, in its order, then the
// extra fields sorted by name.
func (r Result) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	first := true
	put := func(k string, v any) error {
		if !first {
			b.WriteByte(',')
		}
		first = false
		kb, _ := json.Marshal(k)
		vb, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("bench: field %s: %w", k, err)
		}
		b.Write(kb)
		b.WriteByte(':')
		b.Write(vb)
		return nil
	}
	for _, kv := range []struct {
		k string
		v any
	}{
		{"bench", r.Bench}, {"value", round(r.Value)}, {"unit", r.Unit}, {"baseline", r.Baseline},
		{"baseline_value", round(r.BaselineValue)}, {"ratio", round(r.Ratio())},
	} {
		if err := put(kv.k, kv.v); err != nil {
			return nil, err
		}
	}
	keys := make([]string, 0, len(r.Extra))
	for k := range r.Extra {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := put(k, r.Extra[k]); err != nil {
			return nil, err
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// round keeps four significant decimals: more is noise on these machines.
func round(v float64) float64 {
	var s float64
	fmt.Sscanf(fmt.Sprintf("%.4g", v), "%g", &s)
	return s
}

// median of a non-empty sample.
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile is the nearest-rank percentile (p from 0 to 1) of a sample.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(math.Ceil(p*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// namespaces are the network namespaces one benchmark run makes, all
// named Prefix "bench-" NAME "-" ID "-" ..., and all removed by removeAll.
type namespaces struct {
	id, prefix string
	made       []netns.NS
}

func newNamespaces(bench string) *namespaces {
	id := runID("")
	return &namespaces{id: id, prefix: netns.Prefix + "bench-" + bench + "-" + id + "-"}
}

func (n *namespaces) add(name string) (netns.NS, error) {
	ns, err := netns.Add(n.prefix + name)
	if err == nil {
		n.made = append(n.made, ns)
	}
	return ns, err
}

// removeAll removes every namespace made; a failure to remove one is an
// error of the run.
func (n *namespaces) removeAll() error {
	var errs []error
	for _, ns := range n.made {
		errs = append(errs, netns.Delete(ns.Name))
	}
	return errors.Join(errs...)
}
