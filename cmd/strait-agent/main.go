// Command strait-agent is strait's node agent: it routes other nodes' pod
// CIDRs (directly or over VXLAN) and the mesh's destinations (to the
// cluster's gateway), writes strait-cni's configuration, and tells
// strait-cni whether the node is ready for pods.
//
//	strait-agent run --node NAME [flags]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/straitnet/strait/cni/plugin"
	"github.com/straitnet/strait/internal/cli"
	"github.com/straitnet/strait/nodeagent"
)

var version = "dev"

const usage = `strait-agent: the node agent of strait.

Usage:
  strait-agent run --node NAME [--kubeconfig FILE] [--gateway IP --mesh CIDR,...] [flags]
  strait-agent version

Run 'strait-agent run -h' for the flags. Every flag can also be set in the
environment: STRAIT_<FLAG>, such as STRAIT_GATEWAY for --gateway; the
command line wins.
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
	case "version":
		fmt.Println("strait-agent", version)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "strait-agent: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "strait-agent:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var o nodeagent.Options
	hostname, _ := os.Hostname()
	fs.StringVar(&o.NodeName, "node", cli.EnvOr("NODE_NAME", hostname), "this node's name (the default is $NODE_NAME if set, else the host name)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig (default: the in-cluster service account)")
	gateway := fs.String("gateway", "", "the cluster's strait gateway on the nodes' network; mesh destinations are routed to it")
	mesh := fs.String("mesh", "242.0.0.0/8", "comma-separated destinations routed to the gateway: the global CIDR and other sites' routable CIDRs")
	fs.StringVar(&o.CNIConfDir, "cni-conf-dir", nodeagent.DefaultCNIConfDir, "where the CNI conflist goes")
	fs.StringVar(&o.StateFile, "state-file", plugin.DefaultAgentState, "the readiness strait-cni reads")
	fs.StringVar(&o.CNIDataDir, "cni-data-dir", plugin.DefaultDataDir, "strait-cni's address store")
	fs.StringVar(&o.CNIVersion, "cni-version", "", "cniVersion of the conflist (default 1.0.0, offering 1.1.0 in cniVersions without --chain: Debian's reference plugins stop at 1.0.0)")
	chain := fs.String("chain", "", "comma-separated plugins chained after strait-cni, such as portmap,bandwidth")
	fs.IntVar(&o.MTU, "mtu", 0, "pods' MTU (default: the node's link MTU less VXLAN's overhead)")
	fs.DurationVar(&o.Interval, "interval", 10*time.Second, "how often to repair drift")
	fs.BoolVar(&o.NoPolicy, "no-policy", false, "do not enforce NetworkPolicy")
	fs.StringVar(&o.BPFPinDir, "bpf-pin-dir", nodeagent.DefaultBPFPinDir, "bpffs directory that keeps policy enforcement across agent restarts (empty: none; the bpffs is mounted at /sys/fs/bpf if missing)")
	logLevel, logFormat := new(string), new(string)
	cli.ChoiceVar(fs, logLevel, "log-level", "info", []string{"debug", "info", "warn", "error"}, "log level: debug, info, warn, error")
	cli.ChoiceVar(fs, logFormat, "log-format", "json", []string{"json", "text"}, "log format: json or text")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: strait-agent run --node NAME [flags]\n\nFlags:\n")
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), "\n"+cli.EnvUsage(cli.EnvPrefix, "gateway"))
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("run: unexpected arguments %q", fs.Args())
	}
	if err := cli.FlagsFromEnv(fs, cli.EnvPrefix); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if *gateway != "" {
		gw, err := netip.ParseAddr(*gateway)
		if err != nil || !gw.Is4() {
			return fmt.Errorf("--gateway %q is not an IPv4 address", *gateway)
		}
		o.Gateway = gw
		for _, s := range strings.Split(*mesh, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil || p.Masked() != p {
				return fmt.Errorf("--mesh: %q is not a masked prefix such as 242.0.0.0/8", s)
			}
			o.Mesh = append(o.Mesh, p)
		}
	}
	if *chain != "" {
		o.Chain = strings.Split(*chain, ",")
	}
	logger, err := cli.NewLogger(*logLevel, *logFormat, os.Stderr)
	if err != nil {
		return err
	}
	o.Logger = logger
	cfg, err := cli.KubeConfig(*kubeconfig)
	if err != nil {
		return err
	}
	if o.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	a, err := nodeagent.New(o)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return a.Run(ctx)
}
