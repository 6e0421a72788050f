package gateway

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/straitnet/strait/gateway/metrics"
)

// WriteMetrics writes the gateway's metrics in Prometheus's text format,
// gathered from its status at the time: tunnels, NAT pools, the catalog
// and gossip, the load balancer's backends and health, the firewall's
// rules, DNS.
func (g *Gateway) WriteMetrics(w io.Writer) error {
	st := g.Status()
	var s metrics.Set
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	s.Add("strait_gateway_ready", metrics.Gauge, "1 when the gateway runs its configuration in full.", b(st.Ready))
	s.Add("strait_gateway_config_applied_timestamp_seconds", metrics.Gauge, "When the running configuration was applied.", float64(st.Config.AppliedAt.Unix()))
	s.Add("strait_gateway_config_refused", metrics.Gauge, "1 while the files' content is refused and the last good configuration runs.", b(st.Config.Refused != nil))
	s.Add("strait_gateway_apply_failing", metrics.Gauge, "1 while applying the configuration fails.", b(st.ApplyError != nil))
	s.Add("strait_gateway_conditions", metrics.Gauge, "Conditions the gateway reports (exhausted pools, left-out inputs).", float64(len(st.Conditions)))

	for _, p := range st.Tunnel.Peers {
		s.Add("strait_tunnel_peer_handshake_age_seconds", metrics.Gauge, "Seconds since the last WireGuard handshake with a peer; -1 for never.", p.HandshakeAge, "peer", p.Site)
		s.Add("strait_tunnel_peer_receive_bytes_total", metrics.Counter, "Bytes received from a peer through the tunnel.", float64(p.RxBytes), "peer", p.Site)
		s.Add("strait_tunnel_peer_transmit_bytes_total", metrics.Counter, "Bytes sent to a peer through the tunnel.", float64(p.TxBytes), "peer", p.Site)
	}
	s.Add("strait_tunnel_peers", metrics.Gauge, "WireGuard peers configured.", float64(len(st.Tunnel.Peers)))

	for _, u := range st.Pools {
		s.Add("strait_natpool_addresses", metrics.Gauge, "Addresses of a NAT pool: its size, in use, held down after release.", float64(u.Size), "pool", u.Pool, "kind", string(u.Kind), "state", "size")
		s.Add("strait_natpool_addresses", metrics.Gauge, "Addresses of a NAT pool: its size, in use, held down after release.", float64(u.Used), "pool", u.Pool, "kind", string(u.Kind), "state", "used")
		s.Add("strait_natpool_addresses", metrics.Gauge, "Addresses of a NAT pool: its size, in use, held down after release.", float64(u.Held), "pool", u.Pool, "kind", string(u.Kind), "state", "held")
	}
	s.Add("strait_nat_service_mappings", metrics.Gauge, "Ingress mappings in the NAT table.", float64(st.NAT.Services))
	s.Add("strait_nat_drifts_total", metrics.Counter, "Times the NAT table was found edited and rewritten.", float64(st.NAT.Drifts))

	if d := st.Discovery; d != nil {
		alive := 0
		for _, up := range d.Clusters {
			if up {
				alive++
			}
		}
		s.Add("strait_catalog_clusters", metrics.Gauge, "Clusters the catalog knows, by whether gossip sees them up.", float64(alive), "state", "alive")
		s.Add("strait_catalog_clusters", metrics.Gauge, "Clusters the catalog knows, by whether gossip sees them up.", float64(len(d.Clusters)-alive), "state", "down")
		s.Add("strait_catalog_services", metrics.Gauge, "Exported services in the catalog, of every cluster.", float64(d.Services))
		s.Add("strait_catalog_records_accepted_total", metrics.Counter, "Records the catalog took (news).", float64(d.Catalog.Accepted))
		s.Add("strait_catalog_records_stale_total", metrics.Counter, "Records the catalog already had, or older.", float64(d.Catalog.Stale))
		if !d.Catalog.LastChange.IsZero() {
			s.Add("strait_catalog_last_change_timestamp_seconds", metrics.Gauge, "When the catalog last changed: long past on every gateway, the mesh has converged.", float64(d.Catalog.LastChange.UnixMilli())/1000)
		}
		for reason, n := range d.Catalog.Rejected {
			s.Add("strait_catalog_records_rejected_total", metrics.Counter, "Records the catalog refused, by reason.", float64(n), "reason", reason)
		}
		s.Add("strait_gossip_members", metrics.Gauge, "Gossip members seen alive, this gateway included.", float64(countAlive(d)))
		s.Add("strait_gossip_repairs_total", metrics.Counter, "Anti-entropy exchanges that found records to send.", float64(d.Gossip.Repairs))
		s.Add("strait_gossip_wrong_key_total", metrics.Counter, "Gossip packets no key could decrypt.", float64(d.Gossip.WrongKey))
		s.Add("strait_gossip_suspicions_total", metrics.Counter, "Members suspected of failure.", float64(d.Gossip.Suspicions))
		s.Add("strait_identity_expiry_timestamp_seconds", metrics.Gauge, "When this cluster's certificate expires.", float64(d.IdentityExpires.Unix()))
		if d.DNS != nil {
			s.Add("strait_dns_queries_total", metrics.Counter, "DNS queries answered, by outcome.", float64(d.DNS.Answers), "outcome", "answer")
			s.Add("strait_dns_queries_total", metrics.Counter, "DNS queries answered, by outcome.", float64(d.DNS.NXDomain), "outcome", "nxdomain")
			s.Add("strait_dns_queries_total", metrics.Counter, "DNS queries answered, by outcome.", float64(d.DNS.NoData), "outcome", "nodata")
			s.Add("strait_dns_queries_total", metrics.Counter, "DNS queries answered, by outcome.", float64(d.DNS.Refused), "outcome", "refused")
		}
	}
	if lb := st.LoadBalancer; lb != nil {
		s.Add("strait_lb_connections_total", metrics.Counter, "New connections to VIPs, by outcome.", float64(lb.Balanced), "outcome", "balanced")
		s.Add("strait_lb_connections_total", metrics.Counter, "New connections to VIPs, by outcome.", float64(lb.Refused), "outcome", "refused")
		s.Add("strait_lb_flushed_connections_total", metrics.Counter, "Connections flushed from conntrack as their backend stopped serving.", float64(lb.Flushed))
		for _, svc := range lb.Services {
			for _, be := range svc.Backends {
				s.Add("strait_lb_backend_share", metrics.Gauge, "Share of a global service's new connections a cluster's instance takes.", be.Share, "service", svc.Name, "cluster", be.Cluster)
				s.Add("strait_lb_backend_serving", metrics.Gauge, "1 when a cluster's instance of a global service can take connections.", b(be.Serving), "service", svc.Name, "cluster", be.Cluster)
			}
		}
		for name, h := range lb.Health {
			s.Add("strait_health_check_healthy", metrics.Gauge, "This site's instance of a global service passes its health check (-1: not checked yet).", map[bool]float64{true: b(h.Healthy), false: -1}[h.Checked], "service", name)
		}
		s.Add("strait_lb_problems", metrics.Gauge, "Problems the load balancer reports.", float64(len(lb.Problems)))
	}
	if fw := st.Firewall; fw != nil {
		for _, r := range fw.Rules {
			s.Add("strait_firewall_rule_matches_total", metrics.Counter, "New connections from the mesh a firewall rule matched.", float64(r.Matched), "rule", r.Name, "action", string(r.Action), "dry_run", fmt.Sprint(r.DryRun))
		}
		s.Add("strait_firewall_default_total", metrics.Counter, "New connections from the mesh no rule decided (the default action took them).", float64(fw.Default), "action", string(fw.DefaultAction))
		s.Add("strait_firewall_problems", metrics.Gauge, "Problems the firewall reports (conflicts, what cannot be told apart).", float64(len(fw.Problems)))
	}
	if bs := st.BGP; bs != nil {
		for _, p := range bs.Peers {
			s.Add("strait_bgp_session_up", metrics.Gauge, "1 while the BGP session with a router is established.", b(p.State == "established"), "peer", p.Name)
			s.Add("strait_bgp_routes", metrics.Gauge, "IPv4 routes of a BGP session: received, accepted by the import filter, advertised through the export filter.", float64(p.Received), "peer", p.Name, "state", "received")
			s.Add("strait_bgp_routes", metrics.Gauge, "IPv4 routes of a BGP session: received, accepted by the import filter, advertised through the export filter.", float64(p.Accepted), "peer", p.Name, "state", "accepted")
			s.Add("strait_bgp_routes", metrics.Gauge, "IPv4 routes of a BGP session: received, accepted by the import filter, advertised through the export filter.", float64(p.Advertised), "peer", p.Name, "state", "advertised")
		}
		s.Add("strait_bgp_learned_routes", metrics.Gauge, "Learned routes in use (installed, and the site's in the mesh).", float64(len(bs.Learned)))
		s.Add("strait_bgp_refused_routes", metrics.Gauge, "Learned routes refused as they would take addresses that are not the site's.", float64(len(bs.Refused)))
		s.Add("strait_bgp_converged", metrics.Gauge, "1 once the routes learned since the start are complete.", b(bs.Converged))
	}
	return s.Write(w)
}

func countAlive(d *DiscoveryStatus) int {
	n := 0
	for _, m := range d.Members {
		if m.State == "alive" || m.State == "suspect" {
			n++
		}
	}
	return n
}

// metricsServer serves /metrics over TCP, for Prometheus, and the
// read-only status page (/ and /status.json).
type metricsServer struct {
	srv  *http.Server
	done chan struct{}
}

func serveMetrics(g *Gateway, addr string, log *slog.Logger) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("gateway: metrics on %s: %w (--metrics-addr \"\" turns them off)", addr, err)
	}
	mux := http.NewServeMux()
	g.handleStatusPage(mux)
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if err := g.WriteMetrics(w); err != nil {
			log.Error("writing metrics", "err", err)
		}
	})
	s := &metricsServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	return s, nil
}

func (s *metricsServer) Close() error {
	err := s.srv.Close()
	<-s.done
	return err
}
