package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/straitnet/strait/gateway/meshconf"
	"github.com/straitnet/strait/natpool"
)

const defaultMesh = "/etc/strait/mesh.yaml"

func configCmd(args []string) error {
	if len(args) == 0 {
		return usagef("config: which subcommand? (wg-quick, check)")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "wg-quick":
		fs := flag.NewFlagSet("config wg-quick", flag.ContinueOnError)
		mesh := fs.String("mesh", defaultMesh, "mesh configuration file")
		key := fs.String("private-key-file", "", "where the plain host keeps its private key (default /etc/wireguard/SITE.key)")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usagef("config wg-quick: name exactly one site")
		}
		site := pos[0]
		m, err := meshconf.Load(*mesh)
		if err != nil {
			return err
		}
		out, err := meshconf.WGQuick(m, site, *key)
		if err != nil {
			return err
		}
		fmt.Print(out)
		return nil
	case "check":
		fs := flag.NewFlagSet("config check", flag.ContinueOnError)
		mesh := fs.String("mesh", defaultMesh, "mesh configuration file")
		if err := fs.Parse(args); err != nil {
			return err
		}
		m, err := meshconf.Load(*mesh)
		if err != nil {
			return err
		}
		fmt.Printf("%s: valid: global CIDR %s, %d sites\n", *mesh, m.GlobalCIDR, len(m.Sites))
		for _, s := range m.Sites {
			how := "assigned"
			if s.BlockDerived {
				how = "derived from the name"
			}
			real := "no real CIDRs"
			if len(s.CIDRs) > 0 {
				real = fmt.Sprint(s.CIDRs)
				if s.Routable {
					real += " routable"
				}
			}
			fmt.Printf("  %-12s block %-16s (%s)  %s\n", s.Name, s.Block, how, real)
		}
		fmt.Println()
		printMatrix(os.Stdout, natpool.Matrix(m.Plan()))
		return nil
	}
	return usagef("config: unknown subcommand %q", sub)
}
