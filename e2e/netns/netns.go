// Package netns makes, enters and removes the named network namespaces that
// stand for hosts in strait's lab and tests.
//
// Every namespace strait makes is named with Prefix and a run ID, so that
// parallel runs never collide and a crashed run can be found and removed by
// name alone. This package is the one place that enters namespaces: all
// other code asks it for a netlink handle or a function run inside.
package netns

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
)

// Prefix starts the name of every namespace strait makes.
const Prefix = "strait-"

// Dir is where iproute2 keeps named namespaces.
const Dir = "/run/netns"

// NS is a named network namespace.
type NS struct {
	Name string
}

// Add makes a named namespace, with its loopback up.
func Add(name string) (NS, error) {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return NS{}, fmt.Errorf("netns: add %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	ns := NS{Name: name}
	h, err := ns.Handle()
	if err != nil {
		Delete(name)
		return NS{}, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		Delete(name)
		return NS{}, fmt.Errorf("netns: %s: loopback up: %w", name, err)
	}
	return ns, nil
}

// Exists reports whether the named namespace exists.
func Exists(name string) bool {
	_, err := os.Stat(filepath.Join(Dir, name))
	return err == nil
}

// Delete stops every process inside the namespace and removes it. A
// namespace that does not exist is not an error: Delete also cleans up after
// runs that crashed half-way.
func Delete(name string) error {
	if !Exists(name) {
		return nil
	}
	ns := NS{Name: name}
	if err := ns.Kill(2 * time.Second); err != nil {
		return err
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		if !Exists(name) {
			return nil
		}
		return fmt.Errorf("netns: delete %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// List returns the names of the namespaces that start with prefix.
func List(prefix string) ([]string, error) {
	entries, err := os.ReadDir(Dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// Handle returns a netlink handle working inside the namespace.
func (ns NS) Handle() (*netlink.Handle, error) {
	fd, err := vnetns.GetFromName(ns.Name)
	if err != nil {
		return nil, fmt.Errorf("netns: open %s: %w", ns.Name, err)
	}
	defer fd.Close()
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return nil, fmt.Errorf("netns: netlink in %s: %w", ns.Name, err)
	}
	return h, nil
}

// Open returns a file descriptor of the namespace; the caller closes it.
func (ns NS) Open() (vnetns.NsHandle, error) {
	fd, err := vnetns.GetFromName(ns.Name)
	if err != nil {
		return 0, fmt.Errorf("netns: open %s: %w", ns.Name, err)
	}
	return fd, nil
}

// Do runs fn on an OS thread that has entered the namespace. Sockets fn
// opens belong to the namespace and stay there after Do returns. fn must not
// start goroutines that expect to run inside.
func (ns NS) Do(fn func() error) error {
	target, err := vnetns.GetFromName(ns.Name)
	if err != nil {
		return fmt.Errorf("netns: open %s: %w", ns.Name, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: current namespace: %w", err)
	}
	defer orig.Close()
	if err := vnetns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: enter %s: %w", ns.Name, err)
	}
	ferr := fn()
	if err := vnetns.Set(orig); err != nil {
		// The thread stays locked, so the runtime ends it with this
		// goroutine instead of reusing it in the wrong namespace.
		return fmt.Errorf("netns: leave %s: %w", ns.Name, err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Sysctl sets a sysctl (such as "net/ipv4/ip_forward") inside the namespace.
func (ns NS) Sysctl(key, value string) error {
	return ns.Do(func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns: %s: sysctl %s=%s: %w", ns.Name, key, value, err)
		}
		return nil
	})
}

// Command returns a command that runs inside the namespace (through
// `ip netns exec`, which also gives it the namespace's view of /sys).
func (ns NS) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Pids returns the processes whose network namespace this is.
func (ns NS) Pids() ([]int, error) {
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join(Dir, ns.Name), &want); err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("netns: %w", err)
	}
	var pids []int
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", p.Name(), "ns/net"), &st) != nil {
			continue // gone, or a kernel thread
		}
		if st.Ino == want.Ino && st.Dev == want.Dev {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Kill stops every process inside the namespace: SIGTERM, then SIGKILL
// for what is left after grace.
func (ns NS) Kill(grace time.Duration) error {
	pids, err := ns.Pids()
	if err != nil || len(pids) == 0 {
		return err
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		pids = slices.DeleteFunc(pids, func(pid int) bool { return !Alive(pid) })
		if len(pids) == 0 {
			return nil
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for range 100 {
		pids = slices.DeleteFunc(pids, func(pid int) bool { return !Alive(pid) })
		if len(pids) == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("netns: %s: processes %v survive SIGKILL", ns.Name, pids)
}

// Alive reports whether pid still runs (a zombie does not count: it holds
// nothing but its exit status).
func Alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
