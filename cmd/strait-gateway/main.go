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

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	mcsclient "sigs.k8s.io/mcs-api/pkg/client/clientset/versioned"

	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/gateway/tunnel"
	"github.com/straitnet/strait/internal/cli"
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
      configuration keeps running.
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

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var o gateway.Options
	fs.StringVar(&o.Site, "site", "", "this gateway's site name in the mesh configuration (required)")
	fs.StringVar(&o.MeshFile, "mesh", "", "mesh configuration file (required)")
	fs.StringVar(&o.SiteFile, "site-file", "", "this site's pools, exported services, egress rules and pods (default: default pools, nothing exported)")
	fs.StringVar(&o.StateDir, "state-dir", gateway.DefaultStateDir, "directory for the private key and the status socket")
	fs.StringVar(&o.Interface, "interface", "strait0", "WireGuard device name")
	fs.StringVar(&o.MetricsAddr, "metrics-addr", ":9464", "where to serve Prometheus metrics (/metrics); empty: nowhere")
	mode := fs.String("wireguard", "auto", "WireGuard implementation: auto (kernel if present, else userspace), kernel, userspace, wireguard-go (an external binary, see --wireguard-go)")
	fs.StringVar(&o.WireGuardGo, "wireguard-go", "wireguard-go", "wireguard-go binary for --wireguard=wireguard-go")
	fs.IntVar(&o.MTU, "mtu", 0, "tunnel MTU; 0 derives it from the underlay MTU less the WireGuard overhead")
	fs.DurationVar(&o.Interval, "interval", 0, "how often to re-read the mesh file and repair drift (default 2s)")
	allocations := fs.String("allocations", "file", "where allocations persist: file (allocations.json in --state-dir) or kubernetes (a ConfigMap)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the site's cluster (default: the in-cluster service account)")
	kube := fs.String("kubernetes", "auto", "export what ServiceExports name and keep ServiceImports (with a discovery section): on, off, or auto (on with --kubeconfig or in a pod)")
	namespace := fs.String("namespace", cli.EnvOr("POD_NAMESPACE", "strait-system"), "namespace of the allocations ConfigMap")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	m, err := tunnel.ParseMode(*mode)
	if err != nil {
		return err
	}
	o.WireGuard = m
	useKube := false
	switch *kube {
	case "on":
		useKube = true
	case "off":
	case "auto":
		useKube = *kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	default:
		return fmt.Errorf("--kubernetes %q: want on, off or auto", *kube)
	}
	var cfg *rest.Config
	if useKube || *allocations == "kubernetes" {
		if cfg, err = cli.KubeConfig(*kubeconfig); err != nil {
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
	switch *allocations {
	case "file":
	case "kubernetes":
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("--allocations=kubernetes: %w", err)
		}
		o.Store = &kubestore.Store{Client: client, Namespace: *namespace, Site: o.Site}
	default:
		return fmt.Errorf("--allocations %q: want file or kubernetes", *allocations)
	}
	logger, err := cli.NewLogger(*logLevel, *logFormat, os.Stderr)
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
	return gateway.Run(ctx, o, reload)
}
