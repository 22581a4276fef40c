package test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/siftmesh/sift/internal/testnet"
)

// sifting is a listener that detects, then sends each protocol to its own
// backend. {{timeout}} is the detection timeout.
const sifting = `
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: {{timeout}}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1, http/1.0]}, filters: {{http}}}
    - {name: h2c, filter_chain_match: {application_protocols: [h2c]}, filters: {{h2c}}}
    - {name: tls-a, filter_chain_match: {transport_protocol: tls, server_names: [a.example.com]}, filters: {{tlsa}}}
    - {name: tls-wild, filter_chain_match: {transport_protocol: tls, server_names: ["*.example.com"]}, filters: {{tlsw}}}
    default_filter_chain: {name: opaque, filters: {{opaque}}}
  clusters:
`

func startSifting(t *testing.T, timeout string) (*proxy, string) {
	t.Helper()
	tlsA, tlsW := tlsBackend(t, "tls-a"), tlsBackend(t, "tls-wild")
	yaml := sifting +
		staticCluster("http", httpBackend(t, "http1")) +
		staticCluster("h2c", h2cBackend(t, "h2c")) +
		staticCluster("tlsa", tlsA.Listener.Addr().String()) +
		staticCluster("tlsw", tlsW.Listener.Addr().String()) +
		staticCluster("opaque", greeter(t, "220 greeter ready\r\n"))
	p := startProxy(t, yaml, map[string]string{
		"timeout": timeout, "http": tcpProxy("http"), "h2c": tcpProxy("h2c"),
		"tlsa": tcpProxy("tlsa"), "tlsw": tcpProxy("tlsw"), "opaque": tcpProxy("opaque"),
	})
	return p, p.addr(t, "sift")
}

func TestDetectionRoutesEachProtocol(t *testing.T) {
	t.Parallel()
	_, addr := startSifting(t, "3600s")

	t.Run("HTTP/1.1 from net/http", func(t *testing.T) {
		client := &http.Client{Transport: &http.Transport{}}
		defer client.CloseIdleConnections()
		for _, path := range []string{"/one", "/two"} { // keep-alive: both on one connection
			if got, want := get(t, client, "http://"+addr+path), "http1 GET "+path+" HTTP/1.1"; got != want {
				t.Errorf("body = %q, want %q", got, want)
			}
		}
	})
	t.Run("HTTP/1.0", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
		if got := readAllWithin(t, c, 10*time.Second); !strings.HasSuffix(got, "http1 GET /old HTTP/1.0") {
			t.Errorf("response = %q", got)
		}
	})
	t.Run("HTTP/1.1 request line one byte per segment", func(t *testing.T) {
		c := dial(t, addr)
		c.SetNoDelay(true)
		req := "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				t.Fatal(err)
			}
		}
		if got := readAllWithin(t, c, 10*time.Second); !strings.HasSuffix(got, "http1 POST /slow HTTP/1.1") {
			t.Errorf("response = %q", got)
		}
	})
	t.Run("HTTP/2 prior knowledge", func(t *testing.T) {
		client := h2cClient()
		defer client.CloseIdleConnections()
		if got, want := get(t, client, "http://"+addr+"/h2"), "h2c GET /h2 HTTP/2.0"; got != want {
			t.Errorf("body = %q, want %q", got, want)
		}
	})
	t.Run("gRPC", func(t *testing.T) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "sift.test"})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("status = %v", resp.GetStatus())
		}
	})
	t.Run("TLS by SNI, end to end", func(t *testing.T) {
		for _, tc := range []struct{ sni, want string }{
			{"a.example.com", "tls-a GET /tls HTTP/2.0"},    // exact server name
			{"b.example.com", "tls-wild GET /tls HTTP/2.0"}, // wildcard
		} {
			client := &http.Client{Transport: &http.Transport{
				ForceAttemptHTTP2: true,
				TLSClientConfig:   &tls.Config{ServerName: tc.sni, InsecureSkipVerify: true},
			}}
			if got := get(t, client, "https://"+addr+"/tls"); got != tc.want {
				t.Errorf("SNI %s: body = %q, want %q", tc.sni, got, tc.want)
			}
			client.CloseIdleConnections()
		}
	})
	t.Run("TLS with an unknown SNI matches no chain and falls to the default", func(t *testing.T) {
		c := dial(t, addr)
		tc := tls.Client(c, &tls.Config{ServerName: "other.test", InsecureSkipVerify: true})
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// The default chain is the greeter, which is not TLS: the handshake fails.
		if err := tc.Handshake(); err == nil {
			t.Fatal("handshake with the opaque greeter succeeded")
		}
	})
}

func TestSilentClientFailsOpenAfterTimeout(t *testing.T) {
	t.Parallel()
	// A short detection timeout: the server-speaks-first greeter answers
	// after it, with no byte from the client.
	_, addr := startSifting(t, "0.05s")
	c := dial(t, addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if line != "220 greeter ready\r\n" {
		t.Errorf("greeting = %q", line)
	}
}

func TestOpaqueBytesArriveExactlyOnce(t *testing.T) {
	t.Parallel()
	yaml := `
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 3600s}}
    filter_chains:
    - {filter_chain_match: {application_protocols: [http/1.1]}, filters: {{http}}}
    default_filter_chain: {filters: {{echo}}}
  clusters:
` + staticCluster("echo", echo(t)) + staticCluster("http", httpBackend(t, "unused"))
	p := startProxy(t, yaml, map[string]string{"http": tcpProxy("http"), "echo": tcpProxy("echo")})
	addr := p.addr(t, "sift")

	for _, tc := range []struct {
		name   string
		prefix string // the first bytes, which detection peeks
	}{
		{"binary", "\x00\x01\x02\x03"},
		{"looks like HTTP, then is not", "GET / HTTP/9.9\r\n"},
		{"TLS-like record header", "\x16\x03\x01\x00\x05hello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := make([]byte, 1<<20)
			rand.Read(payload)
			sent := append([]byte(tc.prefix), payload...)
			c := dial(t, addr)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(sent)
				if err == nil {
					err = c.CloseWrite() // half-close: the echo sees EOF and half-closes back
				}
				errc <- err
			}()
			got := readAllWithin(t, c, 30*time.Second)
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if len(got) != len(sent) || got != string(sent) {
				t.Fatalf("echoed %d bytes, sent %d; equal=%v", len(got), len(sent), got == string(sent))
			}
		})
	}
}

func TestHalfCloseFromServerFirst(t *testing.T) {
	t.Parallel()
	// The backend greets, half-closes, and still reads what the client sends
	// after that, then reports it.
	got := make(chan string, 1)
	backend := testnet.Backend(t, func(c net.Conn) {
		io.WriteString(c, "bye")
		c.(*net.TCPConn).CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	yaml := `
static_resources:
  listeners:
  - name: opaque
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: {{b}}}]
  clusters:
` + staticCluster("b", backend)
	p := startProxy(t, yaml, map[string]string{"b": tcpProxy("b")})
	c := dial(t, p.addr(t, "opaque"))
	if s := readAllWithin(t, c, 10*time.Second); s != "bye" {
		t.Fatalf("read %q, want bye then EOF", s)
	}
	io.WriteString(c, "after your EOF")
	c.CloseWrite()
	if diff := cmp.Diff("after your EOF", <-got); diff != "" {
		t.Errorf("backend read (-want +got):\n%s", diff)
	}
}
