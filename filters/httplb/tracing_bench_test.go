package httplb_test

import (
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/siftmesh/sift/internal/otlptest"
)

// BenchmarkHTTP1KeepAlive32Tracing is BenchmarkHTTP1KeepAlive32 with
// tracing on the HCM, exported to a real OTLP receiver in the same process
// (whose decoding is counted too), with every request sampled and with 1 %:
// the difference is what a span per request costs.
func BenchmarkHTTP1KeepAlive32Tracing(b *testing.B) {
	for _, pct := range []int{100, 1} {
		b.Run(fmt.Sprintf("sampled=%d%%", pct), func(b *testing.B) { benchTracing(b, pct) })
	}
}

func benchTracing(b *testing.B, pct int) {
	rcv := otlptest.Start(b)
	host, port, _ := net.SplitHostPort(rcv.Addr)
	addr := startBenchProxyHCM(b, `          tracing:
            random_sampling: {value: `+fmt.Sprint(pct)+`}
            provider: {name: envoy.tracers.opentelemetry, typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, service_name: bench, grpc_service: {envoy_grpc: {cluster_name: otel}}}}
`, fmt.Sprintf("  - {name: otel, type: STATIC, connect_timeout: 1s, load_assignment: {cluster_name: otel, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]}}\n", host, port))
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
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchGet(b, client, url)
		}
	})
}
