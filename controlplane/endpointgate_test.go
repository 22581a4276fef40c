package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/mesh"
	"github.com/siftmesh/sift/mesh/file"
)

const gateMesh = `namespaces:
- name: shop
  services:
  - name: web
    cluster_ips: [10.96.0.10]
    selector: {app: web}
    ports: [{port: 80, target_port: 8080}]
  workloads:
  - {name: web-0, addresses: [10.0.0.10], labels: {app: web}}
  - {name: client, addresses: [10.0.0.99]}
`

const gateWebCluster = "outbound|80||web.shop.svc.cluster.local"

// gateControlPlane is a Controller over a mesh file, served in plaintext by
// a real go-control-plane server on 127.0.0.1:0.
type gateControlPlane struct {
	ctl      *Controller
	meshPath string
	cc       *grpc.ClientConn
}

func startGateControlPlane(t *testing.T, timeout time.Duration) *gateControlPlane {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	meshPath := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(meshPath, []byte(gateMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := file.Open(meshPath, file.Options{Logger: log, Interval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := New(Config{Source: src, Options: DefaultOptions(), Logger: log, EndpointACKTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	Register(gs, ctl.NewServer(ctx))
	done := make(chan struct{}, 3)
	go func() { gs.Serve(lis); done <- struct{}{} }()
	go func() { ctl.Run(ctx); done <- struct{}{} }()
	go func() { src.Run(ctx); done <- struct{}{} }()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cc.Close()
		cancel()
		gs.Stop()
		for range 3 {
			<-done
		}
	})
	return &gateControlPlane{ctl: ctl, meshPath: meshPath, cc: cc}
}

// addWorkloads rewrites the mesh file with extra workload lines.
func (cp *gateControlPlane) addWorkloads(t *testing.T, lines ...string) {
	t.Helper()
	y := gateMesh
	for _, l := range lines {
		y += "  - " + l + "\n"
	}
	if err := os.WriteFile(cp.meshPath, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds, failing after a generous bound (a
// bound on a broken controller, not a speed check).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// cachedEndpoints is what the cache holds for node's web cluster.
func (cp *gateControlPlane) cachedEndpoints(t *testing.T, node string) []string {
	t.Helper()
	snap, err := cp.ctl.Cache().GetSnapshot(node)
	if err != nil {
		return nil
	}
	cla, _ := snap.GetResources(resource.EndpointType)[gateWebCluster].(*endpointv3.ClusterLoadAssignment)
	return endpointsOf(cla)
}

func endpointsOf(cla *endpointv3.ClusterLoadAssignment) []string {
	out := []string{}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}

// edsClient is a peer proxy's real SotW ADS stream subscribed to the web
// cluster's endpoints, ACKing every response.
type edsClient struct {
	st   discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node *corev3.Node
}

func newEDSClient(t *testing.T, cc *grpc.ClientConn, node string) *edsClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &edsClient{st: st, node: &corev3.Node{Id: node}}
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: resource.EndpointType, ResourceNames: []string{gateWebCluster}}); err != nil {
		t.Fatal(err)
	}
	return c
}

// next receives the next EDS response, ACKs it and returns its endpoints.
func (c *edsClient) next(t *testing.T) []string {
	t.Helper()
	resp, err := recvWithin(t, c.st.Recv, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.st.Send(&discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: resource.EndpointType, ResourceNames: []string{gateWebCluster},
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	for _, a := range resp.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			t.Fatal(err)
		}
		if cla.GetClusterName() == gateWebCluster {
			return endpointsOf(&cla)
		}
	}
	t.Fatalf("EDS response without %s", gateWebCluster)
	return nil
}

func listenerNames(t *testing.T, resp *discoveryv3.DiscoveryResponse) []string {
	t.Helper()
	var out []string
	for _, a := range resp.GetResources() {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			t.Fatal(err)
		}
		out = append(out, l.GetName())
	}
	return out
}

// TestEndpointGate: with real xDS streams (state of the world and delta), a
// workload that appears after startup is left out of its peers' endpoints
// until its own proxy ACKs a Listener response holding its inbound
// listener; a NACK keeps it out; a disconnect does not withdraw it; and the
// workloads present at startup are published at once.
func TestEndpointGate(t *testing.T) {
	t.Parallel()
	cp := startGateControlPlane(t, time.Hour)
	peer := newEDSClient(t, cp.cc, "client.shop")
	if diff := cmp.Diff([]string{"10.0.0.10:8080"}, peer.next(t)); diff != "" {
		t.Fatalf("endpoints at startup (-want +got):\n%s", diff)
	}
	if w := cp.ctl.EndpointsWaiting(); len(w) != 0 {
		t.Fatalf("workloads of the first mesh wait: %v", w)
	}

	cp.addWorkloads(t, "{name: web-1, addresses: [10.0.0.11], labels: {app: web}}",
		"{name: web-2, addresses: [10.0.0.12], labels: {app: web}}",
		"{name: web-3, addresses: [10.0.0.13], labels: {app: web}, meshed: false}")
	// The new mesh is applied once web-1's snapshot is in the cache; the
	// unmeshed web-3 is published at once, the meshed ones are not.
	eventually(t, "web-1's snapshot", func() bool { _, err := cp.ctl.Cache().GetSnapshot("web-1.shop"); return err == nil })
	if diff := cmp.Diff(map[string]string{"shop/web-1": "", "shop/web-2": ""}, cp.ctl.EndpointsWaiting()); diff != "" {
		t.Fatalf("waiting (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.13:8080"}, peer.next(t)); diff != "" {
		t.Fatalf("peer's endpoints before any ACK (-want +got):\n%s", diff)
	}

	t.Run("sotw: NACK keeps it out, ACK publishes it", func(t *testing.T) {
		n := &corev3.Node{Id: "web-1.shop"}
		// connect opens web-1's proxy's ADS stream and returns its first
		// Listener response.
		connect := func(ctx context.Context) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discoveryv3.DiscoveryResponse) {
			st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.cc).StreamAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType}); err != nil {
				t.Fatal(err)
			}
			resp, err := recvWithin(t, st.Recv, 20*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if names := listenerNames(t, resp); !slices.Contains(names, InboundListenerName) {
				t.Fatalf("web-1's listeners %v hold no inbound listener", names)
			}
			return st, resp
		}
		ctx1, cancel1 := context.WithCancel(context.Background())
		defer cancel1()
		st, resp := connect(ctx1)
		nack := &discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType, ResponseNonce: resp.GetNonce(),
			ErrorDetail: status.New(codes.InvalidArgument, "listener \"inbound\": bind: address in use").Proto()}
		if err := st.Send(nack); err != nil {
			t.Fatal(err)
		}
		eventually(t, "web-1 nacked", func() bool { return cp.ctl.EndpointsWaiting()["shop/web-1"] != "" })
		if got := testutil.ToFloat64(cp.ctl.metrics.endpointsWaiting.WithLabelValues("nacked")); got != 1 {
			t.Errorf("nacked gauge = %v, want 1", got)
		}
		// The proxy restarts (a new stream) and accepts its configuration.
		cancel1()
		ctx2, cancel2 := context.WithCancel(context.Background())
		defer cancel2()
		st, resp = connect(ctx2)
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: n, TypeUrl: resource.ListenerType,
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.11:8080", "10.0.0.13:8080"}, peer.next(t)); diff != "" {
			t.Fatalf("peer's endpoints after web-1's ACK (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]string{"shop/web-2": ""}, cp.ctl.EndpointsWaiting()); diff != "" {
			t.Errorf("waiting (-want +got):\n%s", diff)
		}
		cancel2() // web-1's proxy disconnects: its endpoints stay (checked below)
	})

	t.Run("delta: ACK by nonce publishes it", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cp.cc).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := &corev3.Node{Id: "web-2.shop"}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: resource.ListenerType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
			t.Fatal(err)
		}
		resp, err := recvWithin(t, st.Recv, 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetTypeUrl() != resource.ListenerType {
			t.Fatalf("first delta response of type %s", resp.GetTypeUrl())
		}
		if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: n, TypeUrl: resource.ListenerType, ResponseNonce: resp.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080"}, peer.next(t)); diff != "" {
			t.Fatalf("peer's endpoints after web-2's ACK (-want +got):\n%s", diff)
		}
		// The same workload at a new address, its proxy connected and
		// listening: nothing would be pushed to it to ACK; not withheld.
		cp.addWorkloads(t, "{name: web-1, addresses: [10.0.0.11], labels: {app: web}}",
			"{name: web-2, addresses: [10.0.0.22], labels: {app: web}}",
			"{name: web-3, addresses: [10.0.0.13], labels: {app: web}, meshed: false}")
		if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.11:8080", "10.0.0.22:8080", "10.0.0.13:8080"}, peer.next(t)); diff != "" {
			t.Fatalf("peer's endpoints after web-2 moved (-want +got):\n%s", diff)
		}
	})

	if len(cp.ctl.EndpointsWaiting()) != 0 {
		t.Errorf("still waiting: %v", cp.ctl.EndpointsWaiting())
	}
	if got := testutil.ToFloat64(cp.ctl.metrics.endpointsPublished.WithLabelValues("ack")); got != 2 {
		t.Errorf("published by ack = %v, want 2", got)
	}
	// web-1's proxy is gone; another mesh change regenerates everything and
	// web-1 stays an endpoint.
	cp.addWorkloads(t, "{name: web-1, addresses: [10.0.0.11], labels: {app: web}}",
		"{name: web-2, addresses: [10.0.0.12], labels: {app: web}}",
		"{name: web-3, addresses: [10.0.0.13], labels: {app: web}, meshed: false}",
		"{name: other, addresses: [10.0.0.50], meshed: false}")
	eventually(t, "the next mesh", func() bool { _, err := cp.ctl.Cache().GetSnapshot("other.shop"); return err == nil })
	if got := cp.cachedEndpoints(t, "client.shop"); !slices.Contains(got, "10.0.0.11:8080") {
		t.Errorf("after web-1's proxy disconnected the peer's endpoints are %v", got)
	}
}

// TestEndpointGateTimeout: a proxy that never connects is published after
// the timeout, with the metric; one whose proxy rejected its inbound
// listener is not.
func TestEndpointGateTimeout(t *testing.T) {
	t.Parallel()
	cp := startGateControlPlane(t, 50*time.Millisecond)
	cp.addWorkloads(t, "{name: web-1, addresses: [10.0.0.11], labels: {app: web}}")
	eventually(t, "web-1 published by the timeout", func() bool {
		return slices.Contains(cp.cachedEndpoints(t, "client.shop"), "10.0.0.11:8080")
	})
	if got := testutil.ToFloat64(cp.ctl.metrics.endpointsPublished.WithLabelValues("timeout")); got != 1 {
		t.Errorf("published by timeout = %v, want 1", got)
	}
}

// TestEndpointGateRules: the gate's bookkeeping over a sequence of meshes
// and answers, at chosen instants (no clock involved).
func TestEndpointGateRules(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	m0 := loadMesh(t, gateMesh)
	src := &mesh.Published{}
	src.Set(m0)
	c, err := New(Config{Source: src, Options: DefaultOptions(), Logger: log, EndpointACKTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	update := func(y string, at time.Duration, gen uint64) []string {
		c.mu.Lock()
		defer c.mu.Unlock()
		var out []string
		for k := range c.updateGateLocked(loadMesh(t, y), t0.Add(at), gen) {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	answer := func(node string, inbound bool, gen uint64, nack string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		st := &nodeState{workload: node}
		c.gateAnswerLocked(st, resource.ListenerType, sentResponse{gen: gen, inbound: inbound}, nack)
	}
	web1 := gateMesh + "  - {name: web-1, addresses: [10.0.0.11], labels: {app: web}}\n"
	moved := gateMesh + "  - {name: web-1, addresses: [10.0.0.21], labels: {app: web}}\n"
	noPorts := gateMesh + "  - {name: web-1, addresses: [10.0.0.11], labels: {app: web}, skip_inbound_ports: \"8080\"}\n"

	if got := update(web1, 0, 5); !cmp.Equal(got, []string{"shop/web-1"}) {
		t.Fatalf("a new workload: withheld %v", got)
	}
	answer("shop/web-1", true, 4, "") // a response sent before it appeared
	if got := update(web1, time.Second, 6); !cmp.Equal(got, []string{"shop/web-1"}) {
		t.Fatalf("after a stale ACK: withheld %v", got)
	}
	answer("shop/web-1", false, 5, "") // ACK of a configuration without its inbound listener
	answer("shop/web-1", true, 5, "listener \"inbound\": refused")
	if got := update(web1, 2*time.Minute, 7); !cmp.Equal(got, []string{"shop/web-1"}) {
		t.Fatalf("NACKed, past the timeout: withheld %v", got)
	}
	answer("shop/web-1", true, 7, "")
	if got := update(web1, 3*time.Minute, 8); got != nil {
		t.Fatalf("after the ACK: withheld %v", got)
	}
	if got := update(moved, 4*time.Minute, 9); !cmp.Equal(got, []string{"shop/web-1"}) {
		t.Fatalf("a new incarnation (new address): withheld %v", got)
	}
	if got := update(moved, 4*time.Minute+59*time.Second, 10); !cmp.Equal(got, []string{"shop/web-1"}) {
		t.Fatalf("before the timeout: withheld %v", got)
	}
	if got := update(moved, 5*time.Minute, 11); got != nil {
		t.Fatalf("at the timeout: withheld %v", got)
	}
	if got := update(noPorts, 6*time.Minute, 12); got != nil {
		t.Fatalf("no inbound listener: withheld %v", got)
	}
	if got := update(gateMesh, 7*time.Minute, 13); got != nil {
		t.Fatalf("gone: withheld %v", got)
	}
	if got := testutil.ToFloat64(c.metrics.endpointsPublished.WithLabelValues("timeout")); got != 1 {
		t.Errorf("published by timeout = %v, want 1", got)
	}
}

func TestListenerName(t *testing.T) {
	t.Parallel()
	full, err := proto.Marshal(&listenerv3.Listener{StatPrefix: "x", Name: "inbound", FilterChains: []*listenerv3.FilterChain{{Name: "c"}}})
	if err != nil {
		t.Fatal(err)
	}
	noName, err := proto.Marshal(&listenerv3.Listener{StatPrefix: "x"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"listener", full, "inbound"},
		{"empty", nil, ""},
		{"no name", noName, ""},
		{"truncated name", full[:4], ""},
		{"garbage", []byte{0xff, 0xff, 0xff}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := listenerName(tt.in); got != tt.want {
				t.Errorf("listenerName = %q, want %q", got, tt.want)
			}
		})
	}
}
