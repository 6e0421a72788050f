package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/straitnet/strait/gateway"
	"github.com/straitnet/strait/natpool"
)

func statusCmd(args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	sock := fs.String("socket", filepath.Join(gateway.DefaultStateDir, gateway.SocketName), "status socket of the gateway")
	asJSON := fs.Bool("json", false, "print the raw status as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := gateway.FetchStatus(ctx, *sock)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	printStatus(os.Stdout, st)
	fmt.Println()
	printMatrix(os.Stdout, st.Matrix)
	return nil
}

// printMatrix prints the collision matrix: how traffic flows between every
// two sites.
func printMatrix(w io.Writer, m []natpool.Pair) {
	fmt.Fprintln(w, "collision matrix (real: addresses kept; translated: through egress and ingress addresses):")
	for _, p := range m {
		why := ""
		if p.Why != "" {
			why = "  (" + p.Why + ")"
		}
		fmt.Fprintf(w, "  %-12s -> %-12s %-10s  %-12s -> %-12s %-10s%s\n", p.A, p.B, p.AB, p.B, p.A, p.BA, why)
	}
}

// printStatus renders a gateway's status for people.
func printStatus(w io.Writer, st gateway.Status) {
	ready := "ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	t := st.Tunnel
	fmt.Fprintf(w, "gateway %s: %s; %s WireGuard on %s, port %d, MTU %d; config %s (applied %s)\n",
		st.Site, ready, t.Implementation, t.Interface, t.ListenPort, t.MTU, st.Config.Hash, st.Config.AppliedAt.Format(time.TimeOnly))
	if st.Config.Refused != nil {
		fmt.Fprintf(w, "  CONFIG REFUSED at %s, running on the last good one:\n    %s\n",
			st.Config.Refused.At.Format(time.TimeOnly), strings.ReplaceAll(st.Config.Refused.Msg, "\n", "\n    "))
	}
	if st.ApplyError != nil {
		pending := ""
		if st.Config.Pending != "" {
			pending = " config " + st.Config.Pending
		}
		fmt.Fprintf(w, "  APPLYING%s FAILS since %s: %s\n", pending, st.ApplyError.At.Format(time.TimeOnly), st.ApplyError.Msg)
	}
	for _, c := range st.Conditions {
		fmt.Fprintf(w, "  CONDITION: %s\n", c)
	}
	for _, p := range st.Paths {
		why := ""
		if p.Why != "" {
			why = " (" + p.Why + ")"
		}
		fmt.Fprintf(w, "  path %-10s out %-10s in %-10s%s\n", p.Peer, p.Outbound, p.Inbound, why)
	}
	for _, u := range st.Pools {
		fmt.Fprintf(w, "  pool %-10s %-7s %-18s %d of %d used, %d held\n", u.Pool, u.Kind, u.CIDR, u.Used, u.Size, u.Held)
	}
	for _, a := range st.Allocations {
		fmt.Fprintf(w, "  %-15s %s\n", a.IP, a.Key)
	}
	fmt.Fprintf(w, "  nat: %d service mappings, %d pods by egress rule, sources %s, translated toward %s, %d drifts repaired\n",
		st.NAT.Services, st.NAT.EgressPods, strings.Join(st.NAT.EgressNets, ", "), strings.Join(st.NAT.Translated, ", "), st.NAT.Drifts)
	if d := st.Discovery; d != nil {
		var alive, clusters []string
		for _, m := range d.Members {
			if m.State == "alive" {
				alive = append(alive, m.Name)
			}
		}
		for c, up := range d.Clusters {
			if !up {
				c += " (down)"
			}
			clusters = append(clusters, c)
		}
		slices.Sort(alive)
		slices.Sort(clusters)
		var rejected []string
		for reason, n := range d.Catalog.Rejected {
			rejected = append(rejected, fmt.Sprintf("%s %d", reason, n))
		}
		slices.Sort(rejected)
		if len(rejected) == 0 {
			rejected = []string{"none"}
		}
		fmt.Fprintf(w, "  discovery: members alive %s; catalog: clusters %s, %d services; refused: %s, %d malformed, %d packets with a wrong key\n",
			strings.Join(alive, ", "), strings.Join(clusters, ", "), d.Services, strings.Join(rejected, ", "), d.Gossip.Malformed, d.Gossip.WrongKey)
		if d.DNS != nil {
			fmt.Fprintf(w, "  dns: clusterset.local, %d queries answered\n", d.DNS.Queries)
		}
		for _, p := range d.Problems {
			fmt.Fprintf(w, "  DISCOVERY: %s\n", p)
		}
	}
	if lb := st.LoadBalancer; lb != nil {
		fmt.Fprintf(w, "  load balancer: VIPs from %s; %d connections balanced, %d refused (no backend serving)\n", lb.VIPRange, lb.Balanced, lb.Refused)
		for _, s := range lb.Services {
			var bs []string
			for _, b := range s.Backends {
				state := fmt.Sprintf("%.0f%%", b.Share*100)
				if !b.Serving {
					state = "not serving"
				}
				bs = append(bs, fmt.Sprintf("%s %s (tier %d, %s)", b.Cluster, b.Addr, b.Tier, state))
			}
			fmt.Fprintf(w, "    %s at %s %s: %s\n", s.Name, s.VIP, strings.Join(s.Ports, ","), strings.Join(bs, "; "))
		}
		for _, name := range slices.Sorted(maps.Keys(lb.Health)) {
			h := lb.Health[name]
			state := "healthy"
			switch {
			case !h.Checked:
				state = "not checked yet"
			case !h.Healthy:
				state = "UNHEALTHY: " + h.Reason
			}
			fmt.Fprintf(w, "    health of this site's %s at %s: %s\n", name, h.Target, state)
		}
		for _, p := range lb.Problems {
			fmt.Fprintf(w, "  LOAD BALANCER: %s\n", p)
		}
	}
	if fw := st.Firewall; fw != nil {
		fmt.Fprintf(w, "  firewall: default %s (%d connections), %d rules\n", fw.DefaultAction, fw.Default, len(fw.Rules))
		for _, r := range fw.Rules {
			dry := ""
			if r.DryRun {
				dry = " (dry run)"
			}
			fmt.Fprintf(w, "    %-6s %-40s %d connections%s\n", r.Action, r.Name, r.Matched, dry)
		}
		for _, p := range fw.Problems {
			fmt.Fprintf(w, "  FIREWALL: %s\n", p)
		}
	}
	if b := st.BGP; b != nil {
		state := "routes complete"
		if !b.Converged {
			state = "waiting for the routers' routes: nothing installed is removed yet"
		}
		if b.Restarting {
			state += "; restarted gracefully after a crash"
		}
		fmt.Fprintf(w, "  bgp: AS %d, router ID %s; %s\n", b.ASN, b.RouterID, state)
		for _, p := range b.Peers {
			since := ""
			if !p.Since.IsZero() {
				since = " since " + p.Since.Format(time.TimeOnly)
			}
			gr := ""
			if p.GracefulRestart {
				gr = ", graceful restart"
			}
			fmt.Fprintf(w, "    peer %s %s AS %d: %s%s; %d received, %d accepted, %d advertised%s\n",
				p.Name, p.Address, p.ASN, p.State, since, p.Received, p.Accepted, p.Advertised, gr)
		}
		var ann []string
		for _, p := range b.Announced {
			ann = append(ann, p.String())
		}
		fmt.Fprintf(w, "    announced: %s\n", strings.Join(ann, ", "))
		for _, r := range b.Learned {
			fmt.Fprintf(w, "    learned %-18s via %s (%s)\n", r.Prefix, r.NextHop, r.Peer)
		}
		for _, r := range b.Refused {
			fmt.Fprintf(w, "    REFUSED %-18s via %s (%s): %s\n", r.Prefix, r.NextHop, r.Peer, r.Reason)
		}
		if b.Error != "" {
			fmt.Fprintf(w, "  BGP: %s\n", b.Error)
		}
	}
	fmt.Fprintf(w, "  %-10s %-22s %-34s %-11s %10s %10s\n", "PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX")
	for _, p := range t.Peers {
		hs := "never"
		if p.HandshakeAge >= 0 {
			hs = fmt.Sprintf("%.0fs ago", p.HandshakeAge)
		}
		ep := p.Endpoint
		if ep == "" {
			ep = "(none yet)"
		}
		fmt.Fprintf(w, "  %-10s %-22s %-34s %-11s %10s %10s\n", p.Site, ep, strings.Join(p.AllowedIPs, ","), hs, bytesStr(p.RxBytes), bytesStr(p.TxBytes))
	}
}

func bytesStr(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
