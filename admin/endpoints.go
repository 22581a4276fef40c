package admin

import (
	"fmt"
	"html"
	"net/http"
	"net/http/pprof"
	"strings"
	"text/tabwriter"
)

// endpoint is one admin path, as the index lists it.
type endpoint struct {
	path, help string
	handler    http.HandlerFunc
}

// endpoints lists the admin paths in index order. Every path is served; one
// whose data the Source does not supply answers 404 with a reason.
func (s *Server) endpoints() []endpoint {
	return []endpoint{
		{"/", "print out the list of admin endpoints", s.index},
		{"/dashboard", "a live page: listeners, connections by detected protocol, detection decisions, clusters with EWMA costs", s.dashboard},
		{"/help", "print out the list of admin endpoints", s.help},
		{"/ready", "print the server state: 200 LIVE while serving, 503 otherwise", s.ready},
		{"/server_info", "print server version, state, uptime, node and command-line options (JSON)", s.serverInfo},
		{"/listeners", "print listener names and bound addresses (?format=json)", s.listeners},
		{"/clusters", "print upstream clusters and their endpoints: health, active connections and requests, EWMA cost (?format=json)", s.clusters},
		{"/config_dump", "dump the current configuration (JSON; secrets redacted)", s.configDump},
		{"/stats", "print server stats with Envoy names (?filter=regex, ?format=json)", s.stats},
		{"/stats/prometheus", "print server metrics in Prometheus exposition format", s.prometheus},
		{"/metrics", "print server metrics in Prometheus exposition format (as /stats/prometheus)", s.prometheus},
		{"/detections", "recent connections' protocol-detection decisions (?limit, ?port, ?reason, ?protocol, ?outcome, ?listener, ?format=text)", s.detections},
		{"/detections/learned", "destinations learned to be server-first", s.learned},
		{"/memory", "print current allocation and heap figures (JSON, Envoy's fields; Go runtime figures)", s.memory},
		{"/debug/pprof/", "Go's profiles: heap, allocs, goroutine, profile (CPU, ?seconds=N), trace, …", pprof.Index},
	}
}

// index is Envoy's admin home page: HTML for a browser, the /help text otherwise.
func (s *Server) index(w http.ResponseWriter, r *http.Request) {
	if !strings.Contains(r.Header.Get("Accept"), "text/html") {
		s.help(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	var b strings.Builder
	b.WriteString("<!doctype html>\n<html><head><title>sift-proxy admin</title></head><body>\n<h1>sift-proxy admin</h1>\n<p><a href=\"/dashboard\"><b>live dashboard</b></a></p>\n<table>\n")
	for _, e := range s.endpoints() {
		if e.path == "/" {
			continue
		}
		fmt.Fprintf(&b, "<tr><td><a href=\"%s\">%s</a></td><td>%s</td></tr>\n", html.EscapeString(e.path), html.EscapeString(e.path), html.EscapeString(e.help))
	}
	b.WriteString("</table>\n</body></html>\n")
	w.Write([]byte(b.String()))
}

// help is Envoy's /help: "admin commands are:" and one line per path.
func (s *Server) help(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "admin commands are:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range s.endpoints() {
		fmt.Fprintf(tw, "  %s:\t%s\n", e.path, e.help)
	}
	tw.Flush()
}
