package detect

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"time"
)

// TLS limits, from the protocol and from crypto/tls.
const (
	// tlsRecordHeaderLen is a TLSPlaintext header: type(1) version(2) length(2).
	tlsRecordHeaderLen = 5
	// tlsMaxRecordLen is the largest TLSPlaintext fragment (RFC 8446 §5.1:
	// "The length MUST NOT exceed 2^14 bytes").
	tlsMaxRecordLen = 1 << 14
	// tlsMaxClientHelloLen is the largest ClientHello body crypto/tls accepts
	// (its maxHandshake); a larger one could never be parsed.
	tlsMaxClientHelloLen = 1 << 16

	tlsRecordTypeHandshake   = 0x16
	tlsHandshakeClientHello  = 0x01
	tlsHandshakeHeaderLen    = 4 // msg_type(1) length(3)
	tlsRecordVersionMajor    = 3
	tlsRecordVersionMaxMinor = 4
)

// tlsSniffer recognises a TLS ClientHello. See TLS.
type tlsSniffer struct{}

// TLS returns the sniffer for a TLS ClientHello (name "tls"; Match protocol
// "tls", with ServerName and ALPN).
//
// It first walks the TLS record layer itself, which is cheap and decides
// NoMatch at once for anything else, then lets crypto/tls parse the complete
// ClientHello:
//
//   - Every record up to the end of the ClientHello must be a handshake record
//     (content type 22) with version 3.0–3.4 and a length of 1..2^14 (RFC 8446
//     §5.1); otherwise NoMatch, as soon as the offending header byte arrives.
//   - The first handshake message must be a ClientHello (type 1) of at most
//     64 KiB (crypto/tls's limit); otherwise NoMatch.
//   - The ClientHello may be fragmented over any number of records, including
//     its 4-byte handshake header. Until the record that completes it has
//     arrived, the answer is NeedMore with Need set to the smallest total length
//     at which the answer can change (the end of that record once its header is
//     known, or one more byte while reading headers).
//   - Then crypto/tls parses it: a tls.Server over a read-only in-memory
//     connection that replays exactly those records (writes, such as the alert
//     crypto/tls sends when aborting, are discarded), whose
//     Config.GetConfigForClient records SNI and ALPN and aborts the handshake.
//     If crypto/tls rejects the ClientHello (malformed extensions, duplicate
//     extensions, an SNI with a trailing dot...) the answer is NoMatch: Sift's
//     own TLS termination would reject it too.
//
// SSLv2-compatible ClientHellos (first byte 0x80) are not TLS here (crypto/tls
// does not support them either). ServerName is lower-cased. Sniff runs in the
// caller's goroutine, starts none, does no I/O and cannot block.
func TLS() Sniffer { return tlsSniffer{} }

// Name implements Sniffer.
func (tlsSniffer) Name() string { return "tls" }

// Sniff implements Sniffer.
func (tlsSniffer) Sniff(b []byte, atEOF bool) Result {
	end, r := tlsClientHelloEnd(b)
	if r.Verdict == NoMatch {
		return r
	}
	if r.Verdict == NeedMore {
		if atEOF {
			return Result{Verdict: NoMatch}
		}
		return r
	}
	return parseClientHello(b[:end])
}

// tlsClientHelloEnd walks the record layer of b. It returns the length of the
// prefix of b that holds the whole ClientHello (the end of the record
// completing it) with a Match verdict meaning "complete", or a NeedMore (with
// Need) or NoMatch verdict.
func tlsClientHelloEnd(b []byte) (int, Result) {
	var (
		hdr   [tlsHandshakeHeaderLen]byte // the handshake header, possibly fragmented
		nhdr  int                         // bytes of hdr seen
		total = -1                        // handshake bytes needed: 4 + body length, once known
		seen  int                         // handshake bytes seen so far
	)
	for pos := 0; ; {
		// Record header, checked byte by byte so that non-TLS fails at once.
		h := b[pos:]
		if len(h) > 0 && h[0] != tlsRecordTypeHandshake {
			return 0, Result{Verdict: NoMatch}
		}
		if len(h) > 1 && h[1] != tlsRecordVersionMajor {
			return 0, Result{Verdict: NoMatch}
		}
		if len(h) > 2 && h[2] > tlsRecordVersionMaxMinor {
			return 0, Result{Verdict: NoMatch}
		}
		if len(h) > 3 && int(h[3])<<8 > tlsMaxRecordLen {
			return 0, Result{Verdict: NoMatch}
		}
		if len(h) < tlsRecordHeaderLen {
			return 0, Result{Verdict: NeedMore}
		}
		n := int(h[3])<<8 | int(h[4])
		if n == 0 || n > tlsMaxRecordLen {
			// RFC 8446 §5.1: zero-length handshake fragments are forbidden.
			return 0, Result{Verdict: NoMatch}
		}
		body := h[tlsRecordHeaderLen:]
		recEnd := pos + tlsRecordHeaderLen + n
		avail := min(len(body), n)
		// The handshake header, which may straddle records.
		for i := 0; nhdr < tlsHandshakeHeaderLen && i < avail; i++ {
			hdr[nhdr] = body[i]
			nhdr++
			if nhdr == 1 && hdr[0] != tlsHandshakeClientHello {
				return 0, Result{Verdict: NoMatch}
			}
		}
		if nhdr == tlsHandshakeHeaderLen && total < 0 {
			bodyLen := int(hdr[1])<<16 | int(hdr[2])<<8 | int(hdr[3])
			if bodyLen > tlsMaxClientHelloLen {
				return 0, Result{Verdict: NoMatch}
			}
			total = tlsHandshakeHeaderLen + bodyLen
		}
		if nhdr < tlsHandshakeHeaderLen && avail < n {
			// Still reading the handshake header: every byte counts.
			return 0, Result{Verdict: NeedMore}
		}
		seen += n
		if total >= 0 && seen >= total {
			// This record completes the ClientHello.
			if len(b) < recEnd {
				return 0, Result{Verdict: NeedMore, Need: recEnd}
			}
			return recEnd, Result{Verdict: Match}
		}
		if len(b) <= recEnd {
			// The next record's first header byte is the next decision point.
			return 0, Result{Verdict: NeedMore, Need: recEnd + 1}
		}
		pos = recEnd
	}
}

// errClientHelloSeen aborts the handshake once the ClientHello is read.
var errClientHelloSeen = errors.New("detect: client hello seen")

// parseClientHello lets crypto/tls parse the complete ClientHello records in
// b. It never blocks: the connection it reads from is b itself.
func parseClientHello(b []byte) Result {
	var (
		seen bool
		res  = Result{Verdict: Match, Protocol: ProtocolTLS}
	)
	cfg := &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			seen = true
			res.ServerName = strings.ToLower(chi.ServerName)
			if len(chi.SupportedProtos) > 0 {
				res.ALPN = chi.SupportedProtos
			}
			return nil, errClientHelloSeen
		},
	}
	// Handshake uses context.Background, so crypto/tls starts no goroutine;
	// it returns as soon as GetConfigForClient fails or the replay runs dry.
	err := tls.Server(&replayConn{b: b}, cfg).Handshake()
	if !seen || err == nil {
		return Result{Verdict: NoMatch}
	}
	return res
}

// replayConn is a read-only, in-memory net.Conn: Read replays b then reports
// io.EOF; Write discards; deadlines are ignored (nothing can block).
type replayConn struct{ b []byte }

func (c *replayConn) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.b)
	c.b = c.b[n:]
	return n, nil
}

func (c *replayConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *replayConn) Close() error                     { return nil }
func (c *replayConn) LocalAddr() net.Addr              { return replayAddr{} }
func (c *replayConn) RemoteAddr() net.Addr             { return replayAddr{} }
func (c *replayConn) SetDeadline(time.Time) error      { return nil }
func (c *replayConn) SetReadDeadline(time.Time) error  { return nil }
func (c *replayConn) SetWriteDeadline(time.Time) error { return nil }

type replayAddr struct{}

func (replayAddr) Network() string { return "replay" }
func (replayAddr) String() string  { return "replay" }
