package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/straitnet/strait/internal/atomicfile"
)

// pluginName is the binary's name in the CNI bin directory: the "type" of
// the conflist that strait-agent writes.
const pluginName = "strait-cni"

const installUsage = `Usage: strait-cni install [--bin-dir DIR] [--from FILE]

Install the plugin for the container runtime: copy this binary (or --from)
into the CNI bin directory as strait-cni, in one rename, so that the runtime
never runs half a binary. An identical binary already there is left alone.
The node agent DaemonSet runs it in an init container with the host's
/opt/cni/bin mounted; strait-agent writes the conflist once the node is
ready for pods.

Flags:
`

// install is `strait-cni install`: args are those after "install".
func install(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.SetOutput(out)
	binDir := fs.String("bin-dir", "/opt/cni/bin", "the CNI bin directory (in a pod: where the host's is mounted)")
	from := fs.String("from", "", "the binary to install (default: this one)")
	fs.Usage = func() {
		fmt.Fprint(out, installUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("install: unexpected arguments %q", fs.Args())
	}
	src := *from
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("install: this binary: %w", err)
		}
		src = exe
	}
	changed, err := installBinary(src, *binDir)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	dst := filepath.Join(*binDir, pluginName)
	if changed {
		fmt.Fprintf(out, "installed %s\n", dst)
	} else {
		fmt.Fprintf(out, "%s is up to date\n", dst)
	}
	return nil
}

// installBinary copies src to dir/strait-cni (mode 0755) unless the same
// bytes are there; it says whether it wrote.
func installBinary(src, dir string) (changed bool, err error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return false, err
	}
	if len(data) == 0 {
		return false, fmt.Errorf("%s is empty", src)
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return false, err
		}
	case err != nil:
		return false, err
	case !fi.IsDir():
		return false, fmt.Errorf("%s is not a directory", dir)
	}
	dst := filepath.Join(dir, pluginName)
	if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, data) {
		if st, err := os.Stat(dst); err == nil && st.Mode().Perm() == 0o755 {
			return false, nil
		}
	}
	// A running plugin keeps its old binary: rename replaces the name,
	// not the file it runs from.
	if err := atomicfile.Write(dst, data, 0o755, false); err != nil {
		return false, err
	}
	return true, nil
}
