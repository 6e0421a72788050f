// Command strait is strait's command-line tool: the lab, benchmarks, mesh
// configuration helpers and gateway status.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/straitnet/strait/e2e/bench"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

const usage = `strait: multi-cloud cluster mesh with centralized NAT.

Usage:
  strait lab up [--run ID] [--topology merger|pair|FILE] [--kube]   build a lab and start its gateways
  strait lab status [--run ID]                              hosts, gateways, tunnels of a lab
  strait lab matrix [--run ID] [--paths]                    connectivity matrix from real traffic
  strait lab exec [--run ID] HOST [-- COMMAND [ARGS...]]     run a command in a lab host (default: a shell)
  strait lab connect [--run ID] [-n N] HOST ADDR[:PORT]     TCP connections to a lab server, counted by who answered
  strait lab wan [--run ID] SITE [--latency D] [--jitter D] [--loss PCT]   change a site's WAN link
  strait lab down [--run ID | --all]                        remove a lab, also after a crash
  strait lab ls                                             list labs
  strait lab trace [--run ID] HOST NAME[:PORT]              one connection's path through every translation, from conntrack
  strait lab kube [--run ID] SITE apply -f FILE | get RESOURCE [NAME] [-n NS]
                                                            a lab cluster's objects (labs up with --kube)
  strait lab kube-apiserver                                 build kube-apiserver and kube-proxy (cached) and print their paths
  strait config wg-quick SITE [--mesh FILE] [--private-key-file PATH]
                                                            wg-quick configuration for a plain WireGuard site
  strait config check [--mesh FILE]                         validate a mesh configuration
  strait ca init [--out FILE]                               make the mesh's CA key; prints its public key
  strait ca issue CLUSTER --block PREFIX [--ca FILE] [--out FILE]
                                                            a cluster's identity (certificate and signing key)
  strait ca gossip-key                                      a random key for discovery.gossipKeys
  strait status [--socket PATH] [--json]                    a gateway's status
  strait bench NAME [flags]                                 run a benchmark (tunnel, nat-sync, nat-lookup, gossip, dns, cni, pod-throughput, lb, firewall); one JSON line
  strait version

Run 'strait COMMAND SUBCOMMAND -h' for the flags of each.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "lab":
		err = labCmd(os.Args[2:])
	case "config":
		err = configCmd(os.Args[2:])
	case "ca":
		err = caCmd(os.Args[2:], os.Stdout)
	case "status":
		err = statusCmd(os.Args[2:])
	case "bench":
		err = benchCmd(os.Args[2:])
	case "bench-bgp-receiver": // the gateway side of `strait bench bgp`, inside its namespace
		err = bench.BGPReceiverMain(os.Args[2:])
	case "version":
		fmt.Println("strait", version)
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "strait: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(os.Stderr, "strait: %v\n\n%s", err, usage)
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "strait:", err)
		os.Exit(1)
	}
}

// usageError is a command line that does not parse.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// parse parses flags that may come before, between or after positional
// arguments ("lab wan cloud-b --latency 20ms"), and returns the positionals.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
