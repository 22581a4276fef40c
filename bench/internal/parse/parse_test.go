package parse

import (
	"math"
	"os"
	"path/filepath"
	"testing"
)

// Every input here was captured from the real tool on a Debian 12 machine
// (wrk 4.1.0, h2load nghttp2/1.52.0, iperf 3.12, fortio 1.68.0) against the
// siftbench backends.
func read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func TestParseWrk(t *testing.T) {
	w, err := ParseWrk(string(read(t, "wrk.txt")))
	if err != nil {
		t.Fatal(err)
	}
	if !near(w.RPS, 74076.79) || w.Requests != 148381 || w.Errors != 0 {
		t.Errorf("rps %v requests %d errors %d", w.RPS, w.Requests, w.Errors)
	}
	// from the script's curve (microseconds → ms)
	if !near(w.P50, 0.265) || !near(w.P99, 8.775) || !near(w.P999, 32.590) {
		t.Errorf("p50 %v p99 %v p99.9 %v", w.P50, w.P99, w.P999)
	}
	if len(w.Curve) != 13 || w.Curve[0].Percentile != 0 || !near(w.Curve[12].Millis, 36.818) {
		t.Errorf("curve %+v", w.Curve)
	}
	// and wrk's own distribution
	if !near(w.RawLatency[50], 0.265) || !near(w.RawLatency[75], 1.02) || !near(w.RawLatency[99], 8.77) {
		t.Errorf("raw %v", w.RawLatency)
	}
}

func TestParseWrkWithoutScriptUsesDistribution(t *testing.T) {
	out := "Running 1s test @ http://127.0.0.1:1/\n  Latency Distribution\n     50%  293.00us\n     75%    1.60ms\n     90%    3.23ms\n     99%    1.10s\n  117249 requests in 2.01s, 9.62MB read\n  Socket errors: connect 0, read 3, write 1, timeout 2\n  Non-2xx or 3xx responses: 5\nRequests/sec:  58454.86\n"
	w, err := ParseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if !near(w.P50, 0.293) || !near(w.P99, 1100) || !math.IsNaN(w.P999) || w.Errors != 11 {
		t.Errorf("%+v", w)
	}
}

func TestParseWrkConnectFailure(t *testing.T) {
	if _, err := ParseWrk(string(read(t, "wrk-connect-errors.txt"))); err == nil {
		t.Fatal("a wrk that could not connect must be an error")
	}
}

func TestParseH2load(t *testing.T) {
	h, err := ParseH2load(string(read(t, "h2load.txt")))
	if err != nil {
		t.Fatal(err)
	}
	if !near(h.RPS, 44368.50) || h.Done != 88737 || h.Succeeded != 88737 || h.Failed != 0 || h.Protocol != "h2c" {
		t.Errorf("%+v", h)
	}
	if !near(h.MinMs, 0.060) || !near(h.MaxMs, 31.72) || !near(h.MeanMs, 6.99) || !near(h.SDMs, 3.82) {
		t.Errorf("times %+v", h)
	}
	if _, err := ParseH2load(string(read(t, "h2load-refused.txt"))); err == nil {
		t.Error("h2load with no success must be an error")
	}
}

func TestParseIperf3(t *testing.T) {
	r, err := ParseIperf3(read(t, "iperf3-1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Streams != 1 || r.BytesReceived != 11202330624 || !near(r.GbitsPerSecond, 44.8070373370958) || !near(r.Seconds, 2.000102) {
		t.Errorf("%+v", r)
	}
	r, err = ParseIperf3(read(t, "iperf3-8.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Streams != 8 || r.BytesReceived != 12769165312 || !near(r.GbitsPerSecond, 51.07060938078838) {
		t.Errorf("%+v", r)
	}
	if !near(r.SenderCPUPct, 80.2273825697843) || !near(r.ReceiverCPUPct, 91.0456879489142) {
		t.Errorf("cpu %+v", r)
	}
	_, err = ParseIperf3(read(t, "iperf3-refused.json"))
	if err == nil || err.Error() != "iperf3: unable to connect to server: Connection refused" {
		t.Errorf("refused: %v", err)
	}
	if _, err := ParseIperf3([]byte("iperf3: error - unable to connect")); err == nil {
		t.Error("non-JSON must be an error")
	}
}

func TestParseFortio(t *testing.T) {
	f, err := ParseFortio(read(t, "fortio.json"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Count != 1984 || f.OK != 1984 || f.RequestedQPS != "1000" || !near(f.ActualQPS, 999.2140884049377) {
		t.Errorf("%+v", f)
	}
	if !near(f.P50, 0.5124705882352941) || !near(f.P99, 4.098181818181818) || !near(f.P999, 5.4470795744000055) || !near(f.MaxMs, 5.557734) {
		t.Errorf("percentiles %+v", f)
	}
	if len(f.Curve) != 39 || f.Curve[len(f.Curve)-1].Percentile != 100 || !near(f.Curve[0].Millis, 0.010159) {
		t.Errorf("curve %d points: %+v", len(f.Curve), f.Curve)
	}
	for i := 1; i < len(f.Curve); i++ {
		if f.Curve[i].Percentile < f.Curve[i-1].Percentile || f.Curve[i].Millis < f.Curve[i-1].Millis {
			t.Fatalf("curve not monotonic at %d: %+v", i, f.Curve)
		}
	}
	if _, err := ParseFortio([]byte(`{"DurationHistogram":{"Count":0}}`)); err == nil {
		t.Error("empty run must be an error")
	}
}

// Captured through HAProxy roundrobin over three siftbench endpoints, one
// adding 50 ms (scenario s6): a third of the requests are slow.
func TestFortioShareAtLeast(t *testing.T) {
	f, err := ParseFortio(read(t, "fortio-lb.json"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Count != 400 || !near(f.ShareAtLeast(40), 33.25) || f.ShareAtLeast(0) != 100 || f.ShareAtLeast(1000) != 0 {
		t.Fatalf("count %d, share ≥40ms %v", f.Count, f.ShareAtLeast(40))
	}
	if !math.IsNaN((Fortio{}).ShareAtLeast(1)) {
		t.Error("empty run must give NaN")
	}
}
