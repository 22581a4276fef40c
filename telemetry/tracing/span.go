package tracing

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// Span is one HTTP request's span, from Start (before the request is
// routed) to End (once its record is complete). A Span is used by the
// request's goroutines only: Inject may run on the proxy's goroutine while
// the handler waits for it; End runs once, last.
type Span struct {
	h    *HTTP
	ctx  context.Context // carries span
	span trace.Span
}

// Start begins the span of request r, received at start, on connection
// info (nil without a listener): its parent is the request's W3C trace
// context, else its B3 headers; without either it starts a trace, sampled
// with the HCM's sampling fraction. It returns nil when no provider is
// configured (the HCM's, or the process default): callers check for nil.
func (h *HTTP) Start(r *http.Request, start time.Time, info *filters.ConnInfo) *Span {
	p := h.provider
	if p == nil {
		if p = Default(); p == nil {
			return nil
		}
	}
	ctx := withRatio(h.prop.extract(context.Background(), r.Header), h.ratio)
	ctx, span := p.tracer.Start(ctx, r.Method, trace.WithTimestamp(start), trace.WithSpanKind(kindOf(info)))
	return &Span{h: h, ctx: ctx, span: span}
}

// Inject writes the span's trace context (traceparent, tracestate) into
// the upstream request's header hd, replacing the client's: the proxy's
// span is the upstream request's parent. An unsampled span is propagated
// with its flag off, so that the whole trace agrees.
func (s *Span) Inject(hd http.Header) {
	hd.Del("B3")
	hd.Del("X-B3-Traceid")
	hd.Del("X-B3-Spanid")
	hd.Del("X-B3-Parentspanid")
	hd.Del("X-B3-Sampled")
	hd.Del("X-B3-Flags")
	s.h.prop.inject(s.ctx, hd)
}

// End sets the span's attributes from the finished request's record (which
// it does not keep) and ends it at rec.Start + rec.Duration. The name is
// "METHOD route" when the route has a name (OpenTelemetry's HTTP server
// span naming, with Envoy's route name standing in for the template).
func (s *Span) End(rec *streaminfo.Request) {
	sp := s.span
	if !sp.IsRecording() {
		sp.End()
		return
	}
	if rec.Route != "" {
		sp.SetName(rec.Method + " " + rec.Route)
	}
	path := rec.Path
	if len(path) > s.h.maxPath {
		path = path[:s.h.maxPath]
	}
	attrs := make([]attribute.KeyValue, 0, 24)
	attrs = append(attrs,
		attribute.String("http.request.method", rec.Method),
		attribute.String("url.path", path),
		attribute.String("network.protocol.version", protoVersion(rec.Protocol)),
		attribute.String("component", "proxy"),
	)
	if host, port, err := net.SplitHostPort(rec.Authority); err == nil {
		attrs = append(attrs, attribute.String("server.address", host))
		if n, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int("server.port", n))
		}
	} else if rec.Authority != "" {
		attrs = append(attrs, attribute.String("server.address", rec.Authority))
	}
	if rec.Status != 0 {
		attrs = append(attrs, attribute.Int("http.response.status_code", rec.Status))
	}
	if rec.Route != "" {
		attrs = append(attrs, attribute.String("http.route", rec.Route))
	}
	if ua := rec.Header.Get("User-Agent"); ua != "" {
		attrs = append(attrs, attribute.String("user_agent.original", ua))
	}
	if rec.RequestID != "" {
		attrs = append(attrs, attribute.String("guid:x-request-id", rec.RequestID))
	}
	if rec.Cluster != "" {
		attrs = append(attrs, attribute.String("upstream_cluster", rec.Cluster))
	}
	if rec.Endpoint != "" {
		attrs = append(attrs, attribute.String("upstream_address", rec.Endpoint))
	}
	if rec.Attempts > 1 {
		attrs = append(attrs, attribute.Int("sift.upstream.attempts", rec.Attempts))
	}
	if rec.GRPCStatus != "" {
		if n, err := strconv.Atoi(rec.GRPCStatus); err == nil {
			attrs = append(attrs, attribute.Int("rpc.grpc.status_code", n))
		}
	}
	if rec.Error != "" {
		attrs = append(attrs, attribute.String("sift.error", rec.Error))
	}
	if rec.TLS {
		attrs = append(attrs, attribute.Bool("sift.tls", true))
		if rec.ClientID != "" {
			attrs = append(attrs, attribute.String("sift.tls.peer_identity", rec.ClientID))
		}
		if rec.ServerID != "" {
			attrs = append(attrs, attribute.String("sift.tls.local_identity", rec.ServerID))
		}
	}
	attrs = append(attrs, s.h.literal...)
	for _, t := range s.h.headers {
		v := rec.Header.Get(t.name)
		if v == "" {
			v = t.dflt
		}
		if v != "" {
			attrs = append(attrs, t.key.String(v))
		}
	}
	attrs = connAttrs(attrs, rec.Info)
	sp.SetAttributes(attrs...)
	if rec.Status >= 500 {
		sp.SetStatus(codes.Error, strconv.Itoa(rec.Status))
	}
	sp.End(trace.WithTimestamp(rec.Start.Add(rec.Duration)))
}

// connAttrs appends the downstream connection's addresses and detection
// outcome.
func connAttrs(attrs []attribute.KeyValue, info *filters.ConnInfo) []attribute.KeyValue {
	if info == nil {
		return attrs
	}
	if info.RemoteAddr.IsValid() {
		attrs = append(attrs, attribute.String("client.address", info.RemoteAddr.Addr().String()),
			attribute.Int("client.port", int(info.RemoteAddr.Port())))
	}
	if info.Listener != "" {
		attrs = append(attrs, attribute.String("sift.listener", info.Listener))
	}
	if d := info.Detection; d.Ran {
		attrs = append(attrs, attribute.String("sift.detection.protocol", d.Protocol),
			attribute.String("sift.detection.reason", d.Reason),
			attribute.Int("sift.detection.bytes", d.Bytes),
			attribute.Float64("sift.detection.duration_ms", float64(d.Duration)/float64(time.Millisecond)))
		if d.Sniffer != "" {
			attrs = append(attrs, attribute.String("sift.detection.sniffer", d.Sniffer))
		}
		attrs = append(attrs, attribute.Bool("sift.detection.raced", d.Raced))
	}
	return attrs
}

// kindOf is SERVER for inbound (and unspecified) listeners, CLIENT for
// outbound ones, as Envoy's traffic_direction decides its span kinds.
func kindOf(info *filters.ConnInfo) trace.SpanKind {
	if info != nil && info.Direction == filters.DirectionOutbound {
		return trace.SpanKindClient
	}
	return trace.SpanKindServer
}

// protoVersion turns "HTTP/1.1" into "1.1", "HTTP/2.0" into "2".
func protoVersion(p string) string {
	if len(p) > 5 && p[:5] == "HTTP/" {
		p = p[5:]
	}
	if p == "2.0" {
		return "2"
	}
	return p
}

// Conns is the connection hook that turns each tcp_proxy connection's
// record into a span of the process default provider (none while there is
// no default). Install it in the process's streaminfo Tee.
type Conns struct{}

// OnConn implements streaminfo.ConnHook: a span from accept to the end of
// both directions, named "tcp_proxy <cluster>", sampled by the provider's
// root sampler.
func (Conns) OnConn(c *streaminfo.Conn) {
	if c.Filter != "tcp_proxy" {
		return
	}
	p := Default()
	if p == nil {
		return
	}
	name := "tcp_proxy"
	if c.Cluster != "" {
		name += " " + c.Cluster
	}
	_, sp := p.tracer.Start(context.Background(), name, trace.WithTimestamp(c.Start), trace.WithSpanKind(kindOf(c.Info)))
	if !sp.IsRecording() {
		sp.End()
		return
	}
	attrs := make([]attribute.KeyValue, 0, 16)
	attrs = append(attrs, attribute.String("component", "proxy"),
		attribute.String("network.transport", "tcp"),
		attribute.Int64("sift.bytes_received", c.BytesReceived),
		attribute.Int64("sift.bytes_sent", c.BytesSent))
	if c.StatPrefix != "" {
		attrs = append(attrs, attribute.String("sift.stat_prefix", c.StatPrefix))
	}
	if c.Cluster != "" {
		attrs = append(attrs, attribute.String("upstream_cluster", c.Cluster))
	}
	if c.Endpoint != "" {
		attrs = append(attrs, attribute.String("upstream_address", c.Endpoint))
	}
	if info := c.Info; info != nil && info.LocalAddr.IsValid() {
		attrs = append(attrs, attribute.String("server.address", info.LocalAddr.Addr().String()),
			attribute.Int("server.port", int(info.LocalAddr.Port())))
	}
	attrs = connAttrs(attrs, c.Info)
	if c.Info != nil && c.Info.TLS && c.Info.PeerIdentity != "" {
		attrs = append(attrs, attribute.String("sift.tls.peer_identity", c.Info.PeerIdentity))
	}
	sp.SetAttributes(attrs...)
	switch {
	case c.ConnectFailed:
		sp.SetStatus(codes.Error, "upstream connect failure")
	case c.Err != nil:
		sp.SetAttributes(attribute.String("sift.error", c.Err.Error()))
	}
	sp.End(trace.WithTimestamp(c.Start.Add(c.Duration)))
}

var _ streaminfo.ConnHook = Conns{}
