package accesslog

import (
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/siftmesh/sift/upstream"
)

// alsServer is a real gRPC access log service that keeps what it receives.
type alsServer struct {
	alsv3.UnimplementedAccessLogServiceServer
	mu       sync.Mutex
	ids      []*alsv3.StreamAccessLogsMessage_Identifier
	http     []*datav3.HTTPAccessLogEntry
	tcp      []*datav3.TCPAccessLogEntry
	batches  []int // entries per message, in arrival order
	received chan struct{}
}

func (s *alsServer) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil
		}
		s.mu.Lock()
		if m.GetIdentifier() != nil {
			s.ids = append(s.ids, m.GetIdentifier())
		}
		s.http = append(s.http, m.GetHttpLogs().GetLogEntry()...)
		s.tcp = append(s.tcp, m.GetTcpLogs().GetLogEntry()...)
		s.batches = append(s.batches, len(m.GetHttpLogs().GetLogEntry())+len(m.GetTcpLogs().GetLogEntry()))
		s.mu.Unlock()
		select {
		case s.received <- struct{}{}:
		default:
		}
	}
}

// startALS serves the ALS on 127.0.0.1:0 and returns it with its address.
func startALS(t *testing.T) (*alsServer, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &alsServer{received: make(chan struct{}, 1)}
	g := grpc.NewServer()
	alsv3.RegisterAccessLogServiceServer(g, s)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return s, ln.Addr().String()
}

// clustersFor returns a cluster manager holding a STATIC cluster "als"
// over addr, closed when the test ends.
func clustersFor(t *testing.T, addr string) *upstream.Manager {
	t.Helper()
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	c, err := upstream.Build(&clusterv3.Cluster{
		Name: "als", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout: durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "als", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}}}}}}},
	}, upstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m := upstream.NewManager()
	if _, err := m.Replace([]*upstream.Cluster{c}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return m
}

func alsYAML(typ, logName, extra string) string {
	return alsYAMLBuffer(typ, logName, extra, "buffer_flush_interval: 0.05s")
}

func alsYAMLBuffer(typ, logName, extra, buffer string) string {
	return fmt.Sprintf(`[{name: envoy.access_loggers.%s, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.%s,
  %s common_config: {log_name: %s, transport_api_version: V3, %s, grpc_service: {envoy_grpc: {cluster_name: als}}}}}]`,
		map[string]string{"HttpGrpcAccessLogConfig": "http_grpc", "TcpGrpcAccessLogConfig": "tcp_grpc"}[typ], typ, extra, logName, buffer)
}

// TestGRPCBatching: entries are batched until buffer_size_bytes or
// buffer_flush_interval, whichever comes first.
func TestGRPCBatching(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, buffer string
		want         []int
	}{
		// A 1-byte buffer is full with every entry: one message each.
		{"size", "buffer_size_bytes: 1, buffer_flush_interval: 3600s", []int{1, 1, 1, 1, 1}},
		// A large buffer waits for the interval: the five entries, logged
		// at once, travel together (or in two messages, should a tick fall
		// between two of them).
		{"interval", "buffer_size_bytes: 1000000, buffer_flush_interval: 0.2s", []int{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			als, addr := startALS(t)
			ls, err := Decode(decodeYAML(t, alsYAMLBuffer("TcpGrpcAccessLogConfig", "batch-"+tt.name, "", tt.buffer)),
				Context{Clusters: clustersFor(t, addr)})
			if err != nil {
				t.Fatal(err)
			}
			for range 5 {
				ls.LogConn(testConn())
			}
			deadline := time.After(10 * time.Second) // only keeps a broken test from hanging
			for {
				als.mu.Lock()
				n := len(als.tcp)
				als.mu.Unlock()
				if n >= 5 {
					break
				}
				select {
				case <-als.received:
				case <-deadline:
					t.Fatalf("received %d entries, want 5", n)
				}
			}
			ls[0].sink.(*grpcSink).w.stop()
			als.mu.Lock()
			defer als.mu.Unlock()
			got := als.batches
			if tt.name == "interval" && len(got) == 2 && got[0]+got[1] == 5 {
				got = []int{5} // a tick between two entries
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("entries per message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestGRPCAccessLog(t *testing.T) {
	t.Parallel()
	als, addr := startALS(t)
	clusters := clustersFor(t, addr)
	SetNode(&corev3.Node{Id: "sidecar~10.0.0.1", Cluster: "web"})
	httpLogs, err := Decode(decodeYAML(t, alsYAML("HttpGrpcAccessLogConfig", "unit-http",
		"additional_request_headers_to_log: [x-forwarded-for], additional_response_headers_to_log: [content-type],")), Context{Clusters: clusters})
	if err != nil {
		t.Fatal(err)
	}
	tcpLogs, err := Decode(decodeYAML(t, alsYAML("TcpGrpcAccessLogConfig", "unit-tcp", "")), Context{Clusters: clusters})
	if err != nil {
		t.Fatal(err)
	}
	httpLogs.LogRequest(testRequest())
	tcpLogs.LogConn(testConn())

	deadline := time.After(10 * time.Second) // only keeps a broken test from hanging
	for {
		als.mu.Lock()
		done := len(als.http) == 1 && len(als.tcp) == 1
		als.mu.Unlock()
		if done {
			break
		}
		select {
		case <-als.received:
		case <-deadline:
			t.Fatal("the ALS server did not receive one HTTP and one TCP entry")
		}
	}
	als.mu.Lock()
	defer als.mu.Unlock()
	var names []string
	for _, id := range als.ids {
		if id.GetNode().GetId() != "sidecar~10.0.0.1" {
			t.Errorf("identifier node %v, want the node set by SetNode", id.GetNode())
		}
		names = append(names, id.GetLogName())
	}
	if diff := cmp.Diff([]string{"unit-http", "unit-tcp"}, names, cmpSorted); diff != "" {
		t.Errorf("log names (-want +got):\n%s", diff)
	}
	sock := func(a string, p uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: a, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}
	}
	wantHTTP := &datav3.HTTPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			DownstreamRemoteAddress: sock("10.1.2.3", 5555), DownstreamDirectRemoteAddress: sock("10.1.2.3", 5555),
			DownstreamLocalAddress: sock("10.0.0.1", 80), StartTime: timestamppb.New(start),
			Duration: durationpb.New(42 * time.Millisecond), TimeToLastDownstreamTxByte: durationpb.New(42 * time.Millisecond),
			TimeToFirstUpstreamRxByte: durationpb.New(40 * time.Millisecond),
			UpstreamRemoteAddress:     sock("10.0.0.2", 8080), UpstreamCluster: "backend", RouteName: "r1",
			UpstreamRequestAttemptCount: 2, AccessLogType: datav3.AccessLogType_DownstreamEnd,
			CustomTags: map[string]string{"sift.detected_protocol": "http/1.1", "sift.detection_reason": "match"},
		},
		ProtocolVersion: datav3.HTTPAccessLogEntry_HTTP11,
		Request: &datav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod_POST, Scheme: "http", Authority: "svc.local",
			Path: "/a?b=c", UserAgent: "curl/8", ForwardedFor: "1.1.1.1", RequestId: "rid", RequestBodyBytes: 11,
			RequestHeaders: map[string]string{"x-forwarded-for": "1.1.1.1"}},
		Response: &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(201), ResponseBodyBytes: 22,
			ResponseHeaders: map[string]string{"content-type": "text/plain"}, ResponseCodeDetails: "via_upstream"},
	}
	if diff := cmp.Diff(wantHTTP, als.http[0], protocmp.Transform()); diff != "" {
		t.Errorf("HTTP entry (-want +got):\n%s", diff)
	}
	wantTCP := &datav3.TCPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			DownstreamRemoteAddress: sock("10.1.2.3", 5555), DownstreamDirectRemoteAddress: sock("10.1.2.3", 5555),
			DownstreamLocalAddress: sock("10.0.0.1", 6379), StartTime: timestamppb.New(start),
			Duration: durationpb.New(1500 * time.Millisecond), TimeToLastDownstreamTxByte: durationpb.New(1500 * time.Millisecond),
			UpstreamRemoteAddress: sock("10.0.0.9", 6379), UpstreamCluster: "redis",
			AccessLogType: datav3.AccessLogType_TcpConnectionEnd,
			CustomTags:    map[string]string{"sift.detected_protocol": "opaque", "sift.detection_reason": "timeout"},
		},
		ConnectionProperties: &datav3.ConnectionProperties{ReceivedBytes: 100, SentBytes: 200},
	}
	if diff := cmp.Diff(wantTCP, als.tcp[0], protocmp.Transform()); diff != "" {
		t.Errorf("TCP entry (-want +got):\n%s", diff)
	}
}

// TestGRPCDeadServerDoesNotBlock logs far more entries than the queue holds
// to a service nobody listens on: every call must return (a blocking
// logger hangs the test) and the excess is counted as dropped.
func TestGRPCDeadServerDoesNotBlock(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	ls, err := Decode(decodeYAML(t, alsYAML("TcpGrpcAccessLogConfig", "dead", "")), Context{Clusters: clustersFor(t, addr)})
	if err != nil {
		t.Fatal(err)
	}
	before := Dropped()
	c := testConn()
	for range 3 * grpcQueueLen {
		ls.LogConn(c)
	}
	if got := Dropped() - before; got < grpcQueueLen {
		t.Errorf("dropped %d entries, want at least %d", got, grpcQueueLen)
	}
	ls[0].sink.(*grpcSink).w.stop()
}

var cmpSorted = cmpopts.SortSlices(func(a, b string) bool { return a < b })
