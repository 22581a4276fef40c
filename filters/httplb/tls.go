package httplb

import (
	"context"
	"net"
	"net/http"

	"github.com/siftmesh/sift/upstream"
)

// tlsTransport makes t reach a cluster over its TLS transport socket. The
// cluster's DialEndpoint returns a handshaken *tls.Conn, which net/http
// takes as its TLS connection (requests go out as https, see overTLS), so
// that ALPN picks the protocol: when the transport socket configures
// alpn_protocols, HTTP/2 is used whenever the server selects "h2"; when it
// does not, the pool offers its own protocol alone, as Envoy's per-pool
// ALPN override does ("h2" for an HTTP/2 cluster, "http/1.1" otherwise).
func tlsTransport(t *http.Transport, c *upstream.Cluster, addr string, h2 bool) {
	alpn := []string{"http/1.1"}
	if h2 {
		alpn = []string{"h2"}
	}
	t.DialTLSContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return c.DialEndpoint(ctx, addr, alpn...)
	}
	t.Protocols = new(http.Protocols)
	t.Protocols.SetHTTP1(true)
	t.Protocols.SetHTTP2(true)
}

// overTLS returns req addressed as https when the cluster speaks TLS, so
// that net/http uses DialTLSContext; the bytes on the wire are the same.
func overTLS(req *http.Request, tls bool) *http.Request {
	if !tls || req.URL.Scheme == "https" {
		return req
	}
	r := *req
	u := *req.URL
	u.Scheme = "https"
	r.URL = &u
	return &r
}
