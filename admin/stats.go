package admin

import (
	"fmt"
	"net/http"
	"regexp"
	"strconv"

	"github.com/siftmesh/sift/telemetry/metrics"
)

// MetricsSource is implemented by Sources that keep metrics (sift-proxy's
// server): it feeds /stats, /stats/prometheus and /metrics.
type MetricsSource interface {
	// Metrics returns the process's registry, or nil when metrics are off.
	Metrics() *metrics.Registry
}

func (s *Server) registry(w http.ResponseWriter) *metrics.Registry {
	ms, ok := s.src.(MetricsSource)
	if !ok || ms.Metrics() == nil {
		http.Error(w, "stats: metrics are not kept by this server", http.StatusNotFound)
		return nil
	}
	return ms.Metrics()
}

// prometheus serves the Prometheus exposition (Envoy's /stats/prometheus).
func (s *Server) prometheus(w http.ResponseWriter, r *http.Request) {
	if reg := s.registry(w); reg != nil {
		reg.Handler().ServeHTTP(w, r)
	}
}

// statJSON is one stat in Envoy's /stats?format=json.
type statJSON struct {
	Name  string `json:"name"`
	Value uint64 `json:"value"`
}

// stats serves the stats that have Envoy names in Envoy's text form, one
// "name: value" line each, sorted; ?filter= keeps names matching a regular
// expression (RE2, as Envoy's); ?format=json gives {"stats":[{name,value}]}.
func (s *Server) stats(w http.ResponseWriter, r *http.Request) {
	reg := s.registry(w)
	if reg == nil {
		return
	}
	q := r.URL.Query()
	var filter *regexp.Regexp
	if f := q.Get("filter"); f != "" {
		var err error
		if filter, err = regexp.Compile(f); err != nil {
			http.Error(w, fmt.Sprintf("stats: filter: %v", err), http.StatusBadRequest)
			return
		}
	}
	var out []metrics.Stat
	for _, st := range reg.EnvoyStats() {
		if filter == nil || filter.MatchString(st.FullName()) {
			out = append(out, st)
		}
	}
	switch q.Get("format") {
	case "", "text":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, st := range out {
			fmt.Fprintf(w, "%s: %s\n", st.FullName(), strconv.FormatFloat(st.Value, 'f', -1, 64))
		}
	case "json":
		js := struct {
			Stats []statJSON `json:"stats"`
		}{Stats: make([]statJSON, 0, len(out))}
		for _, st := range out {
			js.Stats = append(js.Stats, statJSON{Name: st.FullName(), Value: uint64(max(st.Value, 0))})
		}
		writeJSON(w, js)
	default:
		http.Error(w, fmt.Sprintf("stats: format: want text or json, got %q", q.Get("format")), http.StatusBadRequest)
	}
}
