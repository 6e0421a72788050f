package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstall(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	bin := filepath.Join(dir, "host", "opt", "cni", "bin") // missing: made
	dst := filepath.Join(bin, pluginName)
	write := func(data string) {
		t.Helper()
		if err := os.WriteFile(src, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	check := func(want string) {
		t.Helper()
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Fatalf("%s holds %q, want %q", dst, got, want)
		}
		fi, err := os.Stat(dst)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o755 {
			t.Fatalf("%s has mode %v, want 0755", dst, fi.Mode().Perm())
		}
		left, _ := filepath.Glob(filepath.Join(bin, ".*"))
		if len(left) > 0 {
			t.Fatalf("temporary files left: %v", left)
		}
	}
	install := func(wantChanged bool) {
		t.Helper()
		changed, err := installBinary(src, bin)
		if err != nil {
			t.Fatal(err)
		}
		if changed != wantChanged {
			t.Fatalf("installBinary changed=%t, want %t", changed, wantChanged)
		}
	}

	write("v1")
	install(true)
	check("v1")
	install(false) // the same bytes: left alone
	check("v1")

	// A runtime that started the old binary keeps it whole while the new
	// one is put in place.
	running, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close()
	write("v2, longer than v1")
	install(true)
	check("v2, longer than v1")
	if old, err := io.ReadAll(running); err != nil || string(old) != "v1" {
		t.Fatalf("the running binary reads %q, %v; want v1", old, err)
	}

	// The same bytes with the wrong mode are put right.
	if err := os.Chmod(dst, 0o644); err != nil {
		t.Fatal(err)
	}
	install(true)
	check("v2, longer than v1")

	// Refusals.
	if err := os.WriteFile(src, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := installBinary(src, bin); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("installing an empty file: %v", err)
	}
	check("v2, longer than v1")
	if _, err := installBinary(filepath.Join(dir, "missing"), bin); err == nil {
		t.Error("installing a missing file: no error")
	}
	write("v3")
	if _, err := installBinary(src, src); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("installing into a file: %v", err)
	}
}

// TestInstallCommand runs the subcommand as the init container does: it
// copies the running binary (here the test binary) by default.
func TestInstallCommand(t *testing.T) {
	t.Parallel()
	bin := t.TempDir()
	var out bytes.Buffer
	if err := install([]string{"--bin-dir", bin}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "installed "+filepath.Join(bin, pluginName)) {
		t.Errorf("output %q", out.String())
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(bin, pluginName))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the installed binary differs from this one (%v)", err)
	}
	out.Reset()
	if err := install([]string{"--bin-dir", bin}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "up to date") {
		t.Errorf("second install: %q", out.String())
	}
	if err := install([]string{"--bin-dir", bin, "extra"}, io.Discard); err == nil {
		t.Error("extra arguments: no error")
	}
}
