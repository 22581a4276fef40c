package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/server"
)

// TestLearnedServerFirstReachesControlPlane: a proxy that learns a
// destination to be server-first tells sift-control, which names the
// service port to mark opaque (admin /server_first, a metric, a log line).
func TestLearnedServerFirstReachesControlPlane(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	meshPath := filepath.Join(dir, "mesh.yaml")
	writeMesh := func(port string) {
		y := "namespaces:\n- name: db\n  services:\n  - {name: mariadb, cluster_ips: [127.0.0.1], selector: {app: db}, ports: [{port: " + port + "}]}\n" +
			"  workloads:\n  - {name: db-0, addresses: [127.0.0.9], labels: {app: db}}\n"
		if err := os.WriteFile(meshPath, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeMesh("1")
	ctl := startControl(t, meshPath)
	host, port, _ := net.SplitHostPort(ctl.xds)

	yaml := fmt.Sprintf(`
node: {id: client-0.db, cluster: test}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, server_first_grace_period: 0.01s}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1]}, filters: %s}
    default_filter_chain: {name: opaque, filters: %s}
  clusters:
  - {name: xds, type: STATIC, connect_timeout: 1s, typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}, load_assignment: {cluster_name: xds, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]}}
`, tcpProxy("greeter"), tcpProxy("greeter"), host, port) + staticCluster("greeter", greeter(t, "J\x00\x00\x00\x0a11.4.2-MariaDB\r\n"))
	b, err := bootstrap.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.Build(b, server.Options{Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		InsightsInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	addr := srv.Listeners().Get("sift").Addr().String()
	_, lport, _ := net.SplitHostPort(addr)
	writeMesh(lport) // the service's cluster IP and port are the listener's

	for range 3 { // three greetings: learned
		c := dial(t, addr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	var got []struct {
		Service string   `json:"service"`
		Port    int      `json:"port"`
		Nodes   []string `json:"reported_by"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + ctl.admin + "/server_first")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
		}
		if len(got) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(got) != 1 || got[0].Service != "db/mariadb" || fmt.Sprint(got[0].Port) != lport || strings.Join(got[0].Nodes, ",") != "client-0.db" {
		t.Fatalf("/server_first = %+v; want db/mariadb port %s reported by client-0.db", got, lport)
	}
	for !strings.Contains(ctl.logs(), "looks server-first: mark it opaque") { // the log is read asynchronously
		if time.Now().After(deadline) {
			t.Fatal("sift-control did not log its advice")
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.Get("http://" + ctl.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	found := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), `sift_control_server_first_ports{port="`+lport+`",service="db/mariadb"} 1`) {
			found = true
		}
	}
	if !found {
		t.Error("metric sift_control_server_first_ports missing")
	}
}
