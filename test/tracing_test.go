package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/otlptest"
)

// tracedListener is a listener "sift" whose HTTP/1.1 and h2c traffic goes
// to an HCM with tracing (provider: the OTLP cluster "otel", service
// {{service}}) routing to cluster "next", and whose other traffic goes to
// a tcp_proxy to cluster "echo".
const tracedListener = `
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
          route_config: {virtual_hosts: [{name: vh, domains: ["*"], routes: [{name: {{route}}, match: {prefix: /}, route: {cluster: next}}]}]}
          tracing:
            custom_tags: [{tag: hop, literal: {value: "{{service}}"}}]
            provider:
              name: envoy.tracers.opentelemetry
              typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, service_name: "{{service}}", grpc_service: {envoy_grpc: {cluster_name: otel}}}
    default_filter_chain:
      name: opaque
      filters: ` + "{{tcp}}" + `
`

// tracedBootstrap adds the bootstrap's tracer (the process default, used by
// tcp_proxy's connection spans).
const tracedBootstrap = `
tracing:
  http:
    name: envoy.tracers.opentelemetry
    typed_config: {"@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig, service_name: "{{service}}-tcp", grpc_service: {envoy_grpc: {cluster_name: otel}}}
`

// traceBackend answers every request with the traceparent it received.
func traceBackend(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("Traceparent"))
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func tracedProxy(t *testing.T, service, next, echoAddr, otelAddr string, bootstrapTracer bool) *proxy {
	yaml := tracedListener
	if bootstrapTracer {
		yaml = tracedBootstrap + yaml
	}
	yaml += "  clusters:\n" + staticCluster("next", next) + staticCluster("echo", echoAddr) + staticCluster("otel", otelAddr)
	return startProxy(t, yaml, map[string]string{"service": service, "route": service + "-route", "tcp": tcpProxy("echo")})
}

// TestTracingAcrossTwoProxies: client → proxy A → proxy B → backend, with
// a client traceparent; each proxy exports a span to a real OTLP receiver,
// and the parent links chain client → A → B → the backend's request. A
// TCP connection through B's tcp_proxy yields a span with its detection
// outcome. Not parallel: the bootstrap tracer is the process default.
func TestTracingAcrossTwoProxies(t *testing.T) {
	rcv := otlptest.Start(t)
	backend, echoAddr := traceBackend(t), echo(t)
	b := tracedProxy(t, "proxy-b", backend, echoAddr, rcv.Addr, true)
	a := tracedProxy(t, "proxy-a", b.addr(t, "sift"), echoAddr, rcv.Addr, false)

	const clientTrace, clientSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req, _ := http.NewRequest("GET", "http://"+a.addr(t, "sift")+"/orders/42", nil)
	req.Header.Set("Traceparent", "00-"+clientTrace+"-"+clientSpan+"-01")
	req.Header.Set("Tracestate", "vendor=x")
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, got)
	}
	backendTP := strings.Split(string(got), "-")
	if len(backendTP) != 4 || backendTP[1] != clientTrace || backendTP[3] != "01" {
		t.Fatalf("backend received traceparent %q, want the client's trace, sampled", got)
	}
	echoOnce(t, b.addr(t, "sift"), "ping\n", 0) // opaque: tcp_proxy

	// The wait only bounds a broken test (batches go out every second).
	spans := rcv.WaitFor(t, 20*time.Second, func(s []otlptest.Span) bool {
		var n, tcp int
		for _, x := range s {
			if x.TraceID == clientTrace {
				n++
			}
			if x.Service == "proxy-b-tcp" {
				tcp++
			}
		}
		return n >= 2 && tcp >= 1
	})
	by := map[string]otlptest.Span{}
	for _, x := range spans {
		by[x.Service] = x
	}
	sa, sb, st := by["proxy-a"], by["proxy-b"], by["proxy-b-tcp"]
	links := []struct{ what, got, want string }{
		{"proxy A's parent", sa.ParentSpanID, clientSpan},
		{"proxy B's parent", sb.ParentSpanID, sa.SpanID},
		{"the backend request's parent", backendTP[2], sb.SpanID},
		{"proxy B's trace", sb.TraceID, clientTrace},
	}
	for _, l := range links {
		if l.got != l.want || l.got == "" {
			t.Errorf("%s = %q, want %q", l.what, l.got, l.want)
		}
	}
	for _, c := range []struct {
		span otlptest.Span
		want map[string]string
	}{
		{sa, map[string]string{"http.request.method": "GET", "http.route": "proxy-a-route", "url.path": "/orders/42",
			"http.response.status_code": "200", "upstream_cluster": "next", "upstream_address": b.addr(t, "sift"), "hop": "proxy-a",
			"sift.detection.protocol": "http/1.1", "sift.detection.reason": "match"}},
		{sb, map[string]string{"http.route": "proxy-b-route", "upstream_address": backend, "hop": "proxy-b", "http.response.status_code": "200"}},
		{st, map[string]string{"upstream_cluster": "echo", "upstream_address": echoAddr, "sift.bytes_received": "5", "sift.bytes_sent": "5",
			"sift.detection.protocol": "opaque", "sift.detection.raced": "false"}},
	} {
		for k, v := range c.want {
			if c.span.Attrs[k] != v {
				t.Errorf("%s span: %s = %q, want %q (all: %v)", c.span.Service, k, c.span.Attrs[k], v, c.span.Attrs)
			}
		}
	}
	if st.Name != "tcp_proxy echo" || st.Attrs["sift.detection.reason"] == "" {
		t.Errorf("tcp span %q with reason %q, want \"tcp_proxy echo\" with a detection reason", st.Name, st.Attrs["sift.detection.reason"])
	}
}

// TestTracingDeadCollector: with the collector's cluster pointing at a
// closed port, requests and connections succeed, and Shutdown returns.
// Not parallel: the bootstrap tracer is the process default.
func TestTracingDeadCollector(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	backend, echoAddr := traceBackend(t), echo(t)
	p := tracedProxy(t, "dead", backend, echoAddr, dead, true)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for i := range 50 {
		resp, err := client.Get("http://" + p.addr(t, "sift") + fmt.Sprintf("/r/%d", i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	echoOnce(t, p.addr(t, "sift"), "ping\n", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}
