// Package httplb is Envoy's envoy.filters.network.http_connection_manager
// with its router (envoy.filters.http.router): it serves HTTP/1.0, HTTP/1.1,
// HTTP/2 cleartext (prior knowledge and the h2c upgrade), gRPC, WebSocket
// upgrades and terminated CONNECT on a downstream connection, routes each
// request with a route table (package route), and balances requests — not
// connections — over the endpoints of the chosen cluster, with per-endpoint
// connection pools (package upstream/balancer holds the balancers, shared
// with tcp_proxy: round robin, random, least request, and peak-EWMA, the mesh
// default; here the load they count is requests in flight and the latency
// peak-EWMA observes is the time to response headers).
//
// # Shape
//
// Serving uses the HTTP/1 fast path (fast.go) on plaintext HTTP/1.1
// connections and net/http's server otherwise (HTTP/2 by
// golang.org/x/net/http2's server, which also drains with GOAWAY).
// Requests that ask for no protocol change are forwarded by forward.go;
// upgrades, CONNECT and Expect by net/http/httputil.ReverseProxy, whose
// hooks fit the router — Rewrite applies the route, Transport is the
// router's RoundTripper (balancing, retries, timeouts), ModifyResponse
// edits response headers, ErrorHandler writes Envoy-style local replies.
// Upstream, plaintext HTTP/1.1 goes through h1pool.go, plaintext HTTP/2
// through h2client.go, the rest through net/http's Transport.
//
// See config.go for the configuration Sift accepts field by field.
package httplb

import (
	"fmt"
	"log/slog"
	"sync/atomic"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/httplb/route"
	"github.com/siftmesh/sift/telemetry/accesslog"
	"github.com/siftmesh/sift/telemetry/tracing"
	"github.com/siftmesh/sift/upstream"
)

func init() {
	filters.RegisterNetworkFilter(&hcmv3.HttpConnectionManager{}, func(cfg proto.Message, bc filters.BuildContext) (filters.NetworkFilter, error) {
		return New(cfg.(*hcmv3.HttpConnectionManager), bc)
	})
	filters.RegisterClusterRefs(&hcmv3.HttpConnectionManager{}, func(cfg proto.Message) []filters.ClusterRef {
		var refs []filters.ClusterRef
		for _, r := range route.ClusterRefs(cfg.(*hcmv3.HttpConnectionManager).GetRouteConfig()) {
			refs = append(refs, filters.ClusterRef{Field: "route_config." + r.Field, Cluster: r.Cluster})
		}
		return refs
	})
}

// HCM is a configured HTTP connection manager. It is safe for concurrent
// use; its route table may be swapped (SetRoutes) while it serves.
type HCM struct {
	cfg      *config
	routes   atomic.Pointer[route.Table]
	clusters *upstream.Manager
	log      *slog.Logger
	proxy    *reverseProxy
	// accessLogs are the HCM's access_log loggers, called for every
	// request before the process-wide hook.
	accessLogs accesslog.Loggers
	// tracing is the HCM's tracing field, nil when it has none (no spans;
	// trace headers pass through untouched).
	tracing *tracing.HTTP
}

var _ filters.NetworkFilter = (*HCM)(nil)

// New validates cfg and builds the filter. Errors read "httplb: field: reason".
func New(cfg *hcmv3.HttpConnectionManager, bc filters.BuildContext) (*HCM, error) {
	c, table, err := decode(cfg)
	if err != nil {
		return nil, err
	}
	h := &HCM{cfg: c, clusters: bc.Clusters, log: bc.Logger}
	if h.clusters == nil {
		h.clusters = upstream.NewManager()
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	if h.accessLogs, err = accesslog.Decode(cfg.GetAccessLog(), accesslog.Context{Clusters: h.clusters}); err != nil {
		return nil, fmt.Errorf("httplb: %w", err)
	}
	if h.tracing, err = tracing.DecodeHCM(cfg.GetTracing(), h.clusters); err != nil {
		return nil, fmt.Errorf("httplb: %w", err)
	}
	h.log = h.log.With("filter", "http_connection_manager", "stat_prefix", c.statPrefix)
	hcmPolicy.LogIgnored(h.log, cfg)
	if table != nil {
		h.routes.Store(table)
	}
	h.proxy = newReverseProxy(h)
	return h, nil
}

// RDSName returns the route configuration name the HCM takes from RDS
// (HttpConnectionManager.rds.route_config_name), or "" when its routes are
// inline.
func (h *HCM) RDSName() string { return h.cfg.rdsName }

// SetRoutes swaps in a new route table (an RDS update), atomically: requests
// that already selected a route finish on the old table. Until the first
// SetRoutes an RDS-configured HCM answers 503 "no route configuration".
func (h *HCM) SetRoutes(t *route.Table) { h.routes.Store(t) }

// Routes returns the route table in service, or nil.
func (h *HCM) Routes() *route.Table { return h.routes.Load() }

// Hook receives one Record per request, after the response is complete (or
// failed), on the request's goroutine: it must not block. The Record is not
// reused, so the hook may keep it. Implementations must be safe for
// concurrent use.
type Hook interface {
	OnRequest(rec *Record)
}

type hookBox struct{ h Hook }

var globalHook atomic.Pointer[hookBox]

// SetHook installs the process-wide request hook (metrics, access logs,
// tracing); nil restores the no-op default. Every HCM uses it from its next
// request on.
func SetHook(h Hook) {
	if h == nil {
		globalHook.Store(nil)
		return
	}
	globalHook.Store(&hookBox{h})
}

func currentHook() Hook {
	if b := globalHook.Load(); b != nil {
		return b.h
	}
	return nil
}
