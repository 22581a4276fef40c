package server

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/siftmesh/sift/bootstrap"
)

// TestBuildTracing: the bootstrap's tracing is decoded against the static
// clusters at Build, and errors name the field from the bootstrap.
func TestBuildTracing(t *testing.T) {
	t.Parallel()
	const cluster = `
static_resources:
  clusters:
  - {name: otel, type: STATIC, connect_timeout: 1s, load_assignment: {cluster_name: otel, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}}
`
	tests := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{name: "opentelemetry to a static cluster", yaml: `tracing: {http: {name: envoy.tracers.opentelemetry, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, service_name: s, grpc_service: {envoy_grpc: {cluster_name: otel}}}}}`},
		{name: "unknown cluster", yaml: `tracing: {http: {name: envoy.tracers.opentelemetry, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, grpc_service: {envoy_grpc: {cluster_name: nope}}}}}`,
			wantErr: `tracing: tracing.http.typed_config.grpc_service.envoy_grpc.cluster_name: "nope" is not a known cluster`},
		{name: "unsupported field", yaml: `tracing: {http: {name: envoy.tracers.opentelemetry, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, grpc_service: {envoy_grpc: {cluster_name: otel}}, sampler: {name: s}}}}`,
			wantErr: `tracing.http.typed_config.sampler: not supported by Sift`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := bootstrap.Parse([]byte(tt.yaml + "\n" + cluster))
			if err != nil {
				t.Fatal(err)
			}
			if err := bootstrap.Validate(b); err != nil {
				t.Fatal(err)
			}
			s, err := Build(b, Options{Logger: slog.New(slog.DiscardHandler)})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.tracer == nil {
				t.Error("no tracer built")
			}
			s.Close()
		})
	}
}
