package test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/siftmesh/sift/internal/netns"
)

// TestSoak (make soak; skipped unless SIFT_SOAK_DURATION is set) runs the
// mTLS mesh (mesh_mtls_test.go) for SIFT_SOAK_DURATION under mixed traffic
// from client-0 to app-0 — HTTP/1 (one connection per request), gRPC (one
// long-lived HTTP/2 connection), an opaque protocol (pg, on the default
// opaque list) and a server-first one (greet, detected by the race) — while
// sift-control pushes a new configuration every SIFT_SOAK_PUSH (a service
// appears or goes: both proxies get new listeners, routes and clusters),
// issues leaf certificates that live 2 minutes (renewed at 70 %), and
// rotates the mesh root once, half-way. Every SIFT_SOAK_INTERVAL it samples
// goroutines (each process's go_goroutines), open file descriptors
// (/proc/<pid>/fd) and RSS (/proc/<pid>/status) of both proxies and
// sift-control. What must hold: no failed request or connection, no NACK,
// and no growth — the mean of the last quarter of the samples (after a
// warm-up tenth) against the first quarter's. The report (SIFT_SOAK_REPORT,
// bench/results/soak.md under make soak) has the table, a plot of each
// series and the samples as CSV.
func TestSoak(t *testing.T) {
	durationEnv := os.Getenv("SIFT_SOAK_DURATION")
	if durationEnv == "" {
		t.Skip("the soak runs under make soak (SIFT_SOAK_DURATION)")
	}
	if err := netns.Check(); err != nil {
		t.Skipf("soak skipped: %v", err)
	}
	duration, err := time.ParseDuration(durationEnv)
	if err != nil || duration < time.Minute {
		t.Fatalf("SIFT_SOAK_DURATION=%q: want a duration of at least 1m", durationEnv)
	}
	interval := envDuration(t, "SIFT_SOAK_INTERVAL", min(max(duration/60, 2*time.Second), 30*time.Second))
	pushEvery := envDuration(t, "SIFT_SOAK_PUSH", min(max(duration/30, 5*time.Second), time.Minute))
	const certTTL = 2 * time.Minute // the CA's shortest

	e := startMTLSEnv(t, mtlsEnvOptions{
		nsPrefix:    relNSPrefix,
		controlArgs: []string{"--admin-address", "10.77.0.1:9902", "--cert-ttl", certTTL.String()},
		proxyArgs:   []string{"-l", "info"}, // a line per connection at debug: too much to keep for 30 minutes
	})
	client := e.ns["client-0"]
	if _, err := waitGet(e, mtlsWebURL); err != nil {
		t.Fatalf("before the soak: %v", err)
	}

	// The traffic.
	httpLoad := startMeshLoad(e.client, mtlsWebURL, 2, math.MaxInt)
	defer httpLoad.finish()
	opaque := startOpaqueLoad(client, mtlsPG, 1)
	defer opaque.finish()
	serverFirst := startOpaqueLoad(client, mtlsGreet, 1)
	defer serverFirst.finish()
	rpc := startGRPCLoad(t, client, mtlsRPC)
	defer rpc.finish()

	procs := []struct {
		name string
		pid  int
		// goroutines reads the process's go_goroutines.
		goroutines func() (int, error)
	}{
		{"client-0 proxy", e.proxies["client-0"].cmd.Process.Pid, func() (int, error) { return e.goroutines("client-0") }},
		{"app-0 proxy", e.proxies["app-0"].cmd.Process.Pid, func() (int, error) { return e.goroutines("app-0") }},
		{"sift-control", e.control.cmd.Process.Pid, func() (int, error) {
			return metricsGoroutines(e.net, "http://10.77.0.1:9902/metrics")
		}},
	}
	var (
		samples []soakSample
		pushes  int
		leaves  = map[string]bool{} // app-0's inbound leaf serials seen
		rotated string
	)
	logMarks := map[string]int{}
	for w, p := range e.proxies {
		logMarks[w] = p.logCount()
	}
	start := time.Now()
	nextSample, nextPush, rotateAt := start, start.Add(pushEvery), start.Add(duration/2)
	withLate := false
	for time.Since(start) < duration && !t.Failed() {
		now := time.Now()
		if !now.Before(nextSample) {
			s := soakSample{at: now.Sub(start)}
			for _, p := range procs {
				g, err := p.goroutines()
				if err != nil {
					t.Errorf("%s: goroutines: %v", p.name, err)
				}
				s.values = append(s.values, [3]int{g, countFDs(t, p.pid), statusKiB(t, p.pid, "VmRSS")})
			}
			s.http, s.grpc, s.opaque = httpLoad.count(), rpc.count(), opaque.count()+serverFirst.count()
			samples = append(samples, s)
			if leaf := e.inboundLeafOrNil(client); leaf != nil {
				leaves[leaf.SerialNumber.String()] = true
			}
			nextSample = nextSample.Add(interval)
		}
		if !now.Before(nextPush) {
			withLate = !withLate
			writeFileAtomic(t, e.meshPath, soakMesh(withLate))
			pushes++
			nextPush = nextPush.Add(pushEvery)
		}
		if rotated == "" && !now.Before(rotateAt) {
			out, err := exec.Command(siftControlBinary(t), "ca", "rotate", "--ca-dir", e.caDir, "--overlap", "40s").CombinedOutput()
			if err != nil {
				t.Errorf("sift-control ca rotate: %v\n%s", err, out)
			}
			rotated = fmt.Sprintf("at %v (overlap 40 s)", now.Sub(start).Round(time.Second))
		}
		time.Sleep(min(time.Until(nextSample), time.Until(nextPush), 200*time.Millisecond))
	}
	httpLoad.finish()
	opaque.finish()
	serverFirst.finish()
	rpc.finish()
	elapsed := time.Since(start)

	// The errors.
	failedHTTP, httpFailures := httpLoad.failedRequests()
	failedOpaque, opaqueFailures := opaque.failed()
	failedFirst, firstFailures := serverFirst.failed()
	failedRPC, rpcFailures := rpc.failed()
	nacks := 0
	for w, p := range e.proxies {
		nacks += p.countLog(logMarks[w], `"msg":"xds update rejected`)
	}
	for _, f := range []struct {
		what     string
		n, of    int
		failures []string
	}{
		{"HTTP/1 requests", failedHTTP, httpLoad.count(), httpFailures},
		{"gRPC calls", failedRPC, rpc.count(), rpcFailures},
		{"opaque (pg) connections", failedOpaque, opaque.count(), opaqueFailures},
		{"server-first (greet) connections", failedFirst, serverFirst.count(), firstFailures},
	} {
		if f.n > 0 {
			t.Errorf("%d of %d %s failed; first: %v", f.n, f.of, f.what, f.failures)
		}
	}
	if dir := os.Getenv("SIFT_SOAK_LOGS"); dir != "" {
		for w, p := range e.proxies {
			p.mu.Lock()
			os.WriteFile(filepath.Join(dir, w+".log"), []byte(strings.Join(p.lines, "\n")), 0o644)
			p.mu.Unlock()
		}
	}
	if nacks > 0 {
		t.Errorf("%d NACKs", nacks)
	}
	if len(leaves) < 2 {
		t.Errorf("app-0 presented %d leaf certificate(s) over the soak: no rotation seen", len(leaves))
	}

	// Growth.
	names := []string{"goroutines", "open fds", "RSS (MiB)"}
	var rows [][2]string
	rows = append(rows,
		[2]string{"duration; sample interval; push interval", fmt.Sprintf("%v; %v; %v", elapsed.Round(time.Second), interval, pushEvery)},
		[2]string{"HTTP/1 requests / failed", fmt.Sprintf("%d / %d", httpLoad.count(), failedHTTP)},
		[2]string{"gRPC calls (one HTTP/2 connection) / failed", fmt.Sprintf("%d / %d", rpc.count(), failedRPC)},
		[2]string{"opaque (pg) connections / failed", fmt.Sprintf("%d / %d", opaque.count(), failedOpaque)},
		[2]string{"server-first (greet) connections / failed", fmt.Sprintf("%d / %d", serverFirst.count(), failedFirst)},
		[2]string{"configuration pushes (a service added or removed) / NACKs", fmt.Sprintf("%d / %d", pushes, nacks)},
		[2]string{"leaf certificates app-0 presented (lifetime 2 min); root rotation", fmt.Sprintf("%d; %s", len(leaves), rotated)},
	)
	var plots strings.Builder
	for pi, p := range procs {
		for mi, m := range names {
			series := make([]float64, len(samples))
			for i, s := range samples {
				series[i] = float64(s.values[pi][mi])
				if mi == 2 {
					series[i] /= 1024
				}
			}
			first, last, grew := soakGrowth(series, mi == 2)
			verdict := "flat"
			if grew {
				verdict = "**GROWTH**"
				t.Errorf("%s %s grew: %.1f → %.1f", p.name, m, first, last)
			}
			rows = append(rows, [2]string{p.name + ": " + m + " (first quarter → last quarter; max)",
				fmt.Sprintf("%.1f → %.1f; %.1f — %s", first, last, slices.Max(series), verdict)})
			fmt.Fprintf(&plots, "%s: %s\n%s\n", p.name, m, asciiPlot(series, 64, 8))
		}
	}
	if t.Failed() {
		rows = append(rows, [2]string{"result", "**FAILED**"})
	} else {
		rows = append(rows, [2]string{"result", "held"})
	}

	var report strings.Builder
	fmt.Fprintf(&report, "# Soak\n\n`make soak` (`SOAK_DURATION=%v`), test/soak_test.go: the mTLS mesh of two proxies and sift-control in network namespaces.\n\n| | |\n|---|---|\n", duration)
	for _, r := range rows {
		fmt.Fprintf(&report, "| %s | %s |\n", r[0], r[1])
	}
	fmt.Fprintf(&report, "\n## Samples over time\n\nEach plot spans the run left to right, its lowest to its highest value bottom to top.\n\n```\n%s```\n\n", plots.String())
	fmt.Fprintf(&report, "## Samples (CSV)\n\n```\nt_s,http,grpc,opaque")
	for _, p := range procs {
		n := strings.ReplaceAll(strings.ReplaceAll(p.name, " ", "_"), "-", "_")
		fmt.Fprintf(&report, ",%s_goroutines,%s_fds,%s_rss_kib", n, n, n)
	}
	report.WriteString("\n")
	for _, s := range samples {
		fmt.Fprintf(&report, "%.0f,%d,%d,%d", s.at.Seconds(), s.http, s.grpc, s.opaque)
		for _, v := range s.values {
			fmt.Fprintf(&report, ",%d,%d,%d", v[0], v[1], v[2])
		}
		report.WriteString("\n")
	}
	report.WriteString("```\n")
	t.Log(report.String())
	if path := os.Getenv("SIFT_SOAK_REPORT"); path != "" {
		if err := os.WriteFile(path, []byte(report.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// soakSample is one sampling: per process goroutines, fds and RSS (KiB),
// and the traffic completed so far.
type soakSample struct {
	at                 time.Duration
	values             [][3]int
	http, grpc, opaque int
}

// soakMesh is the mesh file with or without the service "late".
func soakMesh(withLate bool) string {
	if !withLate {
		return mtlsMeshYAML
	}
	return strings.Replace(mtlsMeshYAML, "  services:\n", `  services:
  - name: late
    cluster_ips: [10.96.0.70]
    selector: {app: shop}
    ports: [{name: http, port: 80, target_port: 8080}]
`, 1)
}

// soakGrowth compares the mean of the last quarter of series with the
// first quarter's, after a warm-up tenth, and reports growth beyond noise:
// 25 % and 20 (goroutines, fds), 50 % and 10 MiB for memory.
func soakGrowth(series []float64, memory bool) (first, last float64, grew bool) {
	s := series[len(series)/10:]
	q := max(len(s)/4, 1)
	mean := func(v []float64) float64 {
		sum := 0.0
		for _, x := range v {
			sum += x
		}
		return sum / float64(len(v))
	}
	first, last = mean(s[:q]), mean(s[len(s)-q:])
	if memory {
		return first, last, last > first*1.5+10
	}
	return first, last, last > first*1.25+20
}

// asciiPlot draws series as a chart width columns wide (series is averaged
// into them) and height rows high, labelled with its range.
func asciiPlot(series []float64, width, height int) string {
	if len(series) == 0 {
		return "(no samples)\n"
	}
	width = min(width, len(series))
	cols := make([]float64, width)
	for i := range cols {
		lo, hi := i*len(series)/width, (i+1)*len(series)/width
		sum := 0.0
		for _, v := range series[lo:hi] {
			sum += v
		}
		cols[i] = sum / float64(hi-lo)
	}
	lo, hi := slices.Min(cols), slices.Max(cols)
	var b strings.Builder
	for row := height - 1; row >= 0; row-- {
		label := "        "
		switch row {
		case height - 1:
			label = fmt.Sprintf("%8.1f", hi)
		case 0:
			label = fmt.Sprintf("%8.1f", lo)
		}
		b.WriteString(label + " |")
		for _, v := range cols {
			level := 0
			if hi > lo {
				level = int(math.Round((v - lo) / (hi - lo) * float64(height-1)))
			}
			if level >= row && (row == 0 || level > 0) {
				b.WriteByte('*')
			} else {
				b.WriteByte(' ')
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// envDuration is the duration in the environment variable name, or def.
func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, v)
	}
	return d
}

// countFDs counts /proc/<pid>/fd.
func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Errorf("open fds of %d: %v", pid, err)
	}
	return len(ents)
}

// statusKiB reads a "kB" field (VmRSS, VmHWM) of /proc/<pid>/status.
func statusKiB(t *testing.T, pid int, field string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Errorf("status of %d: %v", pid, err)
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Errorf("%s of %d: %q", field, pid, l)
			}
			return n
		}
	}
	t.Errorf("no %s in /proc/%d/status", field, pid)
	return 0
}

// goroutines reads go_goroutines from w's proxy's admin /metrics.
func (e *mtlsEnv) goroutines(w string) (int, error) {
	return metricsGoroutines(e.ns[w], "http://127.0.0.1:9901/metrics")
}

// metricsGoroutines reads go_goroutines from the Prometheus text at url,
// fetched from inside ns.
func metricsGoroutines(ns *netns.NS, url string) (int, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: ns.DialContext}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "go_goroutines "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("%s: no go_goroutines", url)
}

// inboundLeafOrNil is the certificate app-0's inbound presents, nil if the
// handshake did not get that far.
func (e *mtlsEnv) inboundLeafOrNil(client *netns.NS) *x509.Certificate {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	raw, err := client.DialContext(ctx, "tcp", mtlsApp+":4143")
	if err != nil {
		return nil
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	return peerLeaf(raw)
}

// grpcLoad calls the health service over one client connection (one
// long-lived HTTP/2 connection through the proxies) until finished.
type grpcLoad struct {
	cc   *grpc.ClientConn
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex
	n, nFail int
	failures []string
}

func startGRPCLoad(t *testing.T, ns *netns.NS, addr string) *grpcLoad {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	l := &grpcLoad{cc: cc, stop: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		hc := healthpb.NewHealthClient(cc)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "shop.rpc"})
			cancel()
			if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				err = fmt.Errorf("status %v", resp.GetStatus())
			}
			l.mu.Lock()
			l.n++
			if err != nil {
				l.nFail++
				if len(l.failures) < 10 {
					l.failures = append(l.failures, err.Error())
				}
			}
			l.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return l
}

func (l *grpcLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
		l.wg.Wait()
		l.cc.Close()
	}
}

func (l *grpcLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func (l *grpcLoad) failed() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.nFail, append([]string(nil), l.failures...)
}

// peerLeaf handshakes TLS on raw without a client certificate and returns
// the certificate the server presented (before it refuses the client), or
// nil.
func peerLeaf(raw net.Conn) *x509.Certificate {
	var leaf *x509.Certificate
	c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"sift.opaque/1"},
		VerifyPeerCertificate: func(certs [][]byte, _ [][]*x509.Certificate) error {
			var err error
			leaf, err = x509.ParseCertificate(certs[0])
			return err
		}})
	c.Handshake()
	c.Close()
	return leaf
}
