package accesslog

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/upstream"
)

type grpcKind uint8

const (
	kindHTTP grpcKind = iota + 1
	kindTCP
)

// Envoy's defaults, and Sift's bounds.
const (
	defaultGRPCFlush   = time.Second
	defaultGRPCBuffer  = 16384
	grpcQueueLen       = 8192
	grpcBackoffBase    = 500 * time.Millisecond
	grpcBackoffMax     = 30 * time.Second
	grpcShutdownBudget = 2 * time.Second
)

var node atomic.Pointer[corev3.Node]

// SetNode sets the node that identifies this proxy to access log services
// (StreamAccessLogsMessage.identifier.node): the bootstrap's node.
func SetNode(n *corev3.Node) { node.Store(n) }

// grpcSink queues entries to a shared gRPC writer; entries are converted to
// protos on the writer's goroutine (records are not reused, so keeping them
// is safe), except the response headers to log, which are copied here: the
// HTTP/2 server may still edit the response header map (trailers) once the
// handler has returned.
type grpcSink struct{ w *grpcWriter }

func (s *grpcSink) log(e *entry) {
	q := queued{entry: *e}
	if len(s.w.respHeaders) > 0 && e.req != nil && e.req.ResponseHeader != nil {
		q.respHeaders = pick(e.req.ResponseHeader.Get, s.w.respHeaders)
	}
	s.w.enqueue(q)
}

// queued is an entry waiting for the gRPC writer.
type queued struct {
	entry
	respHeaders map[string]string // additional_response_headers_to_log, copied
}

// grpcWriters are shared by configuration: loggers of successive listener
// generations with the same config use one stream, as Envoy's logger cache
// does.
var grpcWriters = map[string]*grpcWriter{}

// grpcWriter streams StreamAccessLogsMessages for one configuration.
type grpcWriter struct {
	worker
	clusters    *upstream.Manager
	cluster     string
	logName     string
	kind        grpcKind
	flush       time.Duration
	bufSize     int
	reqHeaders  []string
	respHeaders []string
	q           chan queued
}

func newGRPCSink(c *grpcv3.CommonGrpcAccessLogConfig, kind grpcKind, reqH, respH []string, field string, ctx Context) (sink, error) {
	field += ".common_config"
	if c == nil {
		return nil, fmt.Errorf("%s: must be set", field)
	}
	if c.GetLogName() == "" {
		return nil, fmt.Errorf("%s.log_name: must be set", field)
	}
	if v := c.GetTransportApiVersion(); v != corev3.ApiVersion_V3 && v != corev3.ApiVersion_AUTO {
		return nil, fmt.Errorf("%s.transport_api_version: %v is not supported by Sift (only V3)", field, v)
	}
	name := c.GetGrpcService().GetEnvoyGrpc().GetClusterName()
	if name == "" {
		return nil, fmt.Errorf("%s.grpc_service.envoy_grpc.cluster_name: must be set", field)
	}
	flush, err := pbcheck.Duration(c.GetBufferFlushInterval(), field+".buffer_flush_interval", defaultGRPCFlush, pbcheck.Positive)
	if err != nil {
		return nil, err
	}
	size := defaultGRPCBuffer
	if b := c.GetBufferSizeBytes(); b != nil {
		size = int(b.GetValue())
	}
	if ctx.Clusters == nil || ctx.Clusters.Get(name) == nil {
		return nil, fmt.Errorf("%s.grpc_service.envoy_grpc.cluster_name: %q is not a known cluster", field, name)
	}
	w := &grpcWriter{clusters: ctx.Clusters, cluster: name, logName: c.GetLogName(), kind: kind, flush: flush,
		bufSize: size, reqHeaders: reqH, respHeaders: respH}
	key := fmt.Sprintf("%p|%s|%s|%d|%v|%d|%q|%q", ctx.Clusters, name, w.logName, kind, flush, size, reqH, respH)
	writersMu.Lock()
	defer writersMu.Unlock()
	if old, ok := grpcWriters[key]; ok {
		return &grpcSink{w: old}, nil
	}
	w.q = make(chan queued, grpcQueueLen)
	w.run = w.loop
	grpcWriters[key] = w
	return &grpcSink{w: w}, nil
}

func (w *grpcWriter) enqueue(e queued) {
	select {
	case w.q <- e:
	default:
		dropped.Add(1)
	}
	w.ensure() // after queueing: see fileWriter.enqueue
}

// loop owns the ClientConn and stream: it batches entries until bufSize
// bytes or the flush interval, sends them, and on failure drops the batch
// (counted) and opens a new stream after a jittered backoff.
func (w *grpcWriter) loop(quit <-chan struct{}) {
	log := slog.Default().With("component", "accesslog", "log_name", w.logName, "cluster", w.cluster)
	conn, err := grpc.NewClient("passthrough:///"+w.cluster,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c := w.clusters.Get(w.cluster)
			if c == nil {
				return nil, fmt.Errorf("accesslog: cluster %q not found", w.cluster)
			}
			return c.Dial(ctx)
		}))
	if err != nil { // only for a malformed target: never with passthrough
		log.Error("accesslog: grpc client", "err", err)
		<-quit
		return
	}
	defer conn.Close()
	client := alsv3.NewAccessLogServiceClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var (
		stream   alsv3.AccessLogService_StreamAccessLogsClient
		http     []*datav3.HTTPAccessLogEntry
		tcp      []*datav3.TCPAccessLogEntry
		size     int
		retryAt  time.Time
		backoff  = grpcBackoffBase
		warned   bool
		tick     = time.NewTicker(w.flush)
		drop     = func() { dropped.Add(uint64(len(http) + len(tcp))) }
		closeOld = func() {
			if stream != nil {
				stream.CloseSend()
				stream = nil
			}
		}
		// finish half-closes the stream and waits for the service's
		// response, within the shutdown budget: a successful Send only
		// queued the message, and closing the ClientConn before it is
		// written would lose it.
		finish = func() {
			if stream != nil {
				stream.CloseAndRecv()
				stream = nil
			}
		}
	)
	defer tick.Stop()
	send := func() {
		if len(http)+len(tcp) == 0 {
			return
		}
		defer func() { http, tcp, size = nil, nil, 0 }()
		msg := &alsv3.StreamAccessLogsMessage{}
		if stream == nil {
			if time.Now().Before(retryAt) {
				drop()
				return
			}
			s, err := client.StreamAccessLogs(ctx)
			if err != nil {
				if !warned {
					log.Warn("accesslog: cannot open stream; dropping entries until it opens", "err", err)
					warned = true
				}
				retryAt = time.Now().Add(rand.N(backoff) + backoff/2)
				backoff = min(2*backoff, grpcBackoffMax)
				drop()
				return
			}
			stream = s
			msg.Identifier = &alsv3.StreamAccessLogsMessage_Identifier{Node: node.Load(), LogName: w.logName}
		}
		if len(http) > 0 {
			msg.LogEntries = &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: http}}
		} else {
			msg.LogEntries = &alsv3.StreamAccessLogsMessage_TcpLogs{TcpLogs: &alsv3.StreamAccessLogsMessage_TCPAccessLogEntries{LogEntry: tcp}}
		}
		if err := stream.Send(msg); err != nil {
			if !warned {
				log.Warn("accesslog: stream failed; reconnecting", "err", err)
				warned = true
			}
			closeOld()
			retryAt = time.Now().Add(rand.N(backoff) + backoff/2)
			backoff = min(2*backoff, grpcBackoffMax)
			drop()
			return
		}
		backoff, warned = grpcBackoffBase, false
	}
	add := func(e queued) {
		if w.kind == kindHTTP {
			h := w.httpEntry(&e)
			size += proto.Size(h)
			http = append(http, h)
		} else {
			t := w.tcpEntry(&e.entry)
			size += proto.Size(t)
			tcp = append(tcp, t)
		}
		if size >= w.bufSize {
			send()
		}
	}
	for {
		select {
		case e := <-w.q:
			add(e)
		case <-tick.C:
			send()
		case <-quit:
			// Flush what is queued, within a budget: a stuck stream must
			// not hold up shutdown.
			t := time.AfterFunc(grpcShutdownBudget, cancel)
			defer t.Stop()
		drain:
			for {
				select {
				case e := <-w.q:
					add(e)
				default:
					break drain
				}
			}
			send()
			finish()
			return
		}
	}
}

func sockAddr(a netip.AddrPort) *corev3.Address {
	if !a.IsValid() {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: a.Addr().Unmap().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port())}}}}
}

func flagsProto(f string) *datav3.ResponseFlags {
	if f == "" {
		return nil
	}
	r := &datav3.ResponseFlags{}
	switch f {
	case "NR":
		r.NoRouteFound = true
	case "NC":
		r.NoClusterFound = true
	case "UH":
		r.NoHealthyUpstream = true
	case "UO":
		r.UpstreamOverflow = true
	case "UF":
		r.UpstreamConnectionFailure = true
	case "UR":
		r.UpstreamRemoteReset = true
	case "UT":
		r.UpstreamRequestTimeout = true
	case "SI":
		r.StreamIdleTimeout = true
	case "DC":
		r.DownstreamConnectionTermination = true
	case "DPE":
		r.DownstreamProtocolError = true
	}
	return r
}

// common fills AccessLogCommon from either record. Sift's detection
// outcome goes into custom_tags (sift.detected_protocol,
// sift.detection_reason) when detection ran.
func common(e *entry) *datav3.AccessLogCommon {
	c := &datav3.AccessLogCommon{
		DownstreamRemoteAddress:        sockAddr(e.remote()),
		DownstreamDirectRemoteAddress:  sockAddr(e.remote()),
		DownstreamLocalAddress:         sockAddr(e.local()),
		ResponseFlags:                  flagsProto(responseFlags(e)),
		UpstreamTransportFailureReason: transportFailure(e),
	}
	var start time.Time
	var dur time.Duration
	var endpoint string
	if r := e.req; r != nil {
		start, dur, endpoint = r.Start, r.Duration, r.Endpoint
		c.UpstreamCluster, c.RouteName, c.UpstreamRequestAttemptCount = r.Cluster, r.Route, uint32(r.Attempts)
		c.AccessLogType = datav3.AccessLogType_DownstreamEnd
		if r.UpstreamHeaders > 0 {
			c.TimeToFirstUpstreamRxByte = durationpb.New(r.UpstreamHeaders)
		}
	} else {
		cn := e.conn
		start, dur, endpoint = cn.Start, cn.Duration, cn.Endpoint
		c.UpstreamCluster = cn.Cluster
		c.AccessLogType = datav3.AccessLogType_TcpConnectionEnd
		if cn.Err != nil && !cn.ConnectFailed {
			c.ConnectionTerminationDetails = cn.Err.Error()
		}
	}
	if !start.IsZero() {
		c.StartTime = timestamppb.New(start)
	}
	c.Duration = durationpb.New(dur)
	c.TimeToLastDownstreamTxByte = durationpb.New(dur)
	if ap, err := netip.ParseAddrPort(endpoint); err == nil {
		c.UpstreamRemoteAddress = sockAddr(ap)
	}
	if ci := e.ci(); ci != nil {
		if ci.ServerName != "" {
			c.TlsProperties = &datav3.TLSProperties{TlsSniHostname: ci.ServerName}
		}
		if ci.Detection.Ran {
			c.CustomTags = map[string]string{
				"sift.detected_protocol": ci.Detection.Protocol,
				"sift.detection_reason":  ci.Detection.Reason,
			}
		}
	}
	return c
}

func (w *grpcWriter) httpEntry(q *queued) *datav3.HTTPAccessLogEntry {
	e := &q.entry
	h := &datav3.HTTPAccessLogEntry{CommonProperties: common(e)}
	r := e.req
	if r == nil {
		return h // a TCP connection logged by an HTTP logger: common properties only
	}
	switch r.Protocol {
	case "HTTP/1.0":
		h.ProtocolVersion = datav3.HTTPAccessLogEntry_HTTP10
	case "HTTP/1.1":
		h.ProtocolVersion = datav3.HTTPAccessLogEntry_HTTP11
	case "HTTP/2.0":
		h.ProtocolVersion = datav3.HTTPAccessLogEntry_HTTP2
	}
	scheme := "http"
	if r.Info != nil && r.Info.TransportProtocol == "tls" {
		scheme = "https"
	}
	req := &datav3.HTTPRequestProperties{
		RequestMethod:    corev3.RequestMethod(corev3.RequestMethod_value[r.Method]),
		Scheme:           scheme,
		Authority:        r.Authority,
		Path:             r.Path,
		UserAgent:        r.Header.Get("User-Agent"),
		Referer:          r.Header.Get("Referer"),
		ForwardedFor:     r.Header.Get("X-Forwarded-For"),
		RequestId:        r.RequestID,
		RequestBodyBytes: uint64(max(r.BytesReceived, 0)),
	}
	if len(w.reqHeaders) > 0 {
		req.RequestHeaders = pick(r.Header.Get, w.reqHeaders)
	}
	resp := &datav3.HTTPResponseProperties{
		ResponseBodyBytes:   uint64(max(r.BytesSent, 0)),
		ResponseCodeDetails: r.Error,
	}
	if r.Status != 0 {
		resp.ResponseCode = wrapperspb.UInt32(uint32(r.Status))
		if r.Error == "" {
			resp.ResponseCodeDetails = "via_upstream"
		}
	}
	resp.ResponseHeaders = q.respHeaders
	h.Request, h.Response = req, resp
	return h
}

func pick(get func(string) string, names []string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		if v := get(n); v != "" {
			m[strings.ToLower(n)] = v
		}
	}
	return m
}

func (w *grpcWriter) tcpEntry(e *entry) *datav3.TCPAccessLogEntry {
	t := &datav3.TCPAccessLogEntry{CommonProperties: common(e), ConnectionProperties: &datav3.ConnectionProperties{}}
	if e.conn != nil {
		t.ConnectionProperties.ReceivedBytes = uint64(max(e.conn.BytesReceived, 0))
		t.ConnectionProperties.SentBytes = uint64(max(e.conn.BytesSent, 0))
	} else {
		t.ConnectionProperties.ReceivedBytes = uint64(max(e.req.BytesReceived, 0))
		t.ConnectionProperties.SentBytes = uint64(max(e.req.BytesSent, 0))
	}
	return t
}
