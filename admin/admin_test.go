package admin_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/admin"
	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/server"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

var quiet = slog.New(slog.DiscardHandler)

// bootstrapYAML has an admin address and two static listeners, "b" and "a",
// in that order.
const bootstrapYAML = `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: b
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: [{name: tcp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: b, cluster: c}}]}]
  - name: a
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: [{name: tcp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: a, cluster: c}}]}]
  clusters:
  - {name: c, type: STATIC, connect_timeout: 1s, load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]}}
`

// newServer builds sift-proxy from bootstrapYAML: the admin pages' real
// Source. start also binds its listeners and its own admin server. It is
// shut down when the test ends.
func newServer(t *testing.T, start bool) *server.Server {
	t.Helper()
	b, err := bootstrap.Parse([]byte(bootstrapYAML))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Build(b, server.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if !start {
		t.Cleanup(srv.Close)
		return srv
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

// response is what a test looks at in an admin page.
type response struct {
	Status      int
	ContentType string
	Body        string
}

// get requests path from the admin server at addr with method, over a
// fresh connection.
func get(t *testing.T, method, addr, path string) response {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: string(body)}
}

func TestReady(t *testing.T) {
	t.Parallel()
	a, err := admin.Listen("127.0.0.1:0", newServer(t, false), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	const text = "text/plain; charset=utf-8"
	addr := a.Addr().String()
	if diff := cmp.Diff(response{http.StatusServiceUnavailable, text, "PRE_INITIALIZING\n"}, get(t, "GET", addr, "/ready")); diff != "" {
		t.Errorf("before SetState (-want +got):\n%s", diff)
	}
	// Serially: the states follow one another as the server's lifecycle.
	tests := []struct {
		state admin.State
		want  response
	}{
		{admin.StateLive, response{http.StatusOK, text, "LIVE\n"}},
		{admin.StateDraining, response{http.StatusServiceUnavailable, text, "DRAINING\n"}},
		{admin.StateInitializing, response{http.StatusServiceUnavailable, text, "PRE_INITIALIZING\n"}},
	}
	for _, tt := range tests {
		a.SetState(tt.state)
		if diff := cmp.Diff(tt.want, get(t, "GET", addr, "/ready")); diff != "" {
			t.Errorf("state %v (-want +got):\n%s", tt.state, diff)
		}
	}
	if got := get(t, "POST", addr, "/ready"); got.Status != http.StatusMethodNotAllowed {
		t.Errorf("POST /ready: status %d, want 405", got.Status)
	}
}

func TestPages(t *testing.T) {
	t.Parallel()
	srv := newServer(t, true)
	addr := srv.AdminAddr()
	la, lb := srv.Listeners().Get("a").Addr(), srv.Listeners().Get("b").Addr()
	tests := []struct {
		name, path string
		want       response
	}{
		{
			name: "ready once started",
			path: "/ready",
			want: response{http.StatusOK, "text/plain; charset=utf-8", "LIVE\n"},
		},
		{
			name: "listeners by name",
			path: "/listeners",
			want: response{http.StatusOK, "text/plain; charset=utf-8", "a::" + la.String() + "\nb::" + lb.String() + "\n"},
		},
		{name: "unknown path", path: "/stats/prometheus/nope", want: response{http.StatusNotFound, "text/plain; charset=utf-8", "404 page not found\n"}},
		{name: "below a page", path: "/ready/x", want: response{http.StatusNotFound, "text/plain; charset=utf-8", "404 page not found\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, get(t, "GET", addr, tt.path)); diff != "" {
				t.Errorf("GET %s (-want +got):\n%s", tt.path, diff)
			}
		})
	}
}

// TestConfigDump checks the page's shape: Envoy's admin.v3.ConfigDump in
// protojson with the proto field names, the bootstrap first, then clusters,
// listeners and endpoints.
func TestConfigDump(t *testing.T) {
	t.Parallel()
	srv := newServer(t, true)
	got := get(t, "GET", srv.AdminAddr(), "/config_dump")
	if got.Status != http.StatusOK || got.ContentType != "application/json" {
		t.Fatalf("status %d, Content-Type %q", got.Status, got.ContentType)
	}
	if !strings.Contains(got.Body, `"static_listeners"`) || strings.Contains(got.Body, `"staticListeners"`) {
		t.Errorf("the dump does not use the proto field names:\n%s", got.Body)
	}
	var dump adminv3.ConfigDump
	if err := protojson.Unmarshal([]byte(got.Body), &dump); err != nil {
		t.Fatalf("not an admin.v3.ConfigDump: %v\n%s", err, got.Body)
	}
	var types []string
	for _, c := range dump.GetConfigs() {
		types = append(types, strings.TrimPrefix(c.GetTypeUrl(), "type.googleapis.com/envoy.admin.v3."))
	}
	if diff := cmp.Diff([]string{"BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "EndpointsConfigDump", "SecretsConfigDump"}, types); diff != "" {
		t.Fatalf("configs (-want +got):\n%s", diff)
	}

	var clusters adminv3.ClustersConfigDump
	if err := dump.GetConfigs()[1].UnmarshalTo(&clusters); err != nil {
		t.Fatal(err)
	}
	var clusterNames, listenerNames []string
	for _, c := range clusters.GetStaticClusters() {
		clusterNames = append(clusterNames, resourceName(t, c.GetCluster()))
	}
	var listeners adminv3.ListenersConfigDump
	if err := dump.GetConfigs()[2].UnmarshalTo(&listeners); err != nil {
		t.Fatal(err)
	}
	for _, l := range listeners.GetStaticListeners() {
		listenerNames = append(listenerNames, resourceName(t, l.GetListener()))
	}
	// Static resources in the bootstrap's order; no dynamic ones without xDS.
	if diff := cmp.Diff([]string{"c"}, clusterNames); diff != "" {
		t.Errorf("static clusters (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"b", "a"}, listenerNames); diff != "" {
		t.Errorf("static listeners (-want +got):\n%s", diff)
	}
	if n := len(clusters.GetDynamicActiveClusters()) + len(listeners.GetDynamicListeners()); n != 0 {
		t.Errorf("%d dynamic resources without dynamic_resources", n)
	}
}

// resourceName unpacks a dumped resource and returns its name.
func resourceName(t *testing.T, a *anypb.Any) string {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	return m.(interface{ GetName() string }).GetName()
}

func TestClose(t *testing.T) {
	t.Parallel()
	a, err := admin.Listen("127.0.0.1:0", newServer(t, false), quiet)
	if err != nil {
		t.Fatal(err)
	}
	addr := a.Addr().String()
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Error("the admin address still accepts connections after Close")
	}
	again, err := admin.Listen(addr, newServer(t, false), quiet)
	if err != nil {
		t.Fatalf("the address is not free after Close: %v", err)
	}
	again.Close(context.Background())
}
