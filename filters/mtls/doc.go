// Package mtls is Envoy's TLS transport socket (envoy.transport_sockets.tls)
// for sift-proxy: listener filter chains' DownstreamTlsContext (Server),
// clusters' UpstreamTlsContext (Client), the secrets they read — inline,
// from files that are watched and reloaded, the bootstrap's static secrets,
// or SDS (Store) — the peer identity a handshake establishes (a SPIFFE ID
// in a mesh), and the redaction of keys in config dumps.
//
// The package is a leaf: it depends on neither filters, listener nor
// upstream, so that all of them can use it. crypto/tls does the TLS.
//
// # Rotation
//
// Every certificate, trust bundle and ticket-key set is a Source holding an
// atomic pointer to its current Value. A Server hands crypto/tls a base
// config whose GetConfigForClient builds (and caches, keyed by the values'
// identities) the config of the values current at that moment; a Client
// does the same per dial. A new value thus applies to the next handshake,
// and connections already established keep what they negotiated.
//
// # Secrets are never printed
//
// Errors name the field or the secret, never its contents; crypto/tls's
// own messages (key mismatch, unsupported key type) quote no key material.
// Redact replaces every field Envoy marks sensitive with "[redacted]".
package mtls
