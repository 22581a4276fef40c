package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

const diagnoseExamples = `
Examples:
  # Why did my MySQL client hang? The last connections to port 3306:
  sift diagnose --port 3306

  # The last 20 connections the proxy did not recognise, on any port:
  sift diagnose --reason timeout --limit 20

  # Another proxy's admin server:
  sift diagnose --admin 10.0.0.7:9901 --listener inbound
`

// detection is one /detections record (admin/detections.go).
type detection struct {
	Time        time.Time         `json:"time"`
	Listener    string            `json:"listener"`
	Remote      string            `json:"remote"`
	Destination string            `json:"destination"`
	Ran         bool              `json:"detection_ran"`
	Protocol    string            `json:"protocol"`
	Reason      string            `json:"reason"`
	Sniffer     string            `json:"sniffer"`
	Attributes  map[string]string `json:"attributes"`
	Verdicts    []struct {
		Sniffer string `json:"sniffer"`
		Verdict string `json:"verdict"`
	} `json:"verdicts"`
	Bytes         int     `json:"bytes_peeked"`
	DurationMS    float64 `json:"duration_ms"`
	Raced         bool    `json:"server_first_race"`
	RaceError     string  `json:"race_error"`
	Transport     string  `json:"transport_protocol"`
	ServerName    string  `json:"server_name"`
	ALPN          string  `json:"application_protocol"`
	Chain         string  `json:"chain"`
	Outcome       string  `json:"outcome"`
	EarlyUpstream string  `json:"early_upstream_reused"`
}

// clusters is /clusters?format=json (Envoy's shape).
type clusters struct {
	Clusters []struct {
		Name     string `json:"name"`
		LBPolicy string `json:"lb_policy"`
		Hosts    []struct {
			Address struct {
				Socket struct {
					Address string `json:"address"`
					Port    int    `json:"port_value"`
				} `json:"socket_address"`
			} `json:"address"`
			Stats []struct {
				Name  string `json:"name"`
				Value int64  `json:"value"`
			} `json:"stats"`
			Health struct {
				EDS     string `json:"eds_health_status"`
				Outlier bool   `json:"failed_outlier_check"`
			} `json:"health_status"`
			RTTMS *float64 `json:"ewma_rtt_ms"`
		} `json:"host_statuses"`
	} `json:"cluster_statuses"`
}

var diagnoseAbout = "Usage: sift diagnose [flags]\n\nAsks a running sift-proxy's admin server what it decided about recent connections —\nwhat protocol detection found and why, the filter chain and cluster chosen, the\ncluster's endpoints and their health — and the configuration it is serving."

func runDiagnose(args []string, stdout, stderr io.Writer) int {
	fs := flags("diagnose", diagnoseAbout, diagnoseExamples, stderr)
	admin := fs.String("admin", "127.0.0.1:9901", "the sift-proxy admin server (host:port)")
	port := fs.Uint("port", 0, "only connections to this destination port")
	lis := fs.String("listener", "", "only connections of this listener")
	reason := fs.String("reason", "", "only connections whose detection ended for this reason (match, timeout, server_first, …)")
	limit := fs.Int("limit", 5, "how many recent connections to explain")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	fail := failer("diagnose", stderr)
	if *port > 65535 || *limit < 1 {
		return fail("--port must be 1-65535 and --limit positive")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string, v any) error {
		resp, err := client.Get("http://" + *admin + path)
		if err != nil {
			return fmt.Errorf("asking %s: %w (is sift-proxy running with its admin server there? --admin)", *admin, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s%s: %s: %s", *admin, path, resp.Status, strings.TrimSpace(string(body)))
		}
		return json.Unmarshal(body, v)
	}

	var info struct {
		Version string `json:"version"`
		State   string `json:"state"`
		Uptime  string `json:"uptime_current_epoch"`
		Options struct {
			ConfigPath string `json:"config_path"`
		} `json:"command_line_options"`
	}
	if err := get("/server_info", &info); err != nil {
		return fail("%v", err)
	}
	var dump map[string]any
	if err := get("/config_dump", &dump); err != nil {
		return fail("%v", err)
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}, "format": {"json"}}
	if *port != 0 {
		q.Set("port", strconv.Itoa(int(*port)))
	}
	if *lis != "" {
		q.Set("listener", *lis)
	}
	if *reason != "" {
		q.Set("reason", *reason)
	}
	var recs []detection
	if err := get("/detections?"+q.Encode(), &recs); err != nil {
		return fail("%v", err)
	}
	var cs clusters
	if err := get("/clusters?format=json", &cs); err != nil {
		return fail("%v", err)
	}

	fmt.Fprintf(stdout, "sift-proxy at %s: %s, up %s, %s\n", *admin, info.State, info.Uptime, info.Version)
	fmt.Fprintf(stdout, "configuration: %s\n", configSummary(dump, info.Options.ConfigPath))
	chains := chainClusters(dump)
	if len(recs) == 0 {
		fmt.Fprintln(stdout, "\nno recent connection matches (the proxy keeps the last 1024; try without --port, --listener or --reason)")
		return 0
	}
	fmt.Fprintf(stdout, "\nthe %d most recent connections that match, newest first:\n", len(recs))
	for _, r := range recs {
		fmt.Fprintf(stdout, "\n%s  %s → %s  (listener %s)\n", r.Time.Local().Format("15:04:05.000"), r.Remote, r.Destination, r.Listener)
		fmt.Fprintf(stdout, "  detection: %s\n", explain(r))
		if len(r.Attributes) > 0 {
			keys := make([]string, 0, len(r.Attributes))
			for k := range r.Attributes {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			var kv []string
			for _, k := range keys {
				kv = append(kv, k+"="+r.Attributes[k])
			}
			fmt.Fprintf(stdout, "  learned:   %s\n", strings.Join(kv, ", "))
		}
		if len(r.Verdicts) > 0 {
			var vs []string
			for _, v := range r.Verdicts {
				vs = append(vs, v.Sniffer+" "+v.Verdict)
			}
			fmt.Fprintf(stdout, "  sniffers:  %s\n", strings.Join(vs, ", "))
		}
		switch {
		case r.Chain == "" && r.Outcome == "no_chain":
			fmt.Fprintf(stdout, "  chain:     none matched (protocol %q, transport %q): the connection was closed — add a chain or a default_filter_chain\n", r.Protocol, r.Transport)
			continue
		case r.Chain == "":
			fmt.Fprintf(stdout, "  outcome:   %s before a chain was chosen\n", r.Outcome)
			continue
		}
		target := chains[r.Listener+"/"+r.Chain]
		fmt.Fprintf(stdout, "  chain:     %s → %s\n", r.Chain, orDash(target))
		if cluster, ok := strings.CutPrefix(target, "cluster "); ok {
			fmt.Fprintf(stdout, "  endpoints: %s\n", endpoints(cs, cluster))
		}
		if r.EarlyUpstream != "" {
			fmt.Fprintf(stdout, "  upstream:  %s, opened early by the server-first race and reused\n", r.EarlyUpstream)
		}
		fmt.Fprintf(stdout, "  outcome:   %s\n", r.Outcome)
	}
	return 0
}

// explain says in words why detection ended as it did.
func explain(r detection) string {
	took := fmt.Sprintf("%d bytes, %.1f ms", r.Bytes, r.DurationMS)
	switch r.Reason {
	case "match":
		return fmt.Sprintf("%s — the %s sniffer recognised it (%s)", r.Protocol, r.Sniffer, took)
	case "no_match":
		return fmt.Sprintf("opaque — every sniffer declined the client's first bytes (%s); proxied as TCP", took)
	case "eof":
		return fmt.Sprintf("opaque — the client closed before a verdict (%s)", took)
	case "timeout":
		return fmt.Sprintf("opaque — the client sent nothing decisive before the detection timeout (%s), and the server did not speak first "+
			"either: if this protocol's server speaks first, check the detect filter's server_first_grace_period; if it is known, make the port opaque", took)
	case "timeout_closed":
		return fmt.Sprintf("closed — the client stayed silent until the detection timeout (%s) and the listener fails closed (on_timeout)", took)
	case "byte_cap":
		return fmt.Sprintf("opaque — the sniffers still needed more than max_bytes (%s)", took)
	case "server_first":
		return fmt.Sprintf("opaque — the client stayed silent past the grace period and the server spoke first (%s): its greeting went straight to the client", took)
	case "learned_server_first":
		return "opaque — this destination is learned to speak first: the upstream was opened at accept, no waiting"
	case "opaque_port":
		return "skipped — no filter chain on this port depends on the protocol (an opaque port): bytes flowed from the first one"
	case "skipped":
		return "skipped — the listener has no detecting listener filter"
	case "disabled":
		return "skipped — the listener filter's filter_disabled matched this connection"
	case "error":
		return fmt.Sprintf("failed — reading the client failed (%s); the connection was closed", took)
	}
	return fmt.Sprintf("%s (%s)", r.Reason, took)
}

// configSummary names what the proxy serves: the static file and the xDS
// versions of the dynamic resources.
func configSummary(dump map[string]any, path string) string {
	versions := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			for k, e := range t {
				if k == "version_info" {
					if s, ok := e.(string); ok && s != "" {
						versions[s] = true
					}
				}
				walk(e)
			}
		case []any:
			for _, e := range t {
				walk(e)
			}
		}
	}
	walk(dump)
	var parts []string
	if path != "" {
		parts = append(parts, "bootstrap "+path)
	}
	if len(versions) > 0 {
		var vs []string
		for v := range versions {
			vs = append(vs, v)
		}
		sort.Strings(vs)
		parts = append(parts, "xDS versions "+strings.Join(vs, ", "))
	} else {
		parts = append(parts, "no xDS resources")
	}
	return strings.Join(parts, "; ")
}

// chainClusters maps "listener/chain" to where the chain sends connections:
// "cluster NAME" (tcp_proxy) or "routes NAME" (an HTTP connection manager),
// from /config_dump.
func chainClusters(dump map[string]any) map[string]string {
	out := map[string]string{}
	var walk func(v any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			if name, ok := t["name"].(string); ok {
				if fcs, ok := t["filter_chains"].([]any); ok {
					if dc, ok := t["default_filter_chain"]; ok {
						fcs = append(fcs, dc)
					}
					for _, fc := range fcs {
						m, _ := fc.(map[string]any)
						chain, _ := m["name"].(string)
						if target := chainTarget(m); target != "" {
							out[name+"/"+chain] = target
						}
					}
				}
			}
			for _, e := range t {
				walk(e)
			}
		case []any:
			for _, e := range t {
				walk(e)
			}
		}
	}
	walk(dump)
	return out
}

func chainTarget(chain map[string]any) string {
	filters, _ := chain["filters"].([]any)
	for _, f := range filters {
		fm, _ := f.(map[string]any)
		tc, _ := fm["typed_config"].(map[string]any)
		if c, ok := tc["cluster"].(string); ok {
			return "cluster " + c
		}
		if rds, ok := tc["rds"].(map[string]any); ok {
			return "routes " + fmt.Sprint(rds["route_config_name"])
		}
		if rc, ok := tc["route_config"].(map[string]any); ok {
			return "routes " + fmt.Sprint(rc["name"]) + " (inline)"
		}
	}
	return ""
}

// endpoints describes the cluster's endpoints and their health.
func endpoints(cs clusters, name string) string {
	for _, c := range cs.Clusters {
		if c.Name != name {
			continue
		}
		if len(c.Hosts) == 0 {
			return "none — the cluster has no endpoints, so connections to it fail"
		}
		var out []string
		for _, h := range c.Hosts {
			health := strings.ToLower(h.Health.EDS)
			switch health {
			case "", "unknown":
				health = "up (no health checking)"
			}
			if h.Health.Outlier {
				health += ", ejected by outlier detection"
			}
			var stats []string
			for _, s := range h.Stats {
				stats = append(stats, fmt.Sprintf("%s %d", s.Name, s.Value))
			}
			if h.RTTMS != nil {
				stats = append(stats, fmt.Sprintf("ewma %.2f ms", *h.RTTMS))
			}
			out = append(out, fmt.Sprintf("%s:%d %s (%s)", h.Address.Socket.Address, h.Address.Socket.Port, health, strings.Join(stats, ", ")))
		}
		return strings.Join(out, "; ")
	}
	return "unknown — no such cluster is loaded (yet?)"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
