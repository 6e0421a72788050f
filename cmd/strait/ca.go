package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	"github.com/straitnet/strait/discovery/catalog"
	"github.com/straitnet/strait/discovery/trustfile"
)

// caCmd is the mesh's certificate authority: the key whose public half
// every gateway trusts, and the identities it issues to clusters.
func caCmd(args []string, out io.Writer) error {
	if len(args) == 0 {
		return usagef("ca: which subcommand? (init, issue, gossip-key)")
	}
	sub, args := args[0], args[1:]
	switch sub {
	case "init":
		fs := flag.NewFlagSet("ca init", flag.ContinueOnError)
		path := fs.String("out", "ca.json", "where to keep the CA's private key (made with mode 0600; never overwritten)")
		if _, err := parse(fs, args); err != nil {
			return err
		}
		ca, err := catalog.NewCA()
		if err != nil {
			return err
		}
		if err := trustfile.SaveCA(*path, ca); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "made the mesh's CA key in %s; keep it offline. Its public key, for discovery.ca of every mesh file:\n", *path)
		fmt.Fprintln(out, catalog.EncodeKey(ca.Public))
		return nil
	case "issue":
		fs := flag.NewFlagSet("ca issue", flag.ContinueOnError)
		caPath := fs.String("ca", "ca.json", "the CA's key file (strait ca init)")
		block := fs.String("block", "", "the cluster's block of the global CIDR, as in its site entry (required)")
		path := fs.String("out", "", "identity file to write (default CLUSTER.identity.json); the gateway reads it as identity.json in its state directory")
		lifetime := fs.Duration("lifetime", 365*24*time.Hour, "how long the certificate is valid")
		pos, err := parse(fs, args)
		if err != nil {
			return err
		}
		if len(pos) != 1 {
			return usagef("ca issue: name exactly one cluster")
		}
		cluster := pos[0]
		if !catalog.ValidName(cluster) {
			return usagef("ca issue: %q is not a cluster name (lowercase letters, digits and '-', at most 63, like a DNS label; the site's name)", cluster)
		}
		b, err := netip.ParsePrefix(*block)
		if err != nil || b.Masked() != b || !b.Addr().Is4() {
			return usagef("ca issue: --block %q is not an IPv4 prefix such as 242.1.0.0/16", *block)
		}
		if *lifetime <= 0 {
			return usagef("ca issue: --lifetime %s is not positive", *lifetime)
		}
		ca, err := trustfile.LoadCA(*caPath)
		if err != nil {
			return err
		}
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		id := catalog.Identity{Cert: ca.Issue(cluster, b, pub, time.Now(), *lifetime), Key: priv}
		if *path == "" {
			*path = cluster + ".identity.json"
		}
		if err := trustfile.SaveIdentity(*path, id); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: identity of cluster %s, block %s, valid until %s\n", *path, cluster, b, id.Cert.NotAfter.Format(time.RFC3339))
		return nil
	case "gossip-key":
		if len(args) > 0 {
			return usagef("ca gossip-key takes no arguments")
		}
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return err
		}
		fmt.Fprintln(out, catalog.EncodeKey(k))
		return nil
	}
	return usagef("ca: unknown subcommand %q (init, issue, gossip-key)", sub)
}
