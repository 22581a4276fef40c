// Package otlptest is a real OTLP/gRPC trace receiver for tests: the
// collector's TraceService on a grpc.Server bound to 127.0.0.1:0, keeping
// every span it is sent.
package otlptest

import (
	"context"
	"encoding/hex"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
)

// Span is one received span, flattened for comparisons.
type Span struct {
	Service            string
	Name               string
	TraceID, SpanID    string // hex
	ParentSpanID       string // hex, "" for a root
	Kind               tracepb.Span_SpanKind
	Attrs              map[string]string // values in their string form
	StatusError        bool
	StartUnix, EndUnix uint64 // nanoseconds
}

// Receiver collects spans. Safe for concurrent use.
type Receiver struct {
	collectortrace.UnimplementedTraceServiceServer
	Addr string

	mu    sync.Mutex
	spans []Span
	cond  chan struct{} // closed and replaced on every Export
}

// Start serves a Receiver until the test ends.
func Start(t testing.TB) *Receiver {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{Addr: ln.Addr().String(), cond: make(chan struct{})}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, r)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return r
}

// Export implements collectortrace.TraceServiceServer.
func (r *Receiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = value(kv.GetValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{Service: service, Name: s.GetName(), TraceID: hex.EncodeToString(s.GetTraceId()),
					SpanID: hex.EncodeToString(s.GetSpanId()), ParentSpanID: hex.EncodeToString(s.GetParentSpanId()),
					Kind: s.GetKind(), Attrs: map[string]string{}, StatusError: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR,
					StartUnix: s.GetStartTimeUnixNano(), EndUnix: s.GetEndTimeUnixNano()}
				for _, kv := range s.GetAttributes() {
					sp.Attrs[kv.GetKey()] = value(kv.GetValue())
				}
				r.spans = append(r.spans, sp)
			}
		}
	}
	close(r.cond)
	r.cond = make(chan struct{})
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func value(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	}
	return v.String()
}

// Spans returns a copy of the spans received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// WaitFor waits until pred holds for the spans received, or fails the test
// after timeout (a bound for a broken test, not an assertion of speed).
func (r *Receiver) WaitFor(t testing.TB, timeout time.Duration, pred func([]Span) bool) []Span {
	t.Helper()
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		spans, ch := append([]Span(nil), r.spans...), r.cond
		r.mu.Unlock()
		if pred(spans) {
			return spans
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("otlptest: spans received: %+v; the condition never held", spans)
			return nil
		}
	}
}
