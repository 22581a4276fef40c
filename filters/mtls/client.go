package mtls

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Client is a cluster's TLS transport socket: a built UpstreamTlsContext.
// Immutable; safe for concurrent use. Each handshake reads the current
// certificates and trust bundle.
type Client struct {
	common
	sni         string
	renegotiate tls.RenegotiationSupport
	sessionKeys int // max_session_keys; 0: no resumption

	built configCache
}

// DecodeClient builds a cluster's transport_socket. It returns nil, nil for
// raw_buffer (plaintext). Errors name the field.
func (s *Store) DecodeClient(ts *corev3.TransportSocket) (*Client, error) {
	pb := &tlsv3.UpstreamTlsContext{}
	ok, err := unpackContext(ts, UpstreamTypeURL, pb)
	if err != nil || !ok {
		return nil, err
	}
	c, err := s.decodeCommon(pb.GetCommonTlsContext(), "typed_config.common_tls_context", false)
	if err != nil {
		return nil, err
	}
	cl := &Client{common: *c, sni: pb.GetSni()}
	if pb.GetAllowRenegotiation() {
		cl.renegotiate = tls.RenegotiateFreelyAsClient
	}
	// Envoy keeps 1 session per upstream by default; 0 disables resumption.
	keys := 1
	if m := pb.GetMaxSessionKeys(); m != nil {
		keys = int(m.GetValue())
	}
	cl.sessionKeys = keys
	return cl, nil
}

// Sources returns every secret source the transport reads; the cluster
// warms until each has a value.
func (t *Client) Sources() []*Source { return t.common.sources() }

// ALPN returns the configured alpn_protocols (nil: none configured).
func (t *Client) ALPN() []string { return t.alpn }

func (t *Client) config() (*tls.Config, error) { return t.built.get(t.Sources(), t.build) }

func (t *Client) build(vals []*Value) (*tls.Config, error) {
	certs, v, err := t.buildFrom(vals)
	if err != nil {
		return nil, err
	}
	// Envoy verifies the server only as the validation context says (no
	// validation context: no verification, and never the host name unless
	// a SAN matcher asks): crypto/tls's own checks are replaced by v.
	cfg := &tls.Config{
		Certificates:       certs,
		ServerName:         t.sni,
		InsecureSkipVerify: true,
		Renegotiation:      t.renegotiate,
	}
	if t.sessionKeys > 0 {
		// A cache of this build's own: sessions from before a certificate
		// or trust change are not resumed (they would carry the server's
		// old certificate past the current validation context).
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(t.sessionKeys)
	}
	t.apply(cfg)
	if v != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error { return v.verify(cs.PeerCertificates) }
	}
	return cfg, nil
}

// Handshake runs the client handshake on conn within ctx. alpn, when the
// context configures no alpn_protocols, is offered instead (Envoy's ALPN
// override: "h2" for an HTTP/2 pool, "http/1.1" for HTTP/1). On failure
// conn is left to the caller to close.
func (t *Client) Handshake(ctx context.Context, conn net.Conn, alpn []string) (*tls.Conn, Identity, error) {
	cfg, err := t.config()
	if err != nil {
		return nil, Identity{}, err
	}
	if len(t.alpn) == 0 && len(alpn) > 0 {
		cfg = cfg.Clone()
		cfg.NextProtos = alpn
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, Identity{}, fmt.Errorf("mtls: handshake: %w", err)
	}
	local := ""
	if len(cfg.Certificates) > 0 {
		local = PeerIdentity(cfg.Certificates[0].Leaf)
	}
	return tc, identityOf(tc.ConnectionState(), local), nil
}

// Ready reports whether every source has a value.
func Ready(srcs []*Source) bool {
	_, ok := current(srcs)
	return ok
}
