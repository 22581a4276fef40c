// Package metrics turns sift-proxy's stream records into Prometheus metrics
// with Linkerd's names and labels (request_total, response_total,
// response_latency_ms, tcp_*), so that dashboards built for Linkerd's proxy
// work unchanged, plus Sift's own: protocol-detection outcomes, the learned
// server-first table, and per-endpoint balancing state.
//
// A Registry is one process's metrics. It receives records through the hooks
// in telemetry/streaminfo (connections, detection) and filters/httplb
// (requests) — the server installs it — and reads cluster, listener and
// learned-table state only when scraped (Collect), never on the data path.
//
// Cost on the data path: each record costs one sync.Map lookup keyed by a
// small comparable struct (the label set, cached with its resolved
// counters) and a few atomic adds. Label maps are built only the first time
// a label set is seen. Cardinality is bounded: authorities and target
// addresses are capped (Options), the rest comes from configuration (listener
// and cluster names) or from small fixed sets (status codes, gRPC codes,
// errno names, detection reasons).
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/siftmesh/sift/filters/detect/learn"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/upstream"
)

// Defaults for Options' caps.
const (
	DefaultMaxAuthorities = 100
	DefaultMaxTargets     = 1000
)

// LabelOther replaces an authority or target address past its cap.
const LabelOther = "other"

// latencyBuckets are Linkerd's response_latency_ms buckets.
var latencyBuckets = []float64{1, 2, 3, 4, 5, 10, 20, 30, 40, 50, 100, 200, 300, 400, 500,
	1000, 2000, 3000, 4000, 5000, 10000, 20000, 30000, 40000, 50000}

// connDurationBuckets are Linkerd's tcp_connection_duration_ms buckets.
var connDurationBuckets = []float64{1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000}

// detectionBuckets (ms) resolve the fast verdicts (well under a millisecond)
// and the slow ones (the server-first grace period, the detection timeout).
var detectionBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000}

// Options configure a Registry. Every field is optional.
type Options struct {
	// Clusters are walked at scrape time for per-endpoint gauges and
	// Envoy's cluster counters.
	Clusters *upstream.Manager
	// Listeners returns the running listeners (their Stats) at scrape time.
	Listeners func() map[string]*listener.Listener
	// Learned is the server-first destinations table.
	Learned *learn.Table
	// MaxAuthorities and MaxTargets cap the distinct authority and
	// target_addr label values; later values are LabelOther. Zero means the
	// defaults.
	MaxAuthorities, MaxTargets int
	// ProcessCollectors adds the Go runtime and process collectors (off in
	// tests, which may build many registries).
	ProcessCollectors bool
	// Extra collectors are registered as they are (other telemetry's own
	// counters, e.g. tracing's dropped spans).
	Extra []prometheus.Collector
}

// Registry is one sift-proxy's metrics. It implements streaminfo.ConnHook,
// streaminfo.ConnStartHook, streaminfo.DetectionHook and httplb.Hook; all
// methods are safe for concurrent use and never block on I/O.
type Registry struct {
	opts Options
	reg  *prometheus.Registry

	requests, responses                       *prometheus.CounterVec
	latency                                   *prometheus.HistogramVec
	tcpOpen, tcpRead, tcpWrite, tcpClose      *prometheus.CounterVec
	tcpOpenConns                              *prometheus.GaugeVec
	tcpDuration                               *prometheus.HistogramVec
	detections                                *prometheus.CounterVec
	detectionDuration                         *prometheus.HistogramVec
	authorities                               capper[string]
	targets                                   capper[netipAddrPort]
	reqCache, connCache, closeCache, detCache cache
	clusterCounters                           cache // cluster name → *clusterCounters
}

// New returns a Registry with every metric registered.
func New(opts Options) *Registry {
	if opts.MaxAuthorities <= 0 {
		opts.MaxAuthorities = DefaultMaxAuthorities
	}
	if opts.MaxTargets <= 0 {
		opts.MaxTargets = DefaultMaxTargets
	}
	r := &Registry{opts: opts, reg: prometheus.NewRegistry()}
	r.authorities.max = opts.MaxAuthorities
	r.targets.max = opts.MaxTargets

	reqLabels := append(baseLabels[:len(baseLabels):len(baseLabels)], "authority")
	respLabels := append(reqLabels[:len(reqLabels):len(reqLabels)], "status_code", "classification", "grpc_status")
	latLabels := append(reqLabels[:len(reqLabels):len(reqLabels)], "status_code")
	closeLabels := append(tcpLabels[:len(tcpLabels):len(tcpLabels)], "classification", "errno")
	durLabels := append(tcpLabels[:len(tcpLabels):len(tcpLabels)], "classification")

	r.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "request_total",
		Help: "HTTP requests proxied (counted when the request ends)."}, reqLabels)
	r.responses = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "response_total",
		Help: "HTTP responses, by status code, gRPC status and classification (failure: 5xx, a non-OK grpc-status, or no response)."}, respLabels)
	r.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "response_latency_ms",
		Help: "Time from the request's arrival to the end of its response, in milliseconds.", Buckets: latencyBuckets}, latLabels)
	r.tcpOpen = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_open_total",
		Help: "Connections opened (served by tcp_proxy or the HTTP connection manager)."}, tcpLabels)
	r.tcpOpenConns = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tcp_open_connections",
		Help: "Connections open now (tcp_proxy or the HTTP connection manager)."}, tcpLabels)
	r.tcpRead = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_read_bytes_total",
		Help: "Bytes read from the downstream peer (peeked bytes included)."}, tcpLabels)
	r.tcpWrite = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_write_bytes_total",
		Help: "Bytes written to the downstream peer."}, tcpLabels)
	r.tcpClose = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tcp_close_total",
		Help: "Connections closed, by classification and errno (when the error carried one)."}, closeLabels)
	r.tcpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "tcp_connection_duration_ms",
		Help: "Connection lifetime, from accept to close, in milliseconds.", Buckets: connDurationBuckets}, durLabels)
	r.detections = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_detection_total",
		Help: "Accepted connections by protocol-detection outcome: the protocol found, why detection ended (match, no_match, eof, timeout, byte_cap, server_first, learned_server_first, timeout_closed, opaque_port, skipped, disabled, error), whether the server-first race ran, and what the listener did (dispatched, no_chain, closed)."},
		[]string{"listener", "direction", "protocol", "reason", "raced", "outcome"})
	r.detectionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sift_detection_duration_ms",
		Help: "Time from accept to the detection verdict, for connections where detection ran, in milliseconds.", Buckets: detectionBuckets},
		[]string{"listener", "direction", "protocol", "reason"})

	r.reg.MustRegister(r.requests, r.responses, r.latency, r.tcpOpen, r.tcpOpenConns, r.tcpRead, r.tcpWrite,
		r.tcpClose, r.tcpDuration, r.detections, r.detectionDuration, &stateCollector{r})
	r.reg.MustRegister(opts.Extra...)
	if opts.ProcessCollectors {
		r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	return r
}

// Gatherer returns the underlying registry, for scraping and tests.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Handler serves the exposition (Prometheus text, or OpenMetrics when asked).
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

var (
	_ streaminfo.ConnHook      = (*Registry)(nil)
	_ streaminfo.ConnStartHook = (*Registry)(nil)
	_ streaminfo.DetectionHook = (*Registry)(nil)
)

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
