// Package h1 parses HTTP/1.1 request and response heads and chunked bodies strictly
// (RFC 9112), for the HCM's HTTP/1 fast path (docs/performance.md).
//
// The parser works on bytes the caller has buffered and reports offsets
// into them: it allocates nothing. It rejects, rather than repairs, every
// form a peer could read differently — bare LF or CR line endings, obs-fold,
// whitespace between a field name and its colon, control characters,
// Content-Length together with Transfer-Encoding, differing or malformed
// Content-Length values, any transfer coding but a lone "chunked" — so
// that a request the proxy forwards is read the same way by every hop
// (no request smuggling).
package h1

import (
	"bytes"
	"errors"
)

// Errors of ParseHead. Each one means the request is malformed: the
// connection must answer 400 (ErrHeadTooLarge: 431) and close.
var (
	ErrIncomplete       = errors.New("h1: request head incomplete")
	ErrHeadTooLarge     = errors.New("h1: request head too large")
	ErrRequestLine      = errors.New("h1: malformed request line")
	ErrVersion          = errors.New("h1: malformed HTTP version")
	ErrBareLF           = errors.New("h1: line ends in a bare LF or CR")
	ErrObsFold          = errors.New("h1: obsolete line folding")
	ErrFieldName        = errors.New("h1: malformed header field name")
	ErrFieldValue       = errors.New("h1: invalid character in header field value")
	ErrContentLength    = errors.New("h1: malformed or conflicting Content-Length")
	ErrTransferEncoding = errors.New("h1: unsupported or repeated Transfer-Encoding")
	ErrCLAndTE          = errors.New("h1: both Content-Length and Transfer-Encoding")
	ErrHost             = errors.New("h1: missing or repeated Host")
)

// Field is one header field: offsets into the parsed buffer.
type Field struct {
	NameStart, NameEnd   int
	ValueStart, ValueEnd int
}

// Head is a parsed request head. Offsets index the buffer given to
// ParseHead; they are valid as long as that buffer is.
type Head struct {
	MethodEnd              int // method is buf[MethodStart:MethodEnd]
	MethodStart            int
	TargetStart, TargetEnd int
	Minor                  int // HTTP/1.Minor
	Fields                 []Field

	// Framing and connection handling, from the fields.
	ContentLength int64 // -1: none given
	Chunked       bool
	Close         bool // Connection: close
	// Special: a field this fast path leaves to a full server (Upgrade,
	// Connection: upgrade, Expect, Trailer, HTTP2-Settings) is present.
	Special bool
	Host    int // index in Fields of the Host field; -1: none
}

// tchar per RFC 9110 §5.6.2.
var tchar = [256]bool{}

// vchar: field-vchar, SP, HTAB and obs-text — what a field value may hold.
var vchar = [256]bool{}

func init() {
	for c := '0'; c <= '9'; c++ {
		tchar[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		tchar[c] = true
		tchar[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		tchar[c] = true
	}
	for c := 0x21; c <= 0xff; c++ {
		vchar[c] = c != 0x7f
	}
	vchar[' '], vchar['\t'] = true, true
}

// ParseHead parses the request head at the start of buf into h (its
// Fields slice is reused). It returns the head's length, including the
// final empty line, or ErrIncomplete when buf holds no full head yet and
// is shorter than maxBytes (ErrHeadTooLarge when it is not). Empty lines
// before the request line are skipped (RFC 9112 §2.2). ParseHead does
// not allocate unless h.Fields must grow.
func ParseHead(buf []byte, h *Head, maxBytes int) (int, error) {
	*h = Head{Fields: h.Fields[:0], ContentLength: -1, Host: -1}
	i := 0
	for i+1 < len(buf) && i+1 < maxBytes && buf[i] == '\r' && buf[i+1] == '\n' {
		i += 2
	}
	headEnd, err := findHeadEnd(buf, i, maxBytes)
	if err != nil {
		return 0, err
	}
	line, next, err := nextLine(buf, i, headEnd)
	if err != nil {
		return 0, err
	}
	if err := parseRequestLine(buf[:line], i, h); err != nil {
		return 0, err
	}
	var fr framing
	for next < headEnd-2 {
		var f Field
		if f, next, err = parseField(buf, next, headEnd); err != nil {
			return 0, err
		}
		name, value := buf[f.NameStart:f.NameEnd], buf[f.ValueStart:f.ValueEnd]
		if isFraming, err := fr.field(name, value); err != nil {
			return 0, err
		} else if isFraming {
			h.Fields = append(h.Fields, f)
			continue
		}
		switch {
		case equalFold(name, "host"):
			if h.Host >= 0 {
				return 0, ErrHost
			}
			h.Host = len(h.Fields)
		case equalFold(name, "connection"):
			connectionTokens(value, h)
		case equalFold(name, "upgrade"), equalFold(name, "expect"), equalFold(name, "trailer"),
			equalFold(name, "http2-settings"):
			h.Special = true
		}
		h.Fields = append(h.Fields, f)
	}
	if h.ContentLength, h.Chunked, err = fr.result(); err != nil {
		return 0, err
	}
	if h.Host < 0 && h.Minor == 1 {
		return 0, ErrHost
	}
	return headEnd, nil
}

// framing applies RFC 9112's message framing rules, the same for requests
// and responses, to a head's fields: Content-Length values of digits only
// and equal when repeated, Transfer-Encoding only a single "chunked",
// never both.
type framing struct {
	cl, te bool
	length int64
}

// field checks one field; it reports whether the field is a framing one.
func (fr *framing) field(name, value []byte) (bool, error) {
	switch {
	case equalFold(name, "content-length"):
		n, ok := parseContentLength(value)
		if !ok || (fr.cl && n != fr.length) {
			return true, ErrContentLength
		}
		fr.cl, fr.length = true, n
		return true, nil
	case equalFold(name, "transfer-encoding"):
		if fr.te || !equalFold(value, "chunked") {
			return true, ErrTransferEncoding
		}
		fr.te = true
		return true, nil
	}
	return false, nil
}

// result is the head's framing: its Content-Length (-1: none) and whether
// it is chunked.
func (fr *framing) result() (length int64, chunked bool, err error) {
	if fr.cl && fr.te {
		return 0, false, ErrCLAndTE
	}
	if !fr.cl {
		return -1, fr.te, nil
	}
	return fr.length, false, nil
}

// findHeadEnd returns the end of the head that starts at buf[start]: the
// index after its empty line. Only the first maxBytes bytes of buf count.
func findHeadEnd(buf []byte, start, maxBytes int) (int, error) {
	limit := buf
	if len(limit) > maxBytes {
		limit = limit[:maxBytes]
	}
	end := bytes.Index(limit[start:], []byte("\r\n\r\n"))
	if end < 0 {
		// A bare LF anywhere already decides the outcome.
		for j := start; j < len(limit); j++ {
			if limit[j] == '\n' && (j == 0 || limit[j-1] != '\r') {
				return 0, ErrBareLF
			}
		}
		if len(buf) >= maxBytes {
			return 0, ErrHeadTooLarge
		}
		return 0, ErrIncomplete
	}
	return start + end + 4, nil
}

// parseField parses the field line starting at start, within a head that
// ends at headEnd; it returns the field and the start of the next line.
func parseField(buf []byte, start, headEnd int) (Field, int, error) {
	line, next, err := nextLine(buf, start, headEnd)
	if err != nil {
		return Field{}, 0, err
	}
	if buf[start] == ' ' || buf[start] == '\t' {
		return Field{}, 0, ErrObsFold
	}
	colon := start
	for colon < line && tchar[buf[colon]] {
		colon++
	}
	if colon == start || colon == line || buf[colon] != ':' {
		return Field{}, 0, ErrFieldName
	}
	vs := colon + 1
	for vs < line && (buf[vs] == ' ' || buf[vs] == '\t') {
		vs++
	}
	ve := line
	for ve > vs && (buf[ve-1] == ' ' || buf[ve-1] == '\t') {
		ve--
	}
	for k := vs; k < ve; k++ {
		if !vchar[buf[k]] {
			return Field{}, 0, ErrFieldValue
		}
	}
	return Field{NameStart: start, NameEnd: colon, ValueStart: vs, ValueEnd: ve}, next, nil
}

// nextLine returns the end of the line starting at start (the CR's index)
// and the start of the next; the line must end in CRLF and hold no other
// CR or LF.
func nextLine(buf []byte, start, limit int) (end, next int, err error) {
	for k := start; k < limit; k++ {
		switch buf[k] {
		case '\r':
			if k+1 >= limit || buf[k+1] != '\n' {
				return 0, 0, ErrBareLF
			}
			return k, k + 2, nil
		case '\n':
			return 0, 0, ErrBareLF
		}
	}
	return 0, 0, ErrBareLF
}

// parseRequestLine parses method SP request-target SP HTTP-version; line
// is the buffer up to the line's CR, the line starts at start.
func parseRequestLine(line []byte, start int, h *Head) error {
	k := start
	for k < len(line) && tchar[line[k]] {
		k++
	}
	if k == start || k >= len(line) || line[k] != ' ' {
		return ErrRequestLine
	}
	h.MethodStart, h.MethodEnd = start, k
	k++
	t := k
	for k < len(line) && line[k] > ' ' && line[k] < 0x7f {
		k++
	}
	if k == t || k >= len(line) || line[k] != ' ' {
		return ErrRequestLine
	}
	h.TargetStart, h.TargetEnd = t, k
	v := line[k+1:]
	if len(v) != 8 || string(v[:5]) != "HTTP/" || v[6] != '.' || v[5] < '0' || v[5] > '9' || v[7] < '0' || v[7] > '9' {
		return ErrVersion
	}
	if v[5] != '1' {
		return ErrVersion
	}
	h.Minor = int(v[7] - '0')
	return nil
}

// parseContentLength accepts 1 to 18 decimal digits, nothing else.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// connectionTokens reads a Connection field's tokens: close, and upgrade
// (Special).
func connectionTokens(v []byte, h *Head) {
	forEachToken(v, func(tok []byte) {
		switch {
		case equalFold(tok, "close"):
			h.Close = true
		case equalFold(tok, "upgrade"):
			h.Special = true
		}
	})
}

// equalFold reports whether b equals the lower-case ASCII string s,
// ignoring ASCII case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
