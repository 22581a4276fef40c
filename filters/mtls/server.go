package mtls

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// DefaultHandshakeTimeout bounds a downstream handshake when the filter
// chain sets no transport_socket_connect_timeout (Envoy has no bound then;
// Sift does not leave a silent client holding a connection forever).
const DefaultHandshakeTimeout = 10 * time.Second

// Server is a listener filter chain's TLS transport socket: a built
// DownstreamTlsContext. Immutable; safe for concurrent use. Every handshake
// reads the current certificates and trust bundle, so rotation applies to
// the next handshake and never to an established connection.
type Server struct {
	common
	tickets           *Source // session_ticket_keys(_sds_secret_config); nil: crypto/tls's own keys
	requireClientCert bool
	requireSNI        bool
	ticketsDisabled   bool

	base  *tls.Config // GetConfigForClient only; holds crypto/tls's rotating ticket keys
	built configCache
}

// builtConfig is the tls.Config made from one set of source values.
type builtConfig struct {
	vals []*Value
	cfg  *tls.Config
	err  error
}

// configCache keeps the tls.Config of the sources' current values, built
// again only when a value changed (a rotation). Safe for concurrent use.
type configCache struct{ p atomic.Pointer[builtConfig] }

// get returns the config for sources' current values, building it with
// build when they changed since the last call.
func (c *configCache) get(sources []*Source, build func([]*Value) (*tls.Config, error)) (*tls.Config, error) {
	vals, ok := current(sources)
	if !ok {
		return nil, errors.New("mtls: secrets have not arrived yet (warming)")
	}
	if b := c.p.Load(); b != nil && slices.Equal(b.vals, vals) {
		return b.cfg, b.err
	}
	b := &builtConfig{vals: vals}
	b.cfg, b.err = build(vals)
	c.p.Store(b)
	return b.cfg, b.err
}

// Identity is what a completed handshake established, for telemetry and
// authorization.
type Identity struct {
	// Peer is the peer's identity (PeerIdentity of its leaf), or "" when it
	// sent no certificate.
	Peer string
	// Local is the identity of the certificate this side presented.
	Local string
	// ALPN is the negotiated application protocol, or "".
	ALPN string
}

// DecodeServer builds a listener filter chain's transport_socket. It returns
// nil, nil for raw_buffer (plaintext). Errors name the field.
func (s *Store) DecodeServer(ts *corev3.TransportSocket) (*Server, error) {
	pb := &tlsv3.DownstreamTlsContext{}
	ok, err := unpackContext(ts, DownstreamTypeURL, pb)
	if err != nil || !ok {
		return nil, err
	}
	const field = "typed_config"
	c, err := s.decodeCommon(pb.GetCommonTlsContext(), field+".common_tls_context", true)
	if err != nil {
		return nil, err
	}
	if len(c.certs) == 0 {
		return nil, fmt.Errorf("%s.common_tls_context: a server needs tls_certificates or tls_certificate_sds_secret_configs", field)
	}
	srv := &Server{common: *c, requireClientCert: pb.GetRequireClientCertificate().GetValue(), requireSNI: pb.GetRequireSni().GetValue()}
	if p := pb.GetOcspStaplePolicy(); p != tlsv3.DownstreamTlsContext_LENIENT_STAPLING {
		return nil, fmt.Errorf("%s.ocsp_staple_policy: %s is not supported by Sift (LENIENT_STAPLING only)", field, p)
	}
	switch t := pb.GetSessionTicketKeysType().(type) {
	case *tlsv3.DownstreamTlsContext_SessionTicketKeys:
		v, err := decodeTicketKeys(t.SessionTicketKeys, field+".session_ticket_keys")
		if err != nil {
			return nil, err
		}
		srv.tickets = fixedSource(field+".session_ticket_keys", v)
	case *tlsv3.DownstreamTlsContext_SessionTicketKeysSdsSecretConfig:
		if srv.tickets, err = s.ref(t.SessionTicketKeysSdsSecretConfig, field+".session_ticket_keys_sds_secret_config"); err != nil {
			return nil, err
		}
	case *tlsv3.DownstreamTlsContext_DisableStatelessSessionResumption:
		srv.ticketsDisabled = t.DisableStatelessSessionResumption
	}
	srv.base = &tls.Config{GetConfigForClient: srv.configForClient}
	return srv, nil
}

// Sources returns every secret source the transport reads; the listener
// warms until each has a value.
func (t *Server) Sources() []*Source {
	out := t.common.sources()
	if t.tickets != nil {
		out = append(out, t.tickets)
	}
	return out
}

// config returns the tls.Config for the current source values, building it
// when they changed since the last call.
func (t *Server) config() (*tls.Config, error) { return t.built.get(t.Sources(), t.build) }

func (t *Server) build(vals []*Value) (*tls.Config, error) {
	certs, v, err := t.buildFrom(vals)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: certs, SessionTicketsDisabled: t.ticketsDisabled}
	t.apply(cfg)
	switch {
	case t.requireClientCert:
		cfg.ClientAuth = tls.RequireAnyClientCert
	case v != nil:
		cfg.ClientAuth = tls.RequestClientCert
	}
	if v != nil {
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // not required (RequireAnyClientCert refused it otherwise)
			}
			return v.verify(cs.PeerCertificates)
		}
	}
	if t.tickets != nil {
		cfg.SetSessionTicketKeys(vals[len(vals)-1].TicketKeys)
	} else if !t.ticketsDisabled {
		// Keys of this build's own, as Envoy's context rebuilt on a secret
		// update has: a session resumed across a certificate or trust
		// change would carry the peer's old certificate, which the current
		// validation context may refuse (a root rotation's dropped root).
		// Sessions from before the change get a full handshake instead.
		var key [32]byte
		if _, err := rand.Read(key[:]); err != nil {
			return nil, fmt.Errorf("mtls: session ticket key: %w", err)
		}
		cfg.SetSessionTicketKeys([][32]byte{key})
	}
	return cfg, nil
}

func (t *Server) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	if t.requireSNI && hello.ServerName == "" {
		return nil, errors.New("mtls: the client sent no SNI (require_sni)")
	}
	return t.config()
}

// Handshake runs the server handshake on conn (whose first bytes may be
// replayed ones) within ctx's deadline. On success the returned *tls.Conn
// serves the connection; on failure conn is left to the caller to close.
func (t *Server) Handshake(ctx context.Context, conn net.Conn) (*tls.Conn, Identity, error) {
	tc := tls.Server(conn, t.base)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, Identity{}, fmt.Errorf("mtls: handshake: %w", err)
	}
	cs := tc.ConnectionState()
	return tc, identityOf(cs, t.localLeaf()), nil
}

// localLeaf returns the identity of the first configured certificate.
func (t *Server) localLeaf() string {
	if b := t.built.p.Load(); b != nil && b.cfg != nil && len(b.cfg.Certificates) > 0 {
		return PeerIdentity(b.cfg.Certificates[0].Leaf)
	}
	return ""
}

func identityOf(cs tls.ConnectionState, local string) Identity {
	id := Identity{Local: local, ALPN: cs.NegotiatedProtocol}
	if len(cs.PeerCertificates) > 0 {
		id.Peer = PeerIdentity(cs.PeerCertificates[0])
	}
	return id
}
