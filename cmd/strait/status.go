package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/straitnet/strait/gateway"
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
	return nil
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
	for _, m := range st.NAT {
		fmt.Fprintf(w, "  nat: %s <-> %s\n", m.Real, m.Global)
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
