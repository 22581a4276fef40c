package test

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/siftmesh/sift/internal/testnet"
)

// The chaos suite (make chaos): each scenario is a real setup — a real
// go-control-plane server, a real sift-proxy process, real clients and
// backends — put under load while something goes wrong, and reports what
// was tried and what was lost. In make test the scenarios run small; with
// -chaos.full at the sizes the reliability issue names.
var chaosFull = flag.Bool("chaos.full", false, "run the chaos scenarios at full size (make chaos)")

// chaosSize returns full under -chaos.full, small otherwise.
func chaosSize(small, full int) int {
	if *chaosFull {
		return full
	}
	return small
}

// chaosReport logs a scenario's table and, when SIFT_CHAOS_REPORT names a
// file, appends it there as Markdown (make chaos prints that file).
func chaosReport(t *testing.T, scenario string, rows [][2]string) {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "\n### %s\n\n| | |\n|---|---|\n", scenario)
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s |\n", r[0], r[1])
	}
	t.Log(b.String())
	if path := os.Getenv("SIFT_CHAOS_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		status := "held"
		if t.Failed() {
			status = "**FAILED**"
		}
		fmt.Fprintf(f, "%s| result | %s |\n", b.String(), status)
	}
}

// adminYAML is a bootstrap's admin server on a free port: metrics on.
const adminYAML = "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}\n"

// leakSlack is how many goroutines and fds above the baseline still count as
// "back to the baseline": the admin scrape's own keep-alive connection and
// timers come and go; a leak per update or per connection is hundreds.
const leakSlack = 8

// processGauges reads a sift-proxy's goroutines and open file descriptors
// from its own metrics.
func processGauges(t *testing.T, admin string) (goroutines, fds int) {
	t.Helper()
	m := scrape(t, admin)
	return gauge(t, m, "go_goroutines"), gauge(t, m, "process_open_fds")
}

func gauge(t *testing.T, metrics, name string) int {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + name + ` ([0-9.e+]+)$`)
	m := re.FindStringSubmatch(metrics)
	if m == nil {
		t.Fatalf("no %s in the metrics", name)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return int(v)
}

// upstreamIdle is the churn clusters' idle timeout for pooled connections.
const upstreamIdle = 300 * time.Millisecond

// churnResources is version v of a configuration in which every resource
// type changes on every version: an HTTP listener over RDS and a TCP
// listener (its idle timeout: a new listener generation each time), two EDS
// clusters (their connect timeout), their endpoints (web alternates between
// its backends), and the route table (a response header naming v).
func churnResources(v int, web []string, echoAddr string) map[resourcev3.Type][]types.Resource {
	tcp := tcpListener("tcp", "echo")
	tp, _ := anypb.New(&tcpproxyv3.TcpProxy{StatPrefix: "tcp", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: "echo"},
		IdleTimeout: durationpb.New(time.Hour + time.Duration(v)*time.Second)})
	tcp.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: tp}

	clusters := []types.Resource{}
	for _, name := range []string{"web", "echo"} {
		c := edsCluster(name)
		c.ConnectTimeout = durationpb.New(time.Second + time.Duration(v)*time.Millisecond)
		// Pooled upstream connections close when idle, so that "back to
		// the baseline" can be checked once the load stops.
		c.CommonHttpProtocolOptions = &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(upstreamIdle)}
		clusters = append(clusters, c)
	}
	endpoints := web[v%len(web) : v%len(web)+1]
	if v%3 == 0 {
		endpoints = web
	}
	routes := routeTo("routes", "web")
	routes.ResponseHeadersToAdd = []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-config-version", Value: strconv.Itoa(v)}}}
	return map[resourcev3.Type][]types.Resource{
		resourcev3.ListenerType: {httpListenerOverRDS("http", "routes"), tcp},
		resourcev3.ClusterType:  clusters,
		resourcev3.EndpointType: {loadAssignment("web", endpoints...), loadAssignment("echo", echoAddr)},
		resourcev3.RouteType:    {routes},
	}
}

// chaosMesh is a real go-control-plane server driving a sift-proxy process
// with churnResources: listener "http" (over RDS) and "tcp" (to an echo).
type chaosMesh struct {
	cp       *controlPlane
	proxy    *runningProxy
	web      []string
	echoAddr string
}

func startChaosMesh(t *testing.T) *chaosMesh {
	t.Helper()
	c := &chaosMesh{web: []string{httpBackend(t, "a"), httpBackend(t, "b")}, echoAddr: echo(t)}
	c.cp = startControlPlane(t, true)
	c.cp.set("1", churnResources(1, c.web, c.echoAddr))
	cfg := writeBootstrap(t, xdsBootstrap(c.cp.addr, false, true)+adminYAML, nil)
	c.proxy = startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json", "--drain-time-s", "1"}, "http", "tcp", "admin")
	return c
}

// push publishes version v of churnResources and waits for its ACK.
func (c *chaosMesh) push(t *testing.T, v int) {
	t.Helper()
	version := strconv.Itoa(v)
	c.cp.set(version, churnResources(v, c.web, c.echoAddr))
	c.waitACK(t, version)
}

// waitACK waits until every type's request carried version.
func (c *chaosMesh) waitACK(t *testing.T, version string) {
	t.Helper()
	eventually(t, "the ACK of version "+version, func() bool {
		for _, typ := range []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.RouteType} {
			if !c.cp.sawVersion(typ, version) {
				return false
			}
		}
		return true
	})
}

// TestChaosConfigChurn pushes configuration updates of every type while
// HTTP requests and opaque connections run through the proxy: none may
// fail, every update must be ACKed, and once the load stops the proxy's
// goroutines and file descriptors must return to where they were (old
// generations drained and freed).
func TestChaosConfigChurn(t *testing.T) {
	t.Parallel()
	updates := chaosSize(20, 100)
	c := startChaosMesh(t)
	admin := c.proxy.addrs["admin"]
	load := startChaosLoad(t, c.proxy.addrs["http"], c.proxy.addrs["tcp"], "1")
	baseGoroutines, baseFDs := processGauges(t, admin)
	load.run()

	start := time.Now()
	for v := 2; v <= updates+1; v++ {
		c.push(t, v)
	}
	load.waitVersion(t, strconv.Itoa(updates+1))
	churnTime := time.Since(start)
	load.stop()

	// Old generations drain (--drain-time-s 1) and everything they held is freed.
	var goroutines, fds int
	deadline := time.Now().Add(30 * time.Second)
	for {
		goroutines, fds = processGauges(t, admin)
		if goroutines <= baseGoroutines+leakSlack && fds <= baseFDs+leakSlack || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	nacks := len(c.cp.nacks)

	if nacks > 0 {
		t.Errorf("%d updates NACKed: %s", nacks, <-c.cp.nacks)
	}
	load.check(t)
	if goroutines > baseGoroutines+leakSlack || fds > baseFDs+leakSlack {
		t.Errorf("after the churn: %d goroutines (%d before), %d fds (%d before): old generations were not freed",
			goroutines, baseGoroutines, fds, baseFDs)
	}
	chaosReport(t, "config churn over xDS", [][2]string{
		{"updates pushed (listeners, clusters, endpoints, routes each)", fmt.Sprintf("%d in %v", updates, churnTime.Round(time.Millisecond))},
		{"NACKs", strconv.Itoa(nacks)},
		load.rows()[0], load.rows()[1],
		{"goroutines before / after", fmt.Sprintf("%d / %d", baseGoroutines, goroutines)},
		{"open fds before / after", fmt.Sprintf("%d / %d", baseFDs, fds)},
	})
}

// chaosLoad is HTTP requests (4 keep-alive clients) and opaque connections
// (2 clients, one echo round trip each) through a proxy, counted.
type chaosLoad struct {
	httpAddr, tcpAddr string
	client            *http.Client

	dial                            func(ctx context.Context, network, addr string) (net.Conn, error)
	stopped                         atomic.Bool
	wg                              sync.WaitGroup
	requests, opaque                atomic.Int64
	failedRequests, failedOpaque    atomic.Int64
	firstRequestErr, firstOpaqueErr atomic.Value
	versions                        sync.Map // x-config-version values seen
}

// startChaosLoad waits until the proxy serves configuration version first,
// then returns with no connection open (the upstream ones idled out), ready
// for a baseline measurement before run.
func startChaosLoad(t *testing.T, httpAddr, tcpAddr, first string) *chaosLoad {
	t.Helper()
	return startChaosLoadVia(t, httpAddr, tcpAddr, first, (&net.Dialer{}).DialContext)
}

// startChaosLoadVia is startChaosLoad with the clients' dialer (one inside
// a network namespace, say).
func startChaosLoadVia(t *testing.T, httpAddr, tcpAddr, first string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *chaosLoad {
	t.Helper()
	l := &chaosLoad{httpAddr: httpAddr, tcpAddr: tcpAddr, dial: dial,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8, DialContext: dial}}}
	t.Cleanup(l.stop)
	eventually(t, "configuration version "+first, func() bool { v, err := l.get(); return err == nil && v == first })
	l.client.CloseIdleConnections()
	time.Sleep(3 * upstreamIdle) // the closed connections' goroutines end, the upstream ones idle out
	return l
}

// get fetches / and returns the configuration version that answered.
func (l *chaosLoad) get() (string, error) {
	resp, err := l.client.Get("http://" + l.httpAddr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	return resp.Header.Get("x-config-version"), nil
}

// run starts the clients; stop ends them.
func (l *chaosLoad) run() {
	for range 4 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for !l.stopped.Load() {
				v, err := l.get()
				l.requests.Add(1)
				if err != nil {
					l.failedRequests.Add(1)
					l.firstRequestErr.CompareAndSwap(nil, err.Error())
					continue
				}
				l.versions.Store(v, true)
			}
		}()
	}
	for range 2 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; !l.stopped.Load(); i++ {
				l.opaque.Add(1)
				if err := echoRoundTrip(l.dial, l.tcpAddr, fmt.Sprintf("ping %d\n", i)); err != nil {
					l.failedOpaque.Add(1)
					l.firstOpaqueErr.CompareAndSwap(nil, err.Error())
				}
			}
		}()
	}
}

func (l *chaosLoad) stop() {
	l.stopped.Store(true)
	l.wg.Wait()
	l.client.CloseIdleConnections()
}

// waitVersion waits until a request was answered by configuration version.
func (l *chaosLoad) waitVersion(t *testing.T, version string) {
	t.Helper()
	eventually(t, "a response from configuration version "+version, func() bool { _, ok := l.versions.Load(version); return ok })
}

func (l *chaosLoad) rows() [][2]string {
	return [][2]string{
		{"HTTP requests / failed", fmt.Sprintf("%d / %d", l.requests.Load(), l.failedRequests.Load())},
		{"opaque connections / failed", fmt.Sprintf("%d / %d", l.opaque.Load(), l.failedOpaque.Load())},
	}
}

func (l *chaosLoad) check(t *testing.T) {
	t.Helper()
	if n := l.failedRequests.Load(); n > 0 {
		t.Errorf("%d of %d HTTP requests failed; the first: %v", n, l.requests.Load(), l.firstRequestErr.Load())
	}
	if n := l.failedOpaque.Load(); n > 0 {
		t.Errorf("%d of %d opaque connections failed; the first: %v", n, l.opaque.Load(), l.firstOpaqueErr.Load())
	}
	if l.requests.Load() == 0 || l.opaque.Load() == 0 {
		t.Errorf("no load ran: %d requests, %d opaque connections", l.requests.Load(), l.opaque.Load())
	}
}

// echoRoundTrip opens a connection to an echo service, sends line, reads it
// back, half-closes and expects the echo's EOF.
func echoRoundTrip(dial func(ctx context.Context, network, addr string) (net.Conn, error), addr, line string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	c, err := dial(ctx, "tcp", addr)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, line); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the echo: %w (got %q)", err, got)
	}
	if got != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	c.(*net.TCPConn).CloseWrite()
	if _, err := io.ReadAll(c); err != nil {
		return fmt.Errorf("after the echo: %w", err)
	}
	return nil
}

// TestChaosControlPlaneFaults runs load through a proxy while its control
// plane fails: the server stops (every stream cut, as a crash) and comes
// back with a newer version, repeatedly; then it sends updates that are
// wrong in each way a control plane can be wrong. No request may fail; every
// bad update is NACKed with a reason that names it and nothing of it is
// applied; a response too large to receive breaks the stream, not the proxy.
func TestChaosControlPlaneFaults(t *testing.T) {
	t.Parallel()
	restarts := chaosSize(3, 10)
	c := startChaosMesh(t)
	load := startChaosLoad(t, c.proxy.addrs["http"], c.proxy.addrs["tcp"], "1")
	load.run()
	var rows [][2]string

	v := 1
	start := time.Now()
	for range restarts {
		c.cp.stop()
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond)
		c.cp.serve(c.cp.addr)
		v++
		c.push(t, v)
	}
	load.waitVersion(t, strconv.Itoa(v))
	rows = append(rows, [2]string{"control plane stopped (streams cut) and back with a new version",
		fmt.Sprintf("%d times in %v, each resynced", restarts, time.Since(start).Round(time.Millisecond))})

	good := v
	_, tcpPort, _ := net.SplitHostPort(c.proxy.addrs["tcp"])
	port, _ := strconv.Atoi(tcpPort)
	bad := []struct {
		name   string
		mutate func(map[resourcev3.Type][]types.Resource)
		want   string // in the NACK; "" when none can come (the response never arrives)
	}{
		{"a listener's TLS transport socket without its context", func(r map[resourcev3.Type][]types.Resource) {
			r[resourcev3.ListenerType][1].(*listenerv3.Listener).FilterChains[0].TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls"}
		}, `listener "tcp": filter_chains[0]: transport_socket (envoy.transport_sockets.tls): typed_config: must be set`},
		{"a second listener on a port in use", func(r map[resourcev3.Type][]types.Resource) {
			dup := tcpListener("dup", "echo")
			dup.Address.GetSocketAddress().PortSpecifier = &corev3.SocketAddress_PortValue{PortValue: uint32(port)}
			r[resourcev3.ListenerType] = append(r[resourcev3.ListenerType], dup)
		}, "address already in use"},
		{"a route with an invalid regex", func(r map[resourcev3.Type][]types.Resource) {
			r[resourcev3.RouteType][0].(*routev3.RouteConfiguration).VirtualHosts[0].Routes[0].Match.PathSpecifier =
				&routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: "(unclosed"}}
		}, `route configuration "routes"`},
		{"a cluster with a negative connect timeout", func(r map[resourcev3.Type][]types.Resource) {
			r[resourcev3.ClusterType][0].(*clusterv3.Cluster).ConnectTimeout = durationpb.New(-time.Second)
		}, `"web": invalid Cluster: connect_timeout: value must be greater than 0s`},
		{"an endpoint that is not an IP address", func(r map[resourcev3.Type][]types.Resource) {
			cla := r[resourcev3.EndpointType][0].(*endpointv3.ClusterLoadAssignment)
			cla.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "not-an-ip"
		}, `ClusterLoadAssignment "web"`},
		{"a response larger than the 4 MiB gRPC limit", func(r map[resourcev3.Type][]types.Resource) {
			rc := r[resourcev3.RouteType][0].(*routev3.RouteConfiguration)
			for i := range 50000 {
				rc.VirtualHosts = append(rc.VirtualHosts, &routev3.VirtualHost{Name: fmt.Sprintf("padding-%d", i),
					Domains: []string{fmt.Sprintf("padding-%d.%s.example.com", i, strings.Repeat("x", 60))}})
			}
		}, ""},
	}
	for i, b := range bad {
		res := churnResources(good, c.web, c.echoAddr)
		b.mutate(res)
		version := fmt.Sprintf("bad-%d", i)
		c.cp.set(version, res)
		outcome := ""
		if b.want != "" {
			outcome = "NACK: " + waitNACK(t, c.cp, b.want)
		} else {
			opened := c.cp.streams.Load()
			eventually(t, "the proxy to reconnect after the oversized response", func() bool { return c.cp.streams.Load() > opened+1 })
			outcome = fmt.Sprintf("stream broken and reopened %d times; the last good configuration kept serving", c.cp.streams.Load()-opened)
		}
		if v, err := load.get(); err != nil || v != strconv.Itoa(good) {
			t.Errorf("after %s: version %q, %v; want the last good version %d serving", b.name, v, err, good)
		}
		rows = append(rows, [2]string{b.name, outcome})
	}
	good++
	c.push(t, good)
	load.waitVersion(t, strconv.Itoa(good))
	load.stop()
	rows = append(rows, [2]string{"a good update after the bad ones", "applied"})
	load.check(t)
	chaosReport(t, "control-plane faults", append(rows, load.rows()...))
}

// waitNACK returns the first NACK message containing want; other NACKs
// (repeats of earlier ones) are skipped.
func waitNACK(t *testing.T, cp *controlPlane, want string) string {
	t.Helper()
	timeout := time.After(time.Minute)
	for {
		select {
		case msg := <-cp.nacks:
			if strings.Contains(msg, want) {
				return msg
			}
		case <-timeout:
			t.Fatalf("no NACK containing %q", want)
		}
	}
}

// faultyBackend is an HTTP endpoint whose behaviour the test switches:
// "ok" answers 200, "reset" resets the connection without an answer,
// "503" answers 503, "blackhole" never answers; kill closes it and every
// connection it holds (later connects are refused).
type faultyBackend struct {
	name string
	mode atomic.Value // string
	srv  *http.Server
	addr string
}

func startFaultyBackend(t *testing.T, name string) *faultyBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &faultyBackend{name: name, addr: ln.Addr().String()}
	b.mode.Store("ok")
	b.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch b.mode.Load().(string) {
		case "reset":
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
		case "503":
			http.Error(w, b.name+" unavailable", http.StatusServiceUnavailable)
		case "blackhole":
			<-r.Context().Done()
		default:
			io.WriteString(w, b.name)
		}
	})}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// TestChaosUpstreamFaults runs HTTP load through a real sift-proxy whose
// cluster has three endpoints, with retries (connect-failure, reset, 5xx;
// a per-try timeout; retries avoid the hosts already tried, Envoy's
// previous_hosts predicate) and outlier detection, while the endpoints misbehave
// one after another: reset mid-request, answer 503, black-hole, die. Every
// request must succeed within the retry policy, none may hang.
func TestChaosUpstreamFaults(t *testing.T) {
	t.Parallel()
	phase := time.Duration(chaosSize(700, 3000)) * time.Millisecond
	a, b, c := startFaultyBackend(t, "a"), startFaultyBackend(t, "b"), startFaultyBackend(t, "c")
	ep := func(addr string) string {
		host, port, _ := net.SplitHostPort(addr)
		return fmt.Sprintf("{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}", host, port)
	}
	retry := `{retry_on: "connect-failure,reset,5xx", num_retries: 3, per_try_timeout: 0.5s, host_selection_retry_max_attempts: 5, ` +
		`retry_host_predicate: [{name: envoy.retry_host_predicates.previous_hosts, typed_config: {"@type": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}]}`
	cfg := writeBootstrap(t, adminYAML+httpListener+`  - name: web
    type: STATIC
    connect_timeout: 0.25s
    lb_policy: ROUND_ROBIN
    outlier_detection: {consecutive_5xx: 3, consecutive_gateway_failure: 3, interval: 0.1s, base_ejection_time: 0.5s, max_ejection_percent: 100}
    load_assignment: {cluster_name: web, endpoints: [{lb_endpoints: [{{a}}, {{b}}, {{c}}]}]}
`, map[string]string{"hcm": "", "routes": `{name: r, virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: web, timeout: 10s, retry_policy: ` + retry + `}}]}]}`,
		"a": ep(a.addr), "b": ep(b.addr), "c": ep(c.addr)})
	p := startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json"}, "http", "admin")
	url := "http://" + p.addrs["http"] + "/"
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	defer client.CloseIdleConnections()

	type result struct {
		requests, failed int64
		slowest          time.Duration
		firstErr         string
	}
	runPhase := func() result {
		var res result
		var mu sync.Mutex
		var wg sync.WaitGroup
		stop := time.Now().Add(phase)
		for range 4 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					t0 := time.Now()
					resp, err := client.Get(url)
					var body []byte
					if err == nil {
						body, err = io.ReadAll(resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("status %d: %s", resp.StatusCode, body)
						}
					}
					d := time.Since(t0)
					mu.Lock()
					res.requests++
					res.slowest = max(res.slowest, d)
					if err != nil {
						res.failed++
						if res.firstErr == "" {
							res.firstErr = err.Error()
						}
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		return res
	}
	var rows [][2]string
	for _, ph := range []struct {
		name  string
		apply func()
	}{
		{"all endpoints healthy", func() {}},
		{"a resets every request (retried: reset)", func() { a.mode.Store("reset") }},
		{"a answers 503 (retried: 5xx; ejected after 3)", func() { a.mode.Store("503") }},
		{"b black-holed (per-try timeout 0.5 s, retried)", func() { a.mode.Store("ok"); b.mode.Store("blackhole") }},
		{"c killed (connect refused, retried)", func() { b.mode.Store("ok"); c.srv.Close() }},
	} {
		ph.apply()
		res := runPhase()
		rows = append(rows, [2]string{ph.name, fmt.Sprintf("%d requests, %d failed, slowest %v", res.requests, res.failed, res.slowest.Round(time.Millisecond))})
		if res.failed > 0 {
			t.Errorf("%s: %d of %d requests failed; the first: %s", ph.name, res.failed, res.requests, res.firstErr)
		}
		if res.requests == 0 {
			t.Errorf("%s: no request completed", ph.name)
		}
	}
	chaosReport(t, "upstream faults (retries and outlier detection)", rows)
}

// TestChaosSilentFlood opens many connections that never send a byte
// (slowloris) to a detecting port whose fallback upstream is silent too,
// then checks that a legitimate client is still served at once, that the
// proxy's memory per silent connection stays bounded, and that everything
// is freed when they go.
func TestChaosSilentFlood(t *testing.T) {
	t.Parallel()
	silent := chaosSize(500, 10000)
	quiet := testnet.Backend(t, func(c net.Conn) { io.Copy(io.Discard, c) }) // never speaks
	// HTTP goes to the "http" backend, everything else to quiet.
	p := startDetectingProxy(t, quiet)
	addr, admin := p.addr, p.admin
	rss := func() int { return gauge(t, scrape(t, admin), "process_resident_memory_bytes") }
	get := func() error {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
		b, err := io.ReadAll(c)
		if !strings.Contains(string(b), "http GET / HTTP/1.1") {
			return fmt.Errorf("got %q, %v", b, err)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	baseGoroutines, baseFDs := processGauges(t, admin)
	baseRSS := rss()

	conns := make([]net.Conn, 0, silent)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range silent {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("silent connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	// Every silent connection has been accepted and has waited out the
	// grace period (the server-first race, bounded by max_concurrent_races).
	eventually(t, "the silent connections accepted", func() bool {
		g, _ := processGauges(t, admin)
		return g >= baseGoroutines+silent
	})
	time.Sleep(200 * time.Millisecond)
	floodRSS := rss()
	floodGoroutines, floodFDs := processGauges(t, admin)
	var legitFailed int
	var firstErr error
	for range 20 {
		if err := get(); err != nil {
			legitFailed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	var goroutines, fds int
	deadline := time.Now().Add(30 * time.Second)
	for {
		goroutines, fds = processGauges(t, admin)
		if goroutines <= baseGoroutines+leakSlack && fds <= baseFDs+leakSlack || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	perConn := float64(floodRSS-baseRSS) / float64(silent)
	if legitFailed > 0 {
		t.Errorf("%d of 20 legitimate requests failed during the flood; the first: %v", legitFailed, firstErr)
	}
	if goroutines > baseGoroutines+leakSlack || fds > baseFDs+leakSlack {
		t.Errorf("after the flood: %d goroutines (%d before), %d fds (%d before)", goroutines, baseGoroutines, fds, baseFDs)
	}
	chaosReport(t, "a flood of silent connections on a detecting port", [][2]string{
		{"silent connections held", strconv.Itoa(silent)},
		{"legitimate HTTP requests during the flood / failed", fmt.Sprintf("20 / %d", legitFailed)},
		{"RSS before / during the flood", fmt.Sprintf("%.1f MiB / %.1f MiB (%.1f KiB per silent connection)", float64(baseRSS)/(1<<20), float64(floodRSS)/(1<<20), perConn/1024)},
		{"goroutines before / during / after", fmt.Sprintf("%d / %d / %d", baseGoroutines, floodGoroutines, goroutines)},
		{"open fds before / during / after", fmt.Sprintf("%d / %d / %d", baseFDs, floodFDs, fds)},
	})
}

// TestChaosHTTPAbuse sends what attackers send to an HTTP proxy — an
// HTTP/2 "rapid reset" stream (HEADERS then RST_STREAM, over and over,
// CVE-2023-44487) and HTTP/1 heads past the size limit — and checks that
// the abuser gets nothing it wants, that legitimate clients are served
// meanwhile, and that memory stays bounded.
func TestChaosHTTPAbuse(t *testing.T) {
	t.Parallel()
	resets := chaosSize(20000, 1000000)
	cfg := writeBootstrap(t, adminYAML+httpListener+staticCluster("web", httpBackend(t, "legit")),
		map[string]string{"hcm": "codec_type: AUTO", "routes": `{name: r, virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: web}}]}]}`})
	p := startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json"}, "http", "admin")
	addr, admin := p.addrs["http"], p.addrs["admin"]
	legit := func() error {
		resp, err := h2cClient().Get("http://" + addr + "/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(b), "legit ") {
			return fmt.Errorf("status %d: %q", resp.StatusCode, b)
		}
		return nil
	}
	if err := legit(); err != nil {
		t.Fatal(err)
	}
	baseRSS := gauge(t, scrape(t, admin), "process_resident_memory_bytes")

	// The rapid reset: one connection, each stream opened and cancelled at
	// once, as fast as the socket takes it, while legitimate requests run.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bw := bufio.NewWriterSize(c, 64<<10)
	io.WriteString(bw, http2.ClientPreface)
	fr := http2.NewFramer(bw, c)
	fr.WriteSettings()
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "abuse"}, {":path", "/"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hbuf.Bytes()
	go io.Copy(io.Discard, c) // the server's frames (and, likely, its GOAWAY)
	var legitFailed int
	var firstErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 20 {
			if err := legit(); err != nil {
				legitFailed++
				if firstErr == nil {
					firstErr = err
				}
			}
		}
	}()
	sent := 0
	c.SetWriteDeadline(time.Now().Add(60 * time.Second))
	for id := uint32(1); sent < resets; id += 2 {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}); err != nil {
			break
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
		sent++
	}
	bw.Flush()
	<-done
	peakRSS := gauge(t, scrape(t, admin), "process_resident_memory_bytes")
	if err := legit(); err != nil {
		t.Errorf("after the rapid reset: %v", err)
	}

	// HTTP/1 heads past the limit: a 200 KiB header, and 2 000 headers.
	huge := func(head string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go io.WriteString(c, head)
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	bigHeader := huge("GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n")
	var many strings.Builder
	for i := range 2000 {
		fmt.Fprintf(&many, "X-H%d: v\r\n", i)
	}
	manyHeaders := huge("GET / HTTP/1.1\r\nHost: x\r\n" + many.String() + "\r\n")
	for what, got := range map[string]string{"a 200 KiB header": bigHeader, "2 000 headers": manyHeaders} {
		if !strings.HasPrefix(got, "HTTP/1.1 431") && !strings.HasPrefix(got, "HTTP/1.1 400") {
			t.Errorf("%s: the proxy answered %q, want 431 (or 400)", what, got)
		}
	}
	if legitFailed > 0 {
		t.Errorf("%d of 20 legitimate requests failed during the rapid reset; the first: %v", legitFailed, firstErr)
	}
	chaosReport(t, "HTTP abuse", [][2]string{
		{"HTTP/2 rapid reset (HEADERS + RST_STREAM) streams sent on one connection", fmt.Sprintf("%d of %d (the proxy may close the connection first)", sent, resets)},
		{"legitimate h2c requests meanwhile / failed", fmt.Sprintf("20 / %d", legitFailed)},
		{"RSS before / after", fmt.Sprintf("%.1f MiB / %.1f MiB", float64(baseRSS)/(1<<20), float64(peakRSS)/(1<<20))},
		{"a 200 KiB header", bigHeader},
		{"2 000 headers", manyHeaders},
	})
}
