package test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// twoHop starts proxy B — an inbound listener whose only chain is the
// opaque-transport inbound filter — and proxy A — a detecting listener whose
// opaque fallback is tcp_proxy to a cluster pointing at B with the opaque
// transport towards port. It returns A's listener address.
func twoHop(t *testing.T, port string) string {
	t.Helper()
	b := startProxy(t, `
static_resources:
  listeners:
  - name: inbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: sift.opaque_transport
        typed_config: {"@type": type.googleapis.com/sift.filters.network.opaque_transport.v1.Inbound, stat_prefix: inbound}
`, nil)
	host, bport, _ := net.SplitHostPort(b.addr(t, "inbound"))
	a := startProxy(t, fmt.Sprintf(`
static_resources:
  listeners:
  - name: outbound
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, server_first_grace_period: 0.02s}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1]}, filters: {{peer}}}
    default_filter_chain: {name: opaque, filters: {{peer}}}
  clusters:
  - name: peer
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: peer, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]}
    typed_extension_protocol_options:
      sift.extensions.upstreams.opaque_transport.v1.OpaqueTransport:
        {"@type": type.googleapis.com/sift.extensions.upstreams.opaque_transport.v1.OpaqueTransport, port: %s}
`, host, bport, port), map[string]string{"peer": tcpProxy("peer")})
	return a.addr(t, "outbound")
}

// TestOpaqueTransportTwoHops: a client-first protocol and a server-first one
// through two proxies, the second told the destination port by the header.
func TestOpaqueTransportTwoHops(t *testing.T) {
	t.Parallel()
	t.Run("client first", func(t *testing.T) {
		t.Parallel()
		_, port, _ := net.SplitHostPort(echo(t))
		c := dial(t, twoHop(t, port))
		payload := strings.Repeat("opaque bytes ", 10000)
		go func() {
			io.WriteString(c, payload)
			c.CloseWrite()
		}()
		if got := readAllWithin(t, c, 10*time.Second); got != payload {
			t.Fatalf("echoed %d bytes, want %d", len(got), len(payload))
		}
	})
	t.Run("server first", func(t *testing.T) {
		t.Parallel()
		_, port, _ := net.SplitHostPort(greeter(t, "220 far away\r\n"))
		addr := twoHop(t, port)
		start := time.Now()
		c := dial(t, addr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second)) // hang guard, not a speed assertion
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil || line != "220 far away\r\n" {
			t.Fatalf("greeting = %q, %v", line, err)
		}
		t.Logf("greeted through two proxies after %v", time.Since(start).Round(10*time.Microsecond))
		io.WriteString(c, "QUIT\r\n")
		if line, err = r.ReadString('\n'); err != nil || line != "got QUIT\r\n" {
			t.Fatalf("reply = %q, %v", line, err)
		}
	})
}
