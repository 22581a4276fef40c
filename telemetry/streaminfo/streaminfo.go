// Package streaminfo holds what Sift knows about a proxied connection or
// request once it is done (Envoy's StreamInfo): the one record that metrics,
// access logs and tracing all read, so that each network filter fills one
// struct and every consumer sees the same facts.
//
// Records are filled by the filter that served the stream, then handed to
// hooks on the stream's goroutine; they are not reused afterwards, so a hook
// may keep one. Hooks must not block.
package streaminfo

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/filters"
)

// Conn is one TCP connection served by a network filter: tcp_proxy, or the
// HTTP connection manager (Filter "http_connection_manager": no cluster or
// endpoint, since each request has its own; bytes include HTTP framing).
type Conn struct {
	// Start is when the listener accepted the connection; Duration runs to
	// when both directions had ended.
	Start    time.Time
	Duration time.Duration
	// Filter names the network filter ("tcp_proxy", "opaque_transport"), or
	// is "listener" for a connection the listener closed itself, and
	// StatPrefix its stat_prefix.
	Filter, StatPrefix string
	// Info is the downstream connection's facts: addresses, detection, TLS
	// identities. Read-only.
	Info *filters.ConnInfo

	Cluster  string // "" when no cluster was involved
	Endpoint string // "ip:port" of the upstream, "" when none was reached
	// ConnectFailed is set when no upstream connection could be opened.
	ConnectFailed bool
	// NoChain is set on a listener's record (Filter "listener") of a
	// connection no filter chain matched; a listener record without it is
	// one the listener filters closed.
	NoChain bool

	// BytesReceived came from the downstream (and went upstream, peeked
	// bytes included); BytesSent went to the downstream.
	BytesReceived, BytesSent int64
	// Err is why the connection ended, nil for an orderly end on both sides.
	Err error
}

// Request is one HTTP request served by the HTTP connection manager.
// Durations are from Start.
type Request struct {
	Start time.Time
	// Duration is until the response was complete (or the request failed).
	Duration time.Duration
	// UpstreamHeaders is until the upstream's response headers arrived
	// (0 when none did).
	UpstreamHeaders time.Duration

	Protocol  string // downstream: "HTTP/1.1", "HTTP/2.0", ...
	Method    string
	Authority string
	Path      string
	RequestID string // x-request-id sent upstream ("" when not generated)

	// TLS is true when the downstream connection is TLS (a transport
	// socket); ClientID and ServerID are then the peer's and the proxy's
	// identities (SPIFFE IDs in a mesh), for the telemetry labels tls,
	// client_id and server_id.
	TLS                bool
	ClientID, ServerID string
	// UpstreamTLS is true when the connection that served the last attempt
	// was TLS (a cluster transport socket); UpstreamID is then the
	// upstream's identity from its certificate — on an outbound request in
	// a mesh, the destination's SPIFFE ID (Linkerd's outbound server_id).
	UpstreamTLS bool
	UpstreamID  string

	Route       string // route name ("" for unnamed routes)
	VirtualHost string
	Cluster     string
	Endpoint    string // "ip:port" of the last attempt
	Attempts    int    // upstream attempts (1 + retries)

	Status int // the status sent downstream; 499 when the client went away first
	// Error is the local reply's reason (x-sift-error), "" when the
	// upstream answered.
	Error string

	BytesReceived int64 // request body bytes read from the client
	BytesSent     int64 // response body bytes written to the client

	// GRPCStatus is the response's grpc-status (trailers, or the headers of
	// a trailers-only response) for gRPC requests, "" otherwise.
	GRPCStatus string
	// Info is the downstream connection's facts (addresses, direction,
	// detection). Read-only; nil when the request did not come through a
	// listener (tests serving an HCM directly).
	Info *filters.ConnInfo
	// Header is the request's header as received from the client
	// (read-only; nothing writes it once the record is reported).
	Header http.Header
	// ResponseHeader is the response's header as sent to the client, nil
	// when none was written. Read it only during the hook call, and copy
	// what you keep: the HTTP/2 server may still edit the map (undeclared
	// trailers) after the handler has returned.
	ResponseHeader http.Header
}

// ConnHook receives a Conn once the connection has ended, on whichever
// goroutine ended it (for a detached tcp_proxy connection, possibly a timer's
// or one the reactor started: see filters.Downstream.Detach).
type ConnHook interface {
	OnConn(c *Conn)
}

// ConnStartHook is implemented by ConnHooks that also want to know when a
// connection starts being served (open-connection gauges). OnConnStart is
// called on the connection's goroutine once per connection that later
// reaches OnConn: by the HTTP connection manager before any upstream is
// opened, by tcp_proxy once its upstream is connected or given up on (so
// that ConnInfo.UpstreamTLS and UpstreamIdentity are set). info is read-only
// and must not be kept past OnConn.
type ConnStartHook interface {
	OnConnStart(info *filters.ConnInfo)
}

// DetectionHook is implemented by ConnHooks that want every accepted
// connection's detection outcome, including connections closed before a
// network filter saw them. The listener calls OnDetection once per
// connection at the end of its pipeline with outcome "dispatched", "no_chain"
// or "closed"; info is read-only and must not be kept.
type DetectionHook interface {
	OnDetection(info *filters.ConnInfo, outcome string)
}

type connHookBox struct {
	h     ConnHook
	start ConnStartHook // nil unless h implements it
	det   DetectionHook // nil unless h implements it
}

var connHook atomic.Pointer[connHookBox]

// SetConnHook installs the process-wide connection hook (metrics); nil
// removes it. Filters call it for every connection from then on.
func SetConnHook(h ConnHook) {
	if h == nil {
		connHook.Store(nil)
		return
	}
	b := &connHookBox{h: h}
	b.start, _ = h.(ConnStartHook)
	b.det, _ = h.(DetectionHook)
	connHook.Store(b)
}

// ReportConnStart tells the hook, if it implements ConnStartHook, that the
// connection described by info is being served by a network filter that
// will report it with ReportConn.
func ReportConnStart(info *filters.ConnInfo) {
	if b := connHook.Load(); b != nil && b.start != nil {
		b.start.OnConnStart(info)
	}
}

// ReportDetection hands a connection's detection outcome to the hook, if it
// implements DetectionHook.
func ReportDetection(info *filters.ConnInfo, outcome string) {
	if b := connHook.Load(); b != nil && b.det != nil {
		b.det.OnDetection(info, outcome)
	}
}

// ReportConn hands c to the process-wide hook, if one is installed.
func ReportConn(c *Conn) {
	if b := connHook.Load(); b != nil {
		b.h.OnConn(c)
	}
}

// HasConnHook reports whether a hook is installed, so that filters can skip
// building records nobody reads.
func HasConnHook() bool { return connHook.Load() != nil }
