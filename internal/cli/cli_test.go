package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// flags is a flag set with a flag of each kind the daemons use.
type flags struct {
	fs        *flag.FlagSet
	site      *string
	metrics   *string
	interval  *time.Duration
	leader    *bool
	mtu       *int
	ratio     *float64
	retries   *uint
	namespace *string
	mode      string
}

func newFlags(nsDefault string) *flags {
	f := &flags{fs: flag.NewFlagSet("run", flag.ContinueOnError)}
	f.fs.SetOutput(io.Discard)
	f.site = f.fs.String("site", "", "")
	f.metrics = f.fs.String("metrics-addr", ":9464", "")
	f.interval = f.fs.Duration("interval", 0, "")
	f.leader = f.fs.Bool("leader-elect", false, "")
	f.mtu = f.fs.Int("mtu", 0, "")
	f.ratio = f.fs.Float64("ratio", 1, "")
	f.retries = f.fs.Uint("retries", 3, "")
	f.namespace = f.fs.String("namespace", nsDefault, "")
	f.fs.Func("mode", "", func(s string) error {
		if s != "auto" && s != "kernel" {
			return fmt.Errorf("want auto or kernel")
		}
		f.mode = s
		return nil
	})
	return f
}

func (f *flags) String() string {
	return fmt.Sprintf("site=%q metrics-addr=%q interval=%s leader-elect=%t mtu=%d ratio=%g retries=%d namespace=%q mode=%q",
		*f.site, *f.metrics, *f.interval, *f.leader, *f.mtu, *f.ratio, *f.retries, *f.namespace, f.mode)
}

func TestFlagsFromEnv(t *testing.T) {
	t.Parallel()
	const defaults = `site="" metrics-addr=":9464" interval=0s leader-elect=false mtu=0 ratio=1 retries=3 namespace="strait-system" mode=""`
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		nsEnv   string // what EnvOr("POD_NAMESPACE") would have given the default
		want    string
		wantErr []string
	}{
		{name: "nothing", want: defaults},
		{
			name: "every kind from the environment",
			env: map[string]string{"STRAIT_SITE": "cloud-a", "STRAIT_METRICS_ADDR": "127.0.0.1:1", "STRAIT_INTERVAL": "5s",
				"STRAIT_LEADER_ELECT": "true", "STRAIT_MTU": "1380", "STRAIT_RATIO": "0.5", "STRAIT_RETRIES": "7",
				"STRAIT_NAMESPACE": "edge", "STRAIT_MODE": "kernel"},
			want: `site="cloud-a" metrics-addr="127.0.0.1:1" interval=5s leader-elect=true mtu=1380 ratio=0.5 retries=7 namespace="edge" mode="kernel"`,
		},
		{
			name: "flags win over the environment",
			args: []string{"--site", "cloud-b", "--interval=1s", "--leader-elect=false"},
			env:  map[string]string{"STRAIT_SITE": "cloud-a", "STRAIT_INTERVAL": "x", "STRAIT_LEADER_ELECT": "true", "STRAIT_MTU": "1400"},
			want: `site="cloud-b" metrics-addr=":9464" interval=1s leader-elect=false mtu=1400 ratio=1 retries=3 namespace="strait-system" mode=""`,
		},
		{
			name: "set but empty is a value",
			env:  map[string]string{"STRAIT_METRICS_ADDR": ""},
			want: `site="" metrics-addr="" interval=0s leader-elect=false mtu=0 ratio=1 retries=3 namespace="strait-system" mode=""`,
		},
		{
			name:  "a default from another variable stays, and the flag's own variable wins over it",
			nsEnv: "from-pod",
			env:   map[string]string{"STRAIT_SITE": "x"},
			want:  `site="x" metrics-addr=":9464" interval=0s leader-elect=false mtu=0 ratio=1 retries=3 namespace="from-pod" mode=""`,
		},
		{
			name:  "the flag's own variable over POD_NAMESPACE",
			nsEnv: "from-pod",
			env:   map[string]string{"STRAIT_NAMESPACE": "mine"},
			want:  `site="" metrics-addr=":9464" interval=0s leader-elect=false mtu=0 ratio=1 retries=3 namespace="mine" mode=""`,
		},
		{
			name: "other variables are not flags",
			env:  map[string]string{"SITE": "no", "STRAIT_SITE_FILE": "no", "strait_site": "no", "STRAIT_METRICS-ADDR": "no"},
			want: defaults,
		},
		{
			name: "values that do not parse name their variables",
			env: map[string]string{"STRAIT_INTERVAL": "x", "STRAIT_LEADER_ELECT": "yes", "STRAIT_MTU": "1.5",
				"STRAIT_RATIO": "half", "STRAIT_RETRIES": "-1", "STRAIT_MODE": "fast"},
			wantErr: []string{
				`STRAIT_INTERVAL="x": not a duration`,
				`STRAIT_LEADER_ELECT="yes": not a boolean (true or false)`,
				`STRAIT_MTU="1.5": not an integer`,
				`STRAIT_RATIO="half": not a number`,
				`STRAIT_RETRIES="-1": not a non-negative integer`,
				`STRAIT_MODE="fast": want auto or kernel`,
			},
		},
		{
			name:    "out of range",
			env:     map[string]string{"STRAIT_MTU": "99999999999999999999"},
			wantErr: []string{`STRAIT_MTU="99999999999999999999": out of range`},
		},
		{
			name:    "empty is no boolean",
			env:     map[string]string{"STRAIT_LEADER_ELECT": ""},
			wantErr: []string{`STRAIT_LEADER_ELECT="": not a boolean`},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			def := "strait-system"
			if tc.nsEnv != "" {
				def = tc.nsEnv
			}
			f := newFlags(def)
			if err := f.fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			err := flagsFrom(f.fs, EnvPrefix, func(k string) (string, bool) {
				v, ok := tc.env[k]
				return v, ok
			})
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error; flags %s", f)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				if n := strings.Count(err.Error(), "\n") + 1; n != len(tc.wantErr) {
					t.Errorf("%d errors, want %d: %v", n, len(tc.wantErr), err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.String(); got != tc.want {
				t.Errorf("flags\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestFlagsFromEnvProcess reads the process's environment, and keeps
// EnvOr's default working underneath.
func TestFlagsFromEnvProcess(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "pods")
	t.Setenv("STRAIT_INTERVAL", "3s")
	f := newFlags(EnvOr("POD_NAMESPACE", "strait-system"))
	if err := f.fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := FlagsFromEnv(f.fs, EnvPrefix); err != nil {
		t.Fatal(err)
	}
	if *f.interval != 3*time.Second || *f.namespace != "pods" {
		t.Errorf("flags %s", f)
	}
}

func TestEnvName(t *testing.T) {
	t.Parallel()
	for flagName, want := range map[string]string{
		"site": "STRAIT_SITE", "metrics-addr": "STRAIT_METRICS_ADDR", "site-file": "STRAIT_SITE_FILE",
		"leader-elect-renew-deadline": "STRAIT_LEADER_ELECT_RENEW_DEADLINE", "log.level": "STRAIT_LOG_LEVEL",
	} {
		if got := EnvName(EnvPrefix, flagName); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", flagName, got, want)
		}
	}
	if u := EnvUsage(EnvPrefix, "metrics-addr"); !strings.Contains(u, "(--metrics-addr is\nSTRAIT_METRICS_ADDR)") {
		t.Errorf("EnvUsage:\n%s", u)
	}
}

func TestChoice(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var v string
	ChoiceVar(fs, &v, "mode", "auto", []string{"on", "off", "auto"}, "")
	if v != "auto" {
		t.Fatalf("default %q", v)
	}
	if err := fs.Parse([]string{"--mode", "on"}); err != nil || v != "on" {
		t.Fatalf("--mode on: %v %q", err, v)
	}
	err := fs.Parse([]string{"--mode", "sometimes"})
	if err == nil || !strings.Contains(err.Error(), "want on, off or auto") || v != "on" {
		t.Fatalf("--mode sometimes: %v, value %q", err, v)
	}
}
