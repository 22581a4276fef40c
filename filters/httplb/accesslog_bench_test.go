package httplb_test

import (
	"net/http"
	"path/filepath"
	"sync"
	"testing"
)

// BenchmarkHTTP1KeepAlive32AccessLog is BenchmarkHTTP1KeepAlive32 with a
// file access log in Envoy's default format on the HCM: the difference is
// what access logging costs per request.
func BenchmarkHTTP1KeepAlive32AccessLog(b *testing.B) {
	path := filepath.Join(b.TempDir(), "access.log")
	addr := startBenchProxyHCM(b, `          access_log: [{name: envoy.access_loggers.file, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: `+path+`}}]
`)
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
