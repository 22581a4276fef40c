package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
)

// loggedListener detects, sends HTTP/1.1 to an HCM and everything else to a
// tcp_proxy to an echo server; both log to the file {{log}} in JSON and to
// the ALS cluster "als".
const loggedListener = `
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 0.1s}
    filter_chains:
    - name: http
      filter_chain_match: {application_protocols: [http/1.1, h2c]}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config: {virtual_hosts: [{name: vh, domains: ["*"], routes: [{name: hello, match: {prefix: /}, route: {cluster: backend}}]}]}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {{log}}
              log_format: {json_format: {kind: http, code: "%RESPONSE_CODE%", path: "%REQ(:PATH)%", proto: "%PROTOCOL%", route: "%ROUTE_NAME%",
                cluster: "%UPSTREAM_CLUSTER%", upstream: "%UPSTREAM_HOST%", client: "%DOWNSTREAM_REMOTE_ADDRESS%", sent: "%BYTES_SENT%",
                detected: "%SIFT_DETECTED_PROTOCOL%", reason: "%SIFT_DETECTION_REASON%"}}
          - name: envoy.access_loggers.http_grpc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
              common_config: {log_name: e2e-http, transport_api_version: V3, buffer_flush_interval: 0.05s, grpc_service: {envoy_grpc: {cluster_name: als}}}
    default_filter_chain:
      name: opaque
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: opaque
          cluster: echo
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {{log}}
              log_format: {json_format: {kind: tcp, code: "%RESPONSE_CODE%", cluster: "%UPSTREAM_CLUSTER%", upstream: "%UPSTREAM_HOST%",
                client: "%DOWNSTREAM_REMOTE_ADDRESS%", received: "%BYTES_RECEIVED%", sent: "%BYTES_SENT%",
                detected: "%SIFT_DETECTED_PROTOCOL%", reason: "%SIFT_DETECTION_REASON%"}}
          - name: envoy.access_loggers.tcp_grpc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig
              common_config: {log_name: e2e-tcp, transport_api_version: V3, buffer_flush_interval: 0.05s, grpc_service: {envoy_grpc: {cluster_name: als}}}
  clusters:
`

// alsCollector is a real gRPC access log service on 127.0.0.1.
type alsCollector struct {
	alsv3.UnimplementedAccessLogServiceServer
	mu    sync.Mutex
	names map[string]bool
	http  []*datav3.HTTPAccessLogEntry
	tcp   []*datav3.TCPAccessLogEntry
}

func (s *alsCollector) StreamAccessLogs(stream alsv3.AccessLogService_StreamAccessLogsServer) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil
		}
		s.mu.Lock()
		if id := m.GetIdentifier(); id != nil {
			s.names[id.GetLogName()] = true
		}
		s.http = append(s.http, m.GetHttpLogs().GetLogEntry()...)
		s.tcp = append(s.tcp, m.GetTcpLogs().GetLogEntry()...)
		s.mu.Unlock()
	}
}

func startALSCollector(t *testing.T) (*alsCollector, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &alsCollector{names: map[string]bool{}}
	g := grpc.NewServer()
	alsv3.RegisterAccessLogServiceServer(g, s)
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	return s, ln.Addr().String()
}

// echoOnce opens an opaque connection, optionally waits before speaking
// (a detection timeout), sends msg, half-closes and reads the echo.
func echoOnce(t *testing.T, addr, msg string, wait time.Duration) (clientAddr string) {
	t.Helper()
	c := dial(t, addr)
	time.Sleep(wait)
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	if got := readAllWithin(t, c, 10*time.Second); got != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	return c.LocalAddr().String()
}

func TestAccessLogFileAndALS(t *testing.T) {
	t.Parallel()
	als, alsAddr := startALSCollector(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	backendAddr, echoAddr := httpBackend(t, "b1"), echo(t)
	p := startProxy(t, loggedListener+staticCluster("backend", backendAddr)+staticCluster("echo", echoAddr)+
		staticCluster("als", alsAddr), map[string]string{"log": logPath})
	addr := p.addr(t, "sift")

	// HTTP/1.1 on its own connection, so that its client address is known.
	conn := dial(t, addr)
	io.WriteString(conn, "GET /hello HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	httpClient := conn.LocalAddr().String()
	tcpClient := echoOnce(t, addr, "ping\n", 0)                     // no sniffer matches
	lateClient := echoOnce(t, addr, "late\n", 400*time.Millisecond) // silent past the 0.1s timeout
	h2 := h2cClient()
	if got, want := get(t, h2, "http://"+addr+"/h2"), "b1 GET /h2 HTTP/1.1"; got != want { // HTTP/1.1 upstream
		t.Errorf("h2c body %q, want %q", got, want)
	}
	h2.CloseIdleConnections()

	// The ALS receives one HTTP and two TCP entries (the deadline only keeps
	// a broken test from hanging).
	deadline := time.Now().Add(10 * time.Second)
	for {
		als.mu.Lock()
		n, m := len(als.http), len(als.tcp)
		als.mu.Unlock()
		if n >= 2 && m >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ALS received %d HTTP and %d TCP entries, want 2 and 2", n, m)
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.Shutdown(context.Background()) // flushes the file

	data, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(l, &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if m["path"] == "/h2" { // its client address is the h2 transport's secret
			if m["proto"] != "HTTP/2.0" || m["detected"] != "h2c" || m["reason"] != "match" || m["code"] != 200.0 {
				t.Errorf("h2c line %v, want proto HTTP/2.0, detected h2c by match, code 200", m)
			}
			continue
		}
		lines = append(lines, m)
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i]["client"].(string) < lines[j]["client"].(string) })
	want := []map[string]any{
		{"kind": "http", "code": 200.0, "path": "/hello", "proto": "HTTP/1.1", "route": "hello", "cluster": "backend",
			"upstream": backendAddr, "client": httpClient, "sent": float64(len(body)), "detected": "http/1.1", "reason": "match"},
		{"kind": "tcp", "code": 0.0, "cluster": "echo", "upstream": echoAddr, "client": tcpClient, "received": 5.0, "sent": 5.0,
			"detected": "opaque", "reason": "no_match"},
		{"kind": "tcp", "code": 0.0, "cluster": "echo", "upstream": echoAddr, "client": lateClient, "received": 5.0, "sent": 5.0,
			"detected": "opaque", "reason": "timeout"},
	}
	sort.Slice(want, func(i, j int) bool { return want[i]["client"].(string) < want[j]["client"].(string) })
	if diff := cmp.Diff(want, lines); diff != "" {
		t.Errorf("file access log (-want +got):\n%s", diff)
	}

	als.mu.Lock()
	defer als.mu.Unlock()
	if !als.names["e2e-http"] || !als.names["e2e-tcp"] {
		t.Errorf("ALS streams %v, want e2e-http and e2e-tcp", als.names)
	}
	versions := map[string]datav3.HTTPAccessLogEntry_HTTPVersion{}
	for _, e := range als.http {
		versions[e.GetRequest().GetPath()] = e.GetProtocolVersion()
	}
	if diff := cmp.Diff(map[string]datav3.HTTPAccessLogEntry_HTTPVersion{"/hello": datav3.HTTPAccessLogEntry_HTTP11,
		"/h2": datav3.HTTPAccessLogEntry_HTTP2}, versions); diff != "" {
		t.Errorf("ALS HTTP versions by path (-want +got):\n%s", diff)
	}
	h := als.http[0]
	if h.GetRequest().GetPath() != "/hello" {
		h = als.http[1]
	}
	if got := h.GetResponse().GetResponseCode().GetValue(); got != 200 {
		t.Errorf("ALS HTTP response code %d", got)
	}
	if got := h.GetCommonProperties().GetUpstreamCluster(); got != "backend" {
		t.Errorf("ALS HTTP cluster %q", got)
	}
	if got := h.GetCommonProperties().GetDownstreamRemoteAddress().GetSocketAddress().GetPortValue(); !sameHostPort(httpClient, got) {
		t.Errorf("ALS HTTP downstream port %d, client %s", got, httpClient)
	}
	reasons := map[string]uint64{}
	for _, e := range als.tcp {
		reasons[e.GetCommonProperties().GetCustomTags()["sift.detection_reason"]] += e.GetConnectionProperties().GetReceivedBytes()
		if e.GetCommonProperties().GetUpstreamCluster() != "echo" {
			t.Errorf("ALS TCP cluster %q", e.GetCommonProperties().GetUpstreamCluster())
		}
	}
	if diff := cmp.Diff(map[string]uint64{"no_match": 5, "timeout": 5}, reasons); diff != "" {
		t.Errorf("ALS TCP bytes received by detection reason (-want +got):\n%s", diff)
	}
}

// TestAccessLogDeadALS: with the access log service down, requests and
// connections are served as usual.
func TestAccessLogDeadALS(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := startProxy(t, loggedListener+staticCluster("backend", httpBackend(t, "b1"))+staticCluster("echo", echo(t))+
		staticCluster("als", dead), map[string]string{"log": filepath.Join(t.TempDir(), "access.log")})
	addr := p.addr(t, "sift")
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	for range 50 {
		if got, want := get(t, client, "http://"+addr+"/x"), "b1 GET /x HTTP/1.1"; got != want {
			t.Fatalf("body %q, want %q", got, want)
		}
	}
	for range 10 {
		echoOnce(t, addr, "ping\n", 0)
	}
}

func sameHostPort(addr string, port uint32) bool {
	_, p, _ := net.SplitHostPort(addr)
	return p == strconv.Itoa(int(port))
}

// TestListenerAccessLog: Listener.access_log logs a connection no filter
// chain took, with Envoy's NR flag and what detection found.
func TestListenerAccessLog(t *testing.T) {
	t.Parallel()
	logPath := filepath.Join(t.TempDir(), "listener.log")
	p := startProxy(t, `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    access_log:
    - name: envoy.access_loggers.file
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
        path: {{log}}
        format: "%DOWNSTREAM_REMOTE_ADDRESS% %RESPONSE_FLAGS% %SIFT_FILTER% %SIFT_DETECTED_PROTOCOL% %SIFT_DETECTION_REASON% %SIFT_DETECTION_BYTES%\n"
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 5s}
    filter_chains:
    - {filter_chain_match: {application_protocols: [http/1.1]}, filters: {{http}}}
  clusters:
`+staticCluster("http", httpBackend(t, "b1")), map[string]string{"log": logPath, "http": tcpProxy("http")})
	c := dial(t, p.addr(t, "l"))
	io.WriteString(c, "ping\n")
	readAllWithin(t, c, 10*time.Second) // closed: no chain
	client := c.LocalAddr().String()
	p.Shutdown(context.Background()) // flushes the file
	got, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(client+" NR listener opaque no_match 5\n", string(got)); diff != "" {
		t.Errorf("listener access log (-want +got):\n%s", diff)
	}
}

// TestProcessReopensAccessLogOnSIGUSR1: like Envoy, sift-proxy reopens its
// access log files on SIGUSR1, so that logrotate can move them.
func TestProcessReopensAccessLogOnSIGUSR1(t *testing.T) {
	t.Parallel()
	bin := siftProxyBinary(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	cfg := writeBootstrap(t, `
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: echo
          cluster: echo
          access_log: [{name: envoy.access_loggers.file, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: {{log}}, format: "%UPSTREAM_CLUSTER% %BYTES_RECEIVED%\n"}}]
  clusters:
`+staticCluster("echo", echo(t)), map[string]string{"log": logPath})
	p := startProcess(t, []string{bin, "-c", cfg, "--log-format", "json"}, "sift")
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	fileIs := func(path, want string) func() bool {
		return func() bool { b, _ := os.ReadFile(path); return string(b) == want }
	}

	echoOnce(t, p.addrs["sift"], "a", 0)
	waitFor("the first line", fileIs(logPath, "echo 1\n")) // flushed within a second
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(int(p.pid.Load()), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	waitFor("the reopened file", func() bool { _, err := os.Stat(logPath); return err == nil })
	echoOnce(t, p.addrs["sift"], "bb", 0)
	if err := syscall.Kill(int(p.pid.Load()), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	for path, want := range map[string]string{logPath + ".1": "echo 1\n", logPath: "echo 2\n"} {
		if got, _ := os.ReadFile(path); string(got) != want {
			t.Errorf("%s = %q, want %q", path, got, want)
		}
	}
}
