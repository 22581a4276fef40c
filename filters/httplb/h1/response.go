package h1

import (
	"bytes"
	"errors"
)

// ErrStatusLine: a response's status line is not HTTP/1.x, three digits,
// a space and a reason phrase.
var ErrStatusLine = errors.New("h1: malformed status line")

// ResponseHead is a parsed response head. Offsets index the buffer given
// to ParseResponseHead; they are valid as long as that buffer is.
type ResponseHead struct {
	Minor                  int // HTTP/1.Minor
	Status                 int
	StatusStart, ReasonEnd int // "200 OK" is buf[StatusStart:ReasonEnd]
	Fields                 []Field

	// Framing and connection handling, from the fields.
	ContentLength int64 // -1: none given
	Chunked       bool
	Close         bool // Connection: close
	KeepAlive     bool // Connection: keep-alive (what keeps an HTTP/1.0 response's connection)
	Trailer       bool // a Trailer field announces trailer fields
}

// ParseResponseHead parses the response head at the start of buf into h
// (its Fields slice is reused), with the request parser's strictness: the
// same line endings, field syntax and framing rules (one transfer coding,
// "chunked"; Content-Length values that agree; never both), so that a
// response is framed the same way by the proxy and by the client it
// forwards it to. It returns the head's length, or ErrIncomplete when buf
// holds no full head yet and is shorter than maxBytes (ErrHeadTooLarge
// when it is not). It does not allocate unless h.Fields must grow.
func ParseResponseHead(buf []byte, h *ResponseHead, maxBytes int) (int, error) {
	*h = ResponseHead{Fields: h.Fields[:0], ContentLength: -1}
	headEnd, err := findHeadEnd(buf, 0, maxBytes)
	if err != nil {
		return 0, err
	}
	line, next, err := nextLine(buf, 0, headEnd)
	if err != nil {
		return 0, err
	}
	if err := parseStatusLine(buf[:line], h); err != nil {
		return 0, err
	}
	var fr framing
	for next < headEnd-2 {
		var f Field
		if f, next, err = parseField(buf, next, headEnd); err != nil {
			return 0, err
		}
		name, value := buf[f.NameStart:f.NameEnd], buf[f.ValueStart:f.ValueEnd]
		if _, err := fr.field(name, value); err != nil {
			return 0, err
		}
		switch {
		case equalFold(name, "connection"):
			forEachToken(value, func(tok []byte) {
				switch {
				case equalFold(tok, "close"):
					h.Close = true
				case equalFold(tok, "keep-alive"):
					h.KeepAlive = true
				}
			})
		case equalFold(name, "trailer"):
			h.Trailer = true
		}
		h.Fields = append(h.Fields, f)
	}
	if h.ContentLength, h.Chunked, err = fr.result(); err != nil {
		return 0, err
	}
	return headEnd, nil
}

// parseStatusLine parses HTTP-version SP status-code SP [reason-phrase].
// A missing space after the code (as some servers send) is accepted; the
// reason may hold any visible character, SP or HTAB.
func parseStatusLine(line []byte, h *ResponseHead) error {
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[7] < '0' || line[7] > '9' || line[8] != ' ' {
		return ErrStatusLine
	}
	h.Minor = int(line[7] - '0')
	code := 0
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return ErrStatusLine
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return ErrStatusLine
	}
	if len(line) > 12 && line[12] != ' ' {
		return ErrStatusLine
	}
	for _, c := range line[12:] {
		if !vchar[c] {
			return ErrStatusLine
		}
	}
	h.Status, h.StatusStart, h.ReasonEnd = code, 9, len(line)
	return nil
}

// forEachToken calls fn with each comma-separated token of a field value,
// trimmed of whitespace; empty tokens are skipped.
func forEachToken(v []byte, fn func(tok []byte)) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		tok := v
		if i >= 0 {
			tok, v = v[:i], v[i+1:]
		} else {
			v = nil
		}
		if tok = bytes.Trim(tok, " \t"); len(tok) > 0 {
			fn(tok)
		}
	}
}
