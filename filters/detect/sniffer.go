// Package detect is Sift's protocol detection: pure sniffers that recognise a
// protocol from a connection's first bytes, and the listener filters that run
// them — Sift's own detect filter (all sniffers in one peek loop, fail open to
// opaque TCP) and Envoy's tls_inspector and http_inspector.
package detect

// Verdict is a sniffer's answer about the bytes it was shown.
type Verdict uint8

const (
	// NeedMore: the bytes so far are a valid prefix of the protocol; more are
	// needed to decide.
	NeedMore Verdict = iota
	// Match: the bytes are the protocol.
	Match
	// NoMatch: the bytes cannot be the protocol.
	NoMatch
)

func (v Verdict) String() string {
	switch v {
	case NeedMore:
		return "NeedMore"
	case Match:
		return "Match"
	case NoMatch:
		return "NoMatch"
	}
	return "Verdict(?)"
}

// Result is a sniffer's verdict with what it learned.
type Result struct {
	Verdict Verdict
	// Protocol is set on Match: "tls", "http/1.0", "http/1.1", "h2c", or a
	// plugin's protocol name.
	Protocol string
	// Need is, on NeedMore, the smallest total length at which the answer
	// could change, when the sniffer knows it (e.g. the end of the TLS record
	// that completes a ClientHello); 0 means "one more byte". The detection
	// loop peeks for the least Need of the undecided sniffers, so one that
	// can decide early never waits for bytes another one wants.
	Need int
	// ServerName (TLS SNI, lower-case) and ALPN are set on a TLS Match.
	ServerName string
	ALPN       []string
	// Attributes are what a plugin sniffer's Match reported; nil otherwise.
	Attributes map[string]string
}

// Sniffer recognises one protocol from the first bytes of a connection.
// Sniff is a pure function of its arguments: it must not retain b, must not
// block (a plugin sniffer, NewPluginSniffer, blocks for at most its per-call
// budget), and must answer NeedMore only if more bytes could change the answer
// (with atEOF true no more bytes will come, so it must decide). A decision is
// final: once Sniff answers Match or NoMatch for b, it answers the same for
// every longer input that starts with b — the loop drops sniffers that
// declined, and the fuzz targets check it. Sniffers are safe for concurrent
// use.
type Sniffer interface {
	// Name identifies the sniffer in config and logs ("tls", "http1", "h2").
	Name() string
	Sniff(b []byte, atEOF bool) Result
}

// ServerSniffer is implemented by sniffers that can also recognise their
// protocol from the server's first bytes (plugin sniffers of
// server-speaks-first protocols). When the server spoke first, the detect
// filter shows them its greeting, once; the first Match names the
// connection's protocol. Same rules as Sniff; NeedMore is NoMatch.
type ServerSniffer interface {
	SniffServer(greeting []byte) Result
}
