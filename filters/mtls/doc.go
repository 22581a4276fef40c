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
//
// # No kTLS: the cost, measured
//
// crypto/tls encrypts and decrypts in user space and has no kernel TLS
// (kTLS): once a connection is TLS, tcp_proxy can no longer splice(2) and
// copies through user space. BenchmarkRelayCopy measures one relay
// direction on loopback (2 shared vCPUs, load average ~9, so ±20 %): CPU per
// MiB for sender, relay and receiver together is 1.9–2.0 ms with splice,
// 1.4–1.6 ms with a user-space copy, 2.4–2.9 ms with TLS (the sender
// encrypting, the relay decrypting, then copying). On loopback the copy is
// not what costs — splice is no cheaper there — the cipher is: about 1 ms
// of CPU per MiB for encrypting and decrypting once each (AES-GCM). kTLS
// would move that work into the kernel rather than remove it (unless the
// NIC offloads it), and would let splice work on the plaintext side again.
// Using it from Go means handing the negotiated traffic secrets to
// setsockopt(TCP_ULP "tls"), which crypto/tls does not expose (only
// through KeyLogWriter), and re-keying on TLS 1.3 KeyUpdate ourselves. We
// keep crypto/tls: correct, rotation-friendly, and the measured overhead is
// the cipher, which kTLS would not make free. Through a whole proxy
// (BenchmarkOpaqueThroughput in test/, same machine): 260–365 MB/s
// plaintext, 160–220 MB/s with TLS terminated, 260–280 MB/s with TLS on
// both sides; BenchmarkMTLSHandshakes: ~390 new mTLS connections/s, client
// and proxy sharing the 2 loaded vCPUs.
package mtls
