package ipam

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The helper process: the test binary run again, as CNI runs a plugin
// binary once per ADD. It is told what to do through the environment.
const (
	envHelper = "STRAIT_IPAM_TEST_HELPER" // allocate, die-holding-lock
	envDir    = "STRAIT_IPAM_TEST_DIR"
	envRanges = "STRAIT_IPAM_TEST_RANGES" // comma-separated
	envID     = "STRAIT_IPAM_TEST_ID"     // container ID
	envHow    = "STRAIT_IPAM_TEST_HOW"    // die-holding-lock: exit or wait to be killed
)

// TestHelperProcess is not a test: it is the body of the helper process,
// and does nothing unless run as one.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		return
	}
	var ranges []netip.Prefix
	for r := range strings.SplitSeq(os.Getenv(envRanges), ",") {
		ranges = append(ranges, netip.MustParsePrefix(r))
	}
	s, err := Open(os.Getenv(envDir), ranges)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	switch mode {
	case "allocate":
		// Wait for the go: all helpers start on the state at once.
		io.Copy(io.Discard, os.Stdin)
		addrs, err := s.Allocate(att(os.Getenv(envID)))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for _, x := range addrs {
			fmt.Println("ADDR", x)
		}
		os.Exit(0)
	case "die-holding-lock":
		// Crash in the middle of a write: the lock taken, the state
		// read, half a new state written to the temporary file that
		// would have been renamed over it.
		if _, err := s.lock(unix.LOCK_EX); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		data, err := os.ReadFile(s.Path())
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		f, err := os.CreateTemp(s.Dir, "."+StateFile+".tmp*")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		f.Write(data[:len(data)/2])
		fmt.Println("LOCKED")
		io.Copy(io.Discard, os.Stdin) // until told to die
		if os.Getenv(envHow) == "exit" {
			os.Exit(3) // no unlock, no close
		}
		time.Sleep(time.Hour) // until killed
		os.Exit(4)
	}
	fmt.Fprintln(os.Stderr, "unknown helper mode", mode)
	os.Exit(2)
}

func helper(dir string, ranges []netip.Prefix, env ...string) *exec.Cmd {
	var rs []string
	for _, r := range ranges {
		rs = append(rs, r.String())
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envDir+"="+dir, envRanges+"="+strings.Join(rs, ","))
	cmd.Env = append(cmd.Env, env...)
	return cmd
}

func TestParallelProcesses(t *testing.T) {
	const n = 100
	dir := t.TempDir()
	ranges := pfxs("10.0.1.0/24")
	type proc struct {
		cmd          *exec.Cmd
		stdin        io.WriteCloser
		stdout, errs bytes.Buffer
	}
	procs := make([]*proc, n)
	for i := range procs {
		p := &proc{cmd: helper(dir, ranges, envHelper+"=allocate", envID+"="+fmt.Sprint("c", i))}
		p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.errs
		var err error
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		procs[i] = p
	}
	// All started: let them go.
	for _, p := range procs {
		p.stdin.Close()
	}
	seen := map[netip.Addr]int{}
	got := make([]netip.Addr, n)
	for i, p := range procs {
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("helper %d: %v: %s", i, err, p.errs.String())
			continue
		}
		var addrs []netip.Addr
		for line := range strings.Lines(p.stdout.String()) {
			if x, ok := strings.CutPrefix(strings.TrimSpace(line), "ADDR "); ok {
				addrs = append(addrs, netip.MustParseAddr(x))
			}
		}
		if len(addrs) != 1 || !ranges[0].Contains(addrs[0]) {
			t.Errorf("helper %d got %v", i, addrs)
			continue
		}
		if j, dup := seen[addrs[0]]; dup {
			t.Errorf("%s handed to helpers %d and %d", addrs[0], j, i)
		}
		seen[addrs[0]] = i
		got[i] = addrs[0]
	}
	if t.Failed() {
		t.FailNow()
	}
	all, err := openStore(t, dir, "10.0.1.0/24").Allocations()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n || len(seen) != n {
		t.Errorf("Allocations has %d entries and %d distinct addresses were handed out, want %d", len(all), len(seen), n)
	}
	for i := range n {
		if !slices.Equal(all[att(fmt.Sprint("c", i))], []netip.Addr{got[i]}) {
			t.Errorf("c%d: stored %v, handed out %s", i, all[att(fmt.Sprint("c", i))], got[i])
		}
	}
}

// TestCrashHoldingLock: a process that dies holding the lock, half-way
// through writing a new state, blocks others only until it is gone, and
// leaves the state as it was.
func TestCrashHoldingLock(t *testing.T) {
	for _, how := range []string{"exit", "kill"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, "10.0.1.0/24")
			mustAllocate(t, s, att("a"))

			cmd := helper(dir, s.Ranges, envHelper+"=die-holding-lock", envHow+"="+how)
			var errs bytes.Buffer
			cmd.Stderr = &errs
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer cmd.Process.Kill()
			line, err := bufio.NewReader(out).ReadString('\n')
			if line != "LOCKED\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("helper said %q (%v): %s", line, err, errs.String())
			}

			type result struct {
				addrs []netip.Addr
				err   error
			}
			done := make(chan result, 1)
			go func() {
				addrs, err := s.Allocate(att("b"))
				done <- result{addrs, err}
			}()
			// While the helper lives, it holds the lock.
			select {
			case r := <-done:
				t.Fatalf("Allocate went past a held lock: %v %v", r.addrs, r.err)
			case <-time.After(300 * time.Millisecond):
			}
			if how == "exit" {
				stdin.Close()
			} else {
				cmd.Process.Kill()
			}
			err = cmd.Wait()
			if how == "exit" && cmd.ProcessState.ExitCode() != 3 {
				t.Fatalf("helper: %v: %s", err, errs.String())
			}
			select {
			case r := <-done:
				if r.err != nil || !slices.Equal(r.addrs, []netip.Addr{ad("10.0.1.2")}) {
					t.Fatalf("Allocate after the crash = %v %v", r.addrs, r.err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Allocate still blocked after the lock holder died")
			}

			// The state is what it was, plus b; the crashed writer's
			// temporary file is gone.
			all, err := s.Allocations()
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != 2 || !slices.Equal(all[att("a")], []netip.Addr{ad("10.0.1.1")}) {
				t.Errorf("after the crash: %v", all)
			}
			if stale, _ := filepath.Glob(filepath.Join(dir, ".*")); len(stale) != 0 {
				t.Errorf("left behind: %v", stale)
			}
		})
	}
}
