// Command strait-cni is strait's CNI plugin (spec 1.1.0): the container
// runtime runs it with CNI_COMMAND set, as the spec describes, from a
// conflist that strait-agent writes.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	cniversion "github.com/containernetworking/cni/pkg/version"

	"github.com/straitnet/strait/cni/plugin"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	skel.PluginMainFuncs(plugin.Funcs(), cniversion.All, "strait-cni "+version+": pod networking for strait (CNI spec 1.1.0)")
}
