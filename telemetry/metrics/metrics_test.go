package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	_ "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/detect/learn"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var (
	inAddr  = netip.MustParseAddrPort("10.0.0.1:8080")
	outAddr = netip.MustParseAddrPort("10.0.0.2:3306")
	inInfo  = &filters.ConnInfo{LocalAddr: inAddr, Direction: filters.DirectionInbound, Listener: "in"}
	outInfo = &filters.ConnInfo{LocalAddr: outAddr, Direction: filters.DirectionOutbound, Listener: "out"}
)

// series renders every series of one metric as "label=value,... value",
// sorted (histograms by sample count), so tests can compare with cmp.Diff.
func series(t *testing.T, r *Registry, name string, keep ...string) []string {
	t.Helper()
	fams, err := r.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				if len(keep) == 0 || contains(keep, l.GetName()) {
					ls = append(ls, l.GetName()+"="+l.GetValue())
				}
			}
			out = append(out, strings.Join(ls, ",")+" "+value(m))
		}
	}
	sort.Strings(out)
	return out
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func value(m *dto.Metric) string {
	switch {
	case m.Counter != nil:
		return fmt.Sprint(m.GetCounter().GetValue())
	case m.Gauge != nil:
		return fmt.Sprint(m.GetGauge().GetValue())
	case m.Histogram != nil:
		return fmt.Sprintf("count=%d sum=%v", m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum())
	}
	return "?"
}

func TestRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		recs   []streaminfo.Request
		metric string
		keep   []string
		want   []string
	}{
		{
			name: "status codes and classification",
			recs: []streaminfo.Request{
				{Authority: "a", Status: 200, Info: inInfo}, {Authority: "a", Status: 200, Info: inInfo},
				{Authority: "a", Status: 404, Info: inInfo}, {Authority: "a", Status: 503, Info: inInfo},
				{Authority: "a", Status: 0, Info: inInfo}, // no response at all
			},
			metric: "response_total", keep: []string{"authority", "status_code", "classification"},
			want: []string{
				"authority=a,classification=failure,status_code= 1",
				"authority=a,classification=failure,status_code=503 1",
				"authority=a,classification=success,status_code=200 2",
				"authority=a,classification=success,status_code=404 1",
			},
		},
		{
			name: "grpc status: non-OK is a failure; unknown codes are bounded",
			recs: []streaminfo.Request{
				{Authority: "g", Status: 200, GRPCStatus: "0", Info: outInfo}, {Authority: "g", Status: 200, GRPCStatus: "14", Info: outInfo},
				{Authority: "g", Status: 200, GRPCStatus: "99", Info: outInfo}, {Authority: "g", Status: 200, GRPCStatus: "junk", Info: outInfo},
			},
			metric: "response_total", keep: []string{"grpc_status", "classification"},
			want: []string{
				"classification=failure,grpc_status=14 1",
				"classification=failure,grpc_status=other 2",
				"classification=success,grpc_status=0 1",
			},
		},
		{
			name: "base labels: direction, target_addr, srv_port, tls, identities",
			recs: []streaminfo.Request{{Authority: "x", Status: 200, Info: outInfo}, {Authority: "x", Status: 200},
				{Authority: "x", Status: 200, Info: &filters.ConnInfo{LocalAddr: inAddr, Direction: filters.DirectionInbound, TLS: true,
					PeerIdentity: "spiffe://sift.local/ns/a/sa/client", LocalIdentity: "spiffe://sift.local/ns/b/sa/server"}}},
			metric: "request_total",
			want: []string{
				"authority=x,client_id=,direction=outbound,server_id=,srv_port=3306,target_addr=10.0.0.2:3306,tls=false 1",
				"authority=x,client_id=,direction=unspecified,server_id=,srv_port=,target_addr=,tls=false 1",
				"authority=x,client_id=spiffe://sift.local/ns/a/sa/client,direction=inbound,server_id=spiffe://sift.local/ns/b/sa/server,srv_port=8080,target_addr=10.0.0.1:8080,tls=true 1",
			},
		},
		{
			name: "latency histogram in milliseconds",
			recs: []streaminfo.Request{
				{Authority: "l", Status: 200, Duration: 1500 * time.Microsecond, Info: inInfo},
				{Authority: "l", Status: 200, Duration: 2500 * time.Microsecond, Info: inInfo},
			},
			metric: "response_latency_ms", keep: []string{"authority", "status_code"},
			want: []string{"authority=l,status_code=200 count=2 sum=4"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := New(Options{})
			for i := range tt.recs {
				r.OnRequest(&tt.recs[i])
			}
			if diff := cmp.Diff(tt.want, series(t, r, tt.metric, tt.keep...)); diff != "" {
				t.Errorf("%s (-want +got):\n%s", tt.metric, diff)
			}
		})
	}
}

func TestCaps(t *testing.T) {
	t.Parallel()
	r := New(Options{MaxAuthorities: 2, MaxTargets: 1})
	for i, a := range []string{"a", "b", "c", "d", "a"} {
		info := &filters.ConnInfo{LocalAddr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(80+i)), Direction: filters.DirectionInbound}
		r.OnRequest(&streaminfo.Request{Authority: a, Status: 200, Info: info})
	}
	want := []string{
		"authority=a,srv_port=80,target_addr=10.0.0.1:80 1",
		"authority=a,srv_port=other,target_addr=other 1",
		"authority=b,srv_port=other,target_addr=other 1",
		"authority=other,srv_port=other,target_addr=other 2",
	}
	if diff := cmp.Diff(want, series(t, r, "request_total", "authority", "target_addr", "srv_port")); diff != "" {
		t.Errorf("request_total (-want +got):\n%s", diff)
	}
}

func TestConnections(t *testing.T) {
	t.Parallel()
	r := New(Options{})
	reset := &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}
	refused := &upstream.DialError{Err: &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}
	for range 3 {
		r.OnConnStart(outInfo)
	}
	r.OnConn(&streaminfo.Conn{Info: outInfo, Cluster: "db", BytesReceived: 10, BytesSent: 100, Duration: 20 * time.Millisecond})
	r.OnConn(&streaminfo.Conn{Info: outInfo, Cluster: "db", BytesReceived: 5, BytesSent: 7, Err: reset, Duration: 30 * time.Millisecond})
	// The third is still open.
	r.OnConnStart(inInfo)
	r.OnConn(&streaminfo.Conn{Info: inInfo, Cluster: "db", ConnectFailed: true, Err: refused})

	for _, tc := range []struct {
		metric string
		keep   []string
		want   []string
	}{
		{"tcp_open_total", []string{"direction", "peer"}, []string{"direction=inbound,peer=src 1", "direction=outbound,peer=dst 3"}},
		{"tcp_open_connections", []string{"direction"}, []string{"direction=inbound 0", "direction=outbound 1"}},
		{"tcp_read_bytes_total", []string{"direction"}, []string{"direction=inbound 0", "direction=outbound 15"}},
		{"tcp_write_bytes_total", []string{"direction"}, []string{"direction=inbound 0", "direction=outbound 107"}},
		{"tcp_close_total", []string{"direction", "classification", "errno"}, []string{
			"classification=failure,direction=inbound,errno=ECONNREFUSED 1",
			"classification=failure,direction=outbound,errno=ECONNRESET 1",
			"classification=success,direction=outbound,errno= 1",
		}},
		{"tcp_connection_duration_ms", []string{"direction", "classification"}, []string{
			"classification=failure,direction=inbound count=1 sum=0",
			"classification=failure,direction=outbound count=1 sum=30",
			"classification=success,direction=outbound count=1 sum=20",
		}},
	} {
		if diff := cmp.Diff(tc.want, series(t, r, tc.metric, tc.keep...)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.metric, diff)
		}
	}
	cc := r.cluster("db")
	if got := [2]uint64{cc.cxTotal.Load(), cc.cxConnectFail.Load()}; got != [2]uint64{2, 1} {
		t.Errorf("cluster db: cx_total, cx_connect_fail = %v, want [2 1]", got)
	}
}

// TestConnectionIdentities: the tls, client_id and server_id labels of TCP
// metrics. Inbound: the downstream handshake's identities. Outbound with a
// TLS upstream: the destination's identity from its certificate
// (Linkerd's outbound server_id), whatever the downstream was; outbound
// without one: the downstream's.
func TestConnectionIdentities(t *testing.T) {
	t.Parallel()
	const client, server = "spiffe://td/ns/a/sa/client", "spiffe://td/ns/b/sa/server"
	for _, tc := range []struct {
		name string
		info filters.ConnInfo
		want string
	}{
		{"inbound mTLS", filters.ConnInfo{Direction: filters.DirectionInbound, TLS: true, PeerIdentity: client, LocalIdentity: server},
			"client_id=" + client + ",direction=inbound,server_id=" + server + ",tls=true 1"},
		{"inbound plaintext", filters.ConnInfo{Direction: filters.DirectionInbound},
			"client_id=,direction=inbound,server_id=,tls=false 1"},
		{"outbound to a TLS upstream", filters.ConnInfo{Direction: filters.DirectionOutbound, UpstreamTLS: true, UpstreamIdentity: server},
			"client_id=,direction=outbound,server_id=" + server + ",tls=true 1"},
		{"outbound to a TLS upstream from a TLS client", filters.ConnInfo{Direction: filters.DirectionOutbound, TLS: true, PeerIdentity: client,
			LocalIdentity: "spiffe://td/ns/a/sa/self", UpstreamTLS: true, UpstreamIdentity: server},
			"client_id=" + client + ",direction=outbound,server_id=" + server + ",tls=true 1"},
		{"outbound plaintext", filters.ConnInfo{Direction: filters.DirectionOutbound},
			"client_id=,direction=outbound,server_id=,tls=false 1"},
		{"unspecified direction ignores the upstream", filters.ConnInfo{UpstreamTLS: true, UpstreamIdentity: server},
			"client_id=,direction=unspecified,server_id=,tls=false 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(Options{})
			info := tc.info
			info.LocalAddr = outAddr
			r.OnConnStart(&info)
			r.OnConn(&streaminfo.Conn{Info: &info, BytesReceived: 1})
			keep := []string{"direction", "tls", "client_id", "server_id"}
			for _, m := range []string{"tcp_open_total", "tcp_close_total", "tcp_read_bytes_total"} {
				if diff := cmp.Diff([]string{tc.want}, series(t, r, m, keep...)); diff != "" {
					t.Errorf("%s (-want +got):\n%s", m, diff)
				}
			}
			if diff := cmp.Diff([]string{strings.TrimSuffix(tc.want, " 1") + " 0"}, series(t, r, "tcp_open_connections", keep...)); diff != "" {
				t.Errorf("tcp_open_connections (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDetection(t *testing.T) {
	t.Parallel()
	r := New(Options{})
	det := func(d filters.Detection, outcome string) {
		info := *inInfo
		info.Detection = d
		r.OnDetection(&info, outcome)
	}
	reasons := []string{filters.ReasonMatch, filters.ReasonNoMatch, filters.ReasonTimeout, filters.ReasonEOF, filters.ReasonByteCap,
		filters.ReasonServerFirst, filters.ReasonLearnedServerFirst, filters.ReasonTimeoutClosed, filters.ReasonError}
	var want []string
	for _, reason := range reasons {
		proto, outcome := "opaque", "dispatched"
		switch reason {
		case filters.ReasonMatch:
			proto = "http/1.1"
		case filters.ReasonTimeoutClosed, filters.ReasonError:
			proto, outcome = "", "closed"
		}
		det(filters.Detection{Ran: true, Protocol: proto, Reason: reason, Duration: 2 * time.Millisecond}, outcome)
		want = append(want, fmt.Sprintf("outcome=%s,protocol=%s,reason=%s 1", outcome, orUnknown(proto), reason))
	}
	det(filters.Detection{Reason: filters.ReasonOpaquePort}, "dispatched")
	det(filters.Detection{Reason: filters.ReasonOpaquePort}, "no_chain")
	want = append(want, "outcome=dispatched,protocol=unknown,reason=opaque_port 1", "outcome=no_chain,protocol=unknown,reason=opaque_port 1")
	sort.Strings(want)
	if diff := cmp.Diff(want, series(t, r, "sift_detection_total", "protocol", "reason", "outcome")); diff != "" {
		t.Errorf("sift_detection_total (-want +got):\n%s", diff)
	}
	// Durations only where detection ran: not for the opaque port.
	var n uint64
	fams, _ := r.Gatherer().Gather()
	for _, f := range fams {
		if f.GetName() == "sift_detection_duration_ms" {
			for _, m := range f.GetMetric() {
				n += m.GetHistogram().GetSampleCount()
			}
		}
	}
	if n != uint64(len(reasons)) {
		t.Errorf("detection durations observed = %d, want %d", n, len(reasons))
	}
}

// cluster builds a real static cluster from protojson.
func cluster(t *testing.T, js string) *upstream.Cluster {
	t.Helper()
	pb := &clusterv3.Cluster{}
	if err := protojson.Unmarshal([]byte(js), pb); err != nil {
		t.Fatal(err)
	}
	c, err := upstream.Build(pb, upstream.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestStateAtScrape(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	c := cluster(t, fmt.Sprintf(`{"name":"web","type":"STATIC","connectTimeout":"1s",
		"loadBalancingPolicy":{"policies":[{"typedExtensionConfig":{"name":"ewma","typedConfig":{"@type":"type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma"}}}]},
		"loadAssignment":{"clusterName":"web","endpoints":[{"lbEndpoints":[{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":%d}}}}]}]}}`, addr.Port))
	clusters := upstream.NewManager()
	if _, err := clusters.Replace([]*upstream.Cluster{c}); err != nil {
		t.Fatal(err)
	}
	learned := learn.New(16)
	learned.ServerFirst(outAddr, 1, time.Hour)
	r := New(Options{Clusters: clusters, Learned: learned})

	conn, err := c.Dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ep := ln.Addr().String()
	r.OnRequest(&streaminfo.Request{Status: 502, Cluster: "web", Info: inInfo})
	if diff := cmp.Diff([]string{"cluster=web,endpoint=" + ep + " 1"}, series(t, r, "sift_endpoint_active_connections")); diff != "" {
		t.Errorf("active connections (-want +got):\n%s", diff)
	}
	if got := series(t, r, "sift_endpoint_ewma_cost"); len(got) != 1 || !strings.HasPrefix(got[0], "cluster=web,endpoint="+ep+",level=connection ") {
		t.Errorf("ewma cost = %v, want one connection-level series for %s", got, ep)
	}
	conn.Close()
	if diff := cmp.Diff([]string{"cluster=web,endpoint=" + ep + " 0"}, series(t, r, "sift_endpoint_active_connections")); diff != "" {
		t.Errorf("active connections after close (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"state=learned 1", "state=tracked 1"}, series(t, r, "sift_learned_destinations")); diff != "" {
		t.Errorf("learned (-want +got):\n%s", diff)
	}
	var got []string
	for _, s := range r.EnvoyStats() {
		got = append(got, fmt.Sprintf("%s: %v", s.FullName(), s.Value))
	}
	want := []string{
		"cluster.web.membership_healthy: 1", "cluster.web.membership_total: 1",
		"cluster.web.upstream_cx_active: 0", "cluster.web.upstream_cx_connect_fail: 0", "cluster.web.upstream_cx_total: 0",
		"cluster.web.upstream_rq_1xx: 0", "cluster.web.upstream_rq_2xx: 0", "cluster.web.upstream_rq_3xx: 0",
		"cluster.web.upstream_rq_4xx: 0", "cluster.web.upstream_rq_5xx: 1",
		"cluster.web.upstream_rq_active: 0", "cluster.web.upstream_rq_total: 1",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("EnvoyStats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"envoy_cluster_name=web 1"}, series(t, r, "envoy_cluster_upstream_rq_5xx")); diff != "" {
		t.Errorf("envoy_cluster_upstream_rq_5xx (-want +got):\n%s", diff)
	}
}

func TestStreaminfoHooks(t *testing.T) {
	// Not parallel: installs the process-wide hooks.
	r := New(Options{})
	streaminfo.SetConnHook(r)
	defer streaminfo.SetConnHook(nil)
	streaminfo.ReportConnStart(inInfo)
	streaminfo.ReportDetection(inInfo, "dispatched")
	streaminfo.ReportConn(&streaminfo.Conn{Info: inInfo, BytesReceived: 3, Err: errors.New("x")})
	for metric, want := range map[string][]string{
		"tcp_open_total":       {"direction=inbound 1"},
		"tcp_open_connections": {"direction=inbound 0"},
		"tcp_read_bytes_total": {"direction=inbound 3"},
		"sift_detection_total": {"direction=inbound 1"},
	} {
		if diff := cmp.Diff(want, series(t, r, metric, "direction")); diff != "" {
			t.Errorf("%s (-want +got):\n%s", metric, diff)
		}
	}
}
