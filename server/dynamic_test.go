package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/internal/testnet"
	"github.com/siftmesh/sift/upstream"
	"github.com/siftmesh/sift/xds"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

// subscriptions is a real go-control-plane ADS server that records the
// resource names the proxy asks for and never answers (it has no snapshot):
// the updates a test applies come through dynamic.Apply, as the xDS client
// delivers them, so that each step is deterministic.
type subscriptions struct {
	addr string

	mu      sync.Mutex
	names   map[string][]string // type URL → resource names of the last request
	changed chan struct{}
}

func startSubscriptions(t *testing.T) *subscriptions {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &subscriptions{addr: ln.Addr().String(), names: map[string][]string{}, changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	xdsServer := serverv3.NewServer(ctx, cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), serverv3.CallbackFuncs{
		StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
			s.mu.Lock()
			s.names[req.GetTypeUrl()] = slices.Sorted(slices.Values(req.GetResourceNames()))
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
			return nil
		},
	})
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, xdsServer)
	go g.Serve(ln)
	t.Cleanup(func() { g.Stop(); cancel() })
	return s
}

// wait waits until the proxy's last request for typeURL names exactly want.
func (s *subscriptions) wait(t *testing.T, typeURL string, want ...string) {
	t.Helper()
	deadline := time.After(testnet.Limit)
	for {
		s.mu.Lock()
		got, ok := s.names[typeURL]
		s.mu.Unlock()
		if ok && slices.Equal(got, want) {
			return
		}
		select {
		case <-s.changed:
		case <-deadline:
			t.Fatalf("subscription to %s: %q, want %q", typeURL, got, want)
		}
	}
}

// fixture is a started sift-proxy whose dynamic_resources name the
// subscriptions server, with two static clusters, "greeter" (a server that
// speaks first) and "web" (an HTTP server answering with the request path),
// and a static listener "static".
type fixture struct {
	s    *Server
	subs *subscriptions
}

func start(t *testing.T) *fixture {
	t.Helper()
	subs := startSubscriptions(t)
	greeter := testnet.Backend(t, func(c net.Conn) { io.WriteString(c, "220 static\r\n") })
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "web "+r.URL.Path) }))
	t.Cleanup(web.Close)
	yaml := fmt.Sprintf(`
node: {id: proxy, cluster: test}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  listeners: [%s]
  clusters:
  - %s
  - %s
  - %s
`, tcpListenerJSON("static", "static", "greeter"),
		staticClusterJSON("xds", subs.addr), staticClusterJSON("greeter", greeter), staticClusterJSON("web", web.Listener.Addr().String()))
	b, err := bootstrap.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Build(b, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		s.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return &fixture{s: s, subs: subs}
}

// staticClusterJSON is a STATIC cluster with one endpoint, as JSON (which
// YAML accepts too).
func staticClusterJSON(name, addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf(`{"name": %q, "type": "STATIC", "connect_timeout": "5s", "load_assignment": {"cluster_name": %q, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": %q, "port_value": %s}}}}]}]}}`,
		name, name, host, port)
}

// apply applies resources (protojson, each a resource of typeURL named by
// its key) as one xDS update.
func (f *fixture) apply(typeURL string, resources map[string]string) error {
	msgs := map[string]proto.Message{}
	for name, js := range resources {
		var m proto.Message
		switch typeURL {
		case xds.ClusterType:
			m = &clusterv3.Cluster{}
		case xds.EndpointType:
			m = &endpointv3.ClusterLoadAssignment{}
		case xds.ListenerType:
			m = &listenerv3.Listener{}
		case xds.RouteType:
			m = &routev3.RouteConfiguration{}
		}
		if err := protojson.Unmarshal([]byte(js), m); err != nil {
			return fmt.Errorf("test resource %q: %w", name, err)
		}
		msgs[name] = m
	}
	return f.s.dyn.Apply(typeURL, msgs)
}

// mustApply is apply, failing the test on error.
func (f *fixture) mustApply(t *testing.T, typeURL string, resources map[string]string) {
	t.Helper()
	if err := f.apply(typeURL, resources); err != nil {
		t.Fatalf("applying %s: %v", typeURL, err)
	}
}

// applyErr is apply of an update that must be rejected with an error
// containing each of want.
func (f *fixture) applyErr(t *testing.T, typeURL string, resources map[string]string, want ...string) {
	t.Helper()
	err := f.apply(typeURL, resources)
	if err == nil {
		t.Fatalf("applying %s: no error, want one naming %q", typeURL, want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
}

// Resources as protojson.

func edsClusterJSON(name, service string) string {
	return fmt.Sprintf(`{"name": %q, "type": "EDS", "connectTimeout": "5s", "edsClusterConfig": {"serviceName": %q, "edsConfig": {"ads": {}, "resourceApiVersion": "V3"}}}`, name, service)
}

func assignmentJSON(service string, addrs ...string) string {
	var eps []string
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		eps = append(eps, fmt.Sprintf(`{"endpoint": {"address": {"socketAddress": {"address": %q, "portValue": %s}}}}`, host, port))
	}
	return fmt.Sprintf(`{"clusterName": %q, "endpoints": [{"lbEndpoints": [%s]}]}`, service, strings.Join(eps, ", "))
}

// tcpListenerJSON is a listener on 127.0.0.1 (a new port) proxying to cluster.
func tcpListenerJSON(name, statPrefix, cluster string) string {
	return fmt.Sprintf(`{"name": %q, "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}, "filterChains": [{"filters": [{"name": "tcp", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", "statPrefix": %q, "cluster": %q}}]}]}`,
		name, statPrefix, cluster)
}

// httpListenerJSON is an HTTP listener taking route configuration route
// from ADS.
func httpListenerJSON(name, route string) string {
	return fmt.Sprintf(`{"name": %q, "address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}, "filterChains": [{"filters": [{"name": "hcm", "typedConfig": {
		"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", "statPrefix": %q,
		"rds": {"routeConfigName": %q, "configSource": {"ads": {}, "resourceApiVersion": "V3"}},
		"httpFilters": [{"name": "router", "typedConfig": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}]}]}`,
		name, name, route)
}

func routeJSON(name, cluster string) string {
	return fmt.Sprintf(`{"name": %q, "virtualHosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": %q}}]}]}`, name, cluster)
}

// greeting reads the first line a connection to the named listener gets.
func (f *fixture) greeting(t *testing.T, name string) string {
	t.Helper()
	l := f.s.Listeners().Get(name)
	if l == nil {
		t.Fatalf("listener %q is not serving", name)
	}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(testnet.Limit))
	b, _ := io.ReadAll(c)
	return string(b)
}

// get fetches path through the named HTTP listener: "status body".
func (f *fixture) get(t *testing.T, name, path string) string {
	t.Helper()
	l := f.s.Listeners().Get(name)
	if l == nil {
		t.Fatalf("listener %q is not serving", name)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: testnet.Limit}
	resp, err := client.Get("http://" + l.Addr().String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b)
}

func endpointAddrs(c *upstream.Cluster) []string {
	var out []string
	for _, ep := range c.Endpoints() {
		out = append(out, ep.Addr)
	}
	return out
}

func TestApplyClusters(t *testing.T) {
	t.Parallel()
	f := start(t)
	f.mustApply(t, xds.ClusterType, map[string]string{
		"dyn": staticClusterJSON("dyn", "127.0.0.1:1"),
		"eds": edsClusterJSON("eds", "eds-service"),
	})
	dyn := f.s.clusters.Get("dyn")
	if dyn == nil || f.s.clusters.Get("eds") == nil || f.s.clusters.Get("greeter") == nil {
		t.Fatalf("clusters after CDS: %v", clusterNames(f.s))
	}
	// The EDS cluster's endpoints are subscribed to.
	f.subs.wait(t, xds.EndpointType, "eds-service")

	t.Run("unchanged clusters keep their state", func(t *testing.T) {
		f.mustApply(t, xds.ClusterType, map[string]string{
			"dyn": staticClusterJSON("dyn", "127.0.0.1:1"),
			"eds": edsClusterJSON("eds", "eds-service"),
		})
		if f.s.clusters.Get("dyn") != dyn {
			t.Error("an unchanged cluster was rebuilt: its endpoints and balancer state are lost")
		}
	})
	t.Run("a changed cluster is rebuilt", func(t *testing.T) {
		f.mustApply(t, xds.ClusterType, map[string]string{
			"dyn": staticClusterJSON("dyn", "127.0.0.1:2"),
			"eds": edsClusterJSON("eds", "eds-service"),
		})
		got := f.s.clusters.Get("dyn")
		if got == dyn || !slices.Equal(endpointAddrs(got), []string{"127.0.0.1:2"}) {
			t.Errorf("changed cluster: same=%v endpoints=%v", got == dyn, endpointAddrs(got))
		}
		dyn = got
	})
	t.Run("a rejected update changes nothing", func(t *testing.T) {
		f.applyErr(t, xds.ClusterType, map[string]string{
			"dyn": staticClusterJSON("dyn", "127.0.0.1:2"),
			"new": staticClusterJSON("new", "127.0.0.1:3"),
			"bad": `{"name": "bad", "type": "STATIC", "lbPolicy": "MAGLEV"}`,
		}, `"bad"`)
		f.applyErr(t, xds.ClusterType, map[string]string{"web": staticClusterJSON("web", "127.0.0.1:4")},
			`cluster "web": already defined in static_resources`)
		if diff := cmp.Diff([]string{"dyn", "eds", "greeter", "web", "xds"}, clusterNames(f.s)); diff != "" {
			t.Errorf("clusters (-want +got):\n%s", diff)
		}
		if f.s.clusters.Get("dyn") != dyn {
			t.Error("a rejected update replaced a cluster")
		}
	})
	t.Run("removed clusters go, with their subscriptions", func(t *testing.T) {
		f.mustApply(t, xds.ClusterType, map[string]string{})
		if diff := cmp.Diff([]string{"greeter", "web", "xds"}, clusterNames(f.s)); diff != "" {
			t.Errorf("clusters (-want +got):\n%s", diff)
		}
		f.subs.wait(t, xds.EndpointType)
	})
}

func clusterNames(s *Server) []string {
	var names []string
	for _, c := range s.clusters.Clusters() {
		names = append(names, c.Name())
	}
	return names
}

func TestApplyEndpoints(t *testing.T) {
	t.Parallel()
	f := start(t)
	// Endpoints that arrive before their cluster are kept for it.
	f.mustApply(t, xds.EndpointType, map[string]string{"svc": assignmentJSON("svc", "127.0.0.1:1")})
	f.mustApply(t, xds.ClusterType, map[string]string{"c": edsClusterJSON("c", "svc")})
	c := f.s.clusters.Get("c")
	if diff := cmp.Diff([]string{"127.0.0.1:1"}, endpointAddrs(c)); diff != "" {
		t.Errorf("endpoints of a cluster arriving after them (-want +got):\n%s", diff)
	}

	f.mustApply(t, xds.EndpointType, map[string]string{"svc": assignmentJSON("svc", "127.0.0.1:2", "127.0.0.1:3")})
	if diff := cmp.Diff([]string{"127.0.0.1:2", "127.0.0.1:3"}, endpointAddrs(c)); diff != "" {
		t.Errorf("endpoints after an EDS update (-want +got):\n%s", diff)
	}
	if f.s.clusters.Get("c") != c {
		t.Error("an endpoint update rebuilt the cluster")
	}

	bad := assignmentJSON("svc", "127.0.0.1:4")
	bad = strings.Replace(bad, `"127.0.0.1"`, `"not-an-ip"`, 1)
	f.applyErr(t, xds.EndpointType, map[string]string{"svc": bad}, `ClusterLoadAssignment "svc"`, "not an IP address")
	if diff := cmp.Diff([]string{"127.0.0.1:2", "127.0.0.1:3"}, endpointAddrs(c)); diff != "" {
		t.Errorf("endpoints after a rejected update (-want +got):\n%s", diff)
	}

	// An endpoint that stays across an update keeps its state: here the
	// count of connections open to it.
	live := testnet.Backend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	f.mustApply(t, xds.EndpointType, map[string]string{"svc": assignmentJSON("svc", live)})
	conn, err := c.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	f.mustApply(t, xds.EndpointType, map[string]string{"svc": assignmentJSON("svc", live, "127.0.0.1:5")})
	if eps := c.Endpoints(); len(eps) != 2 || eps[0].Addr != live || eps[0].Active != 1 {
		t.Errorf("after an update keeping %s with a connection open: %+v, want its Active count 1", live, eps)
	}
}

func TestApplyListeners(t *testing.T) {
	t.Parallel()
	f := start(t)
	f.mustApply(t, xds.ListenerType, map[string]string{"l": tcpListenerJSON("l", "v1", "greeter")})
	if got := f.greeting(t, "l"); got != "220 static\r\n" {
		t.Fatalf("through the dynamic listener: %q", got)
	}
	first := f.s.Listeners().Get("l").Config()

	t.Run("an unchanged listener keeps its generation", func(t *testing.T) {
		f.mustApply(t, xds.ListenerType, map[string]string{"l": tcpListenerJSON("l", "v1", "greeter")})
		if f.s.Listeners().Get("l").Config() != first {
			t.Error("an unchanged listener got a new configuration: its connections would drain")
		}
	})
	t.Run("a changed listener gets a new generation", func(t *testing.T) {
		addr := f.s.Listeners().Get("l").Addr()
		f.mustApply(t, xds.ListenerType, map[string]string{"l": tcpListenerJSON("l", "v2", "greeter")})
		l := f.s.Listeners().Get("l")
		if l.Config() == first {
			t.Error("a changed listener kept its old configuration")
		}
		if l.Addr() != addr {
			t.Errorf("the listener moved from %v to %v", addr, l.Addr())
		}
	})
	t.Run("a rejected update changes nothing", func(t *testing.T) {
		serving := f.s.Listeners().Get("l").Config()
		bad := strings.Replace(tcpListenerJSON("l", "v3", "greeter"), `"filterChains"`, `"transparent": true, "filterChains"`, 1)
		f.applyErr(t, xds.ListenerType, map[string]string{"l": bad, "m": tcpListenerJSON("m", "m", "greeter")},
			`listener "l"`, "transparent: not supported by Sift")
		if f.s.Listeners().Get("l").Config() != serving || f.s.Listeners().Get("m") != nil {
			t.Error("a rejected update changed the listeners")
		}
		if got := f.greeting(t, "l"); got != "220 static\r\n" {
			t.Errorf("after the rejected update: %q", got)
		}
	})
	t.Run("a static listener's name is refused", func(t *testing.T) {
		f.applyErr(t, xds.ListenerType, map[string]string{"static": tcpListenerJSON("static", "s", "greeter")},
			`listener "static": already defined in static_resources`)
	})
	t.Run("a removed listener stops", func(t *testing.T) {
		f.mustApply(t, xds.ListenerType, map[string]string{})
		if f.s.Listeners().Get("l") != nil {
			t.Error("the removed listener still serves")
		}
	})
}

func TestApplyUnknownType(t *testing.T) {
	t.Parallel()
	f := start(t)
	err := f.s.dyn.Apply("type.googleapis.com/envoy.service.runtime.v3.Runtime", nil)
	if err == nil || !strings.Contains(err.Error(), "not consumed by Sift") {
		t.Errorf("error = %v", err)
	}
}

// TestListenerWarming: a listener whose route configuration has not arrived
// waits (Envoy's listener warming) while its previous version serves.
func TestListenerWarming(t *testing.T) {
	t.Parallel()
	f := start(t)
	f.mustApply(t, xds.ListenerType, map[string]string{"h": httpListenerJSON("h", "r1")})
	if f.s.Listeners().Get("h") != nil {
		t.Fatal("the listener serves before its route configuration arrived")
	}
	f.subs.wait(t, xds.RouteType, "r1")

	f.mustApply(t, xds.RouteType, map[string]string{"r1": routeJSON("r1", "web")})
	if got := f.get(t, "h", "/a"); got != "200 web /a" {
		t.Fatalf("once the routes arrived: %q", got)
	}
	first := f.s.Listeners().Get("h").Config()

	// A new version with a route configuration not yet known warms; the
	// first version serves meanwhile, and both route names are subscribed.
	f.mustApply(t, xds.ListenerType, map[string]string{"h": httpListenerJSON("h", "r2")})
	if f.s.Listeners().Get("h").Config() != first {
		t.Fatal("the new version serves before its routes arrived")
	}
	f.subs.wait(t, xds.RouteType, "r1", "r2")
	if got := f.get(t, "h", "/b"); got != "200 web /b" {
		t.Errorf("the previous version while the new one warms: %q", got)
	}

	// Its routes arrive: the new version serves, the old route name goes.
	f.mustApply(t, xds.RouteType, map[string]string{"r1": routeJSON("r1", "web"), "r2": routeJSON("r2", "web")})
	if f.s.Listeners().Get("h").Config() == first {
		t.Error("the warmed version is not serving")
	}
	f.subs.wait(t, xds.RouteType, "r2")
	if got := f.get(t, "h", "/c"); got != "200 web /c" {
		t.Errorf("the warmed version: %q", got)
	}
}

// TestListenerWarmingTimeout: a new listener version whose routes never
// come replaces the previous one after the warming timeout, and answers 503
// until they do.
func TestListenerWarmingTimeout(t *testing.T) {
	t.Parallel()
	f := start(t)
	f.mustApply(t, xds.RouteType, map[string]string{"r1": routeJSON("r1", "web")})
	f.mustApply(t, xds.ListenerType, map[string]string{"h": httpListenerJSON("h", "r1")})
	first := f.s.Listeners().Get("h").Config()
	f.s.dyn.mu.Lock()
	f.s.dyn.warmingTimeout = 10 * time.Millisecond
	f.s.dyn.mu.Unlock()
	f.mustApply(t, xds.ListenerType, map[string]string{"h": httpListenerJSON("h", "never")})
	deadline := time.Now().Add(testnet.Limit)
	for f.s.Listeners().Get("h").Config() == first {
		if time.Now().After(deadline) {
			t.Fatal("the new version still warms after its timeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := f.get(t, "h", "/"); !strings.HasPrefix(got, "503 ") {
		t.Errorf("without routes: %q, want 503", got)
	}
	f.subs.wait(t, xds.RouteType, "never")
	f.s.dyn.mu.Lock()
	defer f.s.dyn.mu.Unlock()
	if len(f.s.dyn.warming) != 0 {
		t.Errorf("still warming: %v", sortedNames(f.s.dyn.warming))
	}
}
