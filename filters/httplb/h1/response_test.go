package h1

import (
	"bufio"
	"bytes"
	"net/http"
	"testing"
)

func TestParseResponseHead(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, in   string
		err        error
		status     int
		cl         int64
		chunked    bool
		close, ka  bool
		fields     int
		statusText string
	}{
		{name: "length", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello", status: 200, cl: 5, fields: 2, statusText: "200 OK"},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", status: 200, cl: -1, chunked: true, fields: 1, statusText: "200 OK"},
		{name: "no reason", in: "HTTP/1.1 204\r\n\r\n", status: 204, cl: -1, statusText: "204"},
		{name: "empty reason", in: "HTTP/1.1 404 \r\n\r\n", status: 404, cl: -1, statusText: "404 "},
		{name: "http/1.0 keep-alive", in: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n", status: 200, cl: 0, ka: true, fields: 2, statusText: "200 OK"},
		{name: "close", in: "HTTP/1.1 200 OK\r\nConnection: foo, close\r\n\r\n", status: 200, cl: -1, close: true, fields: 1, statusText: "200 OK"},
		{name: "same lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", status: 200, cl: 3, fields: 2, statusText: "200 OK"},
		{name: "incomplete", in: "HTTP/1.1 200 OK\r\nContent-Len", err: ErrIncomplete},
		{name: "too large", in: "HTTP/1.1 200 OK\r\nX: " + string(bytes.Repeat([]byte("a"), 200)), err: ErrHeadTooLarge},
		{name: "differing lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", err: ErrContentLength},
		{name: "length and chunked", in: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", err: ErrCLAndTE},
		{name: "other coding", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", err: ErrTransferEncoding},
		{name: "signed length", in: "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n", err: ErrContentLength},
		{name: "bare LF", in: "HTTP/1.1 200 OK\nContent-Length: 0\n\n", err: ErrBareLF},
		{name: "obs-fold", in: "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", err: ErrObsFold},
		{name: "space before colon", in: "HTTP/1.1 200 OK\r\nX : a\r\n\r\n", err: ErrFieldName},
		{name: "HTTP/2 status line", in: "HTTP/2.0 200 OK\r\n\r\n", err: ErrStatusLine},
		{name: "two-digit status", in: "HTTP/1.1 20 OK\r\n\r\n", err: ErrStatusLine},
		{name: "status below 100", in: "HTTP/1.1 099 X\r\n\r\n", err: ErrStatusLine},
		{name: "no space after status", in: "HTTP/1.1 200OK\r\n\r\n", err: ErrStatusLine},
		{name: "control in reason", in: "HTTP/1.1 200 O\x01K\r\n\r\n", err: ErrStatusLine},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h ResponseHead
			n, err := ParseResponseHead([]byte(tt.in), &h, 128)
			if err != tt.err {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err != nil {
				return
			}
			if h.Status != tt.status || h.ContentLength != tt.cl || h.Chunked != tt.chunked || h.Close != tt.close ||
				h.KeepAlive != tt.ka || len(h.Fields) != tt.fields {
				t.Errorf("head %+v", h)
			}
			if got := tt.in[h.StatusStart:h.ReasonEnd]; got != tt.statusText {
				t.Errorf("status text %q, want %q", got, tt.statusText)
			}
			if tt.in[n-4:n] != "\r\n\r\n" {
				t.Errorf("head length %d", n)
			}
		})
	}
}

func TestParseResponseHeadAllocs(t *testing.T) {
	in := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nDate: Mon, 01 Jan 2026 00:00:00 GMT\r\n\r\nhello")
	h := ResponseHead{Fields: make([]Field, 0, 16)}
	if n := testing.AllocsPerRun(100, func() { ParseResponseHead(in, &h, 1<<10) }); n != 0 {
		t.Errorf("%v allocations per head, want 0", n)
	}
}

// FuzzParseResponseHead checks the offsets and framing of every head the
// parser accepts against net/http's reading of the same bytes: a response
// this strict parser accepts, net/http accepts with the same status and
// the same framing (no desync between the proxy and its client).
func FuzzParseResponseHead(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.0 304 Not Modified\r\nConnection: keep-alive\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var h ResponseHead
		n, err := ParseResponseHead(in, &h, 4096)
		if err != nil {
			return
		}
		checkAccepted(t, in, n, h.Chunked, h.ContentLength, h.Fields)
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(in)), &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("accepted here, refused by net/http: %v", err)
		}
		if resp.StatusCode != h.Status {
			t.Fatalf("status %d, net/http %d", h.Status, resp.StatusCode)
		}
		if h.Status >= 200 && h.Status != 204 && h.Status != 304 {
			if h.Chunked != (len(resp.TransferEncoding) == 1) || (!h.Chunked && h.ContentLength != resp.ContentLength) {
				t.Fatalf("framing chunked=%v length=%d, net/http %v %d", h.Chunked, h.ContentLength, resp.TransferEncoding, resp.ContentLength)
			}
		}
	})
}
