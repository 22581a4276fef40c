package controlplane

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	peakewmav1 "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	opaqueinboundv1 "github.com/siftmesh/sift/api/sift/filters/network/opaque_transport/v1"
	"github.com/siftmesh/sift/controlplane/ca"
	"github.com/siftmesh/sift/filters"
	_ "github.com/siftmesh/sift/filters/detect"
	_ "github.com/siftmesh/sift/filters/httplb"
	"github.com/siftmesh/sift/filters/httplb/route"
	_ "github.com/siftmesh/sift/filters/originaldst"
	_ "github.com/siftmesh/sift/filters/tcpproxy"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/mesh"
	"github.com/siftmesh/sift/mesh/file"
	"github.com/siftmesh/sift/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testMesh = `detect_timeout: 2s
namespaces:
- name: shop
  services:
  - name: web
    cluster_ips: [10.96.0.10]
    selector: {app: web}
    ports: [{port: 80, target_port: 8080}]
  - name: db
    cluster_ips: [10.96.0.20]
    selector: {app: db}
    ports: [{port: 3306}]
  workloads:
  - name: web-0
    addresses: [10.0.0.10]
    labels: {app: web}
  - name: web-1
    addresses: [10.0.0.11]
    labels: {app: web}
  - name: db-0
    addresses: [10.0.0.20]
    labels: {app: db}
    node_id: db
  - name: client
    skip_outbound_ports: "3306"
`

func loadMesh(t *testing.T, yaml string) *mesh.Mesh {
	t.Helper()
	m, err := file.Parse("mesh.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustAnyT(t *testing.T, m proto.Message) *listenerv3.ListenerFilter_TypedConfig {
	t.Helper()
	return &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(m)}
}

func TestOutboundListenerGolden(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, testMesh)
	r := Generate(m, m.WorkloadByNodeID("web-0.shop"), DefaultOptions())
	match := func(ip string, port uint32, transport string, alpn ...string) *listenerv3.FilterChainMatch {
		return &listenerv3.FilterChainMatch{
			DestinationPort:      wrapperspb.UInt32(port),
			PrefixRanges:         []*corev3.CidrRange{{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(32)}},
			TransportProtocol:    transport,
			ApplicationProtocols: alpn,
		}
	}
	web, db := "outbound|80||web.shop.svc.cluster.local", "outbound|3306||db.shop.svc.cluster.local"
	want := &listenerv3.Listener{
		Name:             "outbound",
		Address:          socketAddress(netipAddr("127.0.0.1"), 4140),
		StatPrefix:       "outbound",
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		UseOriginalDst:   wrapperspb.Bool(true),
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: "envoy.filters.listener.original_dst", ConfigType: mustAnyT(t, &originaldstv3.OriginalDst{})},
			{Name: "sift.filters.listener.detect", ConfigType: mustAnyT(t, &detectv1.Detect{Timeout: durationpb.New(2 * time.Second)})},
		},
		ListenerFiltersTimeout:           durationpb.New(3 * time.Second),
		ContinueOnListenerFiltersTimeout: true,
		FilterChains: []*listenerv3.FilterChain{
			// db:3306 is on the default opaque list: one chain, no detection.
			chain("opaque|db.shop.svc.cluster.local:3306|10.96.0.20", match("10.96.0.20", 3306, ""), tcpProxy("opaque", db)),
			// web:80 is undeclared: detected HTTP, TLS, and the rest.
			chain("http|web.shop.svc.cluster.local:80|10.96.0.10", match("10.96.0.10", 80, "", "http/1.1", "http/1.0", "h2c"), &listenerv3.Filter{
				Name: "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&hcmv3.HttpConnectionManager{
					StatPrefix: "http",
					CodecType:  hcmv3.HttpConnectionManager_AUTO,
					RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
						ConfigSource: &corev3.ConfigSource{
							ResourceApiVersion:    corev3.ApiVersion_V3,
							ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
						},
						RouteConfigName: "http|web.shop.svc.cluster.local:80|10.96.0.10",
					}},
					HttpFilters: []*hcmv3.HttpFilter{{
						Name:       "envoy.filters.http.router",
						ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
					}},
				})},
			}),
			chain("tls|web.shop.svc.cluster.local:80|10.96.0.10", match("10.96.0.10", 80, "tls"), tcpProxy("tls", web)),
			chain("opaque|web.shop.svc.cluster.local:80|10.96.0.10", match("10.96.0.10", 80, ""), tcpProxy("opaque", web)),
		},
	}
	if len(r.Listeners) != 2 {
		t.Fatalf("got %d listeners, want inbound and outbound", len(r.Listeners))
	}
	if diff := cmp.Diff(want, r.Listeners[1], protocmp.Transform()); diff != "" {
		t.Errorf("outbound listener (-want +got):\n%s", diff)
	}

	wantCluster := &clusterv3.Cluster{
		Name:                 web,
		AltStatName:          web,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource(), ServiceName: web},
		ConnectTimeout:       durationpb.New(time.Second),
		// HTTP: peak-EWMA first, Envoy's least_request for an Envoy.
		LoadBalancingPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "sift.peak_ewma", TypedConfig: mustAny(&peakewmav1.PeakEwma{})}},
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.least_request", TypedConfig: mustAny(&leastrequestv3.LeastRequest{})}},
		}},
		TypedExtensionProtocolOptions: upstreamHTTPOptions(),
	}
	var names []string
	for _, c := range r.Clusters {
		names = append(names, c.GetName())
	}
	if diff := cmp.Diff([]string{"inbound|8080||", db, web}, names); diff != "" {
		t.Errorf("clusters (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantCluster, r.Clusters[2], protocmp.Transform()); diff != "" {
		t.Errorf("web cluster (-want +got):\n%s", diff)
	}
	var eps []string
	for _, lb := range r.Endpoints[1].GetEndpoints()[0].GetLbEndpoints() {
		sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
		eps = append(eps, sa.GetAddress()+":"+itoa(sa.GetPortValue()))
	}
	if diff := cmp.Diff([]string{"10.0.0.10:8080", "10.0.0.11:8080"}, eps); diff != "" {
		t.Errorf("web endpoints (-want +got):\n%s", diff)
	}
}

func TestInboundAndSkipPorts(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, testMesh)
	// db-0: inbound 3306 is opaque (the default list): one chain, no detection.
	r := Generate(m, m.WorkloadByNodeID("db"), DefaultOptions())
	in := r.Listeners[0]
	if in.GetName() != "inbound" || len(in.GetFilterChains()) != 1 || in.GetFilterChains()[0].GetName() != "opaque|inbound:3306" {
		t.Fatalf("db-0 inbound listener: %v", in)
	}
	// web-0: inbound 8080 detects: an HTTP chain and the rest.
	r = Generate(m, m.WorkloadByNodeID("web-0.shop"), DefaultOptions())
	var got []string
	for _, c := range r.Listeners[0].GetFilterChains() {
		got = append(got, c.GetName())
	}
	if diff := cmp.Diff([]string{"http|inbound:8080", "opaque|inbound:8080"}, got); diff != "" {
		t.Errorf("web-0 inbound chains (-want +got):\n%s", diff)
	}
	// client: no inbound ports, and 3306 is an outbound skip port.
	r = Generate(m, m.WorkloadByNodeID("client.shop"), DefaultOptions())
	if len(r.Listeners) != 1 || r.Listeners[0].GetName() != "outbound" {
		t.Fatalf("client listeners: %v", r.Listeners)
	}
	for _, c := range r.Listeners[0].GetFilterChains() {
		if c.GetFilterChainMatch().GetDestinationPort().GetValue() == 3306 {
			t.Errorf("chain %s for an outbound skip port", c.GetName())
		}
	}
}

// TestResourcesAreValid: every generated resource passes Envoy's own
// validation (protoc-gen-validate) and sift-proxy's decoders, and every
// snapshot is consistent.
func TestResourcesAreValid(t *testing.T) {
	t.Parallel()
	example, err := file.Load("../examples/mesh/mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, hcm := range []bool{false, true} {
		for _, m := range []*mesh.Mesh{loadMesh(t, testMesh), example} {
			for _, w := range m.Workloads() {
				opts := DefaultOptions()
				opts.HTTPConnectionManager = hcm
				r := Generate(m, w, opts)
				snap, err := r.Snapshot()
				if err != nil {
					t.Fatal(err)
				}
				if err := snap.Consistent(); err != nil {
					t.Errorf("%s (hcm %v): %v", w.Key(), hcm, err)
				}
				checkValid(t, r)
			}
		}
	}
}

type validator interface{ ValidateAll() error }

// checkValid checks every resource with Envoy's own validation and with
// sift-proxy's decoders.
func checkValid(t *testing.T, r *Resources) {
	t.Helper()
	var all []validator
	for _, l := range r.Listeners {
		all = append(all, l)
	}
	for _, c := range r.Clusters {
		all = append(all, c)
	}
	for _, e := range r.Endpoints {
		all = append(all, e)
	}
	for _, rc := range r.Routes {
		all = append(all, rc)
	}
	for _, v := range all {
		if err := v.ValidateAll(); err != nil {
			t.Errorf("Envoy validation: %v", err)
		}
	}
	for _, rc := range r.Routes {
		if _, err := route.Decode(rc); err != nil {
			t.Errorf("sift-proxy rejects route configuration: %v", err)
		}
	}
	for _, l := range r.Listeners {
		if _, err := listener.Decode(l, filters.BuildContext{Clusters: upstream.NewManager(), Logger: slog.New(slog.DiscardHandler)}); err != nil {
			t.Errorf("sift-proxy rejects listener: %v", err)
		}
	}
	for _, c := range r.Clusters {
		uc, err := upstream.Build(c, upstream.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Errorf("sift-proxy rejects cluster: %v", err)
			continue
		}
		uc.Close()
	}
}

func TestVersionIsContentHash(t *testing.T) {
	t.Parallel()
	a, b := loadMesh(t, testMesh), loadMesh(t, testMesh)
	va := Generate(a, a.WorkloadByNodeID("web-0.shop"), DefaultOptions()).Version()
	vb := Generate(b, b.WorkloadByNodeID("web-0.shop"), DefaultOptions()).Version()
	if va != vb || len(va) != 16 {
		t.Fatalf("versions of equal meshes: %q, %q", va, vb)
	}
	c := loadMesh(t, strings.Replace(testMesh, "10.0.0.11", "10.0.0.12", 1))
	if vc := Generate(c, c.WorkloadByNodeID("web-0.shop"), DefaultOptions()).Version(); vc == va {
		t.Fatalf("an endpoint change kept version %q", va)
	}
}

func TestNodeFallbacks(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, testMesh)
	prefix, _ := ParseFallback(FallbackPrefix)
	istio, _ := ParseFallback(FallbackIstio)
	if _, err := ParseFallback("regex"); err == nil {
		t.Error("unknown fallback accepted")
	}
	tests := []struct {
		name, id string
		fallback NodeMatcher
		want     string
	}{
		{name: "exact", id: "web-0.shop", want: "shop/web-0"},
		{name: "exact custom", id: "db", want: "shop/db-0"},
		{name: "no fallback", id: "db-7f9c", want: ""},
		{name: "prefix", id: "db-7f9c", fallback: prefix, want: "shop/db-0"},
		{name: "prefix needs a separator", id: "dbx", fallback: prefix, want: ""},
		{name: "istio by name", id: "sidecar~10.9.9.9~web-1.shop~shop.svc.cluster.local", fallback: istio, want: "shop/web-1"},
		{name: "istio by address", id: "sidecar~10.0.0.20~db-0-xyz.shop~shop.svc.cluster.local", fallback: istio, want: "shop/db-0"},
		{name: "istio no match", id: "sidecar~10.1.1.1~x.y~z", fallback: istio, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := ""
			if w := Resolve(m, tt.fallback, tt.id); w != nil {
				got = w.Key()
			}
			if got != tt.want {
				t.Errorf("Resolve(%q) = %q, want %q", tt.id, got, tt.want)
			}
		})
	}
}

// TestControllerFallbackNode: a node matched only by the fallback gets its
// workload's snapshot when its first request names it, and loses it when it
// disconnects.
func TestControllerFallbackNode(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(testMesh), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := file.Open(path, file.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	prefix, _ := ParseFallback(FallbackPrefix)
	c, err := New(Config{Source: src, Options: DefaultOptions(), Fallback: prefix, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	exact, err := c.Cache().GetSnapshot("db")
	if err != nil {
		t.Fatalf("no snapshot for an exact node id: %v", err)
	}
	if _, err := c.Cache().GetSnapshot("db-abc"); err == nil {
		t.Fatal("snapshot for a node id before it connected")
	}
	if err := c.OnStreamOpen(context.Background(), 1, resource.AnyType); err != nil {
		t.Fatal(err)
	}
	if err := c.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "db-abc"}, TypeUrl: resource.ClusterType}); err != nil {
		t.Fatal(err)
	}
	got, err := c.Cache().GetSnapshot("db-abc")
	if err != nil {
		t.Fatalf("no snapshot for a fallback node: %v", err)
	}
	if got.GetVersion(resource.ListenerType) != exact.GetVersion(resource.ListenerType) {
		t.Errorf("fallback node got version %s, want db's %s", got.GetVersion(resource.ListenerType), exact.GetVersion(resource.ListenerType))
	}
	c.OnStreamClosed(1, nil)
	if _, err := c.Cache().GetSnapshot("db-abc"); err == nil {
		t.Error("a disconnected fallback node kept its snapshot")
	}
	var _ cache.SnapshotCache = c.Cache()
}

func netipAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// TestInboundClusterProtocol: the inbound cluster speaks the application's
// HTTP protocol: the declared one, or on a port of unknown protocol the one
// the request arrived in — an h2c or gRPC client must reach an HTTP/2-only
// application in HTTP/2 (found by test/TestMeshMTLS's gRPC call, which the
// inbound proxy sent to the gRPC server as HTTP/1.1).
func TestInboundClusterProtocol(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, `namespaces:
- name: shop
  workloads:
  - name: app-0
    addresses: [10.77.0.10]
    ports:
    - {port: 8080}
    - {port: 8081, protocol: HTTP/1}
    - {port: 9090, protocol: gRPC}
    - {port: 9091, protocol: HTTP/2}
    - {port: 5432}
`)
	downstream, h2 := upstreamHTTPOptions(), upstreamH2Options()
	tests := []struct {
		name string
		hcm  bool
		port uint16
		want map[string]*anypb.Any
	}{
		{name: "unknown protocol: the downstream's", hcm: true, port: 8080, want: downstream},
		{name: "declared HTTP/1: HTTP/1.1", hcm: true, port: 8081},
		{name: "declared gRPC: HTTP/2", hcm: true, port: 9090, want: h2},
		{name: "declared HTTP/2: HTTP/2", hcm: true, port: 9091, want: h2},
		{name: "opaque: none", hcm: true, port: 5432},
		{name: "tcp_proxy for HTTP: none", hcm: false, port: 8080},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := DefaultOptions()
			opts.HTTPConnectionManager = tt.hcm
			r := Generate(m, m.WorkloadByNodeID("app-0.shop"), opts)
			i := slices.IndexFunc(r.Clusters, func(c *clusterv3.Cluster) bool { return c.GetName() == InboundClusterName(tt.port) })
			if i < 0 {
				t.Fatalf("no cluster %s", InboundClusterName(tt.port))
			}
			if diff := cmp.Diff(tt.want, r.Clusters[i].GetTypedExtensionProtocolOptions(), protocmp.Transform(), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("typed_extension_protocol_options (-want +got):\n%s", diff)
			}
		})
	}
}

// TestDetectGracePeriodFromMesh: the mesh file's detect_grace_period reaches
// the detect filter's server_first_grace_period; without it the filter's
// default applies (the field is left unset).
func TestDetectGracePeriodFromMesh(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, yaml string
		want       *durationpb.Duration
	}{
		{"unset", "namespaces: [{name: a, workloads: [{name: w, addresses: [10.0.0.1], ports: [{port: 80}]}]}]\n", nil},
		{"off", "detect_grace_period: 0s\nnamespaces: [{name: a, workloads: [{name: w, addresses: [10.0.0.1], ports: [{port: 80}]}]}]\n", durationpb.New(0)},
		{"set", "detect_grace_period: 20ms\nnamespaces: [{name: a, workloads: [{name: w, addresses: [10.0.0.1], ports: [{port: 80}]}]}]\n", durationpb.New(20 * time.Millisecond)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := loadMesh(t, tt.yaml)
			r := Generate(m, m.WorkloadByNodeID("w.a"), DefaultOptions())
			var got []*detectv1.Detect
			for _, l := range r.Listeners {
				for _, lf := range l.GetListenerFilters() {
					var d detectv1.Detect
					if lf.GetTypedConfig().UnmarshalTo(&d) == nil {
						got = append(got, &d)
					}
				}
			}
			if len(got) == 0 {
				t.Fatal("no detect filter generated")
			}
			for _, d := range got {
				if !proto.Equal(d.GetServerFirstGracePeriod(), tt.want) {
					t.Errorf("server_first_grace_period = %v, want %v", d.GetServerFirstGracePeriod(), tt.want)
				}
			}
		})
	}
}

// testSecurity renders the mesh TLS contexts without a CA (no secrets).
type testSecurity struct{}

func (testSecurity) ClusterTransportSocket(s *mesh.Service, alpn ...string) *corev3.TransportSocket {
	return ca.TransportSocket(ca.UpstreamTLSContext(s.Hostname, nil, alpn...))
}

func (testSecurity) InboundTransportSocket(w *mesh.Workload, alpn ...string) *corev3.TransportSocket {
	return ca.TransportSocket(ca.DownstreamTLSContext("cluster.local", alpn...))
}

func (testSecurity) Secrets(*mesh.Workload) []*tlsv3.Secret { return nil }

func TestInboundAuthorizationAndPlaintextPorts(t *testing.T) {
	t.Parallel()
	m := loadMesh(t, `mtls: true
namespaces:
- name: shop
  workloads:
  - name: app-0
    addresses: [10.0.0.10]
    ports:
    - {port: 7000}
    - port: 8080
      authorized_clients: [{namespace: shop, service_account: client}, {namespace: ops}, {identity: "spiffe://other.example/ns/x/sa/y"}]
    - {port: 9000, plaintext: true}
`)
	opts := DefaultOptions()
	opts.Security = testSecurity{}
	r := Generate(m, m.WorkloadByNodeID("app-0.shop"), opts)
	var in *listenerv3.Listener
	for _, l := range r.Listeners {
		if l.GetName() == InboundListenerName {
			in = l
		}
	}
	if in == nil {
		t.Fatal("no inbound listener")
	}
	var names []string
	chains := map[string]*listenerv3.FilterChain{}
	for _, c := range in.GetFilterChains() {
		names = append(names, c.GetName())
		chains[c.GetName()] = c
	}
	want := []string{"http|inbound:7000", "http|inbound:8080", "http|inbound:9000",
		"http|plaintext|inbound:9000", "opaque|plaintext|inbound:9000", "opaque-transport|inbound:4143"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Fatalf("inbound chains (-want +got):\n%s", diff)
	}
	for name, c := range chains {
		plaintext := strings.Contains(name, "|plaintext|")
		if (c.GetTransportSocket() == nil) != plaintext {
			t.Errorf("chain %s: transport socket %v", name, c.GetTransportSocket())
		}
	}

	// 8080's HTTP chain starts with network RBAC allowing those identities.
	filters := chains["http|inbound:8080"].GetFilters()
	if len(filters) != 2 || filters[0].GetName() != "envoy.filters.network.rbac" {
		t.Fatalf("8080's filters: %v", filters)
	}
	var rb netrbacv3.RBAC
	if err := filters[0].GetTypedConfig().UnmarshalTo(&rb); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range rb.GetRules().GetPolicies()["authorized-clients"].GetPrincipals() {
		sm := p.GetAuthenticated().GetPrincipalName()
		got = append(got, sm.GetExact()+sm.GetPrefix()+"|"+map[bool]string{true: "prefix", false: "exact"}[sm.GetPrefix() != ""])
	}
	wantIDs := []string{"spiffe://cluster.local/ns/shop/sa/client|exact", "spiffe://other.example/ns/x/sa/y|exact", "spiffe://cluster.local/ns/ops/sa/|prefix"}
	if diff := cmp.Diff(wantIDs, got); diff != "" {
		t.Errorf("RBAC principals (-want +got):\n%s", diff)
	}
	if rb.GetRules().GetAction() != rbacv3.RBAC_ALLOW {
		t.Errorf("RBAC action %v", rb.GetRules().GetAction())
	}
	if f := chains["http|inbound:7000"].GetFilters(); len(f) != 1 {
		t.Errorf("7000 declares no authorization, yet has filters %v", f)
	}

	// The opaque transport applies the same rule to port 8080.
	var ot opaqueinboundv1.Inbound
	if err := chains["opaque-transport|inbound:4143"].GetFilters()[0].GetTypedConfig().UnmarshalTo(&ot); err != nil {
		t.Fatal(err)
	}
	pa := ot.GetPortAuthorizations()
	if len(pa) != 1 || pa[0].GetPort() != 8080 ||
		!slices.Equal(pa[0].GetPrincipals(), []string{"spiffe://cluster.local/ns/shop/sa/client", "spiffe://other.example/ns/x/sa/y"}) ||
		!slices.Equal(pa[0].GetPrincipalPrefixes(), []string{"spiffe://cluster.local/ns/ops/sa/"}) {
		t.Errorf("opaque transport port authorizations: %v", pa)
	}
	if _, err := r.Snapshot(); err != nil {
		t.Errorf("snapshot: %v", err)
	}
}

func TestAuthorizationValidation(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ port, want string }{
		{`{port: 80, plaintext: true, authorized_clients: [{namespace: shop}]}`, "plaintext: a port that accepts plaintext cannot also restrict its clients by identity"},
		{`{port: 80, authorized_clients: [{identity: "client"}]}`, `authorized_clients[0].identity: "client" is not a SPIFFE ID`},
		{`{port: 80, authorized_clients: [{service_account: client}]}`, "authorized_clients[0]: must name an identity, or a namespace (and service_account)"},
		{`{port: 80, authorized_clients: [{identity: "spiffe://a/b", namespace: shop}]}`, "authorized_clients[0]: give identity, or namespace (and service_account), not both"},
		{`{port: 80, authorized_clients: [{nmespace: shop}]}`, `nmespace`},
	} {
		_, err := file.Parse("mesh.yaml", []byte("namespaces:\n- name: shop\n  workloads:\n  - name: a\n    ports: ["+tt.port+"]\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("port %s: %v, want an error containing %q", tt.port, err, tt.want)
		}
	}
}
