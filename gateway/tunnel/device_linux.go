package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	wgdevice "golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/straitnet/strait/gateway/ratelog"
)

// UAPIDir is where userspace WireGuard implementations put their control
// sockets (the path is compiled into wireguard-go and wg).
const UAPIDir = "/var/run/wireguard"

// kernelDevice is a kernel WireGuard interface.
type kernelDevice struct{ name string }

func (*kernelDevice) kind() Mode { return ModeKernel }

// close leaves the interface: the kernel keeps forwarding with the last
// configuration while the gateway restarts, and the next start adopts it.
func (*kernelDevice) close() error { return nil }

func openKernel(name string) (device, error) {
	err := netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}})
	switch {
	case err == nil:
		return &kernelDevice{name: name}, nil
	case errors.Is(err, unix.EEXIST):
		link, lerr := netlink.LinkByName(name)
		if lerr != nil {
			return nil, lerr
		}
		if link.Type() != "wireguard" {
			return nil, fmt.Errorf("interface %s exists and is a %s device, not WireGuard", name, link.Type())
		}
		return &kernelDevice{name: name}, nil // adopt the one a previous run left
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENODEV):
		return nil, fmt.Errorf("%w: %v", ErrNotSupported, err)
	}
	return nil, err
}

// userspaceDevice is golang.zx2c4.com/wireguard running in this process.
type userspaceDevice struct {
	dev  *wgdevice.Device
	uapi net.Listener
	done chan struct{} // closed when serve returns
	log  *slog.Logger
}

func (*userspaceDevice) kind() Mode { return ModeUserspace }

// openUserspace sets the device up the way wireguard-go's main does (TUN
// with offloads, the default UDP bind with GSO/GRO, the UAPI socket), so
// that it runs exactly as fast as the upstream binary.
func openUserspace(name string, log *slog.Logger) (_ device, err error) {
	tdev, err := tun.CreateTUN(name, wgdevice.DefaultMTU)
	if err != nil {
		return nil, fmt.Errorf("create TUN: %w", err)
	}
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		tdev.Close()
		return nil, fmt.Errorf("open UAPI socket %s: %w", filepath.Join(UAPIDir, name+".sock"), err)
	}
	dev := wgdevice.NewDevice(tdev, conn.NewDefaultBind(), wgLogger(log))
	defer func() {
		if err != nil {
			dev.Close()
		}
	}()
	uapi, err := ipc.UAPIListen(name, uapiFile)
	uapiFile.Close()
	if err != nil {
		return nil, fmt.Errorf("listen on UAPI socket: %w", err)
	}
	d := &userspaceDevice{dev: dev, uapi: uapi, done: make(chan struct{}), log: log}
	go d.serve()
	return d, nil
}

// serve answers UAPI requests (from wgctrl and `wg`) until the listener closes.
func (d *userspaceDevice) serve() {
	defer close(d.done)
	for {
		c, err := d.uapi.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				d.log.Error("UAPI socket lost; `wg` and reconfiguration no longer reach the device", "err", err)
			}
			return
		}
		go d.dev.IpcHandle(c)
	}
}

func (d *userspaceDevice) close() error {
	err := d.uapi.Close()
	<-d.done
	d.dev.Close()
	return err
}

// wgLogger adapts wireguard-go's printf logger to slog, rate limited per
// message format: some of its messages are logged per packet. A level the
// logger does not record gets a function that does nothing, as upstream's
// own logger does, so no message is formatted for nothing.
func wgLogger(log *slog.Logger) *wgdevice.Logger {
	lim := ratelog.New(10*time.Second, 5, time.Now)
	emit := func(level slog.Level) func(string, ...any) {
		if !log.Enabled(context.Background(), level) {
			return wgdevice.DiscardLogf
		}
		return func(format string, args ...any) {
			ok, suppressed := lim.Allow(format)
			if !ok {
				return
			}
			attrs := []any{"component", "wireguard-go"}
			if suppressed > 0 {
				attrs = append(attrs, "suppressed", suppressed)
			}
			log.Log(context.Background(), level, fmt.Sprintf(format, args...), attrs...)
		}
	}
	return &wgdevice.Logger{Verbosef: emit(slog.LevelDebug), Errorf: emit(slog.LevelWarn)}
}

// wireGuardGoDevice is an external wireguard-go process that the engine
// starts, configures over its UAPI socket and stops.
type wireGuardGoDevice struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid once done is closed
}

func (*wireGuardGoDevice) kind() Mode { return ModeWireGuardGo }

func openWireGuardGo(name, binary string, log *slog.Logger) (device, error) {
	if binary == "" {
		return nil, errors.New("no wireguard-go binary given")
	}
	cmd := exec.Command(binary, "-f", name)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	w := &logWriter{log: log.With("component", "wireguard-go", "binary", binary)}
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group: a signal to the gateway's terminal group
	// must not stop the device before the gateway has shut down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &wireGuardGoDevice{cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	sock := filepath.Join(UAPIDir, name+".sock")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			if _, err := netlink.LinkByName(name); err == nil {
				return d, nil
			}
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("%s exited before its device came up: %v", binary, d.err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.close()
			return nil, fmt.Errorf("%s did not create %s and %s within 10s", binary, name, sock)
		}
	}
}

func (d *wireGuardGoDevice) close() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
	return nil
}

// logWriter turns a child process's output lines into log records.
type logWriter struct {
	log *slog.Logger
	mu  sync.Mutex
	buf []byte
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			break
		}
		w.log.Warn(strings.TrimSpace(string(w.buf[:i])))
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 {
		w.buf = w.buf[:0]
	}
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)
