package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// controlPlane is a real go-control-plane xDS server on 127.0.0.1, serving
// ADS and the per-type services, state-of-the-world and delta, from a
// snapshot cache, as any Envoy user's control plane would.
type controlPlane struct {
	t     *testing.T
	cache cachev3.SnapshotCache
	addr  string

	mu       sync.Mutex
	grpc     *grpc.Server
	nacks    chan string         // error_detail messages received
	versions map[string][]string // type URL → version_info of every SotW request
	initial  []map[string]string // delta initial_resource_versions of every first request
	opts     []grpc.ServerOption // e.g. TLS credentials
	streams  atomic.Int64        // streams opened, over restarts
}

func startControlPlane(t *testing.T, ads bool) *controlPlane {
	t.Helper()
	cp := &controlPlane{t: t, cache: cachev3.NewSnapshotCache(ads, cachev3.IDHash{}, nil),
		nacks: make(chan string, 100), versions: map[string][]string{}}
	cp.serve("127.0.0.1:0")
	return cp
}

func (cp *controlPlane) serve(addr string) {
	cp.t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		cp.t.Fatal(err)
	}
	cp.serveOn(ln)
}

// serveOn serves on ln (a listener in a network namespace, say).
func (cp *controlPlane) serveOn(ln net.Listener) {
	cp.t.Helper()
	cp.addr = ln.Addr().String()
	callbacks := serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			cp.streams.Add(1)
			return nil
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			cp.streams.Add(1)
			return nil
		},
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			cp.mu.Lock()
			cp.versions[req.GetTypeUrl()] = append(cp.versions[req.GetTypeUrl()], req.GetVersionInfo())
			cp.mu.Unlock()
			if req.GetErrorDetail() != nil {
				cp.nacks <- req.GetErrorDetail().GetMessage()
			}
			return nil
		},
		StreamDeltaRequestFunc: func(_ int64, req *discoveryv3.DeltaDiscoveryRequest) error {
			if len(req.GetInitialResourceVersions()) > 0 {
				cp.mu.Lock()
				cp.initial = append(cp.initial, req.GetInitialResourceVersions())
				cp.mu.Unlock()
			}
			if req.GetErrorDetail() != nil {
				cp.nacks <- req.GetErrorDetail().GetMessage()
			}
			return nil
		},
	}
	srv := serverv3.NewServer(context.Background(), cp.cache, callbacks)
	g := grpc.NewServer(cp.opts...)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
	secretservice.RegisterSecretDiscoveryServiceServer(g, srv)
	cp.mu.Lock()
	cp.grpc = g
	cp.mu.Unlock()
	go g.Serve(ln)
	cp.t.Cleanup(g.Stop)
}

// stop ends the server and every stream, as a control-plane crash would.
func (cp *controlPlane) stop() {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	cp.grpc.Stop()
}

// set publishes a snapshot for node "proxy".
func (cp *controlPlane) set(version string, res map[resourcev3.Type][]types.Resource) {
	cp.t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		cp.t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), "proxy", snap); err != nil {
		cp.t.Fatal(err)
	}
}

func (cp *controlPlane) sawVersion(typeURL, version string) bool {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, v := range cp.versions[typeURL] {
		if v == version {
			return true
		}
	}
	return false
}

// Resources built the way an Envoy user builds them with go-control-plane.

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ConnectTimeout:       durationpb.New(time.Second),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		},
	}
}

func loadAssignment(cluster string, addrs ...string) *endpointv3.ClusterLoadAssignment {
	var eps []*endpointv3.LbEndpoint
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		p, _ := strconv.Atoi(port)
		eps = append(eps, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
			}}},
		}}})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: eps}}}
}

func tcpListener(name, cluster string) *listenerv3.Listener {
	tp, _ := anypb.New(&tcpproxyv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster}})
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
		}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
		}}}},
	}
}

func snapshotFor(l *listenerv3.Listener, c *clusterv3.Cluster, cla *endpointv3.ClusterLoadAssignment) map[resourcev3.Type][]types.Resource {
	return map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {l},
		resourcev3.ClusterType:  {c},
		resourcev3.EndpointType: {cla},
	}
}

// xdsBootstrap is a bootstrap with only an xDS server, in one of the four
// stream flavours.
func xdsBootstrap(cpAddr string, delta, ads bool) string {
	apiType := "GRPC"
	if delta {
		apiType = "DELTA_GRPC"
	}
	api := fmt.Sprintf("{api_type: %s, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}", apiType)
	dyn := fmt.Sprintf("  ads_config: %s\n  lds_config: {ads: {}, resource_api_version: V3}\n  cds_config: {ads: {}, resource_api_version: V3}\n", api)
	if !ads {
		dyn = fmt.Sprintf("  lds_config: {api_config_source: %s, resource_api_version: V3}\n  cds_config: {api_config_source: %s, resource_api_version: V3}\n", api, api)
	}
	return "node: {id: proxy, cluster: test}\ndynamic_resources:\n" + dyn +
		"static_resources:\n  clusters:\n" + staticCluster("xds", cpAddr)
}

// eventually polls f until it is true; it fails the test after a minute.
// Config pushes are asynchronous by nature: this waits for their effect.
func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// bodyVia fetches / through the proxy's listener, or "" on any failure.
func bodyVia(p *proxy, listener string) string {
	l := p.Listeners().Get(listener)
	if l == nil {
		return ""
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + l.Addr().String() + "/")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 512)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

func TestXDSFourFlavours(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		delta, ads bool
	}{
		{"sotw-ads", false, true}, {"sotw-separate", false, false},
		{"delta-ads", true, true}, {"delta-separate", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			one, two := httpBackend(t, "one"), httpBackend(t, "two")
			cp := startControlPlane(t, tc.ads)
			cluster := edsCluster("web")
			if !tc.ads {
				// Endpoints from the same server as the clusters, over its own stream.
				cluster.EdsClusterConfig.EdsConfig = &corev3.ConfigSource{
					ResourceApiVersion: corev3.ApiVersion_V3,
					ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
						ApiType:             map[bool]corev3.ApiConfigSource_ApiType{false: corev3.ApiConfigSource_GRPC, true: corev3.ApiConfigSource_DELTA_GRPC}[tc.delta],
						TransportApiVersion: corev3.ApiVersion_V3,
						GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
							EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: "xds"},
						}}},
					}},
				}
			}
			cp.set("1", snapshotFor(tcpListener("ingress", "web"), cluster, loadAssignment("web", one)))
			p := startProxy(t, xdsBootstrap(cp.addr, tc.delta, tc.ads), nil)
			eventually(t, "the listener and endpoint from xDS", func() bool { return strings.HasPrefix(bodyVia(p, "ingress"), "one ") })

			// An endpoint update: traffic moves to the new endpoint.
			cp.set("2", snapshotFor(tcpListener("ingress", "web"), cluster, loadAssignment("web", two)))
			eventually(t, "the endpoint update", func() bool { return strings.HasPrefix(bodyVia(p, "ingress"), "two ") })
		})
	}
}

func TestXDSRejectedUpdateIsNACKedAndOldConfigServes(t *testing.T) {
	t.Parallel()
	backend := httpBackend(t, "good")
	for _, delta := range []bool{false, true} {
		t.Run(map[bool]string{false: "sotw", true: "delta"}[delta], func(t *testing.T) {
			t.Parallel()
			cp := startControlPlane(t, true)
			cp.set("1", snapshotFor(tcpListener("ingress", "web"), edsCluster("web"), loadAssignment("web", backend)))
			p := startProxy(t, xdsBootstrap(cp.addr, delta, true), nil)
			eventually(t, "the first config", func() bool { return strings.HasPrefix(bodyVia(p, "ingress"), "good ") })

			bad := tcpListener("ingress", "web")
			bad.FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls"}
			cp.set("2", snapshotFor(bad, edsCluster("web"), loadAssignment("web", backend)))
			select {
			case msg := <-cp.nacks:
				for _, want := range []string{`listener "ingress"`, "filter_chains[0]: transport_socket (envoy.transport_sockets.tls): typed_config: must be set"} {
					if !strings.Contains(msg, want) {
						t.Errorf("NACK %q does not name %q", msg, want)
					}
				}
			case <-time.After(time.Minute):
				t.Fatal("no NACK")
			}
			if got := bodyVia(p, "ingress"); !strings.HasPrefix(got, "good ") {
				t.Errorf("after the NACK: %q, want the last good config serving", got)
			}

			badEndpoints := loadAssignment("web", "127.0.0.1:1")
			badEndpoints.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "not-an-ip"
			cp.set("3", snapshotFor(tcpListener("ingress", "web"), edsCluster("web"), badEndpoints))
			for msg := ""; !strings.Contains(msg, "ClusterLoadAssignment"); { // skip repeats of the listener NACK
				select {
				case msg = <-cp.nacks:
				case <-time.After(time.Minute):
					t.Fatal("no NACK for the bad endpoints")
				}
				if strings.Contains(msg, "ClusterLoadAssignment") && (!strings.Contains(msg, `ClusterLoadAssignment "web"`) || !strings.Contains(msg, "not an IP address")) {
					t.Errorf("endpoint NACK %q does not name the resource and the problem", msg)
				}
			}
			if got := bodyVia(p, "ingress"); !strings.HasPrefix(got, "good ") {
				t.Errorf("after the endpoint NACK: %q", got)
			}
		})
	}
}

func TestXDSControlPlaneRestart(t *testing.T) {
	t.Parallel()
	one, two := httpBackend(t, "one"), httpBackend(t, "two")
	cp := startControlPlane(t, true)
	cp.set("1", snapshotFor(tcpListener("ingress", "web"), edsCluster("web"), loadAssignment("web", one)))
	p := startProxy(t, xdsBootstrap(cp.addr, false, true), nil)
	eventually(t, "the first config", func() bool { return strings.HasPrefix(bodyVia(p, "ingress"), "one ") })

	cp.stop()
	// The control plane is gone: the proxy keeps serving its last config.
	for i := 0; i < 20; i++ {
		if got := bodyVia(p, "ingress"); !strings.HasPrefix(got, "one ") {
			t.Fatalf("request %d with the control plane down: %q", i, got)
		}
	}
	// A new control plane on the same address, with the config moved on.
	cp.serve(cp.addr)
	cp.set("2", snapshotFor(tcpListener("ingress", "web"), edsCluster("web"), loadAssignment("web", two)))
	eventually(t, "resync after the restart", func() bool { return strings.HasPrefix(bodyVia(p, "ingress"), "two ") })
	// On reconnecting, the proxy told the server the versions it had.
	if !cp.sawVersion(resourcev3.ListenerType, "1") {
		t.Error("no request after the restart carried the known listener version 1")
	}
}

func TestXDSConfigDumpShowsVersions(t *testing.T) {
	t.Parallel()
	cp := startControlPlane(t, true)
	cp.set("v7", snapshotFor(tcpListener("ingress", "web"), edsCluster("web"), loadAssignment("web", httpBackend(t, "x"))))
	bootstrap := xdsBootstrap(cp.addr, false, true) + "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\n"
	p := startProxy(t, bootstrap, nil)
	eventually(t, "the config", func() bool { return strings.HasPrefix(bodyVia(p, "ingress"), "x ") })

	client := &http.Client{Timeout: 10 * time.Second}
	var dump struct {
		Configs []map[string]any `json:"configs"`
	}
	resp, err := client.Get("http://" + p.AdminAddr() + "/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	byType := map[string]map[string]any{}
	for _, c := range dump.Configs {
		byType[c["@type"].(string)] = c
	}
	listeners := byType["type.googleapis.com/envoy.admin.v3.ListenersConfigDump"]
	if listeners["version_info"] != "v7" {
		t.Errorf("listeners version_info = %v, want v7", listeners["version_info"])
	}
	dl, _ := listeners["dynamic_listeners"].([]any)
	if len(dl) != 1 || dl[0].(map[string]any)["name"] != "ingress" {
		t.Errorf("dynamic_listeners = %v", dl)
	}
	clusters := byType["type.googleapis.com/envoy.admin.v3.ClustersConfigDump"]
	if dc, _ := clusters["dynamic_active_clusters"].([]any); len(dc) != 1 || dc[0].(map[string]any)["version_info"] != "v7" {
		t.Errorf("dynamic_active_clusters = %v", clusters["dynamic_active_clusters"])
	}
	for _, typ := range []string{"BootstrapConfigDump", "EndpointsConfigDump"} {
		if byType["type.googleapis.com/envoy.admin.v3."+typ] == nil {
			t.Errorf("no %s in /config_dump", typ)
		}
	}
}
