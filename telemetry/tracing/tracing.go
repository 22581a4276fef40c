// Package tracing is Sift's OpenTelemetry tracing: a span per HTTP request
// served by the HTTP connection manager (started before the upstream call,
// so that the traceparent sent upstream names it) and a span per TCP
// connection served by tcp_proxy (from its streaminfo.Conn record), exported
// over OTLP/gRPC by the OpenTelemetry Go SDK.
//
// # Configuration
//
// A Provider is one exporter with its resource (service.name): built from
// Envoy's envoy.tracers.opentelemetry config (OpenTelemetryConfig, OTLP/gRPC
// to a cluster) named by the bootstrap's tracing.http or an HCM's
// tracing.provider, or from the standard OTEL_* environment variables when
// the bootstrap names no tracer (FromEnv). The server installs the
// bootstrap's (or the environment's) Provider as the process default
// (SetDefault); an HCM with a tracing field traces with its own provider, or
// with the default.
//
// # Exporter trouble
//
// Spans go through the SDK's batch span processor behind a bounded queue
// (QueueSize spans): ending a span never blocks. A span that finds the
// queue full is dropped, and so are the spans of a batch the collector did
// not take; both are counted (Dropped). Shutdown flushes what is queued,
// bounded by its context.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
)

// Queue and batch sizes of a Provider's batch span processor.
const (
	QueueSize      = 4096
	batchSize      = 512
	batchTimeout   = time.Second
	exportTimeout  = 5 * time.Second
	instrumentName = "github.com/siftmesh/sift"
)

// Provider is a configured span pipeline: tracer, sampler, bounded queue,
// OTLP exporter. It is safe for concurrent use. Shutdown flushes and stops
// it; spans ended afterwards are dropped by the SDK.
type Provider struct {
	tp     *sdktrace.TracerProvider
	tracer trace.Tracer
	conn   *grpc.ClientConn // owned; nil when the exporter dialled itself
	// pending counts spans handed to the batch processor and not yet
	// through an export, to drop (and count) before its queue is full.
	pending atomic.Int64
	closed  atomic.Bool
}

var (
	droppedQueue  atomic.Uint64
	droppedExport atomic.Uint64
)

// Dropped returns how many sampled spans were lost in this process: queueFull
// found the queue full, export were in batches the collector did not take.
func Dropped() (queueFull, export uint64) { return droppedQueue.Load(), droppedExport.Load() }

var errorsToDebug sync.Once

// Collector returns the Prometheus counter of dropped spans,
// sift_tracing_spans_dropped_total{reason="queue_full"|"export_failed"},
// read from Dropped at scrape time.
func Collector() prometheus.Collector { return droppedCollector{} }

var droppedDesc = prometheus.NewDesc("sift_tracing_spans_dropped_total",
	"Sampled spans lost: the export queue was full, or the collector did not take their batch.", []string{"reason"}, nil)

type droppedCollector struct{}

func (droppedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- droppedDesc }

func (droppedCollector) Collect(ch chan<- prometheus.Metric) {
	q, e := Dropped()
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(q), "queue_full")
	ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(e), "export_failed")
}

// options are what newProvider needs besides the exporter.
type options struct {
	serviceName string
	base        sdktrace.Sampler // root sampler; nil: always on
}

// newProvider wraps exp in the bounded pipeline. conn, if not nil, is
// closed by Shutdown.
func newProvider(exp sdktrace.SpanExporter, conn *grpc.ClientConn, o options) (*Provider, error) {
	attrs := []attribute.KeyValue{semconv.TelemetrySDKLanguageGo}
	if o.serviceName != "" {
		attrs = append(attrs, semconv.ServiceName(o.serviceName))
	}
	// Default reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; an
	// explicit service_name wins.
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attrs...))
	if err != nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	errorsToDebug.Do(func() {
		// The SDK reports export failures to a global handler that prints
		// them; they are counted here (Dropped) and logged at debug.
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { slog.Debug("tracing: otel sdk", "err", err) }))
	})
	p := &Provider{conn: conn}
	bsp := sdktrace.NewBatchSpanProcessor(&countingExporter{SpanExporter: exp, p: p},
		sdktrace.WithMaxQueueSize(QueueSize), sdktrace.WithMaxExportBatchSize(batchSize),
		sdktrace.WithBatchTimeout(batchTimeout), sdktrace.WithExportTimeout(exportTimeout))
	base := o.base
	if base == nil {
		base = sdktrace.AlwaysSample()
	}
	p.tp = sdktrace.NewTracerProvider(sdktrace.WithResource(res), sdktrace.WithSampler(sampler{base: base}),
		sdktrace.WithSpanProcessor(&gate{SpanProcessor: bsp, p: p}))
	p.tracer = p.tp.Tracer(instrumentName)
	return p, nil
}

// Shutdown flushes queued spans and stops the exporter; ctx bounds the wait
// (a dead collector makes it wait until ctx ends). Later calls do nothing.
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil || !p.closed.CompareAndSwap(false, true) {
		return nil
	}
	err := p.tp.Shutdown(ctx)
	if p.conn != nil {
		p.conn.Close()
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		slog.Debug("tracing: shutdown: spans left unexported", "err", err)
		return nil
	}
	return err
}

// ForceFlush exports what is queued, waiting at most until ctx ends.
func (p *Provider) ForceFlush(ctx context.Context) error { return p.tp.ForceFlush(ctx) }

// gate drops (and counts) sampled spans before the batch processor's queue
// is full, so that every drop is counted; the processor itself never blocks.
type gate struct {
	sdktrace.SpanProcessor
	p *Provider
}

func (g *gate) OnEnd(s sdktrace.ReadOnlySpan) {
	if !s.SpanContext().IsSampled() {
		return
	}
	if g.p.pending.Add(1) > QueueSize {
		g.p.pending.Add(-1)
		if n := droppedQueue.Add(1); n&(n-1) == 0 { // log at powers of two
			slog.Debug("tracing: span queue full: spans dropped", "total", n)
		}
		return
	}
	g.SpanProcessor.OnEnd(s)
}

// countingExporter counts the spans of failed exports and releases the
// gate's places.
type countingExporter struct {
	sdktrace.SpanExporter
	p *Provider
}

func (e *countingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	e.p.pending.Add(-int64(len(spans)))
	if err != nil {
		droppedExport.Add(uint64(len(spans)))
		slog.Debug("tracing: export failed: spans dropped", "spans", len(spans), "err", err)
	}
	return err
}

// newGRPCExporter is an OTLP/gRPC exporter over conn; retries are bounded
// so that a dead collector holds a batch for at most a few seconds.
func newGRPCExporter(conn *grpc.ClientConn, timeout time.Duration) (*otlptrace.Exporter, error) {
	opts := []otlptracegrpc.Option{
		otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: true, InitialInterval: 100 * time.Millisecond,
			MaxInterval: time.Second, MaxElapsedTime: 3 * time.Second}),
	}
	if conn != nil {
		opts = append(opts, otlptracegrpc.WithGRPCConn(conn))
	}
	if timeout > 0 {
		opts = append(opts, otlptracegrpc.WithTimeout(timeout))
	}
	// New does not connect: it cannot block.
	exp, err := otlptracegrpc.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("tracing: otlp exporter: %w", err)
	}
	return exp, nil
}

// The process default provider: the bootstrap's tracer or the environment's.
var defaultProvider atomic.Pointer[Provider]

// SetDefault installs the process's default provider (nil: none). HCMs whose
// tracing names no provider, and tcp_proxy's connection spans, use it from
// then on. The caller keeps ownership (Shutdown).
func SetDefault(p *Provider) { defaultProvider.Store(p) }

// Default returns the process's default provider, or nil.
func Default() *Provider { return defaultProvider.Load() }

// providers are the HCM-level providers, shared by HCMs with equal
// configuration (across LDS updates) and stopped by Shutdown.
var (
	providersMu sync.Mutex
	providers   = map[string]*Provider{}
)

// Shutdown flushes and stops every HCM-level provider (not the default: its
// owner stops it), bounded by ctx. Call it after the connections have
// drained.
func Shutdown(ctx context.Context) {
	providersMu.Lock()
	ps := providers
	providers = map[string]*Provider{}
	providersMu.Unlock()
	for _, p := range ps {
		p.Shutdown(ctx)
	}
}
