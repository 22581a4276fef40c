package harness

import (
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/siftmesh/sift/bench/internal/gen"
	"github.com/siftmesh/sift/bench/internal/parse"
	"github.com/siftmesh/sift/bench/internal/procs"
	"github.com/siftmesh/sift/bench/internal/report"
)

type scenario struct {
	info report.ScenarioInfo
	run  func() error
}

const (
	hi = report.Higher
	lo = report.Lower
)

var (
	direct, sift, haproxy, nginx = report.Direct, report.Sift, report.HAProxy, report.Nginx
	proxiesAndDirect             = []string{direct, sift, haproxy, nginx}
	proxiesOnly                  = []string{sift, haproxy, nginx}
)

func same(t gen.Topology) func(string) gen.Topology { return func(string) gen.Topology { return t } }

func (r *Runner) scenarios() []scenario {
	return []scenario{
		{report.ScenarioInfo{ID: "s1", Title: "Opaque TCP bulk throughput",
			Description: "iperf3 through an L4 listener (no detection), 1 and 8 parallel streams; and an ordinary Go client writing 128 KiB buffers into a Go reader (siftbench load bulk / serve sink). CPU-s/GB is the proxy's user+system CPU time (from /proc/<pid>/stat, summed over its processes) per 10^9 bytes carried.",
			Primary:     []string{"throughput", "CPU per GB"},
			Notes:       []string{"direct: iperf3 client and server talk to each other on the load CPU; no proxy, so no CPU-s/GB."}}, r.s1},
		{report.ScenarioInfo{ID: "s2", Title: "Opaque TCP over mTLS between two proxies",
			Description: "iperf3 → proxy listener A (plain) → TLS 1.3 with a client certificate → proxy listener B (requires the client certificate) → iperf3 server. Both listeners live in the one proxy process under test, on the proxy CPU; CPU-s/GB counts both TLS ends. \"new mTLS connections\": short connections (one HTTP/1.1 GET with Connection: close each) through the same pair of listeners to an HTTP backend, so every connection is one mTLS handshake between them: the rate from 16 clients is handshakes per second.",
			Primary:     []string{"throughput", "CPU per GB", "conn/s"},
			Notes:       []string{"direct: plain TCP (no TLS), the physical limit."}}, r.s2},
		{report.ScenarioInfo{ID: "s3", Title: "Connection rate and the cost of detection",
			Description: "Short connections: connect, one HTTP/1.1 GET with Connection: close, read to EOF, close. Rate with 16 concurrent clients; connect-to-first-byte latency with one client at a time. \"detection on\" peeks at the request before choosing the chain (Sift: its detect listener filter; HAProxy: tcp-request inspect-delay + the HTTP ACL); \"opaque port\" skips detection. Both forward L4.",
			Primary:     []string{"conn/s", "first byte p50"},
			Notes:       []string{"nginx's stream module cannot sniff HTTP, so its \"detection on\" row is plain L4 (no detection).", "\"detection cost\" (added p50) is p50(detection on) − p50(opaque port), same target and repeat; it can be slightly negative when detection costs less than the noise."}}, r.s3},
		{report.ScenarioInfo{ID: "s4", Title: "HTTP/1.1 keep-alive, 32 connections",
			Description: "L7 HTTP/1.1 proxying with upstream keep-alive. wrk -t1 -c32 (closed loop: maximum rate, with its latency distribution), and fortio at a fixed rate every target holds (latency without saturation; compare p50/p99 to direct for the added latency).",
			Primary:     []string{"req/s", "p50", "p99"}}, r.s4},
		{report.ScenarioInfo{ID: "s5", Title: "HTTP/2 and gRPC",
			Description: "h2load over cleartext HTTP/2 (prior knowledge), 32 connections × 10 streams; grpc-go unary calls (4 connections, 32 concurrent calls) and ping-pong streaming (32 streams) against grpc.testing.BenchmarkService, 64-byte payloads.",
			Primary:     []string{"req/s", "p50", "p99"},
			Notes:       []string{"nginx proxies h2c to its upstream as HTTP/1.1 (proxy_pass cannot speak HTTP/2); gRPC goes through grpc_pass over HTTP/2."}}, r.s5},
		{report.ScenarioInfo{ID: "s6", Title: "Request load balancing with one slow endpoint",
			Description: "Three HTTP/1.1 endpoints, one adding 50 ms per response; fortio at a fixed rate over 32 keep-alive connections. \"least loaded\" is Sift's peak-EWMA (power of two choices), HAProxy's leastconn and nginx's least_conn.",
			Primary:     []string{"slow share", "p50", "p99"},
			Notes: []string{"direct: one fast endpoint only, no balancing (the floor).",
				"slow share: the percentage of requests that took 40 ms or more, i.e. went to the slow endpoint (round robin: a third). It says more than p99, which is the slow endpoint's 50 ms whenever more than 1% of requests reach it."}}, r.s6},
		{report.ScenarioInfo{ID: "s7", Title: "Server-speaks-first on a port nobody configured",
			Description: "The backend writes an SMTP-like greeting on accept; the client sends nothing and measures connect to the greeting's first byte. \"opaque port\": a listener without detection. \"unconfigured port\": Sift's detect listener with its defaults (timeout 10s, as Linkerd; nothing marks the port opaque), the first 3 connections to each of 5 such listeners: the client stays silent past the 50 ms grace period, Sift opens the fallback chain's upstream and the server's greeting decides (Linkerd pays its 10 s detection timeout here). \"learned destination\": another such listener, after 3 connections proved it server-first: Sift races from accept, with no grace period. HAProxy and nginx in plain TCP mode greet at once, which is the baseline.",
			Primary:     []string{"greeting p50"},
			Notes:       []string{"learned destination: 3 connections (not measured) warm the listener up first, for every target alike; then 200 are measured."}}, r.s7},
		{report.ScenarioInfo{ID: "s8", Title: "Memory: idle, and with idle connections open",
			Description: "Memory of the proxy's processes right after start (idle), then with N idle client connections open through an L4 listener (each proven end to end by a one-byte echo). bytes/conn = (PSS loaded − PSS idle) / N. PSS splits shared pages between processes, so nginx's master and worker are not double-counted.",
			Primary:     []string{"idle RSS", "bytes/conn", "fds/conn", "conns held"}}, r.s8},
		{report.ScenarioInfo{ID: "s9", Title: "A protocol taught by a plugin",
			Description: "Short Redis connections (connect, PING as a RESP array, read +PONG, close) on detecting listeners, where Sift's built-in sniffers decline: \"built-ins only\" ends as opaque TCP after the first read; \"with the Redis plugin\" also asks examples/plugins/redis (a separate process, gRPC through hashicorp/go-plugin), which matches and selects the redis chain. Rate with 16 concurrent clients; connect-to-reply latency with one client. HAProxy and nginx forward both listeners at L4 (they have no plugins): the reference.",
			Primary:     []string{"conn/s", "first byte p50"},
			Notes:       []string{"\"plugin cost\" (added p50) is p50(with the Redis plugin) − p50(built-ins only), same target and repeat."}}, r.s9},
	}
}

// s9: the cost of asking a protocol-sniffer plugin.
func (r *Runner) s9() error {
	if r.o.Plugin == "" {
		r.unavailable("s9", "", sift, "no plugin binary (siftbench -plugin; bench/run.sh builds examples/plugins/redis)")
		return nil
	}
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("pong", r.port(109)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	top := gen.Topology{Listeners: []gen.Listener{
		{Name: "builtins", Port: r.port(90), Kind: gen.Detect, Upstreams: []int{r.port(109)}},
		{Name: "plugin", Port: r.port(91), Kind: gen.Detect, Upstreams: []int{r.port(109)}, Plugin: r.o.Plugin, PluginProtocol: "redis"},
	}}
	r.interleave("s9", proxiesAndDirect, same(top), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		p50 := r.shortConnCases("s9", "short-resp", tg, rep, addr, false, []shortCase{{"built-ins only", "builtins"}, {"with the Redis plugin", "plugin"}})
		if w, ok := p50["plugin"]; ok {
			if b, ok := p50["builtins"]; ok {
				r.record("s9", "plugin cost", tg, rep, "added p50", "ms", lo, w-b)
			}
		}
	})
	return nil
}

func (r *Runner) iperf(addr string, streams int) (parse.Iperf3, error) {
	host, port, _ := net.SplitHostPort(addr)
	secs := strconv.Itoa(int(math.Max(1, math.Round(r.o.Dur.Seconds()))))
	var last error
	for try := 0; try < 2; try++ {
		out, err := r.tool(r.o.Dur+30*time.Second, "iperf3", "-c", host, "-p", port, "-t", secs, "-P", strconv.Itoa(streams), "-J")
		res, perr := parse.ParseIperf3(out)
		if perr == nil {
			return res, nil
		}
		if err == nil {
			err = perr
		} else {
			err = fmt.Errorf("%v (%v)", perr, err)
		}
		last = err
		time.Sleep(300 * time.Millisecond) // iperf3's server may still be tearing down the last test
	}
	return parse.Iperf3{}, last
}

func (r *Runner) iperfServer() (*procs.Proc, error) {
	port := r.port(100)
	p, err := procs.Start("iperf3", r.o.LoadCPU, filepath.Join(r.o.WorkDir, "iperf3-server.log"), nil,
		"iperf3", "-s", "-B", "127.0.0.1", "-p", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	return p, p.WaitListening([]int{port}, 10*time.Second)
}

// bulk is scenarios 1 and 2: iperf3 through listener `entry`.
func (r *Runner) bulk(sc string, top gen.Topology, entry string) error {
	ip, err := r.iperfServer()
	if err != nil {
		return err
	}
	defer ip.Stop(2 * time.Second)
	r.interleave(sc, proxiesAndDirect, same(top), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		for _, n := range []int{1, 8} {
			cs := "1 stream"
			if n > 1 {
				cs = fmt.Sprintf("%d streams", n)
			}
			var cpu0 float64
			if px != nil {
				cpu0 = procs.CPUSeconds(px.Pid())
			}
			res, err := r.iperf(addr(entry), n)
			if err != nil {
				r.fail(sc, cs, tg, rep, err)
				continue
			}
			r.record(sc, cs, tg, rep, "throughput", "Gbit/s", hi, res.GbitsPerSecond)
			if px != nil {
				cpu := procs.CPUSeconds(px.Pid()) - cpu0
				r.record(sc, cs, tg, rep, "CPU per GB", "CPU-s/GB", lo, cpu/(float64(res.BytesReceived)/1e9))
			}
			r.logf("   %s %-8s %-9s #%d %.2f Gbit/s", sc, tg, cs, rep, res.GbitsPerSecond)
		}
	})
	return nil
}

func (r *Runner) s1() error {
	top := gen.Topology{Listeners: []gen.Listener{{Name: "opaque", Port: r.port(1), Kind: gen.Opaque, Upstreams: []int{r.port(100)}}}}
	if err := r.bulk("s1", top, "opaque"); err != nil {
		return err
	}
	// Not only iperf3: an ordinary Go client (one Write of 128 KiB after
	// another) into an ordinary Go reader, both on the load CPU.
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("sink", r.port(102)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	sink := gen.Topology{Listeners: []gen.Listener{{Name: "opaque", Port: r.port(1), Kind: gen.Opaque, Upstreams: []int{r.port(102)}}}}
	r.interleave("s1", proxiesAndDirect, same(sink), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		cs := "Go client, 128 KiB writes"
		var cpu0 float64
		if px != nil {
			cpu0 = procs.CPUSeconds(px.Pid())
		}
		res, err := r.goLoad(r.o.Dur+30*time.Second, "bulk", "-addr", addr("opaque"), "-c", "1", "-d", r.o.Dur.String())
		if err == nil && res.Errors > 0 {
			err = fmt.Errorf("%d errors, first: %s", res.Errors, res.FirstErr)
		}
		if err != nil {
			r.fail("s1", cs, tg, rep, err)
			return
		}
		gbps := res.Rate * 8 / 1e9
		r.record("s1", cs, tg, rep, "throughput", "Gbit/s", hi, gbps)
		if px != nil {
			cpu := procs.CPUSeconds(px.Pid()) - cpu0
			r.record("s1", cs, tg, rep, "CPU per GB", "CPU-s/GB", lo, cpu/(float64(res.Ops)/1e9))
		}
		r.logf("   s1 %-8s %-9s #%d %.2f Gbit/s", tg, cs, rep, gbps)
	})
	return nil
}

// mtlsPair is s2's topology: listener mtls_out (plain) to mtls_in over
// mTLS, and on to the backend on port backend.
func (r *Runner) mtlsPair(backend int) gen.Topology {
	return gen.Topology{Listeners: []gen.Listener{
		{Name: "mtls_out", Port: r.port(1), Kind: gen.MTLSOrigin, Upstreams: []int{r.port(11)}},
		{Name: "mtls_in", Port: r.port(11), Kind: gen.MTLSTerminate, Upstreams: []int{backend}},
	}}
}

func (r *Runner) s2() error {
	if err := r.bulk("s2", r.mtlsPair(r.port(100)), "mtls_out"); err != nil {
		return err
	}
	// Handshakes: short connections, each one a new mTLS connection between
	// the two listeners (and a plain one at each end).
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("http1", r.port(101)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	r.interleave("s2", proxiesAndDirect, same(r.mtlsPair(r.port(101))), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		r.shortConnCases("s2", "short-http", tg, rep, addr, false, []shortCase{{"new mTLS connections", "mtls_out"}})
	})
	return nil
}

func (r *Runner) s3() error {
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("http1", r.port(101)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	top := gen.Topology{Listeners: []gen.Listener{
		{Name: "opaque", Port: r.port(1), Kind: gen.Opaque, Upstreams: []int{r.port(101)}},
		{Name: "detect", Port: r.port(2), Kind: gen.Detect, Upstreams: []int{r.port(101)}, DetectTimeoutSeconds: 10},
	}}
	r.interleave("s3", proxiesAndDirect, same(top), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		p50 := r.shortConnCases("s3", "short-http", tg, rep, addr, true, []shortCase{{"opaque port", "opaque"}, {"detection on", "detect"}})
		if d, ok := p50["detect"]; ok {
			if o, ok := p50["opaque"]; ok {
				r.record("s3", "detection cost", tg, rep, "added p50", "ms", lo, d-o)
			}
		}
	})
	return nil
}

// shortCase is one listener measured with short connections.
type shortCase struct{ name, listener string }

// shortConnCases measures each case with the siftbench load kind load: the
// rate of short connections from 16 clients, and connect-to-answer latency
// from one client (with its curve when curves is set). It returns the p50
// by listener.
func (r *Runner) shortConnCases(sc, load, tg string, rep int, addr func(string) string, curves bool, cases []shortCase) map[string]float64 {
	latDur := r.o.Dur / 2
	p50 := map[string]float64{}
	for _, c := range cases {
		res, err := r.goLoad(r.o.Dur+30*time.Second, load, "-addr", addr(c.listener), "-c", "16", "-d", r.o.Dur.String())
		if err != nil {
			r.fail(sc, c.name, tg, rep, err)
			continue
		}
		r.record(sc, c.name, tg, rep, "conn/s", "conn/s", hi, res.Rate)
		if res.Errors > 0 {
			r.record(sc, c.name, tg, rep, "errors", "count", lo, float64(res.Errors))
		}
		lat, err := r.goLoad(latDur+30*time.Second, load, "-addr", addr(c.listener), "-c", "1", "-d", latDur.String(), "-n", "50000")
		if err != nil {
			r.fail(sc, c.name, tg, rep, err)
			continue
		}
		r.record(sc, c.name, tg, rep, "first byte p50", "ms", lo, lat.Latency.P50)
		r.record(sc, c.name, tg, rep, "first byte p99", "ms", lo, lat.Latency.P99)
		if curves {
			r.curve(sc, c.name+" (1 client)", tg, rep, lat.Latency.Curve)
		}
		p50[c.listener] = lat.Latency.P50
		r.logf("   %s %-8s %-22s #%d %.0f conn/s, first byte p50 %.3f ms", sc, tg, c.name, rep, res.Rate, lat.Latency.P50)
	}
	return p50
}

func (r *Runner) fixedQPS() int {
	if r.o.Quick {
		return 2000
	}
	return 4000
}

func (r *Runner) fortio(url string, qps, conns int, dur time.Duration) (parse.Fortio, error) {
	f, err := os.CreateTemp(r.o.WorkDir, "fortio-*.json")
	if err != nil {
		return parse.Fortio{}, err
	}
	f.Close()
	defer os.Remove(f.Name())
	_, err = r.tool(dur+30*time.Second, r.o.Fortio, "load", "-qps", strconv.Itoa(qps), "-c", strconv.Itoa(conns), "-t", dur.String(),
		"-r", "0.00001", "-p", "50,90,99,99.9", "-json", f.Name(), "-loglevel", "Warning", url)
	if err != nil {
		return parse.Fortio{}, err
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		return parse.Fortio{}, err
	}
	res, err := parse.ParseFortio(b)
	if err == nil && res.OK < res.Count {
		err = fmt.Errorf("fortio: only %d of %d responses were 200", res.OK, res.Count)
	}
	return res, err
}

func (r *Runner) s4() error {
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("http1", r.port(101)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	top := gen.Topology{Listeners: []gen.Listener{{Name: "http", Port: r.port(3), Kind: gen.HTTP1, Upstreams: []int{r.port(101)}}}}
	secs := strconv.Itoa(int(math.Max(1, math.Round(r.o.Dur.Seconds())))) + "s"
	qps := r.fixedQPS()
	fixed := fmt.Sprintf("fortio %d req/s fixed", qps)
	r.interleave("s4", proxiesAndDirect, same(top), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		url := "http://" + addr("http") + "/"
		cs := "wrk max rate"
		out, err := r.tool(r.o.Dur+30*time.Second, "wrk", "-t1", "-c32", "-d"+secs, "--latency", "-s", r.o.WrkScript, url)
		if err == nil {
			var w parse.Wrk
			if w, err = parse.ParseWrk(string(out)); err == nil && w.Errors > w.Requests/100 {
				err = fmt.Errorf("wrk: %d errors in %d requests", w.Errors, w.Requests)
			}
			if err == nil {
				r.record("s4", cs, tg, rep, "req/s", "req/s", hi, w.RPS)
				r.record("s4", cs, tg, rep, "p50", "ms", lo, w.P50)
				r.record("s4", cs, tg, rep, "p99", "ms", lo, w.P99)
				r.record("s4", cs, tg, rep, "p99.9", "ms", lo, w.P999)
				r.curve("s4", cs, tg, rep, w.Curve)
				r.logf("   s4 %-8s wrk #%d %.0f req/s p99 %.2f ms", tg, rep, w.RPS, w.P99)
			}
		}
		if err != nil {
			r.fail("s4", cs, tg, rep, err)
		}
		f, err := r.fortio(url, qps, 32, r.o.Dur)
		if err != nil {
			r.fail("s4", fixed, tg, rep, err)
			return
		}
		r.record("s4", fixed, tg, rep, "req/s", "req/s", hi, f.ActualQPS)
		r.record("s4", fixed, tg, rep, "p50", "ms", lo, f.P50)
		r.record("s4", fixed, tg, rep, "p99", "ms", lo, f.P99)
		r.record("s4", fixed, tg, rep, "p99.9", "ms", lo, f.P999)
		r.curve("s4", fixed, tg, rep, f.Curve)
	})
	return nil
}

func (r *Runner) s5() error {
	bs, err := r.startBackends(
		func() (*procs.Proc, error) { return r.backend("h2c", r.port(102)) },
		func() (*procs.Proc, error) { return r.backend("grpc", r.port(103)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	top := gen.Topology{Listeners: []gen.Listener{
		{Name: "h2", Port: r.port(4), Kind: gen.H2C, Upstreams: []int{r.port(102)}},
		{Name: "grpc", Port: r.port(5), Kind: gen.GRPC, Upstreams: []int{r.port(103)}},
	}}
	secs := strconv.Itoa(int(math.Max(1, math.Round(r.o.Dur.Seconds()))))
	r.interleave("s5", proxiesAndDirect, same(top), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		cs := "h2load h2c"
		out, err := r.tool(r.o.Dur+30*time.Second, "h2load", "-c", "32", "-m", "10", "-t", "1", "-D", secs, "http://"+addr("h2")+"/")
		if err == nil {
			var h parse.H2load
			if h, err = parse.ParseH2load(string(out)); err == nil {
				if h.Failed+h.Errored > h.Done/100 {
					err = fmt.Errorf("h2load: %d failed, %d errored of %d", h.Failed, h.Errored, h.Done)
				} else {
					r.record("s5", cs, tg, rep, "req/s", "req/s", hi, h.RPS)
					r.record("s5", cs, tg, rep, "mean", "ms", lo, h.MeanMs)
					r.logf("   s5 %-8s h2load #%d %.0f req/s", tg, rep, h.RPS)
				}
			}
		}
		if err != nil {
			r.fail("s5", cs, tg, rep, err)
		}
		for _, mode := range []string{"unary", "stream"} {
			cs := "gRPC unary"
			if mode == "stream" {
				cs = "gRPC streaming"
			}
			res, err := r.goLoad(r.o.Dur+30*time.Second, "grpc", "-addr", addr("grpc"), "-mode", mode, "-conns", "4", "-c", "32", "-d", r.o.Dur.String())
			if err != nil {
				r.fail("s5", cs, tg, rep, err)
				continue
			}
			r.record("s5", cs, tg, rep, "req/s", "req/s", hi, res.Rate)
			r.record("s5", cs, tg, rep, "p50", "ms", lo, res.Latency.P50)
			r.record("s5", cs, tg, rep, "p99", "ms", lo, res.Latency.P99)
			r.curve("s5", cs, tg, rep, res.Latency.Curve)
			r.logf("   s5 %-8s %s #%d %.0f req/s", tg, cs, rep, res.Rate)
		}
	})
	return nil
}

func (r *Runner) s6() error {
	fast1, fast2, slow := r.port(110), r.port(111), r.port(112)
	bs, err := r.startBackends(
		func() (*procs.Proc, error) { return r.backend("http1", fast1) },
		func() (*procs.Proc, error) { return r.backend("http1", fast2) },
		func() (*procs.Proc, error) { return r.backend("http1", slow, "-delay", "50ms") })
	if err != nil {
		return err
	}
	defer bs.stop()
	ups := []int{fast1, fast2, slow}
	top := gen.Topology{Listeners: []gen.Listener{
		{Name: "lb_rr", Port: r.port(6), Kind: gen.HTTP1, Upstreams: ups, Policy: gen.RoundRobin},
		{Name: "lb_least", Port: r.port(7), Kind: gen.HTTP1, Upstreams: ups, Policy: gen.LeastLoaded},
	}}
	const qps = 400
	r.interleave("s6", proxiesAndDirect, same(top), r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		for _, c := range []struct{ cs, l string }{{"round robin", "lb_rr"}, {"least loaded", "lb_least"}} {
			f, err := r.fortio("http://"+addr(c.l)+"/", qps, 32, r.o.Dur)
			if err != nil {
				r.fail("s6", c.cs, tg, rep, err)
				continue
			}
			r.record("s6", c.cs, tg, rep, "slow share", "% ≥ 40 ms", lo, f.ShareAtLeast(40))
			r.record("s6", c.cs, tg, rep, "p50", "ms", lo, f.P50)
			r.record("s6", c.cs, tg, rep, "p90", "ms", lo, f.P90)
			r.record("s6", c.cs, tg, rep, "p99", "ms", lo, f.P99)
			r.curve("s6", c.cs, tg, rep, f.Curve)
			r.logf("   s6 %-8s %-12s #%d p50 %.2f p99 %.2f ms", tg, c.cs, rep, f.P50, f.P99)
		}
	})
	return nil
}

// s7LearnAfter is how many server-first connections make Sift treat a
// destination as learned (the detect filter's default, learn_server_first.after).
const s7LearnAfter = 3

// s7Unconfigured is how many unconfigured listeners s7 measures, each
// s7LearnAfter times before Sift could have learned it.
const s7Unconfigured = 5

func (r *Runner) s7() error {
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("greeting", r.port(104)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	top := func(tg string) gen.Topology {
		detectKind := gen.Opaque // HAProxy and nginx in TCP mode: the baseline
		if tg == sift {
			detectKind = gen.Detect
		}
		ls := []gen.Listener{
			{Name: "opaque", Port: r.port(1), Kind: gen.Opaque, Upstreams: []int{r.port(104)}},
			{Name: "learned", Port: r.port(3), Kind: detectKind, Upstreams: []int{r.port(104)}, DetectTimeoutSeconds: 10},
		}
		for i := range s7Unconfigured {
			ls = append(ls, gen.Listener{Name: fmt.Sprintf("unconfigured%d", i), Port: r.port(10 + i), Kind: detectKind,
				Upstreams: []int{r.port(104)}, DetectTimeoutSeconds: 10})
		}
		return gen.Topology{Listeners: ls}
	}
	r.interleave("s7", proxiesAndDirect, top, r.env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		// Sift learns a destination once it proved server-first
		// s7LearnAfter times: each unconfigured listener gets that many
		// connections, in turn, so every one is measured before learning.
		var unconfigured []string
		for i := range s7Unconfigured {
			unconfigured = append(unconfigured, addr(fmt.Sprintf("unconfigured%d", i)))
		}
		for _, c := range []struct {
			cs, addrs string
			n         int
			warm      int // connections before the measured ones, one at a time
		}{
			{"opaque port", addr("opaque"), 200, 0},
			{"unconfigured port", strings.Join(unconfigured, ","), s7Unconfigured * s7LearnAfter, 0},
			{"learned destination", addr("learned"), 200, s7LearnAfter},
		} {
			if c.warm > 0 {
				// The other targets just get the same connections.
				if _, err := r.goLoad(40*time.Second, "greet", "-addr", c.addrs, "-n", strconv.Itoa(c.warm), "-c", "1", "-timeout", "15s"); err != nil {
					r.fail("s7", c.cs, tg, rep, fmt.Errorf("warming up: %w", err))
					continue
				}
			}
			res, err := r.goLoad(40*time.Second, "greet", "-addr", c.addrs, "-n", strconv.Itoa(c.n), "-c", strconv.Itoa(min(c.n, 3)), "-timeout", "15s")
			if err != nil {
				r.fail("s7", c.cs, tg, rep, err)
				continue
			}
			r.record("s7", c.cs, tg, rep, "greeting p50", "ms", lo, res.Latency.P50)
			r.record("s7", c.cs, tg, rep, "greeting max", "ms", lo, res.Latency.Max)
			r.logf("   s7 %-8s %-17s #%d greeting p50 %.3f ms", tg, c.cs, rep, res.Latency.P50)
		}
	})
	return nil
}

func (r *Runner) s8() error {
	// Stay inside the hard RLIMIT_NOFILE every process here inherits: a
	// proxied idle connection costs a proxy at least two descriptors.
	n := 10000
	if lim := (r.env.FDLimit - 200) / 2; lim < n {
		n = lim
	}
	bs, err := r.startBackends(func() (*procs.Proc, error) { return r.backend("hold", r.port(105)) })
	if err != nil {
		return err
	}
	defer bs.stop()
	env := r.env
	env.MaxConns = n + 16
	cs := fmt.Sprintf("%d idle conns", n)
	if n < 10000 {
		r.res.Scenarios[len(r.res.Scenarios)-1].Notes = append(r.res.Scenarios[len(r.res.Scenarios)-1].Notes,
			fmt.Sprintf("N = %d, not 10,000: the hard open-files limit here is %d (not raisable in this sandbox) and each proxied connection takes at least two descriptors in the proxy.", n, r.env.FDLimit))
	}
	top := gen.Topology{Listeners: []gen.Listener{{Name: "opaque", Port: r.port(1), Kind: gen.Opaque, Upstreams: []int{r.port(105)}}}}
	r.interleave("s8", proxiesOnly, same(top), env, func(tg string, rep int, px *procs.Proc, addr func(string) string) {
		time.Sleep(500 * time.Millisecond)
		idle, err := procs.Memory(px.Pid())
		idleFDs := procs.FDCount(px.Pid())
		if err != nil {
			r.fail("s8", cs, tg, rep, err)
			return
		}
		res, release, err := r.holdIdle(addr("opaque"), n, 30*time.Second)
		if err != nil {
			r.fail("s8", cs, tg, rep, err)
			return
		}
		defer release()
		r.record("s8", cs, tg, rep, "conns held", "conns", hi, float64(res.Ops))
		if res.Ops < n {
			// A proxy that cannot hold N (descriptors, limits) is a finding,
			// not a void: say so, and still measure what it holds.
			r.fail("s8", cs, tg, rep, fmt.Errorf("held only %d of %d connections (%d errors, first: %s); bytes/conn is over those", res.Ops, n, res.Errors, res.FirstErr))
			if res.Ops == 0 {
				return
			}
		}
		time.Sleep(time.Second)
		loaded, err := procs.Memory(px.Pid())
		loadedFDs := procs.FDCount(px.Pid())
		if err != nil {
			r.fail("s8", cs, tg, rep, err)
			return
		}
		const mib = 1 << 20
		r.record("s8", cs, tg, rep, "idle RSS", "MiB", lo, float64(idle.RSS)/mib)
		r.record("s8", cs, tg, rep, "idle PSS", "MiB", lo, float64(idle.PSS)/mib)
		r.record("s8", cs, tg, rep, "loaded RSS", "MiB", lo, float64(loaded.RSS)/mib)
		r.record("s8", cs, tg, rep, "bytes/conn", "bytes", lo, (float64(loaded.PSS)-float64(idle.PSS))/float64(res.Ops))
		r.record("s8", cs, tg, rep, "fds/conn", "fds", lo, float64(loadedFDs-idleFDs)/float64(res.Ops))
		r.logf("   s8 %-8s #%d idle %.1f MiB, %d conns %.1f MiB", tg, rep, float64(idle.RSS)/mib, res.Ops, float64(loaded.RSS)/mib)
	})
	return nil
}
