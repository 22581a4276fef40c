package xds

import (
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	runtimev3 "github.com/envoyproxy/go-control-plane/envoy/service/runtime/v3"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// scriptedADS is an ADS server whose stream handler is the test's script.
type scriptedADS struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	script func(discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error
}

func (s *scriptedADS) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return s.script(st)
}

type recordingHandler struct {
	mu      sync.Mutex
	applied map[string]int
	reject  error
}

func (h *recordingHandler) Apply(typeURL string, _ map[string]proto.Message) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.applied == nil {
		h.applied = map[string]int{}
	}
	h.applied[typeURL]++
	return h.reject
}

func startScripted(t *testing.T, script func(discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error, h Handler) *Client {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, &scriptedADS{script: script})
	go g.Serve(ln)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	src := &Source{Name: "ads", Conn: conn, ADS: true}
	c, err := New(Config{Node: &corev3.Node{Id: "n"}, Handler: h, Sources: map[string]*Source{ClusterType: src}})
	if err != nil {
		t.Fatal(err)
	}
	c.Start()
	t.Cleanup(func() { c.Close(); g.Stop() })
	return c
}

func recvType(t *testing.T, st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer, typeURL string) *discoveryv3.DiscoveryRequest {
	t.Helper()
	for {
		req, err := st.Recv()
		if err != nil {
			t.Errorf("recv: %v", err)
			return nil
		}
		if req.GetTypeUrl() == typeURL {
			return req
		}
	}
}

func TestUnsolicitedTypeIsAcknowledged(t *testing.T) {
	t.Parallel()
	done := make(chan *discoveryv3.DiscoveryRequest, 1)
	h := &recordingHandler{}
	startScripted(t, func(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		first := recvType(t, st, ClusterType)
		if first.GetNode().GetId() != "n" {
			t.Errorf("first request's node = %v", first.GetNode())
		}
		rt, _ := anypb.New(&runtimev3.Runtime{Name: "rt"})
		st.Send(&discoveryv3.DiscoveryResponse{TypeUrl: "type.googleapis.com/envoy.service.runtime.v3.Runtime",
			VersionInfo: "r1", Nonce: "n1", Resources: []*anypb.Any{rt}})
		done <- recvType(t, st, "type.googleapis.com/envoy.service.runtime.v3.Runtime")
		<-st.Context().Done()
		return nil
	}, h)
	select {
	case ack := <-done:
		if ack.GetResponseNonce() != "n1" || ack.GetVersionInfo() != "r1" || ack.GetErrorDetail() != nil {
			t.Errorf("runtime ACK = %v", ack)
		}
	case <-time.After(time.Minute):
		t.Fatal("no ACK for the unsolicited type")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.applied) != 0 {
		t.Errorf("handler saw %v", h.applied)
	}
}

func TestRepeatedNACKIsDelayed(t *testing.T) {
	t.Parallel()
	type nack struct {
		req *discoveryv3.DiscoveryRequest
		at  time.Time
	}
	nacks := make(chan nack, 2)
	bad, _ := anypb.New(&clusterv3.Cluster{Name: "c"})
	startScripted(t, func(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		recvType(t, st, ClusterType)
		for i := 0; i < 2; i++ { // the same bad version twice, as a snapshot cache does
			st.Send(&discoveryv3.DiscoveryResponse{TypeUrl: ClusterType, VersionInfo: "2", Nonce: string(rune('a' + i)), Resources: []*anypb.Any{bad}})
			req := recvType(t, st, ClusterType)
			nacks <- nack{req, time.Now()}
		}
		<-st.Context().Done()
		return nil
	}, &recordingHandler{reject: errTest})
	first, second := <-nacks, <-nacks
	for _, n := range []nack{first, second} {
		if n.req.GetErrorDetail() == nil || !strings.Contains(n.req.GetErrorDetail().GetMessage(), "bad cluster") || n.req.GetVersionInfo() != "" {
			t.Errorf("NACK = %v; want error_detail and the last good version (none)", n.req)
		}
	}
	if gap := second.at.Sub(first.at); gap < minNACKDelay {
		t.Errorf("second NACK of the same version after %v, want at least %v", gap, minNACKDelay)
	}
}

var errTest = errTestType("bad cluster")

type errTestType string

func (e errTestType) Error() string { return string(e) }

// TestDelayedNACKDroppedAfterNewerResponse: a NACK held back for a repeated
// bad version must not be sent once a newer response has been answered — it
// would carry that response's nonce and reject a version the client accepted.
func TestDelayedNACKDroppedAfterNewerResponse(t *testing.T) {
	t.Parallel()
	h := &switchableHandler{}
	h.reject.Store(true)
	bad, _ := anypb.New(&clusterv3.Cluster{Name: "c"})
	stale := make(chan *discoveryv3.DiscoveryRequest, 1)
	acked := make(chan *discoveryv3.DiscoveryRequest, 1)
	startScripted(t, func(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		recvType(t, st, ClusterType)
		st.Send(&discoveryv3.DiscoveryResponse{TypeUrl: ClusterType, VersionInfo: "2", Nonce: "a", Resources: []*anypb.Any{bad}})
		recvType(t, st, ClusterType) // the first NACK, at once
		// The same bad version again: its NACK is delayed. A good version
		// follows at once and is accepted.
		st.Send(&discoveryv3.DiscoveryResponse{TypeUrl: ClusterType, VersionInfo: "2", Nonce: "b", Resources: []*anypb.Any{bad}})
		for h.applies.Load() < 2 { // the client has judged version 2 again
			runtime.Gosched()
		}
		h.reject.Store(false)
		st.Send(&discoveryv3.DiscoveryResponse{TypeUrl: ClusterType, VersionInfo: "3", Nonce: "c", Resources: []*anypb.Any{bad}})
		acked <- recvType(t, st, ClusterType)
		go func() {
			if req, err := st.Recv(); err == nil {
				stale <- req
			}
		}()
		<-st.Context().Done()
		return nil
	}, h)
	ack := <-acked
	if ack.GetResponseNonce() != "c" || ack.GetVersionInfo() != "3" || ack.GetErrorDetail() != nil {
		t.Fatalf("request after version 3 = %v, want its ACK", ack)
	}
	select {
	case req := <-stale:
		t.Errorf("a request after the ACK of version 3: %v (a stale delayed NACK?)", req)
	case <-time.After(10 * minNACKDelay):
	}
}

// switchableHandler rejects while reject is set, and counts its calls.
type switchableHandler struct {
	reject  atomic.Bool
	applies atomic.Int64
}

func (h *switchableHandler) Apply(string, map[string]proto.Message) error {
	h.applies.Add(1)
	if h.reject.Load() {
		return errTest
	}
	return nil
}
