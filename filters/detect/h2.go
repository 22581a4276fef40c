package detect

import "github.com/siftmesh/sift/filters"

// H2Preface is the HTTP/2 client connection preface (RFC 9113 §3.4).
const H2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// h2Sniffer recognises the HTTP/2 connection preface. See H2.
type h2Sniffer struct{}

// H2 returns the sniffer for HTTP/2 with prior knowledge (name "h2"; Match
// protocol "h2c"): the 24-byte connection preface H2Preface (RFC 9113 §3.4),
// which gRPC and other h2c clients send first. What follows the preface (the
// client's SETTINGS frame) is not examined. A strict prefix of the preface is
// NeedMore (Need 0: any byte can decide), or NoMatch at EOF; anything else is
// NoMatch as soon as the first differing byte arrives. HTTP/2 over TLS is the
// tls sniffer's (ALPN "h2"); the HTTP/1.1 Upgrade: h2c dance is an HTTP/1.1
// request.
func H2() Sniffer { return h2Sniffer{} }

// Name implements Sniffer.
func (h2Sniffer) Name() string { return "h2" }

// Sniff implements Sniffer.
func (h2Sniffer) Sniff(b []byte, atEOF bool) Result {
	n := min(len(b), len(H2Preface))
	switch {
	case string(b[:n]) != H2Preface[:n]:
		return Result{Verdict: NoMatch}
	case n == len(H2Preface):
		return Result{Verdict: Match, Protocol: filters.ProtocolH2C}
	case atEOF:
		return Result{Verdict: NoMatch}
	}
	return Result{Verdict: NeedMore}
}
