package httplb

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/httplb/route"
	"github.com/siftmesh/sift/telemetry/tracing"
)

// Sift's error header on local replies: the reason, in the words of Envoy's
// response flags (x-sift-error: no_healthy_upstream).
const errorHeader = "X-Sift-Error"

// Reasons for local replies (errorHeader values and Record.Error).
const (
	reasonNoRoute       = "route_not_found"
	reasonNoCluster     = "cluster_not_found"
	reasonNoHealthy     = "no_healthy_upstream"
	reasonOverflow      = "upstream_overflow"
	reasonConnect       = "upstream_connect_failure"
	reasonReset         = "upstream_reset"
	reasonTimeout       = "upstream_request_timeout"
	reasonStreamIdle    = "stream_idle_timeout"
	reasonRequestTO     = "request_timeout"
	reasonUpgrade       = "upgrade_failed"
	reasonHTTP10        = "http1.0_not_allowed"
	reasonNoRouteConfig = "no_route_configuration"
	reasonCancelled     = "downstream_cancelled"
	reasonHeaders       = "too_many_headers"
)

// reqState is one request's routing state, carried in its context from the
// handler to the router (RoundTrip) and the proxy hooks.
type reqState struct {
	table        *route.Table
	route        *route.Route
	pool         *clusterPool
	rec          *Record
	upgrade      string // lower-case upgrade type, or ""
	downstreamH2 bool
	// origHTTP1: the request arrived over HTTP/2 from a peer proxy that
	// upgraded it from HTTP/1 (l5d-orig-proto); it counts as HTTP/1 for
	// the upstream protocol.
	origHTTP1  bool
	external   bool          // the client is not on an internal address
	tls        bool          // the downstream connection is TLS
	span       *tracing.Span // nil when the request is not traced
	idleFired  atomic.Bool
	reqTOFired atomic.Bool
	timer      streamTimer   // the route and stream idle timeouts
	abort      upstreamAbort // the upstream exchange's, when the context ends
}

// origProtoHeader is Linkerd's l5d-orig-proto header (canonical form): on a
// request between two proxies over HTTP/2, the protocol the client spoke.
const origProtoHeader = "L5d-Orig-Proto"

type stateKey struct{}

func stateOf(ctx context.Context) *reqState { return ctx.Value(stateKey{}).(*reqState) }

// stateContext is context.WithValue(ctx, stateKey{}, st) that can live
// in the request's own allocation (request.ctx).
type stateContext struct {
	context.Context
	st *reqState
}

func (c *stateContext) Value(key any) any {
	switch key {
	case stateKey{}:
		return c.st
	case abortKey{}:
		return &c.st.abort
	}
	return c.Context.Value(key)
}

// reverseProxy forwards routed requests: httputil.ReverseProxy with the
// router as its Transport.
type reverseProxy struct {
	h  *HCM
	rp *httputil.ReverseProxy
}

func newReverseProxy(h *HCM) *reverseProxy {
	p := &reverseProxy{h: h}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewrite,
		Transport:      p,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.errorHandler,
		ErrorLog:       log.New(debugWriter{h}, "", 0),
		// Streamed responses (unknown length: gRPC, chunked; and
		// text/event-stream) flush after every write: ReverseProxy forces
		// that whatever FlushInterval says. A response of known length is
		// flushed at most knownLengthFlushDelay after bytes are written, so
		// a body that is already complete goes out with its headers in one
		// write (FlushInterval -1 flushed the headers from a timer goroutine
		// and then the body: two writes per response).
		FlushInterval: knownLengthFlushDelay,
		// ReverseProxy otherwise allocates a 32 KiB copy buffer per request.
		BufferPool: copyBuffers{},
	}
	return p
}

// knownLengthFlushDelay bounds how long bytes of a response of known length
// may wait in the downstream write buffer (see newReverseProxy).
const knownLengthFlushDelay = time.Millisecond

// copyBufferSize is ReverseProxy's own copy buffer size.
const copyBufferSize = 32 << 10

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// copyBuffers is a httputil.BufferPool over a sync.Pool. Get returns a
// buffer of copyBufferSize bytes; Put takes back only such buffers.
type copyBuffers struct{}

func (copyBuffers) Get() []byte { return *copyBufferPool.Get().(*[]byte) }

func (copyBuffers) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	b = b[:copyBufferSize]
	copyBufferPool.Put(&b)
}

type debugWriter struct{ h *HCM }

func (w debugWriter) Write(b []byte) (int, error) {
	w.h.log.Debug(strings.TrimSpace(string(b)))
	return len(b), nil
}

// rewrite applies the route to the outbound request: path and host
// rewrites, forwarding headers, request id, header edits.
func (p *reverseProxy) rewrite(pr *httputil.ProxyRequest) { p.rewriteRequest(pr.In, pr.Out) }

// rewriteRequest is rewrite for the outbound request out of in, whose
// client forwarding headers were removed (forward, ReverseProxy).
func (p *reverseProxy) rewriteRequest(in, out *http.Request) {
	st := stateOf(out.Context())
	c := p.h.cfg
	out.URL.Scheme = "http"
	out.URL.Host = "upstream" // the router dials the endpoint it picks
	if uri := st.route.RewritePath(in.URL.RequestURI()); uri != in.URL.RequestURI() {
		if u, err := url.ParseRequestURI(uri); err == nil {
			out.URL.Path, out.URL.RawPath, out.URL.RawQuery = u.Path, u.RawPath, u.RawQuery
		}
	}
	if st.route.HostRewrite != "" {
		out.Host = st.route.HostRewrite
	}
	// x-forwarded-for: Envoy appends the peer only with use_remote_address.
	if xff := in.Header.Values("X-Forwarded-For"); len(xff) > 0 {
		out.Header["X-Forwarded-For"] = xff
	}
	if c.useRemoteAddress && !c.skipXFFAppend {
		if ip, _, err := net.SplitHostPort(in.RemoteAddr); err == nil {
			prior := strings.Join(out.Header.Values("X-Forwarded-For"), ", ")
			if prior != "" {
				ip = prior + ", " + ip
			}
			out.Header.Set("X-Forwarded-For", ip)
		}
	}
	if proto := in.Header.Get("X-Forwarded-Proto"); proto != "" && !c.useRemoteAddress {
		out.Header.Set("X-Forwarded-Proto", proto)
	} else if st.tls {
		out.Header.Set("X-Forwarded-Proto", "https") // as Envoy, for a TLS downstream
	} else {
		out.Header.Set("X-Forwarded-Proto", "http")
	}
	if h := in.Header.Values("X-Forwarded-Host"); len(h) > 0 {
		out.Header["X-Forwarded-Host"] = h
	}
	if c.via != "" {
		out.Header.Add("Via", c.via)
	}
	if st.external {
		for _, name := range st.table.InternalOnly {
			out.Header.Del(name)
		}
	}
	out.Header.Set("X-Request-Id", st.rec.RequestID)
	if st.rec.RequestID == "" {
		out.Header.Del("X-Request-Id")
	}
	if _, ok := in.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = nil // no Go default
	}
	if st.span != nil {
		st.span.Inject(out.Header)
	}
	st.table.ApplyRequest(st.route, out.Header)
}

func (p *reverseProxy) modifyResponse(resp *http.Response) error {
	st := stateOf(resp.Request.Context())
	st.table.ApplyResponse(st.route, resp.Header)
	p.h.serverHeader(resp.Header)
	if p.h.cfg.alwaysSetIDResponse && st.rec.RequestID != "" {
		resp.Header.Set("X-Request-Id", st.rec.RequestID)
	}
	return nil
}

func (p *reverseProxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	st := stateOf(r.Context())
	var ue *upstreamError
	switch {
	case st.idleFired.Load():
		p.h.localReply(w, r, st.rec, http.StatusRequestTimeout, reasonStreamIdle, "stream timeout")
	case st.reqTOFired.Load():
		p.h.localReply(w, r, st.rec, http.StatusRequestTimeout, reasonRequestTO, "request timeout")
	case err == errNoHealthy:
		p.h.localReply(w, r, st.rec, http.StatusServiceUnavailable, reasonNoHealthy, "no healthy upstream")
	case err == errOverflow:
		p.h.localReply(w, r, st.rec, http.StatusServiceUnavailable, reasonOverflow, "upstream overflow")
	case asUpstream(err, &ue) && ue.class == failConnect:
		p.h.localReply(w, r, st.rec, http.StatusBadGateway, reasonConnect,
			"upstream connect error or disconnect/reset before headers. reset reason: connection failure")
	case asUpstream(err, &ue) && (ue.class == failRouteTimeout || ue.class == failPerTryTimeout):
		p.h.localReply(w, r, st.rec, http.StatusGatewayTimeout, reasonTimeout, "upstream request timeout")
	case asUpstream(err, &ue) && ue.class == failCancelled:
		st.rec.Error = reasonCancelled
		st.rec.Status = 499 // nginx's "client closed request", for the record only
	default:
		p.h.localReply(w, r, st.rec, http.StatusBadGateway, reasonReset,
			"upstream connect error or disconnect/reset before headers. reset reason: connection termination")
	}
	p.h.log.Debug("upstream request failed", "route", st.rec.Route, "cluster", st.rec.Cluster, "endpoint", st.rec.Endpoint, "err", err)
}

func asUpstream(err error, ue **upstreamError) bool {
	e, ok := err.(*upstreamError)
	*ue = e
	return ok
}

// serverHeader applies server_name and server_header_transformation.
func (h *HCM) serverHeader(hd http.Header) {
	switch h.cfg.serverTransform {
	case 0: // OVERWRITE
		hd.Set("Server", h.cfg.serverName)
	case 1: // APPEND_IF_ABSENT
		if hd.Get("Server") == "" {
			hd.Set("Server", h.cfg.serverName)
		}
	}
}

// localReply answers the request from the proxy: status with the reason in
// x-sift-error and body as text; for gRPC requests, HTTP 200 with
// grpc-status and grpc-message (a trailers-only response), as Envoy does.
func (h *HCM) localReply(w http.ResponseWriter, r *http.Request, rec *Record, status int, reason, body string) {
	rec.Error = reason
	hd := w.Header()
	hd.Set(errorHeader, reason)
	h.serverHeader(hd)
	if rec.RequestID != "" && h.cfg.alwaysSetIDResponse {
		hd.Set("X-Request-Id", rec.RequestID)
	}
	if isGRPC(r) {
		hd.Set("Content-Type", "application/grpc")
		hd.Set("Grpc-Status", strconv.Itoa(grpcCode(status, reason)))
		hd.Set("Grpc-Message", url.PathEscape(body))
		w.WriteHeader(http.StatusOK)
		return
	}
	if r.ProtoMajor == 1 && (reason == reasonHTTP10 || reason == reasonUpgrade) {
		hd.Set("Connection", "close")
	}
	hd.Set("Content-Type", "text/plain")
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// grpcCode maps a local reply to a gRPC status: Envoy's HTTP-to-gRPC
// mapping, except that a timeout is DEADLINE_EXCEEDED.
func grpcCode(status int, reason string) int {
	if reason == reasonTimeout {
		return 4 // DEADLINE_EXCEEDED
	}
	switch status {
	case 400:
		return 13 // INTERNAL
	case 401:
		return 16 // UNAUTHENTICATED
	case 403:
		return 7 // PERMISSION_DENIED
	case 404:
		return 12 // UNIMPLEMENTED
	case 429, 502, 503, 504:
		return 14 // UNAVAILABLE
	}
	return 2 // UNKNOWN
}

// responseGRPCStatus returns the grpc-status a handler left in its response
// header map: a trailer (declared, or with http.TrailerPrefix) or a
// trailers-only response's header.
func responseGRPCStatus(h http.Header) string {
	if v := h.Get("Grpc-Status"); v != "" {
		return v
	}
	return h.Get(http.TrailerPrefix + "Grpc-Status")
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// connState is what requests of one downstream connection share.
type connState struct {
	info     *filters.ConnInfo // nil when served without a listener
	remote   netip.AddrPort
	external bool
	h2       bool
	// tls, peer and local: the downstream transport socket's outcome.
	tls         bool
	peer, local string
	// current: on the fast path, the request being served's upstream
	// abort, which the connection's end fires (upstreamAbort); nil on
	// other paths.
	current *atomic.Pointer[upstreamAbort]
}

// request is one request's bookkeeping, in one allocation: its record
// (access logs may keep it after the request: never reused), the writer and
// body that count for it, and its routing state (set once it is routed).
type request struct {
	rec  Record
	rw   recordingWriter
	body countingBody
	st   reqState
	ctx  stateContext // carries st to the router and the proxy hooks
}

// serveHTTP handles one request on a downstream connection.
func (h *HCM) serveHTTP(cs *connState, w http.ResponseWriter, r *http.Request) {
	q := &request{rec: Record{Start: time.Now(), Method: r.Method, Authority: r.Host, Path: r.URL.RequestURI(), Protocol: r.Proto,
		Info: cs.info, TLS: cs.tls, ClientID: cs.peer, ServerID: cs.local, Header: r.Header}}
	rec, rw, body := &q.rec, &q.rw, &q.body
	rw.ResponseWriter, body.ReadCloser = w, r.Body
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = body
	}
	// The span starts before routing, so that local replies have one too
	// and the upstream request's traceparent names it (rewrite).
	var span *tracing.Span
	if h.tracing != nil {
		span = h.tracing.Start(r, rec.Start, cs.info)
	}
	defer func() {
		rec.Duration = time.Since(rec.Start)
		if rec.Status == 0 {
			rec.Status = int(rw.status.Load())
		}
		rec.BytesSent, rec.BytesReceived = rw.bytes.Load(), body.n.Load()
		if isGRPC(r) {
			rec.GRPCStatus = responseGRPCStatus(rw.Header())
		}
		if rec.Status != 0 {
			rec.ResponseHeader = rw.Header()
		}
		h.accessLogs.LogRequest(rec)
		if span != nil {
			span.End(rec)
		}
		if hk := currentHook(); hk != nil {
			hk.OnRequest(rec)
		}
	}()
	w = rw

	if r.ProtoMajor == 1 && r.ProtoMinor == 0 && !h.cfg.acceptHTTP10 {
		// Envoy: 426 Upgrade Required unless http_protocol_options.accept_http_10.
		h.localReply(w, r, rec, http.StatusUpgradeRequired, reasonHTTP10, "")
		return
	}
	if limit := h.cfg.maxHeadersCount; limit > 0 {
		n := 0
		for _, vs := range r.Header {
			n += len(vs)
		}
		if n > limit {
			// Envoy: common_http_protocol_options.max_headers_count → 431.
			h.localReply(w, r, rec, http.StatusRequestHeaderFieldsTooLarge, reasonHeaders, "")
			return
		}
	}
	// l5d-orig-proto: a peer proxy upgraded this HTTP/1 request to HTTP/2
	// between the proxies (docs/mesh-transport.md); it goes on as HTTP/1.1.
	// The header is removed from every request, so that no application
	// sees it and no client can set it for a hop that did not upgrade.
	origHTTP1 := false
	if v, ok := r.Header[origProtoHeader]; ok {
		delete(r.Header, origProtoHeader)
		origHTTP1 = r.ProtoMajor == 2 && len(v) == 1 && strings.HasPrefix(v[0], "HTTP/1")
	}
	// Request id: kept from trusted (internal) clients, else generated.
	rec.RequestID = r.Header.Get("X-Request-Id")
	if h.cfg.generateRequestID && (rec.RequestID == "" || (h.cfg.useRemoteAddress && cs.external && !h.cfg.preserveExternalID)) {
		rec.RequestID = newUUID()
	}
	table := h.routes.Load()
	if table == nil {
		h.localReply(w, r, rec, http.StatusServiceUnavailable, reasonNoRouteConfig, "no route configuration")
		return
	}
	authority := r.Host
	if h.cfg.stripAnyHostPort || h.cfg.stripMatchingPort {
		// strip_matching_host_port compares with the listener's port; the
		// listener is the connection's local address.
		authority = route.StripPort(authority)
	}
	upgrade := upgradeType(r)
	if upgrade == "h2c" {
		// Envoy ignores an h2c upgrade it does not perform (codec HTTP1).
		r.Header.Del("Upgrade")
		r.Header.Del("Http2-Settings")
		upgrade = ""
	}
	rt := table.Select(&route.Request{Method: r.Method, Authority: authority, Path: r.URL.RequestURI(), Header: r.Header, GRPC: isGRPC(r)})
	if rt == nil {
		h.localReply(w, r, rec, http.StatusNotFound, reasonNoRoute, "")
		return
	}
	rec.Route, rec.VirtualHost = rt.Name, rt.VirtualHost.Name
	if rt.Kind == route.ActionDirect {
		table.ApplyResponse(rt, w.Header())
		h.serverHeader(w.Header())
		w.Header().Set("Content-Length", strconv.Itoa(len(rt.DirectBody)))
		if len(rt.DirectBody) > 0 && w.Header().Get("Content-Type") == "" {
			w.Header().Set("Content-Type", "text/plain")
		}
		w.WriteHeader(rt.DirectStatus)
		w.Write(rt.DirectBody)
		return
	}
	if upgrade != "" && !rt.UpgradeAllowed(upgrade, h.cfg.upgrades) {
		h.localReply(w, r, rec, http.StatusForbidden, reasonUpgrade, "")
		return
	}
	name := rt.PickCluster(r.Header, rand.Uint64N)
	rec.Cluster = name
	cluster := h.clusters.Get(name)
	if name == "" || cluster == nil {
		h.localReply(w, r, rec, rt.ClusterNotFoundCode, reasonNoCluster, "")
		return
	}
	st := &q.st
	*st = reqState{table: table, route: rt, pool: poolFor(cluster), rec: rec, upgrade: upgrade, downstreamH2: cs.h2, origHTTP1: origHTTP1, external: cs.external, tls: cs.tls, span: span}
	if upgrade == "connect" {
		if !rt.ConnectTerminate {
			h.localReply(w, r, rec, http.StatusForbidden, reasonUpgrade, "")
			return
		}
		h.tunnel(w, r, st)
		return
	}

	// One context carries the route timeout and the idle and request
	// timeouts, and one timer (st.timer) the first two: the route timeout
	// cancels with cause context.DeadlineExceeded (classify reads it).
	q.ctx = stateContext{Context: r.Context(), st: st}
	ctx, cancelCause := context.WithCancelCause(&q.ctx)
	defer func() {
		cancelCause(nil)
		st.abort.fire()
	}()
	if cs.current != nil {
		// The fast path: the connection's end ends the request too
		// (serveFast), so the upstream pool may use st.abort.
		st.abort.ctx, st.abort.cancel = ctx, cancelCause
		cs.current.Store(&st.abort)
		defer cs.current.Store(nil)
		if r.Context().Err() != nil {
			st.abort.end(context.Cause(r.Context()))
		}
	}
	route := time.Duration(0)
	if upgrade == "" {
		route = h.routeTimeout(rt, r)
	}
	idle := h.cfg.streamIdleTimeout
	if rt.HasIdleTimeout {
		idle = rt.IdleTimeout
	}
	if route > 0 || idle > 0 {
		st.timer.start(st, cancelCause, rec.Start, route, idle)
		defer st.timer.stop()
		if idle > 0 {
			rw.activity, body.activity = &st.timer, &st.timer
		}
	}
	if d := h.cfg.requestTimeout; d > 0 && body.ReadCloser != nil && r.Body == body {
		t := time.AfterFunc(d, func() {
			if !body.eof.Load() && rw.status.Load() == 0 {
				st.reqTOFired.Store(true)
				cancelCause(nil)
				st.abort.fire()
			}
		})
		defer t.Stop()
	}
	if upgrade != "" || r.Header["Expect"] != nil {
		h.proxy.rp.ServeHTTP(w, r.WithContext(ctx))
		return
	}
	h.proxy.forward(w, r, ctx)
}

// routeTimeout is the route's timeout, or for gRPC with
// max_stream_duration.grpc_timeout_header_max the grpc-timeout header's,
// capped — Envoy's rules; max_stream_duration caps either.
func (h *HCM) routeTimeout(rt *route.Route, r *http.Request) time.Duration {
	d := rt.Timeout
	if rt.HasGRPCTimeoutHeaderMax && isGRPC(r) {
		if gt, ok := parseGRPCTimeout(r.Header.Get("Grpc-Timeout")); ok {
			d = gt
			if rt.GRPCTimeoutHeaderMax > 0 && d > rt.GRPCTimeoutHeaderMax {
				d = rt.GRPCTimeoutHeaderMax
			}
			if rt.GRPCTimeoutHeaderOffset > 0 && d > rt.GRPCTimeoutHeaderOffset {
				d -= rt.GRPCTimeoutHeaderOffset
			}
		} else {
			d = rt.GRPCTimeoutHeaderMax
		}
	}
	if m := rt.MaxStreamDuration; m > 0 && (d == 0 || m < d) {
		d = m
	}
	return d
}

// parseGRPCTimeout parses the grpc-timeout header: at most 8 digits and a
// unit (H, M, S, m, u, n), per the gRPC HTTP/2 protocol spec.
func parseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	if n > int64(math.MaxInt64/unit) {
		return math.MaxInt64, true // 99999999H overflows: effectively no deadline
	}
	return time.Duration(n) * unit, true
}

// upgradeType returns the request's upgrade, lower-case: "connect" for
// CONNECT, the Upgrade header's first protocol when Connection lists
// "upgrade", else "".
func upgradeType(r *http.Request) string {
	if r.Method == http.MethodConnect {
		return "connect"
	}
	if r.ProtoMajor != 1 {
		return ""
	}
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				up := r.Header.Get("Upgrade")
				if i := strings.IndexAny(up, ",/ "); i >= 0 {
					up = up[:i]
				}
				return strings.ToLower(strings.TrimSpace(up))
			}
		}
	}
	return ""
}

// newUUID returns a random (version 4) UUID, Envoy's x-request-id format.
func newUUID() string {
	var b [16]byte
	crand.Read(b[:]) // crypto/rand: never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	// 8-4-4-4-12 lower-case hex digits, encoded by hand: this runs per
	// request, and fmt.Sprintf would box five slices.
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}

// activity is told of stream activity (idle timers).
type activity interface{ touch() }

// streamTimer is a request's one timer for the route timeout (a deadline)
// and the stream idle timeout: whichever comes first cancels the request's
// context — the route timeout with cause context.DeadlineExceeded
// (classify), the idle timeout with idleFired set. Activity is a counter
// (touch is one atomic add, no clock read); the timer samples it at least
// every quarter of the idle timeout (quietWatch), so the idle timeout
// fires between 1 and 1.25 idle timeouts after the last activity. It lives
// in the request's reqState (no allocation of its own) and costs one
// runtime timer per request where a timeout context and an idle timer
// cost two; a request shorter than a quarter of both timeouts never sees
// it fire.
type streamTimer struct {
	deadline time.Time  // zero: no route timeout
	idle     quietWatch // timeout 0: no idle timeout; only check uses it
	active   atomic.Uint64
	mu       sync.Mutex // orders t's setting against check's Reset
	t        *time.Timer
	st       *reqState
	cancel   context.CancelCauseFunc
	done     atomic.Bool
}

// start arms the timer at now (the request's start); route and idle are
// the timeouts (0: none), at least one set.
func (s *streamTimer) start(st *reqState, cancel context.CancelCauseFunc, now time.Time, route, idle time.Duration) {
	s.st, s.cancel = st, cancel
	s.idle = quietWatch{timeout: idle, since: now}
	first := route
	if idle > 0 && (route == 0 || s.idle.tick() < route) {
		first = s.idle.tick()
	}
	if route > 0 {
		s.deadline = now.Add(route)
	}
	s.mu.Lock()
	s.t = time.AfterFunc(first, s.check)
	s.mu.Unlock()
}

func (s *streamTimer) touch() { s.active.Add(1) }

func (s *streamTimer) check() {
	if s.done.Load() {
		return
	}
	now := time.Now()
	var next time.Duration
	if !s.deadline.IsZero() {
		if next = s.deadline.Sub(now); next <= 0 {
			s.cancel(context.DeadlineExceeded)
			s.st.abort.fire()
			return
		}
	}
	if s.idle.timeout > 0 {
		expired, wait := s.idle.sample(now, s.active.Load())
		if expired {
			s.st.idleFired.Store(true)
			s.cancel(errStreamIdle)
			s.st.abort.fire()
			return
		}
		if next == 0 || wait < next {
			next = wait
		}
	}
	s.mu.Lock()
	s.t.Reset(next)
	s.mu.Unlock()
}

func (s *streamTimer) stop() { s.done.Store(true); s.t.Stop() }

// quietWatch tells, from samples of an activity count, when the count has
// not moved for a whole timeout, without a clock read per activity: the
// caller samples when sample says (never more than a quarter of the timeout
// apart), and sample reports expiry between 1 and 1.25 timeouts after the
// last change of the count (plus the lateness of the caller's timer). The
// count's first change after the watch began moves since to the sample that
// saw it: since is never earlier than the last activity, and never more
// than one tick later. Not safe for concurrent use (one timer samples).
type quietWatch struct {
	timeout time.Duration
	last    uint64    // the count at the last sample (0 when the watch began)
	since   time.Time // the watch's start, or the sample that saw the count change
}

// tick is the longest wait between samples: a quarter of the timeout.
func (w *quietWatch) tick() time.Duration { return max(w.timeout/4, time.Millisecond) }

// sample takes the count at now: expired when it has not changed for the
// timeout, else next, the wait before the next sample.
func (w *quietWatch) sample(now time.Time, count uint64) (expired bool, next time.Duration) {
	if count != w.last {
		w.last, w.since = count, now
		return false, w.tick()
	}
	left := w.timeout - now.Sub(w.since)
	if left <= 0 {
		return true, 0
	}
	return false, min(left, w.tick())
}

// errStreamIdle is the cause of a request cancelled by its stream idle
// timeout.
var errStreamIdle = errors.New("httplb: stream idle timeout")

// recordingWriter records the status and bytes of a response and reports
// activity. Unwrap lets http.ResponseController reach flushing and
// hijacking (ReverseProxy uses both).
type recordingWriter struct {
	http.ResponseWriter
	status   atomic.Int32
	bytes    atomic.Int64
	activity activity
}

func (w *recordingWriter) WriteHeader(code int) {
	if code >= 200 && w.status.Load() == 0 || code == http.StatusSwitchingProtocols {
		w.status.Store(int32(code))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recordingWriter) Write(b []byte) (int, error) {
	w.status.CompareAndSwap(0, http.StatusOK)
	n, err := w.ResponseWriter.Write(b)
	w.bytes.Add(int64(n))
	if w.activity != nil {
		w.activity.touch()
	}
	return n, err
}

func (w *recordingWriter) Flush() { flush(w.ResponseWriter) }

func (w *recordingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countingBody counts request body bytes and reports activity.
type countingBody struct {
	io.ReadCloser
	n        atomic.Int64
	eof      atomic.Bool
	activity activity
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if err != nil {
		b.eof.Store(true)
	}
	if b.activity != nil {
		b.activity.touch()
	}
	return n, err
}

// isInternal reports whether ip is an internal address (Envoy's default:
// RFC 1918, RFC 4193 and loopback).
func isInternal(ip netip.Addr) bool {
	ip = ip.Unmap()
	return ip.IsPrivate() || ip.IsLoopback()
}
