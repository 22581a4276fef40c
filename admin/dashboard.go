package admin

import (
	_ "embed"
	"net/http"
)

// dashboardHTML is the /dashboard page: one self-contained HTML file
// (inline CSS and JavaScript, no external resource) that polls the JSON
// endpoints every 2 s — /server_info, /listeners?format=json,
// /stats?format=json, /detections, /detections/learned,
// /clusters?format=json — and renders them.
//
//go:embed dashboard.html
var dashboardHTML []byte

// dashboardCSP forbids any resource not served by the admin server itself:
// the page needs only its inline script and style and same-origin fetches.
const dashboardCSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
	"connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// dashboard serves the live page.
func (s *Server) dashboard(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", dashboardCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	w.Write(dashboardHTML)
}
