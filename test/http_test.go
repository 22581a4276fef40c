package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// httpListener is a bootstrap with one listener "http" whose only chain is
// an http_connection_manager; {{hcm}} is one extra field (YAML) and
// {{routes}} its inline route_config.
const httpListener = `
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          {{hcm}}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config: {{routes}}
  clusters:
`

// h2Cluster is a STATIC cluster speaking HTTP/2 (h2c) to addr.
func h2Cluster(name, addr string) string {
	return strings.TrimSuffix(staticCluster(name, addr), "}\n") +
		`, typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {"@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}}` + "\n"
}

func startHTTPProxy(t *testing.T, hcm, routes, clusters string) string {
	t.Helper()
	p := startProxy(t, httpListener+clusters, map[string]string{"hcm": hcm, "routes": routes})
	return p.addr(t, "http")
}

func do(t *testing.T, client *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: body: %v", req.Method, req.URL, err)
	}
	return resp, string(b)
}

func newReq(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestHTTPProtocols(t *testing.T) {
	t.Parallel()
	routes := `{virtual_hosts: [{name: all, domains: ["*"], routes: [
	  {match: {prefix: /grpc.health.v1.Health/}, route: {cluster: h2, timeout: 0s}},
	  {match: {prefix: /h2/}, route: {cluster: h2}},
	  {match: {prefix: /}, route: {cluster: h1}}]}]}`
	addr := startHTTPProxy(t, `http_protocol_options: {accept_http_10: true}`, routes,
		staticCluster("h1", httpBackend(t, "h1"))+h2Cluster("h2", h2cBackend(t, "h2")))

	t.Run("HTTP/1.1 keep-alive", func(t *testing.T) {
		tr := &http.Transport{}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr}
		var conns atomic.Int32
		tr.DialContext = func(ctx context.Context, n, a string) (net.Conn, error) {
			conns.Add(1)
			return (&net.Dialer{}).DialContext(ctx, n, a)
		}
		for range 3 {
			if got, want := get(t, client, "http://"+addr+"/x"), "h1 GET /x HTTP/1.1"; got != want {
				t.Fatalf("got %q, want %q", got, want)
			}
		}
		if n := conns.Load(); n != 1 {
			t.Errorf("%d connections for 3 requests, want 1 (keep-alive)", n)
		}
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		c := dial(t, addr)
		fmt.Fprint(c, "GET /ten HTTP/1.0\r\nHost: x\r\n\r\n")
		resp := readAllWithin(t, c, 5*time.Second)
		if !strings.HasPrefix(resp, "HTTP/1.0 200") || !strings.HasSuffix(resp, "h1 GET /ten HTTP/1.1") {
			t.Errorf("response %q", resp)
		}
	})
	t.Run("h2c prior knowledge to HTTP/1 and HTTP/2 upstreams", func(t *testing.T) {
		client := h2cClient()
		defer client.CloseIdleConnections()
		if got, want := get(t, client, "http://"+addr+"/x"), "h1 GET /x HTTP/1.1"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
		if got, want := get(t, client, "http://"+addr+"/h2/y"), "h2 GET /h2/y HTTP/2.0"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	t.Run("h2c upgrade", func(t *testing.T) {
		c := dial(t, addr)
		fmt.Fprint(c, "GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 101") {
			t.Fatalf("status line %q, %v; want 101 Switching Protocols", line, err)
		}
	})
	t.Run("gRPC unary and server streaming", func(t *testing.T) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "sift.test"})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check: %v, %v", resp, err)
		}
		// An unknown service: the backend's NOT_FOUND travels in trailers.
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
			t.Errorf("Check(nope): %v, want NotFound", err)
		}
		w, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "sift.test"})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := w.Recv(); err != nil || m.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Watch: %v, %v", m, err)
		}
	})
}

func TestHTTPRouting(t *testing.T) {
	t.Parallel()
	echoHeaders := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", "yes")
		fmt.Fprintf(w, "host=%s path=%s add=%s gone=%q xff=%q rid=%t", r.Host, r.URL.RequestURI(), r.Header.Get("X-Added"),
			r.Header.Get("X-Gone"), r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Request-Id") != "")
	}))
	t.Cleanup(echoHeaders.Close)
	routes := `{virtual_hosts: [
	  {name: api, domains: [api.example.com, "api.example.com:8080"], routes: [
	    {name: rewrite, match: {prefix: /v1/}, route: {cluster: echo, prefix_rewrite: /internal/, host_rewrite_literal: backend.local},
	     request_headers_to_add: [{header: {key: x-added, value: "yes"}}], request_headers_to_remove: [x-gone],
	     response_headers_to_add: [{header: {key: x-route, value: r1}}], response_headers_to_remove: [x-backend]},
	    {name: hdr, match: {prefix: /, headers: [{name: x-canary, string_match: {exact: "1"}}]}, direct_response: {status: 418, body: {inline_string: canary}}},
	    {name: exact, match: {path: /exact}, direct_response: {status: 200, body: {inline_string: exact}}},
	    {name: regex, match: {safe_regex: {regex: "/items/[0-9]+"}}, direct_response: {status: 200, body: {inline_string: item}}},
	    {name: sep, match: {path_separated_prefix: /sep}, direct_response: {status: 200, body: {inline_string: sep}}},
	    {name: nocase, match: {prefix: /CaSe, case_sensitive: false}, direct_response: {status: 200, body: {inline_string: nocase}}}]},
	  {name: wild, domains: ["*.example.com"], routes: [{match: {prefix: /}, direct_response: {status: 200, body: {inline_string: wild}}}]},
	  {name: any, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: echo}}]}]}`
	addr := startHTTPProxy(t, `use_remote_address: true`, routes, staticCluster("echo", echoHeaders.Listener.Addr().String()))
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	tests := []struct {
		name, host, path string
		header           map[string]string
		wantStatus       int
		wantBody         string
		wantHeader       map[string]string
	}{
		{name: "prefix rewrite and edits", host: "api.example.com", path: "/v1/a?q=1", header: map[string]string{"X-Gone": "x", "X-Forwarded-For": "10.9.9.9"},
			wantStatus: 200, wantBody: `host=backend.local path=/internal/a?q=1 add=yes gone="" xff="10.9.9.9, 127.0.0.1" rid=true`,
			wantHeader: map[string]string{"X-Route": "r1", "X-Backend": "", "Server": "sift"}},
		{name: "header match", host: "api.example.com", path: "/z", header: map[string]string{"X-Canary": "1"}, wantStatus: 418, wantBody: "canary"},
		{name: "exact path ignores the query", host: "api.example.com:8080", path: "/exact?x=1", wantStatus: 200, wantBody: "exact"},
		{name: "exact path is exact", host: "api.example.com", path: "/exact/more", wantStatus: 404, wantHeader: map[string]string{"X-Sift-Error": "route_not_found"}},
		{name: "regex", host: "api.example.com", path: "/items/42", wantStatus: 200, wantBody: "item"},
		{name: "regex is anchored", host: "api.example.com", path: "/items/42/x", wantStatus: 404},
		{name: "path separated prefix", host: "api.example.com", path: "/sep/x", wantStatus: 200, wantBody: "sep"},
		{name: "path separated prefix needs a separator", host: "api.example.com", path: "/sepx", wantStatus: 404},
		{name: "case insensitive", host: "api.example.com", path: "/case/1", wantStatus: 200, wantBody: "nocase"},
		{name: "suffix wildcard", host: "www.example.com", path: "/", wantStatus: 200, wantBody: "wild"},
		{name: "catch-all", host: "other", path: "/p", wantStatus: 200, wantBody: `host=other path=/p add= gone="" xff="127.0.0.1" rid=true`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := newReq(t, "GET", "http://"+addr+tt.path, nil)
			req.Host = tt.host
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, body := do(t, client, req)
			if resp.StatusCode != tt.wantStatus || (tt.wantBody != "" && body != tt.wantBody) {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, body, tt.wantStatus, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s: %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestHTTPErrors(t *testing.T) {
	t.Parallel()
	closed := func() string { // a port nobody listens on
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := ln.Addr().String()
		ln.Close()
		return a
	}()
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); slow.Close() })
	host, port, _ := net.SplitHostPort(httpBackend(t, "sick"))
	routes := `{virtual_hosts: [{name: all, domains: ["*"], routes: [
	  {match: {prefix: /down}, route: {cluster: down}},
	  {match: {prefix: /slow}, route: {cluster: slow, timeout: 0.2s}},
	  {match: {prefix: /idle}, route: {cluster: slow, timeout: 30s, idle_timeout: 0.2s}},
	  {match: {prefix: /grpc.health.v1.Health/}, route: {cluster: down}},
	  {match: {prefix: /sick}, route: {cluster: sick}},
	  {match: {prefix: /nocluster}, route: {cluster: nope}}]}]}`
	addr := startHTTPProxy(t, "", routes, staticCluster("down", closed)+staticCluster("slow", slow.Listener.Addr().String())+
		fmt.Sprintf("  - {name: sick, type: STATIC, load_assignment: {cluster_name: sick, endpoints: [{lb_endpoints: [{health_status: UNHEALTHY, endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]}}\n", host, port))
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for _, tt := range []struct {
		path       string
		wantStatus int
		wantReason string
		wantBody   string
	}{
		{"/down", 502, "upstream_connect_failure", "upstream connect error or disconnect/reset before headers. reset reason: connection failure"},
		{"/slow", 504, "upstream_request_timeout", "upstream request timeout"},
		{"/idle", 408, "stream_idle_timeout", "stream timeout"},
		{"/sick", 503, "no_healthy_upstream", "no healthy upstream"},
		{"/nocluster", 503, "cluster_not_found", ""},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp, body := do(t, client, newReq(t, "GET", "http://"+addr+tt.path, nil))
			if resp.StatusCode != tt.wantStatus || resp.Header.Get("X-Sift-Error") != tt.wantReason || body != tt.wantBody {
				t.Errorf("got %d %q %q, want %d %q %q", resp.StatusCode, resp.Header.Get("X-Sift-Error"), body, tt.wantStatus, tt.wantReason, tt.wantBody)
			}
		})
	}
	t.Run("gRPC gets UNAVAILABLE", func(t *testing.T) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		_, err = healthpb.NewHealthClient(cc).Check(context.Background(), &healthpb.HealthCheckRequest{})
		if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "connection failure") {
			t.Errorf("got %v, want Unavailable with the reason", err)
		}
	})
}

func TestHTTPRetries(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]int{}
	// The backend fails the first attempt of every request with 503, then
	// answers with what it received.
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		key := r.URL.Path
		mu.Lock()
		seen[key]++
		n := seen[key]
		mu.Unlock()
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "attempt %d got %d bytes", n, len(b))
	}))
	t.Cleanup(flaky.Close)
	routes := `{virtual_hosts: [{name: all, domains: ["*"], retry_policy: {retry_on: "5xx", num_retries: 2, retry_back_off: {base_interval: 0.001s}}, routes: [
	  {match: {prefix: /}, route: {cluster: flaky}}]}]}`
	addr := startHTTPProxy(t, "", routes, staticCluster("flaky", flaky.Listener.Addr().String()))
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	count := func(path string) int { mu.Lock(); defer mu.Unlock(); return seen[path] }

	t.Run("GET is retried", func(t *testing.T) {
		resp, body := do(t, client, newReq(t, "GET", "http://"+addr+"/get", nil))
		if resp.StatusCode != 200 || body != "attempt 2 got 0 bytes" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("small POST is replayed whole", func(t *testing.T) {
		resp, body := do(t, client, newReq(t, "POST", "http://"+addr+"/small", strings.NewReader(strings.Repeat("x", 1000))))
		if resp.StatusCode != 200 || body != "attempt 2 got 1000 bytes" {
			t.Errorf("got %d %q", resp.StatusCode, body)
		}
	})
	t.Run("streamed POST beyond the buffer is not retried", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			chunk := make([]byte, 64<<10)
			for range 40 { // 2.5 MiB, chunked: more than the 1 MiB retry buffer
				if _, err := pw.Write(chunk); err != nil {
					return
				}
			}
			pw.Close()
		}()
		resp, _ := do(t, client, newReq(t, "POST", "http://"+addr+"/big", pr))
		pr.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || count("/big") != 1 {
			t.Errorf("got %d after %d attempts, want the backend's 503 after 1", resp.StatusCode, count("/big"))
		}
	})
}

func TestHTTPWebSocketAndConnect(t *testing.T) {
	t.Parallel()
	ws := httptest.NewServer(websocket.Handler(func(c *websocket.Conn) { io.Copy(c, c) }))
	t.Cleanup(ws.Close)
	routes := `{virtual_hosts: [{name: all, domains: ["*"], routes: [
	  {match: {connect_matcher: {}}, route: {cluster: echo, upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]}},
	  {match: {prefix: /ws}, route: {cluster: ws}},
	  {match: {prefix: /nows}, route: {cluster: ws, upgrade_configs: [{upgrade_type: websocket, enabled: false}]}}]}]}`
	addr := startHTTPProxy(t, `upgrade_configs: [{upgrade_type: websocket}, {upgrade_type: CONNECT}]`, routes,
		staticCluster("ws", ws.Listener.Addr().String())+staticCluster("echo", echo(t)))

	t.Run("WebSocket", func(t *testing.T) {
		c, err := websocket.Dial("ws://"+addr+"/ws", "", "http://localhost/")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, msg := range []string{"hello", "world"} {
			if err := websocket.Message.Send(c, msg); err != nil {
				t.Fatal(err)
			}
			var got string
			if err := websocket.Message.Receive(c, &got); err != nil || got != msg {
				t.Fatalf("got %q, %v; want %q", got, err, msg)
			}
		}
	})
	t.Run("WebSocket disabled on a route", func(t *testing.T) {
		c := dial(t, addr)
		fmt.Fprint(c, "GET /nows HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != http.StatusForbidden || resp.Header.Get("X-Sift-Error") != "upgrade_failed" {
			t.Errorf("got %v, %v; want 403 upgrade_failed", resp, err)
		}
	})
	t.Run("CONNECT", func(t *testing.T) {
		c := dial(t, addr)
		fmt.Fprint(c, "CONNECT anywhere:443 HTTP/1.1\r\nHost: anywhere:443\r\n\r\n")
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		fmt.Fprint(c, "ping through the tunnel")
		c.CloseWrite()
		b, _ := io.ReadAll(br)
		if string(b) != "ping through the tunnel" {
			t.Errorf("echo %q", b)
		}
	})
}

// TestHTTPBalancingSlowEndpoint sends requests to three endpoints, one of
// them 50 ms slower, and compares its share under peak EWMA and round robin.
func TestHTTPBalancingSlowEndpoint(t *testing.T) {
	t.Parallel()
	backend := func(name string, delay time.Duration) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(delay)
			io.WriteString(w, name)
		}))
		t.Cleanup(srv.Close)
		return srv.Listener.Addr().String()
	}
	a, b, slow := backend("a", 0), backend("b", 0), backend("slow", 50*time.Millisecond)
	cluster := func(name, lb string) string {
		return strings.TrimSuffix(staticCluster(name, a, b, slow), "}\n") + lb + "}\n"
	}
	routes := `{virtual_hosts: [{name: all, domains: ["*"], routes: [
	  {match: {prefix: /ewma}, route: {cluster: ewma}}, {match: {prefix: /rr}, route: {cluster: rr}}]}]}`
	addr := startHTTPProxy(t, "", routes,
		cluster("ewma", `, load_balancing_policy: {policies: [{typed_extension_config: {name: sift.peak_ewma, typed_config: {"@type": type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma}}}]}`)+
			cluster("rr", ""))
	share := func(path string) float64 {
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
		defer client.CloseIdleConnections()
		const total, workers = 240, 4
		var slowN atomic.Int32
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range total / workers {
					resp, err := client.Get("http://" + addr + path)
					if err != nil {
						t.Error(err)
						return
					}
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if string(body) == "slow" {
						slowN.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		return float64(slowN.Load()) / total
	}
	ewma, rr := share("/ewma"), share("/rr")
	t.Logf("slow endpoint's share: peak EWMA %.3f, round robin %.3f", ewma, rr)
	if ewma > 0.12 {
		t.Errorf("peak EWMA sent %.1f%% of requests to the slow endpoint, want under 12%%", 100*ewma)
	}
	if rr < 0.25 || rr > 0.42 {
		t.Errorf("round robin sent %.1f%% to the slow endpoint, want about a third", 100*rr)
	}
}

// TestHTTPOutlierEjection: an endpoint that keeps answering 500 is ejected
// after consecutive_5xx failures and gets no more requests.
func TestHTTPOutlierEjection(t *testing.T) {
	t.Parallel()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	t.Cleanup(bad.Close)
	good := httpBackend(t, "good")
	cl := strings.TrimSuffix(staticCluster("c", good, bad.Listener.Addr().String()), "}\n") +
		`, outlier_detection: {consecutive_5xx: 3, base_ejection_time: 60s}}` + "\n"
	addr := startHTTPProxy(t, "", `{virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]}`, cl)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	fails := 0
	for range 20 { // round robin: the bad endpoint's third failure comes by request 6
		resp, _ := do(t, client, newReq(t, "GET", "http://"+addr+"/", nil))
		if resp.StatusCode == 500 {
			fails++
		}
	}
	if fails != 3 {
		t.Errorf("%d responses from the bad endpoint, want exactly 3 (then ejected)", fails)
	}
}
