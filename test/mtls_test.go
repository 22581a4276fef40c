package test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/testcerts"
)

// Identities of the two workloads in the mTLS tests.
const (
	idClient = "spiffe://mesh.local/ns/default/sa/client"
	idServer = "spiffe://mesh.local/ns/default/sa/server"
)

// q quotes PEM for a YAML double-quoted scalar (Go's escapes are YAML's).
func q(b []byte) string { return fmt.Sprintf("%q", b) }

// inboundYAML is proxy B: two mTLS listeners ("tcp" to an echo server and
// "http" to an HTTP backend), both requiring a client certificate of idClient
// from the mesh CA; the server certificate and trust bundle are the
// bootstrap's static secrets.
const inboundYAML = `
static_resources:
  secrets:
  - {name: server-cert, tls_certificate: {certificate_chain: {inline_string: {{cert}}}, private_key: {inline_string: {{key}}}}}
  - name: mesh-trust
    validation_context:
      trusted_ca: {inline_string: {{ca}}}
      match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "` + idClient + `"}}]
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters: {{tcpfilters}}
      transport_socket: {{tls}}
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket: {{tls}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: backend}}]}]}
  clusters:
{{clusters}}`

const inboundTLS = `{name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, ` +
	`require_client_certificate: true, common_tls_context: {tls_certificate_sds_secret_configs: [{name: server-cert}], ` +
	`validation_context_sds_secret_config: {name: mesh-trust}, alpn_protocols: [h2, http/1.1], tls_params: {tls_minimum_protocol_version: TLSv1_3}}}}`

// outboundYAML is proxy A: plaintext listeners "tcp" and "http" whose
// clusters reach B over mTLS with inline certificates, verifying B's
// SPIFFE ID.
const outboundYAML = `
static_resources:
  listeners:
  - name: tcp
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: {{tcpfilters}}}]
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: out
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
          route_config: {virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: b-http}}]}]}
  clusters:
{{clusters}}`

func upstreamTLS(ca, cert, key []byte, san string) string {
	return `transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, ` +
		`sni: server.mesh, common_tls_context: {tls_params: {tls_maximum_protocol_version: TLSv1_3}, ` +
		`tls_certificates: [{certificate_chain: {inline_string: ` + q(cert) + `}, private_key: {inline_string: ` + q(key) + `}}], ` +
		`validation_context: {trusted_ca: {inline_string: ` + q(ca) + `}, match_typed_subject_alt_names: [{san_type: URI, matcher: {exact: "` + san + `"}}]}}}}`
}

// withTLS adds a transport socket (and fields) to a staticCluster line.
func withFields(cluster string, fields ...string) string {
	return strings.TrimSuffix(cluster, "}\n") + ", " + strings.Join(fields, ", ") + "}\n"
}

type meshPair struct {
	ca      *testcerts.CA
	a, b    *proxy
	backend string // the HTTP backend's address
}

// startMeshPair runs proxy B (inbound mTLS) in front of an echo server and
// an HTTP backend, and proxy A (outbound) whose clusters reach B over mTLS
// as client with the given SPIFFE ID, expecting B to be serverSAN.
func startMeshPair(t *testing.T, clientID, serverSAN string) *meshPair {
	t.Helper()
	ca := testcerts.NewCA("mesh")
	srv := ca.Issue(idServer)
	b := startProxy(t, inboundYAML, map[string]string{
		"cert": q(srv.CertPEM), "key": q(srv.KeyPEM), "ca": q(ca.CertPEM), "tls": inboundTLS,
		"tcpfilters": tcpProxy("echo"),
		"clusters":   staticCluster("echo", echo(t)) + staticCluster("backend", httpBackend(t, "backend")),
	})
	cl := ca.Issue(clientID)
	tlsField := upstreamTLS(ca.CertPEM, cl.CertPEM, cl.KeyPEM, serverSAN)
	a := startProxy(t, outboundYAML, map[string]string{
		"tcpfilters": tcpProxy("b-tcp"),
		"clusters": withFields(staticCluster("b-tcp", b.addr(t, "tcp")), tlsField) +
			withFields(h2Cluster("b-http", b.addr(t, "http")), tlsField),
	})
	return &meshPair{ca: ca, a: a, b: b}
}

func TestMTLSBetweenTwoProxies(t *testing.T) {
	t.Parallel()
	m := startMeshPair(t, idClient, idServer)

	t.Run("tcp_proxy", func(t *testing.T) {
		c, err := net.Dial("tcp", m.a.addr(t, "tcp"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		payload := strings.Repeat("opaque bytes through two proxies\n", 4096)
		go func() {
			io.WriteString(c, payload)
			c.(*net.TCPConn).CloseWrite()
		}()
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != payload {
			t.Fatalf("echo through A→(mTLS)→B: got %d bytes, want %d", len(got), len(payload))
		}
	})

	t.Run("http over h2 between the proxies", func(t *testing.T) {
		client := &http.Client{Timeout: 5 * time.Second}
		for i := range 5 {
			resp, err := client.Get(fmt.Sprintf("http://%s/r%d", m.a.addr(t, "http"), i))
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			// The backend sees B's HTTP/1.1; the client's HTTP/1.1 rode h2
			// (ALPN) between the proxies — B's HCM served it as HTTP/2.
			if want := fmt.Sprintf("backend GET /r%d HTTP/1.1", i); !strings.HasPrefix(string(body), want) {
				t.Fatalf("body = %q, want %q", body, want)
			}
		}
	})

	t.Run("B serves HTTP/2 when ALPN says h2", func(t *testing.T) {
		cert := m.ca.Issue(idClient).TLS()
		tr := &http.Transport{ForceAttemptHTTP2: true, TLSClientConfig: &tls.Config{RootCAs: m.ca.Pool(),
			ServerName: "127.0.0.1", Certificates: []tls.Certificate{cert}}}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("https://" + m.b.addr(t, "http") + "/direct")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.Proto != "HTTP/2.0" || !strings.HasPrefix(string(body), "backend GET /direct") {
			t.Fatalf("proto %s, body %q; want HTTP/2.0 and the backend's answer", resp.Proto, body)
		}
	})

	t.Run("refused clients", func(t *testing.T) {
		other := testcerts.NewCA("other")
		wrongID := m.ca.Issue("spiffe://mesh.local/ns/default/sa/intruder").TLS()
		wrongCA := other.Issue(idClient).TLS()
		tests := []struct {
			name  string
			plain bool
			certs []tls.Certificate
		}{
			{name: "plaintext", plain: true},
			{name: "no client certificate"},
			{name: "client certificate from another CA", certs: []tls.Certificate{wrongCA}},
			{name: "client SAN not allowed", certs: []tls.Certificate{wrongID}},
		}
		before := m.b.Listeners().Get("tcp").Stats().TLSHandshakeFail.Load()
		for _, tt := range tests {
			c, err := net.Dial("tcp", m.b.addr(t, "tcp"))
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			var conn net.Conn = c
			if !tt.plain {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, Certificates: tt.certs})
				tc.Handshake()
				conn = tc
			}
			conn.Write([]byte("hello\n"))
			buf := make([]byte, 16)
			if n, err := conn.Read(buf); err == nil {
				t.Errorf("%s: B answered %q; want the connection refused", tt.name, buf[:n])
			}
			c.Close()
		}
		eventually(t, "handshake failures counted", func() bool {
			return m.b.Listeners().Get("tcp").Stats().TLSHandshakeFail.Load()-before == uint64(len(tests))
		})
	})
}

func TestMTLSServerSANMismatchRefused(t *testing.T) {
	t.Parallel()
	m := startMeshPair(t, idClient, "spiffe://mesh.local/ns/default/sa/somebody-else")
	c, err := net.Dial("tcp", m.a.addr(t, "tcp"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello\n"))
	if n, err := c.Read(make([]byte, 16)); err == nil {
		t.Fatalf("A reached a server with the wrong SPIFFE ID (read %d bytes)", n)
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + m.a.addr(t, "http") + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("HTTP through a SAN mismatch: status %d, want 502/503", resp.StatusCode)
	}
}

// TestRBACByIdentity: network RBAC on an mTLS chain denies a namespace by
// the clients' SPIFFE IDs; others pass.
func TestRBACByIdentity(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	srv := ca.Issue(idServer)
	p := startProxy(t, `
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {tls_certificates: [{certificate_chain: {inline_string: {{cert}}}, private_key: {inline_string: {{key}}}}], validation_context: {trusted_ca: {inline_string: {{ca}}}}}}}
      filters:
      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: in
          rules: {action: DENY, policies: {blocked: {permissions: [{any: true}], principals: [{authenticated: {principal_name: {prefix: "spiffe://mesh.local/ns/blocked/"}}}]}}}
      - {name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: echo, cluster: echo}}
  clusters:
{{clusters}}`, map[string]string{"cert": q(srv.CertPEM), "key": q(srv.KeyPEM), "ca": q(ca.CertPEM),
		"clusters": staticCluster("echo", echo(t))})
	tests := []struct {
		name, id string
		want     bool
	}{
		{name: "allowed namespace", id: "spiffe://mesh.local/ns/default/sa/client", want: true},
		{name: "blocked namespace", id: "spiffe://mesh.local/ns/blocked/sa/client", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tls.Dial("tcp", p.addr(t, "in"), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{ca.Issue(tt.id).TLS()}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("hi"))
			buf := make([]byte, 2)
			_, err = io.ReadFull(c, buf)
			if got := err == nil && string(buf) == "hi"; got != tt.want {
				t.Fatalf("echo through RBAC: %v (err %v), want allowed=%v", got, err, tt.want)
			}
		})
	}
}

// TestTLSChainAfterInspection: tls_inspector peeks the ClientHello to pick
// the chain; the TLS chain's transport socket gets those bytes replayed,
// and plaintext on the same port takes the other chain.
func TestTLSChainAfterInspection(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	srv := ca.Issue(idServer, "web.mesh")
	p := startProxy(t, `
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters: [{name: envoy.filters.listener.tls_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}]
    filter_chains:
    - filter_chain_match: {transport_protocol: tls, server_names: [web.mesh]}
      transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {tls_certificates: [{certificate_chain: {inline_string: {{cert}}}, private_key: {inline_string: {{key}}}}]}}}
      filters: {{echo}}
    - filters: {{greeter}}
  clusters:
{{clusters}}`, map[string]string{"cert": q(srv.CertPEM), "key": q(srv.KeyPEM),
		"echo": tcpProxy("echo"), "greeter": tcpProxy("greeter"),
		"clusters": staticCluster("echo", echo(t)) + staticCluster("greeter", greeter(t, "hello plaintext\n"))})

	c, err := tls.Dial("tcp", p.addr(t, "in"), &tls.Config{RootCAs: ca.Pool(), ServerName: "web.mesh"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("over tls"))
	buf := make([]byte, 8)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "over tls" {
		t.Fatalf("echo over the TLS chain: %q, %v", buf, err)
	}
	plain, err := net.Dial("tcp", p.addr(t, "in"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	plain.Write([]byte("x\n"))
	if got := greetingOf(t, plain); got != "hello plaintext\n" {
		t.Fatalf("plaintext chain: %q", got)
	}
}

// TestUpstreamALPN: an HTTP cluster over TLS speaks what ALPN agrees. With
// alpn_protocols [h2, http/1.1] a server selecting h2 gets HTTP/2 even from
// an HTTP/1 cluster; without alpn_protocols the pool offers its own
// protocol (Envoy's ALPN override): http/1.1 for HTTP/1, h2 for HTTP/2.
func TestUpstreamALPN(t *testing.T) {
	t.Parallel()
	backend := tlsBackend(t, "tls").Listener.Addr().String()
	tlsSocket := func(alpn string) string {
		return `transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, common_tls_context: {` + alpn + `}}}`
	}
	tests := []struct {
		name, cluster, want string
	}{
		{name: "alpn_protocols offered, h2 selected", want: "HTTP/2.0",
			cluster: withFields(staticCluster("c", backend), tlsSocket("alpn_protocols: [h2, http/1.1]"))},
		{name: "HTTP/1 cluster, no alpn_protocols", want: "HTTP/1.1",
			cluster: withFields(staticCluster("c", backend), tlsSocket(""))},
		{name: "HTTP/2 cluster, no alpn_protocols", want: "HTTP/2.0",
			cluster: withFields(h2Cluster("c", backend), tlsSocket(""))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			addr := startHTTPProxy(t, "", `{virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: c}}]}]}`, tt.cluster)
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + addr + "/alpn")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := "tls GET /alpn " + tt.want; string(body) != want {
				t.Fatalf("backend saw %q, want %q", body, want)
			}
		})
	}
}

// TestTLSHandshakeTimeout: a client that never finishes its handshake is
// closed after the chain's transport_socket_connect_timeout and counted.
func TestTLSHandshakeTimeout(t *testing.T) {
	t.Parallel()
	srv := testcerts.NewCA("mesh").Issue(idServer)
	p := startProxy(t, `
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket_connect_timeout: 0.2s
      transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {tls_certificates: [{certificate_chain: {inline_string: {{cert}}}, private_key: {inline_string: {{key}}}}]}}}
      filters: {{echo}}
  clusters:
{{clusters}}`, map[string]string{"cert": q(srv.CertPEM), "key": q(srv.KeyPEM), "echo": tcpProxy("echo"),
		"clusters": staticCluster("echo", echo(t))})
	c, err := net.Dial("tcp", p.addr(t, "in"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound for the test, not the assertion
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the silent client was not closed by the proxy: %v", err)
	}
	eventually(t, "the handshake failure counted", func() bool {
		return p.Listeners().Get("in").Stats().TLSHandshakeFail.Load() == 1
	})
}
