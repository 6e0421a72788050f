package metrics

import (
	"math"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestWrite(t *testing.T) {
	var s Set
	s.Add("strait_tunnel_rx_bytes_total", Counter, "Bytes received from a peer.", 2048, "peer", "cloud-b")
	s.Add("strait_tunnel_rx_bytes_total", Counter, "Bytes received from a peer.", 1e12, "peer", "cloud-a")
	s.Add("strait_ready", Gauge, "1 when the gateway runs its configuration in full.\nElse 0.", 1)
	s.Add("strait_lb_backend_share", Gauge, "Share of new connections.", 0.5, "service", `default/web "x"\y`, "cluster", "a")
	s.Add("strait_odd", Gauge, "Odd values.", math.Inf(1), "k", "inf")
	var b strings.Builder
	if err := s.Write(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP strait_lb_backend_share Share of new connections.
# TYPE strait_lb_backend_share gauge
strait_lb_backend_share{service="default/web \"x\"\\y",cluster="a"} 0.5
# HELP strait_odd Odd values.
# TYPE strait_odd gauge
strait_odd{k="inf"} +Inf
# HELP strait_ready 1 when the gateway runs its configuration in full.\nElse 0.
# TYPE strait_ready gauge
strait_ready 1
# HELP strait_tunnel_rx_bytes_total Bytes received from a peer.
# TYPE strait_tunnel_rx_bytes_total counter
strait_tunnel_rx_bytes_total{peer="cloud-a"} 1e+12
strait_tunnel_rx_bytes_total{peer="cloud-b"} 2048
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
	// promtool agrees, where it is installed (`make deps`).
	if _, err := exec.LookPath("promtool"); err == nil {
		cmd := exec.Command("promtool", "check", "metrics")
		cmd.Stdin = strings.NewReader(b.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	} else if os.Getenv("CI") == "true" {
		t.Fatal("promtool is missing; `make deps` installs it")
	}
}

func TestRefusesMisuse(t *testing.T) {
	for name, add := range map[string]func(*Set){
		"bad name":       func(s *Set) { s.Add("strait-x", Gauge, "h", 1) },
		"odd labels":     func(s *Set) { s.Add("x", Gauge, "h", 1, "a") },
		"bad label":      func(s *Set) { s.Add("x", Gauge, "h", 1, "a-b", "c") },
		"reserved label": func(s *Set) { s.Add("x", Gauge, "h", 1, "__name__", "c") },
		"two types":      func(s *Set) { s.Add("x", Gauge, "h", 1); s.Add("x", Counter, "h", 1, "a", "b") },
		"same series":    func(s *Set) { s.Add("x", Gauge, "h", 1, "a", "b"); s.Add("x", Gauge, "h", 2, "a", "b") },
	} {
		var s Set
		add(&s)
		if err := s.Write(&strings.Builder{}); err == nil {
			t.Errorf("%s: written without an error", name)
		}
	}
}
