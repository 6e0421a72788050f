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

	"gopkg.in/yaml.v3"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/straitnet/strait/e2e/lab"
)

// labKube works with the cluster of a lab site (`strait lab up --kube`)
// through client-go, as kubectl would: the lab has no kubectl.
func labKube(args []string) error {
	fs, run, dir := labFlags("kube")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage:
  strait lab kube [--run ID] SITE apply -f FILE     create or update the objects of FILE (YAML; - is stdin), server-side
  strait lab kube [--run ID] SITE get RESOURCE [NAME] [-n NAMESPACE] [--wait DURATION]
                                                     print objects as YAML (every namespace without -n and NAME)
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() < 2 {
		return usagef("lab kube SITE apply|get ...: which site, and what to do?")
	}
	site, verb, rest := fs.Arg(0), fs.Arg(1), fs.Args()[2:]
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch verb {
	case "apply":
		afs := flag.NewFlagSet("lab kube apply", flag.ContinueOnError)
		file := afs.String("f", "", "file of objects (YAML or JSON documents; - reads stdin)")
		pos, err := parse(afs, rest)
		if err != nil {
			return err
		}
		if *file == "" || len(pos) > 0 {
			return usagef("lab kube SITE apply -f FILE")
		}
		var data []byte
		if *file == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(*file)
		}
		if err != nil {
			return err
		}
		done, err := l.Apply(ctx, site, data)
		for _, d := range done {
			fmt.Printf("%s applied in %s\n", d, site)
		}
		return err
	case "get":
		gfs := flag.NewFlagSet("lab kube get", flag.ContinueOnError)
		ns := gfs.String("n", "", "namespace (default: every namespace, or default for a NAME)")
		wait := gfs.Duration("wait", 0, "wait this long for NAME to exist")
		pos, err := parse(gfs, rest)
		if err != nil {
			return err
		}
		if len(pos) < 1 || len(pos) > 2 {
			return usagef("lab kube SITE get RESOURCE [NAME] [-n NAMESPACE]")
		}
		name := ""
		if len(pos) == 2 {
			name = pos[1]
		}
		deadline := time.Now().Add(*wait)
		for {
			objs, err := l.Get(ctx, site, pos[0], *ns, name)
			if apierrors.IsNotFound(err) && time.Now().Before(deadline) {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(200 * time.Millisecond):
				}
				continue
			}
			if err != nil {
				return err
			}
			return printObjects(os.Stdout, objs)
		}
	}
	return usagef("lab kube: unknown verb %q (apply, get)", verb)
}

// printObjects writes objects as YAML documents, without the metadata
// only the API server reads (managed fields, resource version, UID).
func printObjects(w io.Writer, objs []unstructured.Unstructured) error {
	for i, o := range objs {
		o = *o.DeepCopy()
		for _, f := range []string{"managedFields", "resourceVersion", "uid", "generation", "creationTimestamp"} {
			unstructured.RemoveNestedField(o.Object, "metadata", f)
		}
		if i > 0 {
			fmt.Fprintln(w, "---")
		}
		enc := yaml.NewEncoder(w)
		enc.SetIndent(2)
		if err := enc.Encode(o.Object); err != nil {
			return err
		}
		if err := enc.Close(); err != nil {
			return err
		}
	}
	return nil
}

// labTrace follows one connection through every translation.
func labTrace(args []string) error {
	fs, run, dir := labFlags("trace")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: strait lab trace [--run ID] HOST NAME[:PORT]|ADDR[:PORT]

Resolves NAME through the DNS of HOST's site gateway, opens a TCP
connection from HOST to it (port %d by default), and prints the path the
connection took, hop by hop, read from the client's socket, the conntrack
table of every gateway and node it crossed, and the server's reply.
`, lab.ServePort)
		fs.PrintDefaults()
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return usagef("lab trace HOST NAME[:PORT]: from which host to where?")
	}
	l, err := lab.Open(*run, *dir)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t, err := l.TraceConnection(ctx, pos[0], pos[1])
	if err != nil {
		return err
	}
	lab.PrintTrace(os.Stdout, t)
	if !t.Complete {
		return errors.New("lab trace: the path is incomplete")
	}
	return nil
}
