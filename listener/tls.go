package listener

import (
	"context"
	"errors"
	"fmt"
	"net"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/mtls"
)

// decodeTransportSocket builds a filter chain's transport_socket (Envoy's
// envoy.transport_sockets.tls with a DownstreamTlsContext; raw_buffer is
// plaintext) and its transport_socket_connect_timeout.
func decodeTransportSocket(fc *listenerv3.FilterChain, chain *FilterChain, bc filters.BuildContext) error {
	chain.HandshakeTimeout = mtls.DefaultHandshakeTimeout
	if t := fc.GetTransportSocketConnectTimeout(); t != nil {
		if err := t.CheckValid(); err != nil || t.AsDuration() < 0 {
			return fmt.Errorf("transport_socket_connect_timeout: invalid duration %v", t)
		}
		if t.AsDuration() > 0 {
			chain.HandshakeTimeout = t.AsDuration()
		}
	}
	ts := fc.GetTransportSocket()
	if ts == nil {
		return nil
	}
	if bc.Secrets == nil {
		return errors.New("transport_socket: no secret store (a TLS transport socket needs a server)")
	}
	srv, err := bc.Secrets.DecodeServer(ts)
	if err != nil {
		return fmt.Errorf("transport_socket (%s): %w", ts.GetName(), err)
	}
	chain.TLS = srv
	return nil
}

// SecretSources returns the secret sources cfg's transport sockets read: the
// listener warms until each has a value.
func (cfg *Config) SecretSources() []*mtls.Source {
	var out []*mtls.Source
	for _, ch := range append(cfg.Chains[:len(cfg.Chains):len(cfg.Chains)], cfg.DefaultChain) {
		if ch != nil && ch.TLS != nil {
			out = append(out, ch.TLS.Sources()...)
		}
	}
	return out
}

// handshake terminates TLS on a connection whose chain has a transport
// socket: the bytes listener filters peeked (the ClientHello) are replayed
// into the TLS server first, the handshake is bounded by the chain's
// timeout, and the identities it established are recorded in info. A
// failure (plaintext, garbage, a refused certificate, a timeout) closes
// this connection only; it is counted and logged at debug.
func (l *Listener) handshake(ctx context.Context, c net.Conn, chain *FilterChain, info *filters.ConnInfo, peeked []byte) (net.Conn, bool) {
	raw := filters.NewDownstream(c, peeked, info, nil).Conn()
	hctx, cancel := context.WithTimeout(ctx, chain.HandshakeTimeout)
	defer cancel()
	tc, id, err := chain.TLS.Handshake(hctx, raw)
	if err != nil {
		l.stats.TLSHandshakeFail.Add(1)
		if hctx.Err() != nil && ctx.Err() == nil {
			l.stats.TLSHandshakeTimeout.Add(1)
		}
		l.log.Debug("tls handshake failed; closing", "remote", info.RemoteAddr, "chain", chain.Name, "err", err)
		return nil, false
	}
	l.stats.TLSHandshakes.Add(1)
	info.TLS, info.PeerIdentity, info.LocalIdentity, info.NegotiatedProtocol = true, id.Peer, id.Local, id.ALPN
	return tc, true
}
