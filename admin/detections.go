package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/detect/learn"
	"github.com/siftmesh/sift/listener"
)

// DetectionSource is implemented by Sources that record protocol detection
// (sift-proxy's server): it feeds /detections and /detections/learned.
type DetectionSource interface {
	// Detections returns the recent connections' records, or nil before
	// the listeners start.
	Detections() *listener.DetectionLog
	// LearnedDestinations returns the server-first destinations table, or nil.
	LearnedDestinations() *learn.Table
}

// defaultDetectionsLimit is how many records /detections shows without ?limit.
const defaultDetectionsLimit = 100

// detectionJSON is one record as /detections shows it.
type detectionJSON struct {
	Time          time.Time         `json:"time"`
	Listener      string            `json:"listener"`
	Remote        string            `json:"remote"`
	Destination   string            `json:"destination"`
	Ran           bool              `json:"detection_ran"`
	Protocol      string            `json:"protocol,omitempty"`
	Reason        string            `json:"reason"`
	Sniffer       string            `json:"sniffer,omitempty"`
	Attributes    map[string]string `json:"attributes,omitempty"` // a plugin's match's
	Verdicts      []verdictJSON     `json:"verdicts,omitempty"`
	Bytes         int               `json:"bytes_peeked"`
	DurationMS    float64           `json:"duration_ms"`
	Raced         bool              `json:"server_first_race,omitempty"`
	RaceError     string            `json:"race_error,omitempty"`
	Transport     string            `json:"transport_protocol,omitempty"`
	ServerName    string            `json:"server_name,omitempty"`
	ALPN          string            `json:"application_protocol,omitempty"`
	Chain         string            `json:"chain,omitempty"`
	Outcome       string            `json:"outcome"`
	EarlyUpstream string            `json:"early_upstream_reused,omitempty"`
}

type verdictJSON struct {
	Sniffer string `json:"sniffer"`
	Verdict string `json:"verdict"`
}

// detections serves the most recent connections' detection records, newest
// first: ?limit=N (default 100), filtered by ?port= (destination port),
// ?reason=, ?protocol=, ?outcome=, ?listener=; ?format=text for a table.
func (s *Server) detections(w http.ResponseWriter, r *http.Request) {
	ds, ok := s.src.(DetectionSource)
	if !ok || ds.Detections() == nil {
		http.Error(w, "detections: not recorded by this server", http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	limit := defaultDetectionsLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			http.Error(w, fmt.Sprintf("detections: limit: want a positive integer, got %q", v), http.StatusBadRequest)
			return
		}
		limit = n
	}
	var port uint16
	if v := q.Get("port"); v != "" {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			http.Error(w, fmt.Sprintf("detections: port: want 1-65535, got %q", v), http.StatusBadRequest)
			return
		}
		port = uint16(n)
	}
	reason, protocol, outcome, lis := q.Get("reason"), q.Get("protocol"), q.Get("outcome"), q.Get("listener")
	recs := ds.Detections().Recent(limit, func(r *listener.DetectionRecord) bool {
		return (port == 0 || r.Local.Port() == port) && (reason == "" || r.Detection.Reason == reason) &&
			(protocol == "" || r.Detection.Protocol == protocol) && (outcome == "" || r.Outcome == outcome) &&
			(lis == "" || r.Listener == lis)
	})
	switch q.Get("format") {
	case "", "json":
		out := make([]detectionJSON, 0, len(recs))
		for i := range recs {
			out = append(out, toJSON(&recs[i]))
		}
		writeJSON(w, out)
	case "text":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tLISTENER\tREMOTE\tDESTINATION\tPROTOCOL\tREASON\tBYTES\tDURATION\tVERDICTS\tCHAIN\tOUTCOME")
		for i := range recs {
			r := &recs[i]
			d := &r.Detection
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Time.Format("15:04:05.000"), r.Listener,
				r.Remote, r.Local, dash(d.Protocol), reasonText(d), d.Bytes, d.Duration.Round(time.Microsecond),
				dash(verdictsText(d.RecordedVerdicts())), dash(r.Chain), r.Outcome)
		}
		tw.Flush()
	default:
		http.Error(w, fmt.Sprintf("detections: format: want json or text, got %q", q.Get("format")), http.StatusBadRequest)
	}
}

// learned serves the table of destinations learned to be server-first.
func (s *Server) learned(w http.ResponseWriter, _ *http.Request) {
	ds, ok := s.src.(DetectionSource)
	if !ok {
		http.Error(w, "detections: not recorded by this server", http.StatusNotFound)
		return
	}
	entries, stats := ds.LearnedDestinations().Snapshot()
	if entries == nil {
		entries = []learn.Entry{}
	}
	writeJSON(w, struct {
		Stats        learn.Stats   `json:"stats"`
		Destinations []learn.Entry `json:"destinations"`
	}{stats, entries})
}

func toJSON(r *listener.DetectionRecord) detectionJSON {
	d := &r.Detection
	j := detectionJSON{Time: r.Time, Listener: r.Listener, Remote: r.Remote.String(), Destination: r.Local.String(),
		Ran: d.Ran, Protocol: d.Protocol, Reason: d.Reason, Sniffer: d.Sniffer, Attributes: d.Attributes, Bytes: d.Bytes,
		DurationMS: float64(d.Duration.Microseconds()) / 1000, Raced: d.Raced, RaceError: d.RaceError,
		Transport: r.Transport, ServerName: r.ServerName, ALPN: r.ALPN, Chain: r.Chain, Outcome: r.Outcome,
		EarlyUpstream: r.EarlyUpstream}
	for _, v := range d.RecordedVerdicts() {
		j.Verdicts = append(j.Verdicts, verdictJSON{Sniffer: v.Sniffer, Verdict: v.Verdict})
	}
	return j
}

// reasonText is the reason, marked when the server-first race ran.
func reasonText(d *filters.Detection) string {
	switch {
	case d.Reason == "":
		return "-"
	case d.Raced && d.Reason != filters.ReasonServerFirst && d.Reason != filters.ReasonLearnedServerFirst:
		return d.Reason + " (raced)"
	}
	return d.Reason
}

func verdictsText(vs []filters.SnifferVerdict) string {
	var b strings.Builder
	for i, v := range vs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(v.Sniffer + ":" + v.Verdict)
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}
