// Package cli holds what strait's daemons share on their command lines:
// the logger, the Kubernetes client configuration, and flags from the
// environment.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// NewLogger makes the daemon's logger from --log-level and --log-format.
func NewLogger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

// KubeConfig is the client configuration from a kubeconfig file, or the
// pod's service account when path is empty.
func KubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("not in a cluster (%v); give --kubeconfig", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// EnvOr is the environment variable key, or def when it is unset or empty:
// the default of a flag that a pod's manifest may set through its env.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// EnvPrefix is the prefix of the environment variables that set the flags
// of strait's daemons: STRAIT_METRICS_ADDR sets --metrics-addr.
const EnvPrefix = "STRAIT_"

// EnvName is the environment variable of a flag: prefix and the flag's
// name in upper case, with its dashes (and dots) as underscores.
func EnvName(prefix, flagName string) string {
	return prefix + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(flagName))
}

// Choice is a flag value that must be one of Allowed: a wrong value is
// refused when it is set, from the command line or the environment, with
// what is allowed.
type Choice struct {
	Value   *string
	Allowed []string
}

// ChoiceVar defines a Choice flag with default def.
func ChoiceVar(fs *flag.FlagSet, p *string, name, def string, allowed []string, usage string) {
	*p = def
	fs.Var(Choice{Value: p, Allowed: allowed}, name, usage)
}

func (c Choice) String() string {
	if c.Value == nil {
		return ""
	}
	return *c.Value
}

// Set takes s if it is allowed.
func (c Choice) Set(s string) error {
	if !slices.Contains(c.Allowed, s) {
		return fmt.Errorf("want %s", orList(c.Allowed))
	}
	*c.Value = s
	return nil
}

// orList is "a, b or c".
func orList(xs []string) string {
	if len(xs) < 2 {
		return strings.Join(xs, "")
	}
	return strings.Join(xs[:len(xs)-1], ", ") + " or " + xs[len(xs)-1]
}

// FlagsFromEnv sets each flag of fs that the command line did not set
// from its environment variable (EnvName), if that is set, even to the
// empty string. Call it after fs.Parse: the command line wins over the
// environment, and the environment over the flags' defaults (some of
// which come from other variables, such as POD_NAMESPACE through EnvOr).
// A value that does not parse is an error that names the variable, such
// as `STRAIT_INTERVAL="x": not a duration`.
func FlagsFromEnv(fs *flag.FlagSet, prefix string) error {
	return flagsFrom(fs, prefix, os.LookupEnv)
}

func flagsFrom(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := EnvName(prefix, f.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %s", name, v, why(f, err)))
		}
	})
	return errors.Join(errs...)
}

// why says what a flag wants, where the flag package would only say
// "parse error" or "value out of range".
func why(f *flag.Flag, err error) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return err.Error()
	}
	if strings.Contains(err.Error(), "out of range") {
		return "out of range"
	}
	switch g.Get().(type) {
	case time.Duration:
		return "not a duration (such as 500ms, 2s or 1m30s)"
	case bool:
		return "not a boolean (true or false)"
	case int, int64:
		return "not an integer"
	case uint, uint64:
		return "not a non-negative integer"
	case float64:
		return "not a number"
	}
	return err.Error()
}

// EnvUsage is the paragraph for a command's help that says how its flags
// are set from the environment, with one of its flags as the example.
func EnvUsage(prefix, example string) string {
	return fmt.Sprintf(`Every flag can also be set in the environment, as %s<FLAG>: the
flag's name in upper case, dashes as underscores (--%s is
%s). The command line wins over the environment. A value
that does not parse is an error naming the variable.
`, prefix, example, EnvName(prefix, example))
}
