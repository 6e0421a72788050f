// Command strait-cni is strait's CNI plugin (spec 1.1.0): the container
// runtime runs it with CNI_COMMAND set, as the spec describes, from a
// conflist that strait-agent writes.
//
// Without CNI_COMMAND, `strait-cni install` copies the binary into the
// host's CNI bin directory (see install.go).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/straitnet/strait/cni/plugin"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 && os.Args[1] == "install" {
		if err := install(os.Args[2:], os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "strait-cni:", err)
			os.Exit(1)
		}
		return
	}
	skel.PluginMainFuncs(plugin.Funcs(), cniversion.All, "strait-cni "+version+": pod networking for strait (CNI spec 1.1.0)")
}
