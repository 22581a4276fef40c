package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/siftmesh/sift/internal/testnet"
)

// metricsProxy has an admin server and detecting listeners: "in" (INBOUND;
// HTTP/1.1 and h2c to an HTTP connection manager, everything else to a
// server-first greeter), "tcpin" (INBOUND; everything to the greeter) and "out" (OUTBOUND; a short detection timeout,
// everything undetected to a silent echo server); and "opq", whose one chain
// makes detection pointless (an opaque port) to the greeter.
const metricsProxy = `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: in
    traffic_direction: INBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 10s}
    filter_chains:
    - filter_chain_match: {application_protocols: [http/1.1, h2c]}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          codec_type: AUTO
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: web}}]}]}
  - name: tcpin
    traffic_direction: INBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 10s}
    filter_chains: [{filter_chain_match: {application_protocols: [http/1.1]}, filters: {{greet}}}]
    default_filter_chain: {filters: {{greet}}}
  - name: out
    traffic_direction: OUTBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 0.3s}
    filter_chains: [{filter_chain_match: {application_protocols: [http/1.1]}, filters: {{silent}}}]
    default_filter_chain: {filters: {{silent}}}
  - name: opq
    traffic_direction: OUTBOUND
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}
    default_filter_chain: {filters: {{greet}}}
  clusters:
`

// statusBackend serves HTTP/2 with prior knowledge: the gRPC health service
// (sift.test SERVING, other services NOT_FOUND), and for plain requests the
// status named by a /status/NNN path (else 200), with body "ok".
func statusBackend(t *testing.T) string {
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("sift.test", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	t.Cleanup(gs.Stop)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		code := http.StatusOK
		if s, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			code, _ = strconv.Atoi(s)
		}
		w.WriteHeader(code)
		io.WriteString(w, "ok")
	})
	h2 := &http2.Server{}
	return testnet.Backend(t, func(c net.Conn) { h2.ServeConn(c, &http2.ServeConnOpts{Handler: h}) })
}

// TestMetricsAfterRealTraffic drives HTTP/1.1, h2c, gRPC, an opaque
// connection, a server-first connection and a detection timeout through a
// real proxy, then scrapes /stats/prometheus and checks the values: request
// and response counts by status and gRPC status, byte totals equal to what
// was sent, connection counts, detection outcomes, Envoy's cluster and
// listener counters.
//
// Not parallel: the metrics hooks are process-wide, and the last server
// started with an admin address receives every record. Sequential top-level
// tests run before any parallel test resumes, so this one runs alone.
func TestMetricsAfterRealTraffic(t *testing.T) {
	const greeting = "220 greeter ready\r\n"
	p := startProxy(t, metricsProxy+h2Cluster("web", statusBackend(t))+staticCluster("greet", greeter(t, greeting))+
		staticCluster("silent", testnet.Backend(t, func(c net.Conn) { io.Copy(c, c) })),
		map[string]string{"greet": tcpProxy("greet"), "silent": tcpProxy("silent")})
	in, tcpin, out, opq, admin := p.addr(t, "in"), p.addr(t, "tcpin"), p.addr(t, "out"), p.addr(t, "opq"), p.AdminAddr()

	// HTTP/1.1: three 200s and a 503 on one keep-alive connection.
	h1 := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
	for _, path := range []string{"/a", "/b", "/c", "/status/503"} {
		req := newReq(t, "GET", "http://"+in+path, nil)
		req.Host = "h1.test"
		do(t, h1, req)
	}
	h1.CloseIdleConnections()

	// h2c: two 200s and a 404.
	h2 := h2cClient()
	for _, path := range []string{"/a", "/b", "/status/404"} {
		req := newReq(t, "GET", "http://"+in+path, nil)
		req.Host = "h2.test"
		do(t, h2, req)
	}
	h2.CloseIdleConnections()

	// gRPC: one OK, one NOT_FOUND (5).
	cc, err := grpc.NewClient(in, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithAuthority("grpc.test"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "sift.test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Check(nope) = %v, want NotFound", err)
	}
	cc.Close()

	// Opaque, client first: no sniffer matches; the greeter greets and echoes.
	opaque := dial(t, tcpin)
	io.WriteString(opaque, "hello opaque\n")
	r := bufio.NewReader(opaque)
	if l1, l2 := readLine(t, r), readLine(t, r); l1 != greeting || l2 != "got hello opaque\n" {
		t.Fatalf("opaque: got %q %q", l1, l2)
	}
	opaque.Close()

	// Server first: the client waits for the greeting, then speaks.
	sf := dial(t, tcpin)
	r = bufio.NewReader(sf)
	if l := readLine(t, r); l != greeting {
		t.Fatalf("server-first greeting = %q", l)
	}
	io.WriteString(sf, "HELO\n")
	if l := readLine(t, r); l != "got HELO\n" {
		t.Fatalf("server-first reply = %q", l)
	}
	sf.Close()

	// Detection timeout (outbound): the client stays silent past the
	// timeout; the silent upstream never speaks either; then an echo.
	to := dial(t, out)
	to.SetReadDeadline(time.Now().Add(10 * time.Second))
	time.Sleep(500 * time.Millisecond) // past the 0.3 s detection timeout
	io.WriteString(to, "x\n")
	if l := readLine(t, bufio.NewReader(to)); l != "x\n" {
		t.Fatalf("timeout echo = %q", l)
	}
	to.Close()

	// Opaque port: no detection; the greeter greets.
	op := dial(t, opq)
	if l := readLine(t, bufio.NewReader(op)); l != greeting {
		t.Fatalf("opaque port greeting = %q", l)
	}
	op.Close()

	inPort := in[strings.LastIndexByte(in, ':')+1:]
	inbound := map[string]string{"direction": "inbound", "target_addr": in, "srv_port": inPort, "tls": "false"}
	tcpInbound := map[string]string{"direction": "inbound", "target_addr": tcpin, "tls": "false"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	greetBytesIn := len("hello opaque\n") + len("HELO\n")
	greetBytesOut := 2*len(greeting) + len("got hello opaque\n") + len("got HELO\n")
	checks := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"h1 requests", "request_total", with(inbound, "authority", "h1.test"), 4},
		{"h1 200s", "response_total", with(inbound, "authority", "h1.test", "status_code", "200", "classification", "success"), 3},
		{"h1 503", "response_total", with(inbound, "authority", "h1.test", "status_code", "503", "classification", "failure"), 1},
		{"h1 latency count", "response_latency_ms", with(inbound, "authority", "h1.test"), 4},
		{"h2 200s", "response_total", with(inbound, "authority", "h2.test", "status_code", "200"), 2},
		{"h2 404 is a success", "response_total", with(inbound, "authority", "h2.test", "status_code", "404", "classification", "success"), 1},
		{"grpc ok", "response_total", with(inbound, "authority", "grpc.test", "grpc_status", "0", "classification", "success"), 1},
		{"grpc not found", "response_total", with(inbound, "authority", "grpc.test", "grpc_status", "5", "classification", "failure"), 1},
		{"tcp opened inbound (opaque)", "tcp_open_total", with(tcpInbound, "peer", "src"), 2},
		{"tcp open now inbound (opaque)", "tcp_open_connections", tcpInbound, 0},
		{"tcp closed inbound (opaque)", "tcp_close_total", with(tcpInbound, "classification", "success"), 2},
		{"tcp read inbound (opaque)", "tcp_read_bytes_total", tcpInbound, float64(greetBytesIn)},
		{"tcp write inbound (opaque)", "tcp_write_bytes_total", tcpInbound, float64(greetBytesOut)},
		{"tcp duration count inbound (opaque)", "tcp_connection_duration_ms", tcpInbound, 2},
		{"tcp opened inbound (HTTP connections)", "tcp_open_total", inbound, 3},
		{"tcp open now inbound (HTTP connections)", "tcp_open_connections", inbound, 0},
		{"tcp closed inbound (HTTP connections)", "tcp_close_total", with(inbound, "classification", "success"), 3},
		{"tcp read outbound", "tcp_read_bytes_total", map[string]string{"direction": "outbound", "target_addr": out, "peer": "dst"}, 2},
		{"tcp write outbound", "tcp_write_bytes_total", map[string]string{"direction": "outbound", "target_addr": out}, 2},
		{"tcp write opaque port", "tcp_write_bytes_total", map[string]string{"direction": "outbound", "target_addr": opq}, float64(len(greeting))},
		{"opaque port", "sift_detection_total", map[string]string{"listener": "opq", "reason": "opaque_port", "outcome": "dispatched"}, 1},
		{"detected http/1.1", "sift_detection_total", map[string]string{"listener": "in", "protocol": "http/1.1", "reason": "match", "outcome": "dispatched"}, 1},
		{"detected h2c (h2c and gRPC)", "sift_detection_total", map[string]string{"listener": "in", "protocol": "h2c", "reason": "match"}, 2},
		{"no match", "sift_detection_total", map[string]string{"listener": "tcpin", "reason": "no_match", "protocol": "opaque"}, 1},
		{"server first", "sift_detection_total", map[string]string{"listener": "tcpin", "reason": "server_first", "raced": "true"}, 1},
		{"timeout", "sift_detection_total", map[string]string{"listener": "out", "direction": "outbound", "reason": "timeout", "raced": "true"}, 1},
		{"detection durations in", "sift_detection_duration_ms", map[string]string{"listener": "in"}, 3},
		{"cluster web requests", "envoy_cluster_upstream_rq_total", map[string]string{"envoy_cluster_name": "web"}, 9},
		{"cluster web 5xx", "envoy_cluster_upstream_rq_5xx", map[string]string{"envoy_cluster_name": "web"}, 1},
		{"cluster web 4xx", "envoy_cluster_upstream_rq_4xx", map[string]string{"envoy_cluster_name": "web"}, 1},
		{"cluster greet connections", "envoy_cluster_upstream_cx_total", map[string]string{"envoy_cluster_name": "greet"}, 3},
		{"listener in connections", "envoy_listener_downstream_cx_total", map[string]string{"envoy_listener_name": "in"}, 3},
		{"web endpoint requests in flight", "sift_endpoint_active_requests", map[string]string{"cluster": "web"}, 0},
	}
	// Records arrive when each connection's goroutine finishes: poll.
	var fams map[string]*dto.MetricFamily
	var failed []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		fams = scrapeFamilies(t, "http://"+admin+"/stats/prometheus")
		failed = failed[:0]
		for _, c := range checks {
			got, n := sumSeries(fams[c.metric], c.labels)
			if n == 0 || got != c.want {
				failed = append(failed, fmt.Sprintf("%s: %s%v = %v over %d series, want %v", c.name, c.metric, c.labels, got, n, c.want))
			}
		}
		// HTTP connections' bytes (headers with dates) are not predictable
		// byte for byte; the request and response bodies are in them.
		if got, _ := sumSeries(fams["tcp_read_bytes_total"], inbound); got < 100 {
			failed = append(failed, fmt.Sprintf("tcp_read_bytes_total%v = %v, want the HTTP connections' bytes", inbound, got))
		}
		if got, _ := sumSeries(fams["tcp_write_bytes_total"], inbound); got < 100 {
			failed = append(failed, fmt.Sprintf("tcp_write_bytes_total%v = %v, want the HTTP connections' bytes", inbound, got))
		}
		if len(failed) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, f := range failed {
		t.Error(f)
	}
	if len(failed) > 0 {
		for _, m := range fams["sift_detection_total"].GetMetric() {
			t.Logf("sift_detection_total %v %v", m.GetLabel(), m.GetCounter().GetValue())
		}
	}
	// No raw paths in any label.
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.HasPrefix(l.GetValue(), "/") {
					t.Errorf("%s has a path-like label %s=%q", name, l.GetName(), l.GetValue())
				}
			}
		}
	}

	// /metrics is the same exposition; /stats has Envoy's names.
	if got := scrapeFamilies(t, "http://"+admin+"/metrics"); got["request_total"] == nil {
		t.Error("/metrics: no request_total")
	}
	stats := fetch(t, "http://"+admin+"/stats")
	for _, line := range []string{"listener.in.downstream_cx_total: 3", "cluster.web.upstream_rq_total: 9", "cluster.greet.upstream_cx_total: 3"} {
		if !strings.Contains(stats, line+"\n") {
			t.Errorf("/stats lacks %q:\n%s", line, stats)
		}
	}
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read: %q, %v", l, err)
	}
	return l
}

func fetch(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

// scrapeFamilies fetches and parses a Prometheus text exposition.
func scrapeFamilies(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(fetch(t, url)))
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// sumSeries sums the series of f whose labels include want (counters and
// gauges by value, histograms by sample count) and counts them.
func sumSeries(f *dto.MetricFamily, want map[string]string) (float64, int) {
	var sum float64
	n := 0
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if have[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		n++
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, n
}
