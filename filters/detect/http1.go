package detect

import "github.com/siftmesh/sift/filters"

// MaxRequestLine is the longest HTTP/1 request line, CRLF included, that the
// http1 sniffer waits for; a longer one is NoMatch. 8 KiB is the limit of
// most servers (nginx's large_client_header_buffers, Apache's
// LimitRequestLine).
const MaxRequestLine = 8 << 10

// http1Sniffer recognises an HTTP/1.0 or HTTP/1.1 request line. See HTTP1.
type http1Sniffer struct{}

// HTTP1 returns the sniffer for an HTTP/1.x request line (name "http1"; Match
// protocol "http/1.0" or "http/1.1").
//
// It accepts exactly the request-line of RFC 9112 §3:
//
//	request-line = method SP request-target SP HTTP-version CRLF
//
// where method is any token (RFC 9110 §5.6.2: GET, CONNECT, PROPFIND, PURGE
// and extension methods alike), request-target is one or more bytes that are
// neither SP nor CTL (0x00–0x1F, 0x7F) — so origin-form, absolute-form,
// authority-form (CONNECT host:port) and asterisk-form all pass, and, like
// net/http, bytes 0x80–0xFF are tolerated — and HTTP-version is "HTTP/1.0" or
// "HTTP/1.1", case-sensitive (RFC 9112 §2.3). The line may end in a bare LF
// (RFC 9112 §2.2 lets a recipient accept it, and net/http does).
//
// It rejects, as soon as the offending byte arrives: a first byte that is not
// a token character (TLS, most binary protocols, a leading empty line — which
// RFC 9112 §2.2 allows servers to skip but Envoy and net/http do not), more
// than one SP between elements, a CTL in the request-target (HTTP/0.9's
// "GET /\r\n", Redis's "PING\r\n"), any other version ("PRI * HTTP/2.0" — the
// HTTP/2 preface — or "HTTP/1.2", "http/1.1"), a CR not followed by LF, and a
// line with no LF within MaxRequestLine bytes. Any strict prefix of a valid
// request line is NeedMore (Need 0: every byte can decide); at EOF it is
// NoMatch. Only the request line is examined, not the header fields.
func HTTP1() Sniffer { return http1Sniffer{} }

// Name implements Sniffer.
func (http1Sniffer) Name() string { return "http1" }

// Sniff implements Sniffer.
func (http1Sniffer) Sniff(b []byte, atEOF bool) Result {
	v, proto := sniffRequestLine(b[:min(len(b), MaxRequestLine)])
	switch {
	case v == Match:
		return Result{Verdict: Match, Protocol: proto}
	case v == NoMatch, atEOF, len(b) >= MaxRequestLine:
		return Result{Verdict: NoMatch}
	}
	return Result{Verdict: NeedMore}
}

// sniffRequestLine scans b for a request line; NeedMore means b is a strict
// prefix of one.
func sniffRequestLine(b []byte) (Verdict, string) {
	i := 0
	// method = token
	for i < len(b) && isTokenChar(b[i]) {
		i++
	}
	if i == len(b) {
		return NeedMore, ""
	}
	if i == 0 || b[i] != ' ' {
		return NoMatch, ""
	}
	i++
	// request-target: no SP, no CTL.
	start := i
	for i < len(b) && b[i] != ' ' && !isCTL(b[i]) {
		i++
	}
	if i == len(b) {
		return NeedMore, ""
	}
	if i == start || b[i] != ' ' {
		return NoMatch, ""
	}
	i++
	// HTTP-version, then CRLF or LF.
	const version = "HTTP/1."
	for j := 0; j < len(version); j, i = j+1, i+1 {
		if i == len(b) {
			return NeedMore, ""
		}
		if b[i] != version[j] {
			return NoMatch, ""
		}
	}
	if i == len(b) {
		return NeedMore, ""
	}
	proto := ""
	switch b[i] {
	case '0':
		proto = filters.ProtocolHTTP10
	case '1':
		proto = filters.ProtocolHTTP11
	default:
		return NoMatch, ""
	}
	i++
	if i < len(b) && b[i] == '\r' {
		i++
	}
	if i == len(b) {
		return NeedMore, ""
	}
	if b[i] != '\n' {
		return NoMatch, ""
	}
	return Match, proto
}

// isTokenChar reports whether c is a tchar (RFC 9110 §5.6.2):
//
//	tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
//	        "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
func isTokenChar(c byte) bool { return tokenChars[c] }

var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// isCTL reports whether c is a control character (RFC 5234 CTL).
func isCTL(c byte) bool { return c < 0x20 || c == 0x7f }
