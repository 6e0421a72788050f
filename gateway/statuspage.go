package gateway

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

// statusPage is the gateway's read-only status page: it fetches
// /status.json and draws the mesh as this gateway sees it (this site, its
// peers and the tunnels to them, green when a handshake is recent), then
// the global services and firewall rules. It changes nothing.
//
//go:embed statuspage.html
var statusPage []byte

// handleStatusPage adds the page and its JSON to a mux.
func (g *Gateway) handleStatusPage(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline'")
		w.Write(statusPage)
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(g.Status())
	})
}
