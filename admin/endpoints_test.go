package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"google.golang.org/protobuf/encoding/protojson"

	_ "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	"github.com/siftmesh/sift/telemetry/metrics"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/upstream"
)

// minimal is a Source with only the required methods.
type minimal struct{}

func (minimal) ListenerAddrs() map[string]string { return map[string]string{"in": "127.0.0.1:1"} }
func (minimal) ConfigDump() ([]byte, error)      { return []byte("{}"), nil }

// full is a Source with metrics, clusters and server info, as sift-proxy's
// server is.
type full struct {
	minimal
	reg      *metrics.Registry
	clusters *upstream.Manager
	started  time.Time
}

func (f *full) Metrics() *metrics.Registry    { return f.reg }
func (f *full) Clusters() []*upstream.Cluster { return f.clusters.Clusters() }
func (f *full) ServerInfo() ServerInfo {
	return ServerInfo{Node: &corev3.Node{Id: "node-1", Cluster: "web"}, Started: f.started,
		CommandLine: CommandLineOptions{ConfigPath: "/etc/sift.yaml", LogLevel: "info", DrainTime: "600s", Mode: "Serve"}}
}

func listen(t *testing.T, src Source) string {
	t.Helper()
	s, err := Listen("127.0.0.1:0", src, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	s.SetState(StateLive)
	return "http://" + s.Addr().String()
}

func get(t *testing.T, url string, header ...string) (int, string, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// peakEWMACluster builds a real cluster with one endpoint per address.
func peakEWMACluster(t *testing.T, name string, addrs map[string]string) *upstream.Cluster {
	t.Helper()
	var eps []string
	for a, health := range addrs {
		host, port, _ := net.SplitHostPort(a)
		eps = append(eps, fmt.Sprintf(`{"healthStatus":%q,"endpoint":{"address":{"socketAddress":{"address":%q,"portValue":%s}}}}`, health, host, port))
	}
	js := fmt.Sprintf(`{"name":%q,"type":"STATIC","connectTimeout":"1s",
		"loadBalancingPolicy":{"policies":[{"typedExtensionConfig":{"name":"ewma","typedConfig":{"@type":"type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma"}}}]},
		"loadAssignment":{"clusterName":%q,"endpoints":[{"lbEndpoints":[%s]}]}}`, name, name, strings.Join(eps, ","))
	pb := &clusterv3.Cluster{}
	if err := protojson.Unmarshal([]byte(js), pb); err != nil {
		t.Fatal(err)
	}
	c, err := upstream.Build(pb, upstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newFull(t *testing.T, cs ...*upstream.Cluster) *full {
	t.Helper()
	m := upstream.NewManager()
	if _, err := m.Replace(cs); err != nil {
		t.Fatal(err)
	}
	return &full{reg: metrics.New(metrics.Options{Clusters: m}), clusters: m, started: time.Now().Add(-90 * time.Second)}
}

func TestIndex(t *testing.T) {
	t.Parallel()
	base := listen(t, minimal{})
	paths := []string{"/dashboard", "/help", "/ready", "/server_info", "/listeners", "/clusters", "/config_dump", "/stats",
		"/stats/prometheus", "/metrics", "/detections", "/detections/learned"}
	for _, tc := range []struct {
		name, accept, wantType string
		line                   func(p string) string
	}{
		{"text", "", "text/plain", func(p string) string { return "  " + p + ":" }},
		{"html for a browser", "text/html,application/xhtml+xml", "text/html", func(p string) string { return `<a href="` + p + `">` }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			code, ctype, body := get(t, base+"/", "Accept", tc.accept)
			if code != http.StatusOK || !strings.HasPrefix(ctype, tc.wantType) {
				t.Fatalf("GET / = %d %s", code, ctype)
			}
			for _, p := range paths {
				if !strings.Contains(body, tc.line(p)) {
					t.Errorf("index lacks %s:\n%s", p, body)
				}
			}
		})
	}
	if code, _, _ := get(t, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestWithoutData(t *testing.T) {
	t.Parallel()
	base := listen(t, minimal{})
	for _, p := range []string{"/stats", "/stats/prometheus", "/metrics", "/clusters"} {
		if code, _, body := get(t, base+p); code != http.StatusNotFound {
			t.Errorf("GET %s = %d %q, want 404", p, code, body)
		}
	}
	// /server_info still answers, with what the admin server knows.
	code, _, body := get(t, base+"/server_info")
	var si serverInfoJSON
	if err := json.Unmarshal([]byte(body), &si); code != http.StatusOK || err != nil || si.State != "LIVE" {
		t.Errorf("GET /server_info = %d %q (%v)", code, body, err)
	}
}

func TestServerInfo(t *testing.T) {
	t.Parallel()
	base := listen(t, newFull(t))
	code, ctype, body := get(t, base+"/server_info")
	if code != http.StatusOK || ctype != "application/json" {
		t.Fatalf("GET /server_info = %d %s", code, ctype)
	}
	var got struct {
		Version     string            `json:"version"`
		State       string            `json:"state"`
		Uptime      string            `json:"uptime_current_epoch"`
		UptimeAll   string            `json:"uptime_all_epochs"`
		CommandLine map[string]string `json:"command_line_options"`
		Node        map[string]string `json:"node"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if !regexp.MustCompile(`^[^/]+/[^/]+/(Clean|Modified)/go`).MatchString(got.Version) {
		t.Errorf("version = %q", got.Version)
	}
	if !regexp.MustCompile(`^(9\d|1\d\d)s$`).MatchString(got.Uptime) || got.UptimeAll != got.Uptime {
		t.Errorf("uptime = %q, %q; want about 90s", got.Uptime, got.UptimeAll)
	}
	if diff := cmp.Diff(map[string]string{"id": "node-1", "cluster": "web"}, got.Node); diff != "" {
		t.Errorf("node (-want +got):\n%s", diff)
	}
	if got.State != "LIVE" || got.CommandLine["config_path"] != "/etc/sift.yaml" || got.CommandLine["drain_time"] != "600s" || got.CommandLine["mode"] != "Serve" {
		t.Errorf("state %q, command_line_options %v", got.State, got.CommandLine)
	}
}

func TestClusters(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up := ln.Addr().String()
	c := peakEWMACluster(t, "db", map[string]string{up: "HEALTHY", "127.0.0.2:9": "UNHEALTHY"})
	base := listen(t, newFull(t, c))
	conn, err := c.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	code, _, body := get(t, base+"/clusters")
	if code != http.StatusOK {
		t.Fatalf("GET /clusters = %d", code)
	}
	for _, line := range []string{
		"db::observability_name::db", "db::lb_policy::peak_ewma",
		"db::" + up + "::cx_active::1", "db::" + up + "::rq_active::0", "db::" + up + "::weight::1",
		"db::" + up + "::health_flags::healthy",
		"db::127.0.0.2:9::cx_active::0", "db::127.0.0.2:9::health_flags::/failed_eds_health",
	} {
		if !strings.Contains(body, line+"\n") {
			t.Errorf("/clusters lacks %q:\n%s", line, body)
		}
	}
	if !regexp.MustCompile(`(?m)^db::` + regexp.QuoteMeta(up) + `::ewma_cost::\d+$`).MatchString(body) {
		t.Errorf("/clusters lacks the endpoint's ewma_cost:\n%s", body)
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	c := peakEWMACluster(t, "web", map[string]string{"127.0.0.1:9": "HEALTHY"})
	src := newFull(t, c)
	for _, status := range []int{200, 200, 503} {
		src.reg.OnRequest(&streaminfo.Request{Authority: "web", Status: status, Cluster: "web"})
	}
	base := listen(t, src)

	tests := []struct {
		name, query string
		wantCode    int
		want        string
	}{
		{"text", "", 200, "cluster.web.membership_healthy: 1\ncluster.web.membership_total: 1\n" +
			"cluster.web.upstream_cx_active: 0\ncluster.web.upstream_cx_connect_fail: 0\ncluster.web.upstream_cx_total: 0\n" +
			"cluster.web.upstream_rq_1xx: 0\ncluster.web.upstream_rq_2xx: 2\ncluster.web.upstream_rq_3xx: 0\n" +
			"cluster.web.upstream_rq_4xx: 0\ncluster.web.upstream_rq_5xx: 1\ncluster.web.upstream_rq_active: 0\n" +
			"cluster.web.upstream_rq_total: 3\n"},
		{"filter", "?filter=rq_(total|5xx)$", 200, "cluster.web.upstream_rq_5xx: 1\ncluster.web.upstream_rq_total: 3\n"},
		{"json", "?filter=rq_total&format=json", 200, "{\n  \"stats\": [\n    {\n      \"name\": \"cluster.web.upstream_rq_total\",\n      \"value\": 3\n    }\n  ]\n}\n"},
		{"bad filter", "?filter=(", 400, "stats: filter: error parsing regexp: missing closing ): `(`\n"},
		{"bad format", "?format=xml", 400, "stats: format: want text or json, got \"xml\"\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, body := get(t, base+"/stats"+tt.query)
			if code != tt.wantCode {
				t.Errorf("code = %d, want %d", code, tt.wantCode)
			}
			if diff := cmp.Diff(tt.want, body); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
		})
	}

	for _, p := range []string{"/stats/prometheus", "/metrics"} {
		code, _, body := get(t, base+p)
		if code != http.StatusOK {
			t.Fatalf("GET %s = %d", p, code)
		}
		tp := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := tp.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		var n float64
		for _, m := range fams["response_total"].GetMetric() {
			n += m.GetCounter().GetValue()
		}
		if n != 3 {
			t.Errorf("GET %s: response_total sums to %v, want 3", p, n)
		}
		if fams["envoy_cluster_upstream_rq_total"] == nil {
			t.Errorf("GET %s: no envoy_cluster_upstream_rq_total", p)
		}
	}
}
