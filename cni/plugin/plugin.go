// Package plugin is strait-cni, the CNI plugin (spec 1.1.0) that gives
// each pod its network on a node: a veth into the pod's namespace, a /32
// (and a /128 with dual stack) from the node's pod CIDRs, a default route
// through a link-local gateway, and a /32 route to the pod on the host.
//
// Every command is safe to repeat and to run in parallel: addresses come
// from package ipam under a file lock; DEL succeeds for what is already
// gone; a failed ADD leaves nothing behind. Errors carry the spec's codes
// and say what is wrong.
package plugin

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/straitnet/strait/cni/ipam"
)

// Gateways are the pod's link-local next hops: the host's end of the
// veth answers for them through permanent neighbour entries in the pod.
var (
	Gateway4 = netip.MustParseAddr("169.254.1.1")
	Gateway6 = netip.MustParseAddr("fe80::1")
)

// HostPrefix starts the name of every host-side veth strait-cni makes;
// AliasPrefix its alias, which names the attachment for GC.
const (
	HostPrefix  = "st"
	AliasPrefix = "strait-cni:"
)

// HostVeth is the host-side name of an attachment's veth: a hash of it,
// within the 15 characters Linux allows.
func HostVeth(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return HostPrefix + hex.EncodeToString(sum[:])[:11]
}

func alias(a ipam.Attachment) string { return AliasPrefix + a.ContainerID + "/" + a.IfName }

// Funcs are the plugin's commands for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, GC: GC, Status: Status}
}

func attachment(args *skel.CmdArgs) ipam.Attachment {
	return ipam.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
}

// Add gives the container its interface and addresses.
func Add(args *skel.CmdArgs) (err error) {
	cfg, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := agentReady(cfg.AgentState, cfg.ranges); err != nil {
		return types.NewError(types.ErrTryAgainLater, "strait-cni: the node is not ready for pods", err.Error())
	}
	if _, err := os.Stat(args.Netns); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("strait-cni: CNI_NETNS %s: %v", args.Netns, err), "")
	}
	store, err := ipam.Open(cfg.DataDir, cfg.ranges)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: address store", err.Error())
	}
	att := attachment(args)
	host := HostVeth(args.ContainerID, args.IfName)
	// An attachment that is up already is a live pod's: a repeated ADD
	// must not tear it down on its way to failing.
	if _, ok, _ := store.Lookup(att); ok && linkExists(host) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("strait-cni: container %s already has %s (DEL it first)", args.ContainerID, args.IfName), "")
	}
	addrs, err := store.Allocate(att)
	if err != nil {
		code := types.ErrIOFailure
		if errors.Is(err, ipam.ErrExhausted) {
			code = types.ErrTryAgainLater
		}
		return types.NewError(code, "strait-cni: no address for the pod", err.Error())
	}
	defer func() {
		if err != nil {
			// Nothing half made: the veth (both ends) and the address go.
			deleteLink(host)
			store.Release(att)
		}
	}()
	res, err := wire(args.Netns, host, args.IfName, alias(att), cfg.MTU, addrs)
	if err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("strait-cni: wiring %s in %s", args.IfName, args.Netns), err.Error())
	}
	res.CNIVersion = current.ImplementedSpecVersion
	return types.PrintResult(res, cfg.CNIVersion)
}

// Del removes the container's interface and frees its addresses. What is
// already gone, the namespace included, is not an error.
func Del(args *skel.CmdArgs) error {
	cfg, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := deleteLink(HostVeth(args.ContainerID, args.IfName)); err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: removing the pod's veth", err.Error())
	}
	store, err := ipam.Open(cfg.DataDir, cfg.ranges)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: address store", err.Error())
	}
	if err := store.Release(attachment(args)); err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: freeing the pod's addresses", err.Error())
	}
	return nil
}

// Check says whether the container's network is still as ADD made it.
func Check(args *skel.CmdArgs) error {
	cfg, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	store, err := ipam.Open(cfg.DataDir, cfg.ranges)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: address store", err.Error())
	}
	addrs, ok, err := store.Lookup(attachment(args))
	if err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: address store", err.Error())
	}
	if !ok {
		return types.NewError(types.ErrUnknownContainer, fmt.Sprintf("strait-cni: container %s (%s) has no addresses here", args.ContainerID, args.IfName), "")
	}
	if err := checkPrevResult(cfg, args, addrs); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("strait-cni: CHECK of %s %s", args.ContainerID, args.IfName), err.Error())
	}
	if err := verify(args.Netns, HostVeth(args.ContainerID, args.IfName), args.IfName, addrs); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("strait-cni: CHECK of %s %s", args.ContainerID, args.IfName), err.Error())
	}
	return nil
}

// checkPrevResult compares what the runtime remembers of ADD (the
// prevResult, when it passes one) with the addresses allocated: the
// pod's interface in its sandbox must hold exactly those.
func checkPrevResult(cfg *Config, args *skel.CmdArgs, addrs []netip.Addr) error {
	if cfg.RawPrevResult == nil {
		return nil
	}
	if err := version.ParsePrevResult(&cfg.PluginConf); err != nil {
		return fmt.Errorf("prevResult: %w", err)
	}
	prev, err := current.NewResultFromResult(cfg.PrevResult)
	if err != nil {
		return fmt.Errorf("prevResult: %w", err)
	}
	var got []netip.Addr
	for _, ip := range prev.IPs {
		if ip.Interface == nil || *ip.Interface >= len(prev.Interfaces) {
			continue
		}
		iface := prev.Interfaces[*ip.Interface]
		if iface.Name != args.IfName || iface.Sandbox != args.Netns {
			continue
		}
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
			got = append(got, a.Unmap())
		}
	}
	slices.SortFunc(got, netip.Addr.Compare)
	want := slices.Clone(addrs)
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		return fmt.Errorf("the runtime's prevResult gives %s addresses %v, but %v are allocated to it", args.IfName, got, want)
	}
	return nil
}

// GC frees the addresses and veths of every attachment the runtime no
// longer lists.
func GC(args *skel.CmdArgs) error {
	cfg, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var keep []ipam.Attachment
	valid := map[string]bool{}
	for _, a := range cfg.ValidAttachments {
		at := ipam.Attachment{ContainerID: a.ContainerID, IfName: a.IfName}
		keep = append(keep, at)
		valid[alias(at)] = true
	}
	store, err := ipam.Open(cfg.DataDir, cfg.ranges)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: address store", err.Error())
	}
	freed, err := store.GC(keep)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: GC of addresses", err.Error())
	}
	var errs []error
	for _, a := range freed {
		errs = append(errs, deleteLink(HostVeth(a.ContainerID, a.IfName)))
	}
	errs = append(errs, deleteLinksExcept(valid))
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrIOFailure, "strait-cni: GC of veths", err.Error())
	}
	return nil
}

// Status says whether ADD would work now.
func Status(args *skel.CmdArgs) error {
	cfg, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if err := agentReady(cfg.AgentState, cfg.ranges); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "strait-cni: the node is not ready for pods", err.Error())
	}
	if _, err := ipam.Open(cfg.DataDir, cfg.ranges); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "strait-cni: address store", err.Error())
	}
	return nil
}

// result is what ADD reports.
func result(host, pod net.Interface, netnsPath string, addrs []netip.Addr) *current.Result {
	r := &current.Result{Interfaces: []*current.Interface{
		{Name: host.Name, Mac: host.HardwareAddr.String()},
		{Name: pod.Name, Mac: pod.HardwareAddr.String(), Sandbox: netnsPath},
	}}
	for _, a := range addrs {
		gw, bits, dst := Gateway4, 32, "0.0.0.0/0"
		if a.Is6() {
			gw, bits, dst = Gateway6, 128, "::/0"
		}
		_, d, _ := net.ParseCIDR(dst)
		r.IPs = append(r.IPs, &current.IPConfig{Interface: current.Int(1),
			Address: net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, bits)}, Gateway: gw.AsSlice()})
		r.Routes = append(r.Routes, &types.Route{Dst: *d, GW: gw.AsSlice()})
	}
	return r
}

// ParseAlias says which attachment a host veth strait-cni made serves,
// from its alias.
func ParseAlias(alias string) (ipam.Attachment, bool) { return attachmentOf(alias) }

// attachmentOf parses a host veth's alias.
func attachmentOf(alias string) (ipam.Attachment, bool) {
	rest, ok := strings.CutPrefix(alias, AliasPrefix)
	if !ok {
		return ipam.Attachment{}, false
	}
	i := strings.LastIndex(rest, "/")
	if i <= 0 || i == len(rest)-1 {
		return ipam.Attachment{}, false
	}
	return ipam.Attachment{ContainerID: rest[:i], IfName: rest[i+1:]}, true
}
