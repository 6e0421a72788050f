package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/straitnet/strait/e2e/bench"
)

func benchCmd(args []string) error {
	if len(args) == 0 {
		return usagef("bench: which benchmark? (%s)", bench.Names())
	}
	name, args := args[0], args[1:]
	if name == "list" {
		fmt.Println(strings.ReplaceAll(bench.Names(), ", ", "\n"))
		return nil
	}
	b, ok := bench.Lookup(name)
	if !ok {
		return usagef("bench: unknown benchmark %q (%s)", name, bench.Names())
	}
	fs := flag.NewFlagSet("bench "+name, flag.ContinueOnError)
	cfg := bench.Config{BinDir: binDir(), Log: os.Stderr}
	b.Flags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cfg.StraitBin = self
	cfg.GatewayBin = filepath.Join(cfg.BinDir, "strait-gateway")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := b.Run(ctx, cfg)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}
