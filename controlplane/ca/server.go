package ca

import (
	"crypto/tls"
)

// ServerTLSConfig returns the TLS configuration of sift-control's xDS
// server: a server certificate for names (ServerLeaf: DNS names and IPs,
// renewed like every leaf, fetched per handshake so a renewal or a root
// switch applies to the next connection), TLS 1.2 and later, ALPN h2 (gRPC).
// Client certificates are not requested: proxies prove their node with a
// token (see Authenticate).
func (c *CA) ServerTLSConfig(names []string) (*tls.Config, error) {
	if _, err := c.ServerLeaf(names); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			l, err := c.ServerLeaf(names)
			if err != nil {
				return nil, err
			}
			return l.TLSCertificate(), nil
		},
	}, nil
}
