package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http/httputil"
	"strings"
	"testing"
)

func TestParseHead(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in string
		err      error
		cl       int64
		chunked  bool
		close    bool
		special  bool
		fields   int
	}{
		{name: "get", in: "GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n", cl: -1, fields: 1},
		{name: "leading empty lines", in: "\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", cl: -1, fields: 1},
		{name: "post length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n", cl: 12, fields: 2},
		{name: "same length twice", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", cl: 5, fields: 3},
		{name: "chunked", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n", cl: -1, chunked: true, fields: 2},
		{name: "close", in: "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n", cl: -1, close: true, fields: 2},
		{name: "upgrade", in: "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", cl: -1, special: true, fields: 3},
		{name: "expect", in: "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", cl: 1, special: true, fields: 3},
		{name: "http/1.0 without host", in: "GET / HTTP/1.0\r\n\r\n", cl: -1},
		{name: "value whitespace trimmed, obs-text", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: \t v\xe9 \t\r\n\r\n", cl: -1, fields: 2},
		{name: "empty value", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A:\r\n\r\n", cl: -1, fields: 2},

		{name: "incomplete", in: "GET / HTTP/1.1\r\nHost: x\r\n", err: ErrIncomplete},
		{name: "CL and TE", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", err: ErrCLAndTE},
		{name: "TE and CL", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", err: ErrCLAndTE},
		{name: "differing lengths", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n", err: ErrContentLength},
		{name: "length list", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 40\r\n\r\n", err: ErrContentLength},
		{name: "signed length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", err: ErrContentLength},
		{name: "negative length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", err: ErrContentLength},
		{name: "hex length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", err: ErrContentLength},
		{name: "huge length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999999999999999\r\n\r\n", err: ErrContentLength},
		{name: "empty length", in: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", err: ErrContentLength},
		{name: "TE gzip", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", err: ErrTransferEncoding},
		{name: "TE twice", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", err: ErrTransferEncoding},
		{name: "TE xchunked", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", err: ErrTransferEncoding},
		{name: "TE identity", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", err: ErrTransferEncoding},
		{name: "space before colon", in: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", err: ErrFieldName},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n", err: ErrObsFold},
		{name: "obs-fold tab", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\tc\r\n\r\n", err: ErrObsFold},
		{name: "bare LF", in: "GET / HTTP/1.1\nHost: x\n\n", err: ErrBareLF},
		{name: "bare LF in fields", in: "GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", err: ErrBareLF},
		{name: "bare CR", in: "GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n", err: ErrBareLF},
		{name: "NUL in value", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", err: ErrFieldValue},
		{name: "DEL in value", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", err: ErrFieldValue},
		{name: "empty name", in: "GET / HTTP/1.1\r\nHost: x\r\n: b\r\n\r\n", err: ErrFieldName},
		{name: "no colon", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n", err: ErrFieldName},
		{name: "no host", in: "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", err: ErrHost},
		{name: "two hosts", in: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", err: ErrHost},
		{name: "two spaces", in: "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", err: ErrRequestLine},
		{name: "space in target", in: "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", err: ErrVersion},
		{name: "no version", in: "GET /\r\nHost: x\r\n\r\n", err: ErrRequestLine},
		{name: "http/2.0", in: "GET / HTTP/2.0\r\nHost: x\r\n\r\n", err: ErrVersion},
		{name: "lower-case version", in: "GET / http/1.1\r\nHost: x\r\n\r\n", err: ErrVersion},
		{name: "method not a token", in: "G@T / HTTP/1.1\r\nHost: x\r\n\r\n", err: ErrRequestLine},
		{name: "too large", in: "GET / HTTP/1.1\r\nHost: x\r\nX-A: " + strings.Repeat("a", 200), err: ErrHeadTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h Head
			n, err := ParseHead([]byte(tt.in), &h, 128)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if n != len(tt.in) {
				t.Errorf("length %d, want %d", n, len(tt.in))
			}
			if h.ContentLength != tt.cl || h.Chunked != tt.chunked || h.Close != tt.close || h.Special != tt.special || len(h.Fields) != tt.fields {
				t.Errorf("got cl %d chunked %v close %v special %v fields %d", h.ContentLength, h.Chunked, h.Close, h.Special, len(h.Fields))
			}
		})
	}
}

func TestParseHeadOffsets(t *testing.T) {
	t.Parallel()
	in := []byte("POST /p?q=1 HTTP/1.1\r\nHost: example\r\nX-Long:  two words  \r\n\r\nBODY")
	var h Head
	n, err := ParseHead(in, &h, 1<<10)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(in[n:]); got != "BODY" {
		t.Errorf("rest %q", got)
	}
	if m, tg := string(in[h.MethodStart:h.MethodEnd]), string(in[h.TargetStart:h.TargetEnd]); m != "POST" || tg != "/p?q=1" {
		t.Errorf("method %q target %q", m, tg)
	}
	f := h.Fields[1]
	if name, v := string(in[f.NameStart:f.NameEnd]), string(in[f.ValueStart:f.ValueEnd]); name != "X-Long" || v != "two words" {
		t.Errorf("field %q: %q", name, v)
	}
}

func TestParseHeadAllocs(t *testing.T) {
	in := []byte("GET /index.html HTTP/1.1\r\nHost: example\r\nUser-Agent: wrk\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n")
	h := Head{Fields: make([]Field, 0, 16)}
	if n := testing.AllocsPerRun(100, func() { ParseHead(in, &h, 1<<10) }); n != 0 {
		t.Errorf("%v allocations per head, want 0", n)
	}
}

func TestChunkedBody(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in, want string
		err            error
	}{
		{"plain", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world", nil},
		{"upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", "0123456789", nil},
		{"extension", "5;name=value\r\nhello\r\n0;x\r\n\r\n", "hello", nil},
		{"extension after whitespace", "5 ;a=\"b c\"\r\nhello\r\n0\r\n\r\n", "hello", nil},
		{"trailer", "5\r\nhello\r\n0\r\nX-T: v\r\n\r\n", "hello", nil},
		{"leading zeros", "005\r\nhello\r\n0\r\n\r\n", "hello", nil},

		{"not hex", "zz\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"negative", "-1\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"leading space", " 5\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"trailing space", "5 \r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"overflow", "fffffffffffffffff\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"empty size", "\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"bare LF after size", "5\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"bare CR in extension", "5;a\rb\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"control in extension", "5;a\x01\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
		{"no CRLF after data", "5\r\nhelloX\r\n0\r\n\r\n", "hello", ErrChunk},
		{"bare LF after data", "5\r\nhello\n0\r\n\r\n", "hello", ErrChunk},
		{"malformed trailer", "5\r\nhello\r\n0\r\nX-T : v\r\n\r\n", "hello", ErrChunk},
		{"folded trailer", "5\r\nhello\r\n0\r\nX-T: v\r\n w\r\n\r\n", "hello", ErrChunk},
		{"truncated", "5\r\nhel", "hel", ErrBodyTruncated},
		{"no last chunk", "5\r\nhello\r\n", "hello", ErrBodyTruncated},
		{"long line", "5;" + strings.Repeat("a", maxChunkLine) + "\r\nhello\r\n0\r\n\r\n", "", ErrChunk},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(strings.NewReader(tt.in), 16, maxChunkLine*2)
			b, err := io.ReadAll(&ChunkedBody{R: r})
			if !errors.Is(err, tt.err) || string(b) != tt.want {
				t.Errorf("got %q, %v; want %q, %v", b, err, tt.want, tt.err)
			}
		})
	}
}

func TestLengthBodyLeavesNextRequest(t *testing.T) {
	t.Parallel()
	r := NewReader(strings.NewReader("helloGET"), 4, 4)
	b, err := io.ReadAll(&LengthBody{R: r, N: 5})
	if err != nil || string(b) != "hello" {
		t.Fatalf("%q %v", b, err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "GET" {
		t.Errorf("rest %q", rest)
	}
	if _, err := io.ReadAll(&LengthBody{R: NewReader(strings.NewReader("hel"), 4, 4), N: 5}); err != ErrBodyTruncated {
		t.Errorf("short body: %v", err)
	}
}

// FuzzParseHead checks that ParseHead never panics, that its offsets stay
// in the head, and that a head it accepts has one framing.
func FuzzParseHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var h Head
		n, err := ParseHead(in, &h, 4096)
		if err != nil {
			return
		}
		checkAccepted(t, in, n, h.Chunked, h.ContentLength, h.Fields)
		if bytes.ContainsAny(in[h.TargetStart:h.TargetEnd], " \r\n") {
			t.Fatalf("target %q", in[h.TargetStart:h.TargetEnd])
		}
	})
}

// FuzzChunkedBody checks ChunkedBody against net/http's decoder: a body
// this strict decoder accepts, net/http reads the same (never a different
// message boundary: no desync between the proxy and an upstream).
func FuzzChunkedBody(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\n0\r\nX: y\r\n\r\n",
		"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
		"0\r\n\r\n",
		"f\r\n0123456789abcde\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 16, 2*maxChunkLine)
		body := &ChunkedBody{R: r}
		got, err := io.ReadAll(body)
		if err != nil {
			return
		}
		rest, _ := io.ReadAll(r)
		consumed := len(in) - len(rest)
		br := bufio.NewReader(bytes.NewReader(in[:consumed]))
		want, err := io.ReadAll(httputil.NewChunkedReader(br))
		if err != nil {
			t.Fatalf("net/http rejects what h1 accepted (%q): %v", in[:consumed], err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("decoded %q, net/http %q", got, want)
		}
	})
}

// checkAccepted checks what any accepted head (request or response) must
// satisfy: it ends with its blank line within in, has at most one framing,
// and every field's offsets lie on one line of the head.
func checkAccepted(t *testing.T, in []byte, n int, chunked bool, contentLength int64, fields []Field) {
	t.Helper()
	if n > len(in) || n < 4 || string(in[n-4:n]) != "\r\n\r\n" {
		t.Fatalf("head length %d", n)
	}
	if chunked && contentLength >= 0 {
		t.Fatal("both framings accepted")
	}
	for _, fl := range fields {
		if fl.NameStart >= fl.NameEnd || fl.NameEnd >= fl.ValueStart || fl.ValueStart > fl.ValueEnd || fl.ValueEnd > n {
			t.Fatalf("field offsets %+v", fl)
		}
		if bytes.ContainsAny(in[fl.NameStart:fl.ValueEnd], "\r\n") {
			t.Fatalf("field spans lines: %q", in[fl.NameStart:fl.ValueEnd])
		}
	}
}
