// Command strait-gateway is strait's per-site gateway daemon.
//
//	strait-gateway run --site NAME --mesh FILE [flags]
//	strait-gateway keygen [--state-dir DIR]
//	strait-gateway version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/internal/cli"
	"github.com/straitnet/strait/internal/leader"
	"github.com/straitnet/strait/natpool/kubestore"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `strait-gateway: the gateway of one strait site.

Usage:
  strait-gateway run --site NAME --mesh FILE [flags]
      Run the gateway: bring up the WireGuard device, configure the peers,
      routes and translation of the mesh configuration and the site file,
      allocate addresses from the site's pools (kept in the state directory),
      and keep it all so. The files are re-read every --interval and on
      SIGHUP; a file that does not validate is refused and the last good
      configuration keeps running. With --leader-elect, it runs only while
      it holds a Lease, so that a Deployment's replicas stand by for it.
      Every flag can also be set in the environment: STRAIT_<FLAG>, such
      as STRAIT_METRICS_ADDR for --metrics-addr; the command line wins.
  strait-gateway keygen [--state-dir DIR]
      Make this gateway's private key if there is none, and print the public
      key to put in the mesh configuration. The private key never leaves DIR.
  strait-gateway version

Run 'strait-gateway run -h' for the flags of run.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = run(os.Args[2:])
	case "keygen":
		err = keygen(os.Args[2:], os.Stdout)
	case "version":
		fmt.Println("strait-gateway", version)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "strait-gateway: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "strait-gateway:", err)
		}
		os.Exit(1)
	}
}

func keygen(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	stateDir := fs.String("state-dir", gateway.DefaultStateDir, "directory that keeps the private key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pub, created, err := gateway.Keygen(*stateDir)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(os.Stderr, "made a new private key in %s\n", *stateDir)
	}
	fmt.Fprintln(out, pub)
	return nil
}

// runFlags are the flags of run, apart from those that fill gateway.Options.
type runFlags struct {
	mode, allocations, allocationsName, kubeconfig, kube, namespace string
	logLevel, logFormat                                             string
	leaderElect                                                     bool
	lease, identity                                                 string
	leaseDuration, renewDeadline, retryPeriod                       time.Duration
}

// newRunFlags defines the flags of run, into o and f.
func newRunFlags(o *gateway.Options, f *runFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&o.Site, "site", "", "this gateway's site name in the mesh configuration (required)")
	fs.StringVar(&o.MeshFile, "mesh", "", "mesh configuration file (required)")
	fs.StringVar(&o.SiteFile, "site-file", "", "this site's pools, exported services, egress rules and pods (default: default pools, nothing exported)")
	fs.StringVar(&o.StateDir, "state-dir", gateway.DefaultStateDir, "directory for the private key and the status socket")
	fs.StringVar(&o.Interface, "interface", "strait0", "WireGuard device name")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9464", "where to serve Prometheus metrics (/metrics); empty: nowhere")
	cli.ChoiceVar(fs, &f.mode, "wireguard", "auto", []string{"auto", "kernel", "userspace", "wireguard-go"}, "WireGuard implementation: auto (kernel if present, else userspace), kernel, userspace, wireguard-go (an external binary, see --wireguard-go)")
	fs.StringVar(&o.WireGuardGo, "wireguard-go", "wireguard-go", "wireguard-go binary for --wireguard=wireguard-go")
	fs.IntVar(&o.MTU, "mtu", 0, "tunnel MTU; 0 derives it from the underlay MTU less the WireGuard overhead")
	fs.DurationVar(&o.Interval, "interval", 0, "how often to re-read the mesh file and repair drift (default 2s)")
	cli.ChoiceVar(fs, &f.allocations, "allocations", "file", []string{"file", "kubernetes"}, "where allocations persist: file (allocations.json in --state-dir) or kubernetes (a ConfigMap)")
	fs.StringVar(&f.allocationsName, "allocations-configmap", "", "name of the allocations ConfigMap with --allocations=kubernetes (default strait-allocations-<site>)")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig of the site's cluster (default: the in-cluster service account)")
	cli.ChoiceVar(fs, &f.kube, "kubernetes", "auto", []string{"on", "off", "auto"}, "export what ServiceExports name and keep ServiceImports (with a discovery section): on, off, or auto (on with --kubeconfig or in a pod)")
	fs.StringVar(&f.namespace, "namespace", cli.EnvOr("POD_NAMESPACE", "strait-system"), "namespace of the allocations ConfigMap and the leader election Lease (the default is $POD_NAMESPACE if set)")
	fs.BoolVar(&f.leaderElect, "leader-elect", false, "run only while holding a Lease, so that of several replicas one runs and the others stand by; a leader that loses the Lease stops and exits non-zero")
	fs.StringVar(&f.lease, "leader-elect-lease", "", "name of the leader election Lease in --namespace (default strait-gateway-<site>)")
	hostname, _ := os.Hostname()
	fs.StringVar(&f.identity, "leader-elect-identity", cli.EnvOr("POD_NAME", hostname), "this replica's name in the Lease (the default is $POD_NAME if set, else the host name)")
	fs.DurationVar(&f.leaseDuration, "leader-elect-lease-duration", leader.DefaultLeaseDuration, "how long a standby waits after the leader's last renewal before it takes over")
	fs.DurationVar(&f.renewDeadline, "leader-elect-renew-deadline", leader.DefaultRenewDeadline, "how long the leader tries to renew the Lease before it stops leading")
	fs.DurationVar(&f.retryPeriod, "leader-elect-retry-period", leader.DefaultRetryPeriod, "time between tries to take or renew the Lease")
	cli.ChoiceVar(fs, &f.logLevel, "log-level", "info", []string{"debug", "info", "warn", "error"}, "log level: debug, info, warn, error")
	cli.ChoiceVar(fs, &f.logFormat, "log-format", "json", []string{"json", "text"}, "log format: json or text")
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprint(out, "Usage: strait-gateway run --site NAME --mesh FILE [flags]\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprint(out, "\n"+cli.EnvUsage(cli.EnvPrefix, "metrics-addr"))
	}
	return fs
}

func run(args []string) error {
	var (
		o gateway.Options
		f runFlags
	)
	fs := newRunFlags(&o, &f)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	if err := cli.FlagsFromEnv(fs, cli.EnvPrefix); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	m, err := tunnel.ParseMode(f.mode)
	if err != nil {
		return err
	}
	o.WireGuard = m
	useKube := false
	switch f.kube {
	case "on":
		useKube = true
	case "off":
	case "auto":
		useKube = f.kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	default:
		return fmt.Errorf("--kubernetes %q: want on, off or auto", f.kube)
	}
	var cfg *rest.Config
	if useKube || f.allocations == "kubernetes" || f.leaderElect {
		if cfg, err = cli.KubeConfig(f.kubeconfig); err != nil {
			return err
		}
	}
	if useKube {
		kc, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("--kubernetes: %w", err)
		}
		mc, err := mcsclient.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("--kubernetes: %w", err)
		}
		dc, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("--kubernetes: %w", err)
		}
		o.Kube = &gateway.KubeClients{Kube: kc, MCS: mc, Dynamic: dc}
	}
	switch f.allocations {
	case "file":
	case "kubernetes":
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("--allocations=kubernetes: %w", err)
		}
		o.Store = &kubestore.Store{Client: client, Namespace: f.namespace, Name: f.allocationsName, Site: o.Site}
	default:
		return fmt.Errorf("--allocations %q: want file or kubernetes", f.allocations)
	}
	var election *leader.Config
	if f.leaderElect {
		if o.Site == "" {
			return errors.New("--leader-elect: no site given (--site)")
		}
		lease := f.lease
		if lease == "" {
			lease = "strait-gateway-" + o.Site
		}
		// A hung request must not cost the leadership: each call gives up
		// well within the renew deadline.
		lcfg := rest.CopyConfig(cfg)
		lcfg.Timeout = max(f.renewDeadline/2, time.Second)
		client, err := kubernetes.NewForConfig(rest.AddUserAgent(lcfg, "strait-gateway-leader-election"))
		if err != nil {
			return fmt.Errorf("--leader-elect: %w", err)
		}
		election = &leader.Config{Client: client, Namespace: f.namespace, Name: lease, Identity: f.identity,
			LeaseDuration: f.leaseDuration, RenewDeadline: f.renewDeadline, RetryPeriod: f.retryPeriod}
	}
	logger, err := cli.NewLogger(f.logLevel, f.logFormat, os.Stderr)
	if err != nil {
		return err
	}
	o.Logger = logger

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	}()
	if election == nil {
		return gateway.Run(ctx, o, reload)
	}
	election.Logger = logger
	return leader.Run(ctx, *election, func(ctx context.Context) error {
		return gateway.Run(ctx, o, reload)
	})
}
