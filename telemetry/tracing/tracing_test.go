package tracing

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/otlptest"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/upstream"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Shutdown(context.Background())
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// clustersFor returns a cluster manager holding a STATIC cluster "otel"
// over addr, closed when the test ends.
func clustersFor(t *testing.T, addr string) *upstream.Manager {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	c, err := upstream.Build(&clusterv3.Cluster{
		Name: "otel", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "otel", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}}}}}},
	}, upstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := upstream.NewManager()
	if _, err := m.Replace([]*upstream.Cluster{c}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return m
}

const otelProvider = `{"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
  "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "2s"}, "service_name": "%s"}}`

func hcmTracing(t *testing.T, js string) *hcmv3.HttpConnectionManager_Tracing {
	t.Helper()
	m := &hcmv3.HttpConnectionManager_Tracing{}
	if err := protojson.Unmarshal([]byte(js), m); err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return m
}

func TestDecodeHCM(t *testing.T) {
	t.Parallel()
	clusters := clustersFor(t, "127.0.0.1:1")
	tests := []struct {
		name    string
		js      string
		want    float64 // ratio
		wantErr string
	}{
		{name: "empty: every new trace", js: `{}`, want: 1},
		{name: "random and overall multiply", js: `{"random_sampling": {"value": 50}, "overall_sampling": {"value": 20}}`, want: 0.1},
		{name: "tags", js: `{"custom_tags": [{"tag": "a", "literal": {"value": "x"}}, {"tag": "b", "request_header": {"name": "x-b"}}, {"tag": "z", "environment": {"name": "SIFT_TRACING_TEST_UNSET", "default_value": "z1"}}]}`, want: 1},
		{name: "ignored fields", js: `{"verbose": true, "spawn_upstream_span": true}`, want: 1},
		{name: "provider", js: `{"provider": ` + fmt.Sprintf(otelProvider, "p") + `}`, want: 1},
		{name: "client_sampling", js: `{"client_sampling": {"value": 10}}`, wantErr: "tracing: tracing.client_sampling: not supported by Sift"},
		{name: "percent out of range", js: `{"random_sampling": {"value": 150}}`, wantErr: "tracing.random_sampling.value: 150: must be in [0, 100]"},
		{name: "metadata tag", js: `{"custom_tags": [{"tag": "m", "metadata": {}}]}`, wantErr: "tracing.custom_tags[0].metadata: not supported by Sift"},
		{name: "tag without name", js: `{"custom_tags": [{"literal": {"value": "x"}}]}`, wantErr: "tracing.custom_tags[0].tag: must be set"},
		{name: "unknown cluster", js: `{"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", "grpc_service": {"envoy_grpc": {"cluster_name": "nope"}}}}}`,
			wantErr: `tracing.provider.typed_config.grpc_service.envoy_grpc.cluster_name: "nope" is not a known cluster`},
		{name: "http_service", js: `{"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", "http_service": {}}}}`,
			wantErr: `tracing.provider.typed_config.http_service: not supported by Sift`},
		{name: "other tracer", js: `{"provider": {"name": "envoy.tracers.zipkin", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig", "collector_cluster": "otel", "collector_endpoint": "/api/v2/spans"}}}`,
			wantErr: `tracing.provider.typed_config: type.googleapis.com/envoy.config.trace.v3.ZipkinConfig is not supported by Sift`},
		{name: "google_grpc", js: `{"provider": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", "grpc_service": {"google_grpc": {"target_uri": "x", "stat_prefix": "y"}}}}}`,
			wantErr: `tracing.provider.typed_config.grpc_service.google_grpc: not supported by Sift`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := DecodeHCM(hcmTracing(t, tt.js), clusters)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, h.ratio); diff != "" {
				t.Errorf("ratio (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDecodeBootstrap(t *testing.T) {
	t.Parallel()
	clusters := clustersFor(t, "127.0.0.1:1")
	tests := []struct {
		name     string
		js       string
		wantNone bool
		wantErr  string
	}{
		{name: "opentelemetry", js: `{"http": ` + fmt.Sprintf(otelProvider, "b") + `}`},
		{name: "empty tracing", js: `{}`, wantNone: true},
		{name: "no typed_config", js: `{"http": {"name": "envoy.tracers.opentelemetry"}}`, wantErr: "tracing.http.typed_config: must be set"},
		{name: "no grpc_service", js: `{"http": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"}}}`,
			wantErr: "tracing.http.typed_config.grpc_service: must be set"},
		{name: "bad timeout", js: `{"http": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "0s"}}}}`,
			wantErr: "tracing.http.typed_config.grpc_service.timeout"},
		{name: "resource_detectors", js: `{"http": {"name": "envoy.tracers.opentelemetry", "typed_config": {"@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}}, "resource_detectors": [{"name": "x"}]}}}`,
			wantErr: "tracing.http.typed_config.resource_detectors: not supported by Sift"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &tracev3.Tracing{}
			if err := protojson.Unmarshal([]byte(tt.js), b); err != nil {
				t.Fatal(err)
			}
			p, err := DecodeBootstrap(b, clusters)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (p == nil) != tt.wantNone {
				t.Fatalf("provider = %v, want none: %v", p, tt.wantNone)
			}
			p.Shutdown(context.Background())
		})
	}
}

// request is a request as the HCM sees it, with trace headers hd.
func request(hd map[string]string) *http.Request {
	r := httptest.NewRequest("GET", "http://svc.local:8080/api/v1/items?x=1", nil)
	for k, v := range hd {
		r.Header.Set(k, v)
	}
	return r
}

func record(r *http.Request, start time.Time, status int) *streaminfo.Request {
	return &streaminfo.Request{Start: start, Duration: 3 * time.Millisecond, Protocol: r.Proto, Method: r.Method,
		Authority: r.Host, Path: r.URL.RequestURI(), Route: "items", Cluster: "backend", Endpoint: "10.0.0.7:80",
		Attempts: 1, Status: status, Header: r.Header, TLS: true, ClientID: "spiffe://td/client", ServerID: "spiffe://td/server",
		Info: &filters.ConnInfo{Direction: filters.DirectionInbound, Detection: filters.Detection{Ran: true, Protocol: "http/1.1", Reason: "match", Bytes: 18}}}
}

// TestHTTPSpanExported runs a span through a provider named by an HCM
// provider to a real OTLP receiver: parent from traceparent, injection,
// attributes, error status on 5xx, custom tags.
func TestHTTPSpanExported(t *testing.T) {
	t.Parallel()
	rcv := otlptest.Start(t)
	h, err := DecodeHCM(hcmTracing(t, `{"provider": `+fmt.Sprintf(otelProvider, "unit-http")+`, "max_path_tag_length": 8,
	  "custom_tags": [{"tag": "team", "literal": {"value": "core"}}, {"tag": "tenant", "request_header": {"name": "x-tenant", "default_value": "none"}}]}`),
		clustersFor(t, rcv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer h.provider.Shutdown(context.Background())
	const client = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	tests := []struct {
		name     string
		hd       map[string]string
		status   int
		wantTID  string
		wantPar  string
		wantErr  bool
		wantTags map[string]string
	}{
		{name: "w3c parent", hd: map[string]string{"Traceparent": client, "Tracestate": "k=v", "X-Tenant": "acme"}, status: 200,
			wantTID: "0af7651916cd43dd8448eb211c80319c", wantPar: "b7ad6b7169203331", wantTags: map[string]string{"tenant": "acme"}},
		{name: "b3 single parent, 5xx", hd: map[string]string{"B3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}, status: 503,
			wantTID: "80f198ee56343ba864fe8b2a57d3eff7", wantPar: "e457b5a2e4d86bd1", wantErr: true, wantTags: map[string]string{"tenant": "none"}},
		{name: "new trace", hd: nil, status: 200, wantTags: map[string]string{"tenant": "none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.hd)
			start := time.Now()
			sp := h.Start(r, start, nil)
			if sp == nil {
				t.Fatal("Start = nil with a provider")
			}
			out := r.Header.Clone()
			sp.Inject(out)
			if out.Get("B3") != "" {
				t.Errorf("b3 header kept upstream: %q", out.Get("B3"))
			}
			tp := strings.Split(out.Get("Traceparent"), "-")
			if len(tp) != 4 || tp[3] != "01" {
				t.Fatalf("injected traceparent %q, want a sampled one", out.Get("Traceparent"))
			}
			if tt.wantTID != "" && tp[1] != tt.wantTID {
				t.Errorf("injected trace id %s, want the client's %s", tp[1], tt.wantTID)
			}
			sp.End(record(r, start, tt.status))
			if err := h.provider.ForceFlush(context.Background()); err != nil {
				t.Fatal(err)
			}
			spans := rcv.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool {
				for _, x := range s {
					if x.SpanID == tp[2] {
						return true
					}
				}
				return false
			})
			var got otlptest.Span
			for _, x := range spans {
				if x.SpanID == tp[2] {
					got = x
				}
			}
			if got.TraceID != tp[1] || got.ParentSpanID != tt.wantPar {
				t.Errorf("span trace %s parent %q, want %s parent %q", got.TraceID, got.ParentSpanID, tp[1], tt.wantPar)
			}
			want := map[string]string{"http.request.method": "GET", "url.path": "/api/v1/", "server.address": "svc.local", "server.port": "8080",
				"http.route": "items", "http.response.status_code": strconv.Itoa(tt.status), "upstream_cluster": "backend",
				"upstream_address": "10.0.0.7:80", "sift.tls.peer_identity": "spiffe://td/client", "sift.tls.local_identity": "spiffe://td/server",
				"sift.detection.protocol": "http/1.1", "sift.detection.reason": "match", "team": "core", "network.protocol.version": "1.1"}
			for k, v := range tt.wantTags {
				want[k] = v
			}
			for k, v := range want {
				if got.Attrs[k] != v {
					t.Errorf("attribute %s = %q, want %q", k, got.Attrs[k], v)
				}
			}
			if got.Service != "unit-http" || got.Name != "GET items" || got.StatusError != tt.wantErr {
				t.Errorf("service %q name %q error %v, want unit-http, GET items, %v", got.Service, got.Name, got.StatusError, tt.wantErr)
			}
			if d := time.Duration(got.EndUnix - got.StartUnix); d != 3*time.Millisecond || got.StartUnix != uint64(start.UnixNano()) {
				t.Errorf("span runs %v from %d, want 3ms from %d", d, got.StartUnix, start.UnixNano())
			}
		})
	}
}

// TestSampling: random_sampling 0 starts no sampled trace, but propagates
// an unsampled context; a sampled parent is kept whatever the fraction.
func TestSampling(t *testing.T) {
	t.Parallel()
	rcv := otlptest.Start(t)
	h, err := DecodeHCM(hcmTracing(t, `{"random_sampling": {"value": 0}, "provider": `+fmt.Sprintf(otelProvider, "unit-sampling")+`}`),
		clustersFor(t, rcv.Addr))
	if err != nil {
		t.Fatal(err)
	}
	defer h.provider.Shutdown(context.Background())
	tests := []struct {
		name      string
		hd        map[string]string
		wantFlags string
	}{
		{name: "root, 0%", wantFlags: "00"},
		{name: "sampled parent", hd: map[string]string{"Traceparent": "00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}, wantFlags: "01"},
		{name: "unsampled parent", hd: map[string]string{"Traceparent": "00-2af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"}, wantFlags: "00"},
		{name: "b3 unsampled", hd: map[string]string{"X-B3-Traceid": "463ac35c9f6413ad", "X-B3-Spanid": "a2fb4a1d1a96d312", "X-B3-Sampled": "0"}, wantFlags: "00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := request(tt.hd)
			sp := h.Start(r, time.Now(), nil)
			out := http.Header{}
			sp.Inject(out)
			tp := strings.Split(out.Get("Traceparent"), "-")
			if len(tp) != 4 || tp[3] != tt.wantFlags {
				t.Errorf("traceparent %q, want flags %s", out.Get("Traceparent"), tt.wantFlags)
			}
			sp.End(record(r, time.Now(), 200))
		})
	}
	h.provider.ForceFlush(context.Background())
	spans := rcv.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) >= 1 })
	if len(spans) != 1 || spans[0].TraceID != "1af7651916cd43dd8448eb211c80319c" {
		t.Errorf("exported %+v, want only the sampled parent's span", spans)
	}
}

func TestRatioSampled(t *testing.T) {
	t.Parallel()
	n := 0
	for i := range 10000 {
		var id trace.TraceID
		sum := sha256.Sum256([]byte(strconv.Itoa(i)))
		copy(id[:], sum[:])
		if ratioSampled(id, 0.25) {
			n++
		}
	}
	if n < 2000 || n > 3000 {
		t.Errorf("%d of 10000 ids sampled at 25%%, want about 2500", n)
	}
}

// blockingCollector is a real OTLP receiver whose Export waits until
// release is closed: a collector that has stopped answering.
type blockingCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	release chan struct{}
}

func (b *blockingCollector) Export(ctx context.Context, _ *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	select {
	case <-b.release:
	case <-ctx.Done():
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// TestQueueFullDrops: with a collector that does not answer, ending spans
// never blocks; spans past the queue's bound are dropped and counted.
func TestQueueFullDrops(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bc := &blockingCollector{release: make(chan struct{})}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, bc)
	go g.Serve(ln)
	defer g.Stop()
	var once sync.Once
	release := func() { once.Do(func() { close(bc.release) }) }
	defer release()
	p, err := DecodeBootstrap(&tracev3.Tracing{Http: hcmTracing(t, `{"provider": `+fmt.Sprintf(otelProvider, "unit-queue")+`}`).GetProvider()},
		clustersFor(t, ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	before, _ := Dropped()
	const extra = 1000
	for range QueueSize + extra {
		_, sp := p.tracer.Start(context.Background(), "s")
		sp.End()
	}
	after, _ := Dropped()
	if got := after - before; got != extra {
		t.Errorf("queue-full drops = %d, want %d", got, extra)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var scraped float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "sift_tracing_spans_dropped_total" && m.GetLabel()[0].GetValue() == "queue_full" {
				scraped = m.GetCounter().GetValue()
			}
		}
	}
	if scraped < extra {
		t.Errorf("sift_tracing_spans_dropped_total{reason=queue_full} = %v, want at least %d", scraped, extra)
	}
	release()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p.Shutdown(ctx)
}

// TestDeadCollector: spans to a collector nobody listens on are counted as
// export drops; ending them does not fail, and Shutdown returns within its
// context.
func TestDeadCollector(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	h, err := DecodeHCM(hcmTracing(t, `{"provider": `+fmt.Sprintf(otelProvider, "unit-dead")+`}`), clustersFor(t, dead))
	if err != nil {
		t.Fatal(err)
	}
	_, before := Dropped()
	for range 10 {
		r := request(nil)
		sp := h.Start(r, time.Now(), nil)
		sp.End(record(r, time.Now(), 200))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	h.provider.Shutdown(ctx)
	if _, after := Dropped(); after-before < 10 {
		t.Errorf("export drops = %d, want at least 10", after-before)
	}
}

func TestParseB3(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		hd   map[string]string
		want string // trace-span-flags, "" when none
	}{
		{name: "single sampled", hd: map[string]string{"B3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"}, want: "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"},
		{name: "single 64-bit, deferred", hd: map[string]string{"B3": "64fe8b2a57d3eff7-e457b5a2e4d86bd1"}, want: "000000000000000064fe8b2a57d3eff7-e457b5a2e4d86bd1-01"},
		{name: "single debug", hd: map[string]string{"B3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d"}, want: "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"},
		{name: "single deny only", hd: map[string]string{"B3": "0"}},
		{name: "multi unsampled", hd: map[string]string{"X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124", "X-B3-SpanId": "a2fb4a1d1a96d312", "X-B3-Sampled": "0"}, want: "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-00"},
		{name: "multi flags debug", hd: map[string]string{"X-B3-TraceId": "463ac35c9f6413ad48485a3953bb6124", "X-B3-SpanId": "a2fb4a1d1a96d312", "X-B3-Sampled": "0", "X-B3-Flags": "1"}, want: "463ac35c9f6413ad48485a3953bb6124-a2fb4a1d1a96d312-01"},
		{name: "bad hex", hd: map[string]string{"B3": "zzf198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"}},
		{name: "zero ids", hd: map[string]string{"B3": "00000000000000000000000000000000-0000000000000000-1"}},
		{name: "short span", hd: map[string]string{"B3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2-1"}},
		{name: "bad sampled", hd: map[string]string{"B3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x"}},
		{name: "none", hd: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tt.hd {
				h.Set(k, v)
			}
			sc, ok := parseB3(h)
			got := ""
			if ok {
				got = sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sc.TraceFlags().String()
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseB3 (-want +got):\n%s", diff)
			}
		})
	}
}

func FuzzParseB3(f *testing.F) {
	for _, s := range []string{"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", "64fe8b2a57d3eff7-e457b5a2e4d86bd1", "0", "d", "-", "a-b-c-d-e"} {
		f.Add(s, "", "", "")
	}
	f.Add("", "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312", "1")
	f.Fuzz(func(t *testing.T, single, tid, sid, sampled string) {
		h := http.Header{}
		h.Set("B3", single)
		h.Set("X-B3-TraceId", tid)
		h.Set("X-B3-SpanId", sid)
		h.Set("X-B3-Sampled", sampled)
		sc, ok := parseB3(h)
		if ok && !sc.IsValid() {
			t.Fatalf("parseB3 ok with an invalid context %v", sc)
		}
	})
}

// TestFromEnvTCPSpan: OTEL_* variables make the default provider, and a
// tcp_proxy connection record becomes a span with its detection outcome.
// Not parallel: it sets the environment and the process default.
func TestFromEnvTCPSpan(t *testing.T) {
	rcv := otlptest.Start(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+rcv.Addr)
	t.Setenv("OTEL_SERVICE_NAME", "env-svc")
	t.Setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "1")
	p, err := FromEnv()
	if err != nil || p == nil {
		t.Fatalf("FromEnv = %v, %v", p, err)
	}
	h, err := DecodeHCM(hcmTracing(t, `{}`), nil) // no provider: the default's
	if err != nil {
		t.Fatal(err)
	}
	if sp := h.Start(request(nil), time.Now(), nil); sp != nil {
		t.Fatal("Start without any provider returned a span")
	}
	SetDefault(p)
	defer SetDefault(nil)
	sp := h.Start(request(nil), time.Now(), nil)
	if sp == nil {
		t.Fatal("Start with a default provider returned no span")
	}
	sp.End(record(request(nil), time.Now(), 200))
	start := time.Now().Add(-time.Second)
	info := &filters.ConnInfo{Detection: filters.Detection{Ran: true, Protocol: "opaque", Reason: "timeout", Raced: true}}
	Conns{}.OnConn(&streaminfo.Conn{Start: start, Duration: time.Second, Filter: "http_connection_manager", Info: info}) // not tcp_proxy: no span
	Conns{}.OnConn(&streaminfo.Conn{Start: start, Duration: time.Second, Filter: "tcp_proxy", Info: info, Cluster: "db",
		Endpoint: "10.1.2.3:5432", BytesReceived: 10, BytesSent: 20, ConnectFailed: true})
	if err := p.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rcv.WaitFor(t, 10*time.Second, func(s []otlptest.Span) bool { return len(s) >= 2 })
	if len(spans) != 2 {
		t.Fatalf("spans %+v, want the HTTP and the tcp_proxy one", spans)
	}
	got := spans[1]
	if spans[0].Name == "tcp_proxy db" {
		got = spans[0]
	}
	want := map[string]string{"upstream_cluster": "db", "upstream_address": "10.1.2.3:5432", "sift.bytes_received": "10", "sift.bytes_sent": "20",
		"sift.detection.protocol": "opaque", "sift.detection.reason": "timeout", "sift.detection.raced": "true"}
	for k, v := range want {
		if got.Attrs[k] != v {
			t.Errorf("attribute %s = %q, want %q", k, got.Attrs[k], v)
		}
	}
	if got.Service != "env-svc" || got.Name != "tcp_proxy db" || !got.StatusError || got.StartUnix != uint64(start.UnixNano()) {
		t.Errorf("span %+v, want service env-svc, name \"tcp_proxy db\", error status, start at accept", got)
	}
}

func TestFromEnvErrors(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantNil bool
		wantErr string
	}{
		{name: "no endpoint", env: map[string]string{}, wantNil: true},
		{name: "exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}, wantNil: true},
		{name: "http protocol", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
			wantErr: `OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf" is not supported`},
		{name: "zipkin exporter", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "zipkin"},
			wantErr: `OTEL_TRACES_EXPORTER: "zipkin" is not supported`},
		{name: "bad sampler arg", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
			wantErr: `OTEL_TRACES_SAMPLER_ARG: "2": must be a number in [0, 1]`},
		{name: "jaeger sampler", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_SAMPLER": "jaeger_remote"},
			wantErr: `OTEL_TRACES_SAMPLER: "jaeger_remote" is not supported`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
				"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"} {
				t.Setenv(k, tt.env[k])
			}
			p, err := FromEnv()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || (p == nil) != tt.wantNil {
				t.Fatalf("FromEnv = %v, %v; want nil: %v", p, err, tt.wantNil)
			}
			p.Shutdown(context.Background())
		})
	}
}
