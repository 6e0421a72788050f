// Package kube runs real Kubernetes API servers for strait's tests and
// lab: one etcd (Debian's etcd-server) and one kube-apiserver per
// simulated cluster, with a token that is cluster-admin. Tests run them
// on loopback ports of their own, tied to the test process; the lab runs
// them detached inside a gateway's network namespace (StartWith), and
// kube-proxy on its nodes (ProxyConfig).
//
// kube-apiserver and kube-proxy are built from k8s.io/kubernetes through
// the module proxy, at the version pinned in e2e/kube/apiserver/go.mod,
// once: the binaries are cached under the user's cache directory by the
// hash of the pinned module files, and a file lock makes parallel test
// packages wait for one build instead of each making its own.
package kube

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/straitnet/strait/e2e/netns"
)

// moduleDir is the nested module that pins the kube-apiserver.
func moduleDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("kube: cannot find this package's source")
	}
	dir := filepath.Join(filepath.Dir(file), "apiserver")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("kube: the pinned kube-apiserver module: %w", err)
	}
	return dir, nil
}

// cacheDir is where built binaries are kept: STRAIT_CACHE_DIR, else the
// user's cache directory.
func cacheDir() (string, error) {
	if d := os.Getenv("STRAIT_CACHE_DIR"); d != "" {
		return d, nil
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "strait"), nil
}

// Binary returns the path of the cached kube-apiserver, building it first
// if the pinned version has none yet. The build takes minutes the first
// time (much less with a warm Go build cache). STRAIT_KUBE_APISERVER
// names a binary to use instead.
func Binary(ctx context.Context) (string, error) {
	return binary(ctx, "kube-apiserver", "STRAIT_KUBE_APISERVER")
}

// ProxyBinary returns the path of the cached kube-proxy, built like the
// kube-apiserver from the same pinned k8s.io/kubernetes. STRAIT_KUBE_PROXY
// names a binary to use instead.
func ProxyBinary(ctx context.Context) (string, error) {
	return binary(ctx, "kube-proxy", "STRAIT_KUBE_PROXY")
}

// binary returns the cached build of k8s.io/kubernetes/cmd/<name>,
// building it first if the pinned module files have none yet.
func binary(ctx context.Context, name, env string) (string, error) {
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	mod, err := moduleDir()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		data, err := os.ReadFile(filepath.Join(mod, f))
		if err != nil {
			return "", fmt.Errorf("kube: %w", err)
		}
		h.Write(data)
	}
	h.Write([]byte(runtime.Version()))
	cache, err := cacheDir()
	if err != nil {
		return "", fmt.Errorf("kube: cache directory: %w", err)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("kube: %w", err)
	}
	bin := filepath.Join(cache, name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	lock, err := os.OpenFile(bin+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("kube: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("kube: lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(bin); err == nil {
		return bin, nil // another process built it while we waited
	}
	tmp := bin + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, "k8s.io/kubernetes/cmd/"+name)
	cmd.Dir = mod
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("kube: build %s in %s: %v\n%s", name, mod, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("kube: %w", err)
	}
	fmt.Fprintf(os.Stderr, "kube: built %s in %s into %s\n", name, time.Since(start).Round(time.Second), bin)
	return bin, nil
}

// Server is one running etcd and kube-apiserver.
type Server struct {
	// URL is the API server's address; Token authenticates as
	// cluster-admin; CAFile holds the certificate the server presents.
	URL    string
	Token  string
	CAFile string
	// Kubeconfig is a kubeconfig file for kubectl and friends (and
	// processes inside the server's namespace).
	Kubeconfig string
	Dir        string
	// Procs are etcd and the API server, for a caller that ends them
	// itself (Options.Detached).
	Procs []Proc

	// dial reaches the server's namespace (nil: this process's).
	dial            func(ctx context.Context, network, addr string) (net.Conn, error)
	etcd, apiserver *exec.Cmd
	done            []chan struct{}
}

// Proc is a process a Server started.
type Proc struct {
	Name string // "etcd", "kube-apiserver"
	Pid  int
	Log  string
}

// Options say where and how StartWith runs a cluster. The zero value is
// what Start does: etcd and the API server in this process's network
// namespace, on free loopback ports, killed when this process dies.
type Options struct {
	// NS is the named network namespace to run etcd and the API server
	// in; empty: this process's. Its loopback must be up.
	NS string
	// Addr is the address the API server binds and advertises (the
	// address of the cluster's "kubernetes" Service endpoint); default
	// 127.0.0.1. etcd listens on 127.0.0.1 only.
	Addr netip.Addr
	// EtcdPort, EtcdPeerPort and Port are etcd's client and peer ports
	// and the API server's; zero takes free ports of this process's
	// loopback or, inside NS (a namespace of the cluster's own, where
	// nothing else listens), 2379, 2380 and 6443.
	EtcdPort, EtcdPeerPort, Port int
	// ServiceCIDR is the cluster's service CIDR; default 10.96.0.0/12.
	ServiceCIDR netip.Prefix
	// Detached runs the processes in sessions of their own and without a
	// parent-death signal, so that they outlive the caller, which ends
	// them itself (by Server.Procs, or with their namespace).
	Detached bool
}

// DefaultServiceCIDR is a cluster's service CIDR unless Options say
// otherwise: kubeadm's default.
var DefaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/12")

// Start runs etcd and a kube-apiserver with their data in dir (created;
// the caller removes it) and returns once the API server is ready.
func Start(ctx context.Context, dir string) (*Server, error) {
	return StartWith(ctx, dir, Options{})
}

// StartWith is Start as the options say.
func StartWith(ctx context.Context, dir string, o Options) (_ *Server, err error) {
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, errors.New("kube: etcd is missing (Debian's etcd-server; `make deps` installs it)")
	}
	apiBin, err := Binary(ctx)
	if err != nil {
		return nil, err
	}
	if !o.Addr.IsValid() {
		o.Addr = netip.MustParseAddr("127.0.0.1")
	}
	if !o.ServiceCIDR.IsValid() {
		o.ServiceCIDR = DefaultServiceCIDR
	}
	ports := []int{o.EtcdPort, o.EtcdPeerPort, o.Port}
	free, err := freePorts(3) // distinct: all three are held open at once
	if err != nil {
		return nil, err
	}
	for i, fixed := range []int{2379, 2380, 6443} {
		switch {
		case ports[i] != 0:
		case o.NS != "":
			ports[i] = fixed
		default:
			ports[i] = free[i]
		}
	}
	s := &Server{Dir: dir, Token: randomToken()}
	if o.NS != "" {
		s.dial = netns.NS{Name: o.NS}.DialContext
	}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	for _, d := range []string{"etcd", "certs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, fmt.Errorf("kube: %w", err)
		}
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	s.etcd, err = s.spawn(o, "etcd", etcdBin, filepath.Join(dir, "etcd.log"),
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", ports[1]),
		"--quota-backend-bytes", strconv.Itoa(1<<30))
	if err != nil {
		return nil, err
	}
	plain := &http.Client{Transport: &http.Transport{DialContext: s.dial}}
	if err := waitHTTP(ctx, plain, etcdURL+"/health", "", 20*time.Second); err != nil {
		return nil, fmt.Errorf("kube: etcd: %w\n%s", err, tail(filepath.Join(dir, "etcd.log")))
	}
	key, pub, err := serviceAccountKeys(dir)
	if err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(s.Token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	s.URL = "https://" + netip.AddrPortFrom(o.Addr, uint16(ports[2])).String()
	args := []string{
		"--etcd-servers", etcdURL,
		"--bind-address", o.Addr.String(), "--secure-port", strconv.Itoa(ports[2]),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--service-cluster-ip-range", o.ServiceCIDR.String(),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pub, "--service-account-signing-key-file", key,
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		// As real clusters: CNI agents run privileged.
		"--allow-privileged=true",
		"--enable-priority-and-fairness=false",
		"--profiling=false"}
	if o.NS != "" || o.Addr != netip.MustParseAddr("127.0.0.1") {
		args = append(args, "--advertise-address", o.Addr.String())
	}
	s.apiserver, err = s.spawn(o, "kube-apiserver", apiBin, filepath.Join(dir, "apiserver.log"), args...)
	if err != nil {
		return nil, err
	}
	s.CAFile = filepath.Join(dir, "certs", "apiserver.crt")
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: insecureTLS(), DialContext: s.dial}}
	if err := waitHTTP(ctx, insecure, s.URL+"/readyz", s.Token, 60*time.Second); err != nil {
		return nil, fmt.Errorf("kube: kube-apiserver: %w\n%s", err, tail(filepath.Join(dir, "apiserver.log")))
	}
	s.Kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(s.Kubeconfig, []byte(s.kubeconfig()), 0o600); err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return s, nil
}

// Config is a client configuration for the server, as cluster-admin; it
// dials inside the server's namespace.
func (s *Server) Config() *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.Token,
		TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile},
		QPS:             1000,
		Burst:           2000,
		Dial:            s.dial,
	}
}

// Client is a typed client for the server.
func (s *Server) Client() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(s.Config())
}

func (s *Server) kubeconfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, certificate-authority: %q}
users:
- name: admin
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: admin}
current-context: test
`, s.URL, s.CAFile, s.Token)
}

// Stop kills the API server and etcd: a test's server has nothing to
// finish (kube-apiserver's graceful shutdown takes many seconds), and its
// data goes with the test's directory.
func (s *Server) Stop() error {
	for _, c := range []*exec.Cmd{s.apiserver, s.etcd} {
		if c != nil && c.Process != nil {
			c.Process.Kill()
		}
	}
	for _, d := range s.done {
		select {
		case <-d:
		case <-time.After(10 * time.Second):
			return errors.New("kube: a killed process did not exit in 10s")
		}
	}
	return nil
}

func (s *Server) spawn(o Options, name, bin, logPath string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	cmd := exec.Command(bin, args...)
	if o.NS != "" {
		cmd = netns.NS{Name: o.NS}.Command(bin, args...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if o.Detached {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	} else {
		// Stop with the test process, even if it dies without cleaning up.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("kube: start %s: %w", bin, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(done)
	}()
	s.done = append(s.done, done)
	s.Procs = append(s.Procs, Proc{Name: name, Pid: cmd.Process.Pid, Log: logPath})
	return cmd, nil
}

// freePorts finds n free loopback TCP ports (free when asked; the servers
// bind them right after).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kube: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func waitHTTP(ctx context.Context, c *http.Client, url, token string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err == nil {
			body := make([]byte, 512)
			n, _ := resp.Body.Read(body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body[:n])))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready after %s: %s", url, within, last)
}

func serviceAccountKeys(dir string) (key, pub string, err error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", "", fmt.Errorf("kube: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return "", "", fmt.Errorf("kube: %w", err)
	}
	key, pub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), 0o600); err != nil {
		return "", "", fmt.Errorf("kube: %w", err)
	}
	if err := os.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", "", fmt.Errorf("kube: %w", err)
	}
	return key, pub, nil
}

func randomToken() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func tail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return path + ":\n  " + strings.Join(lines, "\n  ")
}
