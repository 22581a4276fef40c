package tracing

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// ratioKey carries an HCM's sampling fraction (random_sampling ×
// overall_sampling) from the request to the sampler.
type ratioKey struct{}

// sampler is Envoy's decision for the OpenTelemetry tracer: a request that
// carries a trace context keeps its sampled flag; a new trace is sampled
// with the HCM's fraction (by trace id, so every proxy with the same
// fraction agrees) and then by the provider's root sampler (OTEL_TRACES_SAMPLER).
type sampler struct{ base sdktrace.Sampler }

func (s sampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	if psc.IsValid() {
		d := sdktrace.Drop
		if psc.IsSampled() {
			d = sdktrace.RecordAndSample
		}
		return sdktrace.SamplingResult{Decision: d, Tracestate: psc.TraceState()}
	}
	if r, ok := p.ParentContext.Value(ratioKey{}).(float64); ok && !ratioSampled(p.TraceID, r) {
		return sdktrace.SamplingResult{Decision: sdktrace.Drop}
	}
	return s.base.ShouldSample(p)
}

func (s sampler) Description() string { return "SiftSampler{" + s.base.Description() + "}" }

// ratioSampled is the SDK's TraceIDRatioBased rule: the trace id's low 63
// bits below r × 2^63.
func ratioSampled(id trace.TraceID, r float64) bool {
	if r >= 1 {
		return true
	}
	if r <= 0 {
		return false
	}
	x := binary.BigEndian.Uint64(id[8:16]) >> 1
	return x < uint64(r*(1<<63))
}

func withRatio(ctx context.Context, r float64) context.Context {
	if r >= 1 {
		return ctx
	}
	return context.WithValue(ctx, ratioKey{}, r)
}

// envSampler is the root sampler named by OTEL_TRACES_SAMPLER and
// OTEL_TRACES_SAMPLER_ARG (the OpenTelemetry SDK specification's values;
// the parentbased_ forms equal the plain ones here because a parent's flag
// is always kept). "" means always_on.
func envSampler(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (sdktrace.Sampler, error) {
		r := 1.0
		if arg != "" {
			var err error
			if r, err = strconv.ParseFloat(arg, 64); err != nil || r < 0 || r > 1 {
				return nil, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: %q: must be a number in [0, 1]", arg)
			}
		}
		return sdktrace.TraceIDRatioBased(r), nil
	}
	switch name {
	case "", "always_on", "parentbased_always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off", "parentbased_always_off":
		return sdktrace.NeverSample(), nil
	case "traceidratio", "parentbased_traceidratio":
		return ratio()
	}
	return nil, fmt.Errorf("OTEL_TRACES_SAMPLER: %q is not supported by Sift (supported: always_on, always_off, traceidratio and their parentbased_ forms)", name)
}
