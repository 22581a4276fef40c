package upstream

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/internal/testcerts"
)

// tlsBackend accepts TLS connections with leaf and writes "tls" to each;
// plainBackend writes "plain".
func greetBackend(t *testing.T, cfg *tls.Config, greeting string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, greeting)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// transport_socket_matches pick each endpoint's transport socket by its
// envoy.transport_socket_match metadata; the rest use transport_socket
// (here none: plaintext). Dial and DialEndpoint alike.
func TestTransportSocketMatches(t *testing.T) {
	t.Parallel()
	ca := testcerts.NewCA("mesh")
	leaf := ca.Issue("spiffe://mesh.local/web")
	tlsAddr := greetBackend(t, &tls.Config{Certificates: []tls.Certificate{leaf.TLS()}}, "tls")
	plainAddr := greetBackend(t, nil, "plain")
	js := fmt.Sprintf(`{"name":"m","connectTimeout":"2s","loadAssignment":{"endpoints":[{"lbEndpoints":[`+
		`{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":%s}}},"metadata":{"filterMetadata":{"envoy.transport_socket_match":{"tls":"mesh"}}}},`+
		`{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":%s}}}}]}]},`+
		`"transportSocketMatches":[{"name":"mesh","match":{"tls":"mesh"},"transportSocket":{"name":"envoy.transport_sockets.tls","typedConfig":{`+
		`"@type":"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext","commonTlsContext":{"validationContext":{`+
		`"trustedCa":{"inlineString":%q},"matchTypedSubjectAltNames":[{"sanType":"URI","matcher":{"exact":"spiffe://mesh.local/web"}}]}}}}}]}`,
		port(tlsAddr), port(plainAddr), ca.CertPEM)
	store := mtls.NewStore(mtls.StoreOptions{})
	defer store.Close()
	c := build(t, clusterJSON(t, js), Options{Secrets: store})
	if !c.TLS() {
		t.Fatal("TLS() = false")
	}
	read := func(conn net.Conn) string {
		b, _ := io.ReadAll(conn)
		conn.Close()
		return string(b)
	}
	got := map[string]string{}
	for range 2 {
		conn, err := c.Dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		_, isTLS := conn.Conn.(*tls.Conn)
		if isTLS != (conn.TLS.Peer == "spiffe://mesh.local/web") {
			t.Errorf("%s: tls=%v, server identity %q", conn.Addr, isTLS, conn.TLS.Peer)
		}
		got[conn.Addr] = fmt.Sprintf("%s tls=%v", read(conn), isTLS)
	}
	want := map[string]string{tlsAddr: "tls tls=true", plainAddr: "plain tls=false"}
	for addr, w := range want {
		if got[addr] != w {
			t.Errorf("Dial %s: %q, want %q", addr, got[addr], w)
		}
		conn, err := c.DialEndpoint(t.Context(), addr, "h2")
		if err != nil {
			t.Fatal(err)
		}
		if s := read(conn); !strings.HasPrefix(w, s+" ") {
			t.Errorf("DialEndpoint %s: %q, want %q", addr, s, w)
		}
	}
}
