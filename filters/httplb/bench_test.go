package httplb_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/server"
)

// benchBootstrap is the bench's s4 shape (bench/.work/s4/sift.yaml): one
// HCM listener, codec AUTO, one prefix route to a one-endpoint STATIC
// round-robin cluster.
const benchBootstrap = `
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          codec_type: AUTO
          route_config: {name: r, virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: c}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
  clusters:
  - {name: c, type: STATIC, connect_timeout: 1s, lb_policy: ROUND_ROBIN, load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}}]}]}}
`

// startBenchProxy starts a backend answering a small fixed body and an
// in-process sift-proxy in front of it; it returns the proxy's address.
func startBenchProxy(b *testing.B) string {
	b.Helper()
	return startBenchProxyHCM(b, "")
}

// startBenchProxyHCM is startBenchProxy with hcm, YAML fields (indented
// for the HCM's typed_config), added to the HCM, and clusters (YAML list
// items) added to the bootstrap's.
func startBenchProxyHCM(b *testing.B, hcm string, clusters ...string) string {
	b.Helper()
	return startBench(b, false, hcm, clusters...)
}

// startBench is startBenchProxyHCM, with an admin server when admin is set:
// a sift-proxy with an admin address exports metrics, so every connection
// and request is counted (telemetry on).
func startBench(b testing.TB, admin bool, hcm string, clusters ...string) string {
	b.Helper()
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "hello from the backend\n")
	}))
	b.Cleanup(backend.Close)
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	return startBenchWith(b, port, admin, hcm, clusters...)
}

// startBenchWithBackend starts the bench's sift-proxy in front of a
// backend of the caller's on 127.0.0.1:port.
func startBenchWithBackend(b testing.TB, port string) string {
	b.Helper()
	return startBenchWith(b, port, false, "")
}

func startBenchWith(b testing.TB, port string, admin bool, hcm string, clusters ...string) string {
	b.Helper()
	yaml := strings.Replace(fmt.Sprintf(benchBootstrap, port), "codec_type: AUTO\n", "codec_type: AUTO\n"+hcm, 1) + strings.Join(clusters, "")
	if admin {
		yaml = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\n" + yaml
	}
	return startServer(b, yaml, server.Options{}).Listeners().Get("http").Addr().String()
}

// startServer parses and validates the bootstrap yaml and starts an
// in-process sift-proxy from it, shut down when the test ends (Shutdown
// may also be called earlier). A nil opts.Logger discards the log.
func startServer(t testing.TB, yaml string, opts server.Options) *server.Server {
	t.Helper()
	bs, err := bootstrap.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if err := bootstrap.Validate(bs); err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := server.Build(bs, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

func benchGet(b *testing.B, client *http.Client, url string) {
	resp, err := client.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		b.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkHTTP1KeepAlive measures one HTTP/1.1 GET through the HCM on a
// keep-alive connection: a client, sift-proxy and a backend, all on
// loopback, one request at a time.
func BenchmarkHTTP1KeepAlive(b *testing.B) {
	addr := startBenchProxy(b)
	tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	url := "http://" + addr + "/"
	benchGet(b, client, url) // connect outside the timing
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		benchGet(b, client, url)
	}
}

// BenchmarkHTTP1KeepAlive32 is wrk's shape: 32 keep-alive connections,
// each doing sequential GETs.
func BenchmarkHTTP1KeepAlive32(b *testing.B) {
	benchKeepAlive32(b, startBenchProxy(b))
}

// BenchmarkHTTP1KeepAlive32Metrics is BenchmarkHTTP1KeepAlive32 with
// telemetry on (an admin server, so Prometheus metrics count every request
// and connection): the difference is what metrics cost. Run it alone: the
// metrics hooks are process-wide and stay installed.
func BenchmarkHTTP1KeepAlive32Metrics(b *testing.B) {
	benchKeepAlive32(b, startBench(b, true, ""))
}

func benchKeepAlive32(b *testing.B, addr string) {
	tr := &http.Transport{MaxIdleConnsPerHost: 32, MaxConnsPerHost: 32, DisableCompression: true}
	b.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	url := "http://" + addr + "/"
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() { benchGet(b, client, url) })
	}
	wg.Wait()
	b.ReportAllocs()
	b.ResetTimer()
	b.SetParallelism(32) // 32 × GOMAXPROCS goroutines
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchGet(b, client, url)
		}
	})
}

// BenchmarkGRPCUnary is s5's gRPC unary shape: a grpc-go client (4
// connections, 32 calls in flight) through sift-proxy (HTTP/2 both sides)
// to a grpc-go backend, 64-byte messages, all in one process.
func BenchmarkGRPCUnary(b *testing.B) {
	be := startGRPCBackend(b)
	benchGRPCUnary(b, startH2ClusterProxy(b, be.l.Addr().String(), "", "", ""))
}

// BenchmarkGRPCUnaryDirect is BenchmarkGRPCUnary without the proxy: the
// difference between the two is the proxy's share (allocations per call).
func BenchmarkGRPCUnaryDirect(b *testing.B) {
	benchGRPCUnary(b, startGRPCBackend(b).l.Addr().String())
}

func benchGRPCUnary(b *testing.B, addr string) {
	var ccs [4]*grpc.ClientConn
	for i := range ccs {
		ccs[i] = grpcClient(b, addr)
	}
	ctx := context.Background()
	in := bytes.Repeat([]byte{'x'}, 64)
	for _, cc := range ccs {
		if _, err := unary(ctx, cc, "/t/Unary", in); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int32
	b.ReportAllocs()
	b.ResetTimer()
	b.SetParallelism(16) // 32 callers on 2 CPUs
	b.RunParallel(func(pb *testing.PB) {
		cc := ccs[next.Add(1)%4]
		for pb.Next() {
			if _, err := unary(ctx, cc, "/t/Unary", in); err != nil {
				b.Fatal(err)
			}
		}
	})
}
