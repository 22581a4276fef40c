package tracing

import (
	"context"
	"fmt"
	"net"
	"os"

	tracev3 "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/upstream"
)

// OpenTelemetryName is the tracer's extension name.
const OpenTelemetryName = "envoy.tracers.opentelemetry"

// defaultMaxPathTagLength is Envoy's max_path_tag_length default.
const defaultMaxPathTagLength = 256

// policy lists the tracing fields Sift implements; anything else set is an
// error naming the field.
var policy = pbcheck.Policy{
	"envoy.config.trace.v3.Tracing":      pbcheck.Fields("http"),
	"envoy.config.trace.v3.Tracing.Http": pbcheck.Fields("name, typed_config"),
	"envoy.config.trace.v3.OpenTelemetryConfig": pbcheck.Fields("grpc_service, service_name").
		Ignore("max_cache_size", "the batch processor's queue bounds what is held"),
	"envoy.config.core.v3.GrpcService":           pbcheck.Fields("envoy_grpc, timeout"),
	"envoy.config.core.v3.GrpcService.EnvoyGrpc": pbcheck.Fields("cluster_name"),
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing": pbcheck.Fields(
		"random_sampling, overall_sampling, max_path_tag_length, custom_tags, provider").
		Ignore("verbose", "Sift's spans carry no per-stage events").
		Ignore("spawn_upstream_span", "the proxy's one span is the upstream request's parent"),
	"envoy.type.v3.Percent":                       pbcheck.Fields("value"),
	"envoy.type.tracing.v3.CustomTag":             pbcheck.Fields("tag, literal, environment, request_header"),
	"envoy.type.tracing.v3.CustomTag.Literal":     pbcheck.Fields("value"),
	"envoy.type.tracing.v3.CustomTag.Environment": pbcheck.Fields("name, default_value"),
	"envoy.type.tracing.v3.CustomTag.Header":      pbcheck.Fields("name, default_value"),
}

// DecodeBootstrap builds the provider the bootstrap's tracing names, or
// returns nil when t is nil. Errors name the field by its path
// from the bootstrap. Cluster names are checked against clusters, through which the exporter
// dials (lazily: building never connects).
func DecodeBootstrap(t *tracev3.Tracing, clusters *upstream.Manager) (*Provider, error) {
	if t == nil {
		return nil, nil
	}
	if err := policy.Check(t); err != nil {
		return nil, fmt.Errorf("tracing: tracing.%w", err)
	}
	if t.GetHttp() == nil {
		return nil, nil // an empty tracing: no tracer, as Envoy
	}
	otc, err := decodeHTTPTracer(t.GetHttp(), "tracing.http")
	if err != nil {
		return nil, err
	}
	return buildProvider(otc, clusters, "tracing.http")
}

// decodeHTTPTracer checks a Tracing.Http names the OpenTelemetry tracer and
// unpacks its config; field is the Http's path for errors.
func decodeHTTPTracer(h *tracev3.Tracing_Http, field string) (*tracev3.OpenTelemetryConfig, error) {
	if h.GetTypedConfig() == nil {
		return nil, fmt.Errorf("tracing: %s.typed_config: must be set (only %s is supported)", field, OpenTelemetryName)
	}
	msg, url, err := filters.UnpackConfig(h.GetTypedConfig())
	if err != nil {
		return nil, fmt.Errorf("tracing: %s.typed_config: %w", field, err)
	}
	otc, ok := msg.(*tracev3.OpenTelemetryConfig)
	if !ok {
		return nil, fmt.Errorf("tracing: %s.typed_config: %s is not supported by Sift (only %s, envoy.config.trace.v3.OpenTelemetryConfig)", field, url, OpenTelemetryName)
	}
	if err := policy.Check(otc); err != nil {
		return nil, fmt.Errorf("tracing: %s.typed_config.%w", field, err)
	}
	return otc, nil
}

// buildProvider makes the OTLP/gRPC pipeline of otc, dialling through the
// named cluster of clusters.
func buildProvider(otc *tracev3.OpenTelemetryConfig, clusters *upstream.Manager, field string) (*Provider, error) {
	field += ".typed_config.grpc_service"
	if otc.GetGrpcService() == nil {
		return nil, fmt.Errorf("tracing: %s: must be set (Sift exports OTLP over gRPC)", field)
	}
	name := otc.GetGrpcService().GetEnvoyGrpc().GetClusterName()
	if name == "" {
		return nil, fmt.Errorf("tracing: %s.envoy_grpc.cluster_name: must be set", field)
	}
	if clusters == nil || clusters.Get(name) == nil {
		return nil, fmt.Errorf("tracing: %s.envoy_grpc.cluster_name: %q is not a known cluster", field, name)
	}
	timeout, err := pbcheck.Duration(otc.GetGrpcService().GetTimeout(), field+".timeout", exportTimeout, pbcheck.Positive)
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	conn, err := grpc.NewClient("passthrough:///"+name, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c := clusters.Get(name)
			if c == nil {
				return nil, fmt.Errorf("tracing: cluster %q not found", name)
			}
			return c.Dial(ctx, "h2")
		}))
	if err != nil {
		return nil, fmt.Errorf("tracing: %s: %w", field, err)
	}
	exp, err := newGRPCExporter(conn, timeout)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return newProvider(exp, conn, options{serviceName: otc.GetServiceName()})
}

// FromEnv builds a provider from the standard OpenTelemetry environment
// variables, for a bootstrap that names no tracer: it returns nil unless
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set
// (and OTEL_TRACES_EXPORTER is not "none"). The exporter reads the OTLP
// variables itself (endpoint, headers, timeout, insecure by an http://
// scheme); the resource reads OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES; OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG
// pick the root sampler. Only the grpc protocol is supported.
func FromEnv() (*Provider, error) {
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
		return nil, nil
	}
	switch e := os.Getenv("OTEL_TRACES_EXPORTER"); e {
	case "none":
		return nil, nil
	case "", "otlp":
	default:
		return nil, fmt.Errorf("tracing: OTEL_TRACES_EXPORTER: %q is not supported by Sift (only otlp, none)", e)
	}
	for _, v := range []string{"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		if p := os.Getenv(v); p != "" && p != "grpc" {
			return nil, fmt.Errorf("tracing: %s: %q is not supported by Sift (only grpc)", v, p)
		}
	}
	base, err := envSampler(os.Getenv("OTEL_TRACES_SAMPLER"), os.Getenv("OTEL_TRACES_SAMPLER_ARG"))
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	exp, err := newGRPCExporter(nil, 0)
	if err != nil {
		return nil, err
	}
	return newProvider(exp, nil, options{base: base})
}

// HTTP is an HCM's validated tracing configuration (the HCM's tracing
// field). It is immutable and safe for concurrent use.
type HTTP struct {
	provider *Provider // nil: the process default
	ratio    float64   // random_sampling × overall_sampling, in [0, 1]
	maxPath  int
	literal  []attribute.KeyValue // literal and environment tags
	headers  []headerTag
	prop     propagator
}

type headerTag struct {
	key        attribute.Key
	name, dflt string
}

// DecodeHCM validates an HCM's tracing field; nil when t is nil (the HCM
// does not trace, and passes trace headers through untouched). A provider
// it names is built (shared with HCMs of equal configuration) and stopped by
// Shutdown. Errors name the field by its path from the HCM.
func DecodeHCM(t *hcmv3.HttpConnectionManager_Tracing, clusters *upstream.Manager) (*HTTP, error) {
	if t == nil {
		return nil, nil
	}
	if err := policy.Check(t); err != nil {
		return nil, fmt.Errorf("tracing: tracing.%w", err)
	}
	h := &HTTP{ratio: 1, maxPath: defaultMaxPathTagLength}
	for _, p := range []struct {
		v     *typev3.Percent
		field string
	}{{t.GetRandomSampling(), "random_sampling"}, {t.GetOverallSampling(), "overall_sampling"}} {
		if p.v == nil {
			continue
		}
		if v := p.v.GetValue(); v < 0 || v > 100 {
			return nil, fmt.Errorf("tracing: tracing.%s.value: %v: must be in [0, 100]", p.field, v)
		}
		h.ratio *= p.v.GetValue() / 100
	}
	if m := t.GetMaxPathTagLength(); m != nil {
		h.maxPath = int(m.GetValue())
	}
	for i, ct := range t.GetCustomTags() {
		field := fmt.Sprintf("tracing.custom_tags[%d]", i)
		if ct.GetTag() == "" {
			return nil, fmt.Errorf("tracing: %s.tag: must be set", field)
		}
		key := attribute.Key(ct.GetTag())
		switch {
		case ct.GetLiteral() != nil:
			h.literal = append(h.literal, key.String(ct.GetLiteral().GetValue()))
		case ct.GetEnvironment() != nil:
			v, ok := os.LookupEnv(ct.GetEnvironment().GetName())
			if !ok {
				v = ct.GetEnvironment().GetDefaultValue()
			}
			if v != "" {
				h.literal = append(h.literal, key.String(v))
			}
		case ct.GetRequestHeader() != nil:
			if ct.GetRequestHeader().GetName() == "" {
				return nil, fmt.Errorf("tracing: %s.request_header.name: must be set", field)
			}
			h.headers = append(h.headers, headerTag{key: key, name: ct.GetRequestHeader().GetName(), dflt: ct.GetRequestHeader().GetDefaultValue()})
		default:
			return nil, fmt.Errorf("tracing: %s: one of literal, environment, request_header must be set", field)
		}
	}
	if pv := t.GetProvider(); pv != nil {
		otc, err := decodeHTTPTracer(pv, "tracing.provider")
		if err != nil {
			return nil, err
		}
		if h.provider, err = sharedProvider(otc, clusters); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// sharedProvider returns the provider of otc over clusters, building it on
// first use.
func sharedProvider(otc *tracev3.OpenTelemetryConfig, clusters *upstream.Manager) (*Provider, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(otc)
	if err != nil {
		return nil, fmt.Errorf("tracing: tracing.provider: %w", err)
	}
	key := fmt.Sprintf("%p|%x", clusters, b)
	providersMu.Lock()
	defer providersMu.Unlock()
	if p, ok := providers[key]; ok && !p.closed.Load() {
		return p, nil
	}
	p, err := buildProvider(otc, clusters, "tracing.provider")
	if err != nil {
		return nil, err
	}
	providers[key] = p
	return p, nil
}
