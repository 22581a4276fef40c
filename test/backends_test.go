package test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/siftmesh/sift/internal/testnet"
)

// greeter is a server-speaks-first service: it greets, then answers each
// read with what it got.
func greeter(t *testing.T, greeting string) string {
	return testnet.Backend(t, func(c net.Conn) {
		fmt.Fprint(c, greeting)
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "got %s", line)
		}
	})
}

// echo returns everything it reads; at EOF it half-closes its side.
func echo(t *testing.T) string {
	return testnet.Backend(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
}

// httpBackend answers every request with "name method path proto".
func httpBackend(t *testing.T, name string) string {
	srv := httptest.NewUnstartedServer(nameHandler(name))
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func nameHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s %s", name, r.Method, r.URL.Path, r.Proto)
	})
}

// tlsBackend is an HTTPS server (httptest's certificate, valid for
// example.com names and 127.0.0.1) answering "name ...".
func tlsBackend(t *testing.T, name string) *httptest.Server {
	srv := httptest.NewUnstartedServer(nameHandler(name))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// h2cBackend serves HTTP/2 with prior knowledge: gRPC (the standard health
// service) and plain requests ("name ...").
func h2cBackend(t *testing.T, name string) string {
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("sift.test", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	t.Cleanup(gs.Stop)
	plain := nameHandler(name)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r)
			return
		}
		plain.ServeHTTP(w, r)
	})
	h2 := &http2.Server{}
	return testnet.Backend(t, func(c net.Conn) {
		h2.ServeConn(c, &http2.ServeConnOpts{Handler: h})
	})
}

// h2cClient speaks HTTP/2 with prior knowledge (no upgrade, no TLS).
func h2cClient() *http.Client {
	return &http.Client{Transport: &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// get fetches url with client and returns the body.
func get(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading body: %v", url, err)
	}
	return string(body)
}
