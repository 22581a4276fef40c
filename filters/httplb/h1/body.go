package h1

import (
	"bytes"
	"errors"
	"io"
)

// Reader is a connection's input buffer: request heads are parsed in
// place (Buffered), bodies read through it. It grows from its initial
// size up to max bytes when a head does not fit. Not safe for concurrent
// use.
type Reader struct {
	src  io.Reader
	buf  []byte
	r, w int
	max  int
}

// NewReader returns a Reader of src with size bytes, growing to max.
func NewReader(src io.Reader, size, max int) *Reader {
	if max < size {
		max = size
	}
	return &Reader{src: src, buf: make([]byte, size), max: max}
}

// Buffered returns the unread bytes; valid until the next Fill or Read.
func (b *Reader) Buffered() []byte { return b.buf[b.r:b.w] }

// Discard consumes n buffered bytes.
func (b *Reader) Discard(n int) { b.r += n }

// Fill reads once more from the source into the buffer, first moving the
// unread bytes to its start, and growing it (up to max) when full. It
// returns ErrHeadTooLarge when the buffer is full at max.
func (b *Reader) Fill() error {
	if b.r > 0 {
		copy(b.buf, b.buf[b.r:b.w])
		b.w -= b.r
		b.r = 0
	}
	if b.w == len(b.buf) {
		if len(b.buf) >= b.max {
			return ErrHeadTooLarge
		}
		nb := make([]byte, min(2*len(b.buf), b.max))
		copy(nb, b.buf[:b.w])
		b.buf = nb
	}
	n, err := b.src.Read(b.buf[b.w:])
	b.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Read reads buffered bytes first, then from the source.
func (b *Reader) Read(p []byte) (int, error) {
	if b.r == b.w {
		if len(p) >= len(b.buf) {
			return b.src.Read(p)
		}
		if err := b.Fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, b.buf[b.r:b.w])
	b.r += n
	return n, nil
}

// Errors of the body readers: a body that ends early, or a malformed
// chunked body. Either means the connection cannot be reused.
var (
	ErrBodyTruncated = errors.New("h1: body ended early")
	ErrChunk         = errors.New("h1: malformed chunked body")
)

// LengthBody reads a body of N bytes from R.
type LengthBody struct {
	R *Reader
	N int64
}

func (l *LengthBody) Read(p []byte) (int, error) {
	if l.N <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.N {
		p = p[:l.N]
	}
	n, err := l.R.Read(p)
	l.N -= int64(n)
	if err != nil && n == 0 {
		if err == io.EOF {
			err = ErrBodyTruncated
		}
		return 0, err
	}
	return n, nil
}

// maxChunkLine bounds a chunk-size line (with extensions) and each
// trailer line; maxTrailer bounds the trailer section.
const (
	maxChunkLine = 4 << 10
	maxTrailer   = 16 << 10
)

// ChunkedBody decodes a chunked body (RFC 9112 §7.1) strictly: chunk
// sizes of 1 to 16 hex digits, extensions of visible characters only,
// CRLF after every line and chunk, trailer fields well-formed (and
// handed to OnTrailer, or dropped). Any violation is ErrChunk, sticky.
type ChunkedBody struct {
	R *Reader
	// OnTrailer, when set, is called with each trailer field's name and
	// value (trimmed) before Read returns io.EOF; the slices are valid
	// only during the call.
	OnTrailer func(name, value []byte)
	left      int64 // bytes left in the current chunk
	inCh      bool  // inside a chunk's data
	done      bool
	err       error
	trail     int
}

func (c *ChunkedBody) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if c.done {
		return 0, io.EOF
	}
	if !c.inCh {
		if err := c.chunkHeader(); err != nil {
			c.err = err
			return 0, err
		}
		if c.done {
			return 0, io.EOF
		}
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.R.Read(p)
	c.left -= int64(n)
	if n == 0 && err != nil {
		if err == io.EOF {
			err = ErrBodyTruncated
		}
		c.err = err
		return 0, err
	}
	if c.left == 0 {
		// The chunk's CRLF; read it now when it is at hand, so that a
		// body whose last byte was read is known complete.
		if err := c.crlf(); err != nil {
			c.err = err
			return n, nil
		}
		c.inCh = false
	}
	return n, nil
}

// line returns the next CRLF-terminated line (without CRLF), consuming it.
func (c *ChunkedBody) line() ([]byte, error) {
	for {
		b := c.R.Buffered()
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			if i == 0 || b[i-1] != '\r' || bytes.IndexByte(b[:i-1], '\r') >= 0 {
				return nil, ErrChunk
			}
			if i > maxChunkLine {
				return nil, ErrChunk
			}
			c.R.Discard(i + 1)
			return b[:i-1], nil
		}
		if len(b) > maxChunkLine {
			return nil, ErrChunk
		}
		if err := c.R.Fill(); err != nil {
			if err == io.EOF {
				return nil, ErrBodyTruncated
			}
			if err == ErrHeadTooLarge {
				return nil, ErrChunk
			}
			return nil, err
		}
	}
}

func (c *ChunkedBody) crlf() error {
	for len(c.R.Buffered()) < 2 {
		if err := c.R.Fill(); err != nil {
			if err == io.EOF {
				return ErrBodyTruncated
			}
			return err
		}
	}
	b := c.R.Buffered()
	if b[0] != '\r' || b[1] != '\n' {
		return ErrChunk
	}
	c.R.Discard(2)
	return nil
}

func (c *ChunkedBody) chunkHeader() error {
	ln, err := c.line()
	if err != nil {
		return err
	}
	size, ok := parseChunkLine(ln)
	if !ok {
		return ErrChunk
	}
	if size > 0 {
		c.left, c.inCh = size, true
		return nil
	}
	// Last chunk: the trailer section, up to an empty line.
	for {
		ln, err := c.line()
		if err != nil {
			return err
		}
		if len(ln) == 0 {
			c.done = true
			return nil
		}
		c.trail += len(ln) + 2
		if c.trail > maxTrailer || !validField(ln) {
			return ErrChunk
		}
		if c.OnTrailer != nil {
			colon := bytes.IndexByte(ln, ':')
			c.OnTrailer(ln[:colon], bytes.Trim(ln[colon+1:], " \t"))
		}
	}
}

// parseChunkLine parses chunk-size [ chunk-ext ]: the size in 1 to 15 hex
// digits (so that it fits an int64), then optional BWS and extensions
// starting with ';', holding visible characters, SP or HTAB only.
func parseChunkLine(ln []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(ln); i++ {
		c := ln[i]
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			goto ext
		}
		if i >= 15 {
			return 0, false
		}
		n = n<<4 | int64(d)
	}
ext:
	if i == 0 {
		return 0, false
	}
	rest := ln[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		return n, i == len(ln) // no whitespace without an extension
	}
	if rest[0] != ';' {
		return 0, false
	}
	for _, c := range rest {
		if !vchar[c] || c >= 0x80 {
			return 0, false
		}
	}
	return n, true
}

// validField reports whether ln is a well-formed field line.
func validField(ln []byte) bool {
	k := 0
	for k < len(ln) && tchar[ln[k]] {
		k++
	}
	if k == 0 || k == len(ln) || ln[k] != ':' {
		return false
	}
	for _, c := range ln[k+1:] {
		if !vchar[c] {
			return false
		}
	}
	return true
}

// Done reports whether the body was read to its end, well-formed.
func (c *ChunkedBody) Done() bool { return c.done && c.err == nil }
