package nflog_test

import (
	"context"
	"log/slog"
	"os"
	"os/signal"

	"github.com/straitnet/strait/gateway/internal/nflog"
)

// The gateway's firewall logs sampled denials with
// `log group 7100 prefix "strait-deny <rule> "`; its logging goroutine
// turns each into one log line until the gateway stops.
func ExampleRun() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "firewall")
	r, err := nflog.Open(7100, nflog.Options{Logger: log})
	if err != nil {
		log.Error("deny log unavailable", "err", err)
		return
	}
	err = nflog.Run(ctx, r, func(p nflog.Packet) {
		log.Info("firewall deny", "packet", p)
	})
	if err != nil {
		log.Error("deny log stopped", "err", err, "stats", r.Stats())
	}
}
