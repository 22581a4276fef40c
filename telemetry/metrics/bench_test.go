package metrics

import (
	"testing"
	"time"

	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// The data-path cost of metrics: what one finished request, and one opaque
// connection (start and end), add on the goroutine that served it once the
// label set has been seen. Parallel variants show contention on shared
// series (every goroutine hits the same label set, the worst case).

func BenchmarkOnRequest(b *testing.B) {
	r := New(Options{})
	rec := &streaminfo.Request{Authority: "web.default.svc.cluster.local", Status: 200, Cluster: "web",
		Duration: 3 * time.Millisecond, Info: inInfo}
	r.OnRequest(rec)
	b.ReportAllocs()
	for b.Loop() {
		r.OnRequest(rec)
	}
}

func BenchmarkOnRequestParallel(b *testing.B) {
	r := New(Options{})
	rec := &streaminfo.Request{Authority: "web.default.svc.cluster.local", Status: 200, Cluster: "web",
		Duration: 3 * time.Millisecond, Info: inInfo}
	r.OnRequest(rec)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.OnRequest(rec)
		}
	})
}

func BenchmarkOnConn(b *testing.B) {
	r := New(Options{})
	rec := &streaminfo.Conn{Info: outInfo, Cluster: "db", BytesReceived: 1000, BytesSent: 5000, Duration: 40 * time.Millisecond}
	r.OnConnStart(outInfo)
	r.OnConn(rec)
	b.ReportAllocs()
	for b.Loop() {
		r.OnConnStart(outInfo)
		r.OnDetection(outInfo, "dispatched")
		r.OnConn(rec)
	}
}

func BenchmarkOnConnParallel(b *testing.B) {
	r := New(Options{})
	rec := &streaminfo.Conn{Info: outInfo, Cluster: "db", BytesReceived: 1000, BytesSent: 5000, Duration: 40 * time.Millisecond}
	r.OnConnStart(outInfo)
	r.OnConn(rec)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r.OnConnStart(outInfo)
			r.OnDetection(outInfo, "dispatched")
			r.OnConn(rec)
		}
	})
}
