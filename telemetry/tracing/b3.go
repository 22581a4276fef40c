package tracing

import (
	"context"
	"encoding/hex"
	"net/http"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// propagator reads W3C trace context (traceparent, tracestate) and, when a
// request has none, B3 (the single b3 header or the X-B3-* headers); it
// writes W3C only.
type propagator struct{ w3c propagation.TraceContext }

// extract returns ctx with the request's remote span context, if any.
func (p propagator) extract(ctx context.Context, h http.Header) context.Context {
	if _, ok := h["Traceparent"]; ok {
		if sc := trace.SpanContextFromContext(p.w3c.Extract(ctx, propagation.HeaderCarrier(h))); sc.IsValid() {
			return trace.ContextWithRemoteSpanContext(ctx, sc)
		}
	}
	if sc, ok := parseB3(h); ok {
		return trace.ContextWithRemoteSpanContext(ctx, sc)
	}
	return ctx
}

func (p propagator) inject(ctx context.Context, h http.Header) {
	p.w3c.Inject(ctx, propagation.HeaderCarrier(h))
}

// parseB3 reads B3 propagation (openzipkin/b3-propagation): the single
// header "b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]" or the
// multi headers X-B3-TraceId, X-B3-SpanId, X-B3-Sampled, X-B3-Flags. A
// 64-bit trace id is left-padded with zeros. A sampling-only b3 header
// ("0", "1", "d") carries no context: ok is false.
func parseB3(h http.Header) (sc trace.SpanContext, ok bool) {
	var tid, sid, sampled, flags string
	if v := h.Get("B3"); v != "" {
		parts := strings.Split(v, "-")
		if len(parts) < 2 || len(parts) > 4 {
			return sc, false
		}
		tid, sid = parts[0], parts[1]
		if len(parts) > 2 {
			sampled = parts[2]
		}
	} else {
		tid, sid = h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid")
		sampled, flags = h.Get("X-B3-Sampled"), h.Get("X-B3-Flags")
	}
	var cfg trace.SpanContextConfig
	switch len(tid) {
	case 16:
		tid = "0000000000000000" + tid
	case 32:
	default:
		return sc, false
	}
	if len(sid) != 16 {
		return sc, false
	}
	if _, err := hex.Decode(cfg.TraceID[:], []byte(tid)); err != nil {
		return sc, false
	}
	if _, err := hex.Decode(cfg.SpanID[:], []byte(sid)); err != nil {
		return sc, false
	}
	switch {
	case sampled == "1" || sampled == "d" || strings.EqualFold(sampled, "true") || flags == "1" ||
		sampled == "": // deferred: Sift has no later decider, so it samples
		cfg.TraceFlags = trace.FlagsSampled
	case sampled == "0" || strings.EqualFold(sampled, "false"):
	default:
		return sc, false
	}
	cfg.Remote = true
	sc = trace.NewSpanContext(cfg)
	return sc, sc.IsValid()
}
