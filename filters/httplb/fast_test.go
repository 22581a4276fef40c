package httplb_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// seenBackend records the requests that reach it (method, path, body).
type seenBackend struct {
	mu   sync.Mutex
	seen []string
}

func (s *seenBackend) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// startConformanceProxy starts a backend that records requests and
// echoes their bodies, and a sift-proxy (the bench's shape) in front.
func startConformanceProxy(t *testing.T) (string, *seenBackend) {
	t.Helper()
	sb := &seenBackend{}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		sb.mu.Lock()
		sb.seen = append(sb.seen, r.Method+" "+r.URL.RequestURI()+" "+string(body))
		sb.mu.Unlock()
		if err != nil {
			return
		}
		w.Header().Set("X-Echo-Len", fmt.Sprint(len(body)))
		if r.URL.Query().Has("cl") {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		}
		w.Write(body)
	}))
	t.Cleanup(backend.Close)
	_, port, _ := net.SplitHostPort(backend.Listener.Addr().String())
	return startBenchWithBackend(t, port), sb
}

// exchange writes raw to the proxy and reads until the proxy closes the
// connection (or 5 s pass: then closed is false).
func exchange(t *testing.T, addr, raw string) (out string, closed bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return string(b), false
	}
	return string(b), true
}

// TestHTTP1Smuggling sends requests a hand-written parser must refuse:
// each gets a 400 (431 for an oversized head) and a closed connection,
// and nothing smuggled after it reaches the backend.
func TestHTTP1Smuggling(t *testing.T) {
	addr, backend := startConformanceProxy(t)
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	for _, tt := range []struct {
		name, raw string
		status    string
	}{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"TE and CL", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"differing Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n" + smuggled, "400"},
		{"Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 37\r\n\r\n" + smuggled, "400"},
		{"signed Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n" + smuggled, "400"},
		{"space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"TE list", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"TE repeated", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: x\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"bare LF", "GET / HTTP/1.1\nHost: a\n\n" + smuggled, "400"},
		{"bare LF in a field", "GET / HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, "400"},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n" + smuggled, "400"},
		{"no Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n" + smuggled, "400"},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + smuggled, "400"},
		{"oversized head", "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("b", 70<<10) + "\r\n\r\n" + smuggled, "431"},
		{"invalid chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + smuggled, "400"},
		{"chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n" + smuggled, "400"},
		{"chunk size with space", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n" + smuggled, "400"},
		{"chunk extension with bare CR", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a\rb\r\nhello\r\n0\r\n\r\n" + smuggled, "400"},
		{"chunk data overrun", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + smuggled, "400"},
		{"bare LF after chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + smuggled, "400"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, closed := exchange(t, addr, tt.raw)
			if !strings.HasPrefix(out, "HTTP/1.1 "+tt.status+" ") {
				t.Errorf("response %.120q, want status %s", out, tt.status)
			}
			if strings.Count(out, "HTTP/1.1 ") != 1 {
				t.Errorf("%d responses on the connection, want 1: %.300q", strings.Count(out, "HTTP/1.1 "), out)
			}
			if !closed {
				t.Error("the connection stayed open")
			}
		})
	}
	for _, r := range backend.requests() {
		if strings.Contains(r, "/smuggled") {
			t.Errorf("the backend saw a smuggled request: %q", r)
		}
	}
}

// TestHTTP1TooManyHeaders: more fields than max_headers_count (default
// 100) is 431.
func TestHTTP1TooManyHeaders(t *testing.T) {
	addr, backend := startConformanceProxy(t)
	var b strings.Builder
	b.WriteString("GET /many HTTP/1.1\r\nHost: a\r\nConnection: close\r\n")
	for i := range 101 {
		fmt.Fprintf(&b, "X-H-%d: v\r\n", i)
	}
	b.WriteString("\r\n")
	out, _ := exchange(t, addr, b.String())
	if !strings.HasPrefix(out, "HTTP/1.1 431 ") {
		t.Errorf("response %.120q, want 431", out)
	}
	if len(backend.requests()) != 0 {
		t.Errorf("backend saw %q", backend.requests())
	}
}

// TestHTTP1Bodies: GET, POST with Content-Length, chunked with
// extensions and trailers, HEAD, pipelined on one connection, all reach
// the backend intact and are answered in order.
func TestHTTP1Bodies(t *testing.T) {
	addr, backend := startConformanceProxy(t)
	raw := "GET /one HTTP/1.1\r\nHost: a\r\n\r\n" +
		"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
		"POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: v\r\n\r\n" +
		"HEAD /four HTTP/1.1\r\nHost: a\r\n\r\n" +
		"POST /five HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, raw)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for _, want := range []struct {
		method, body string
	}{{"GET", ""}, {"POST", "hello"}, {"POST", "abcde"}, {"HEAD", ""}, {"POST", "ok"}} {
		resp, err := http.ReadResponse(br, &http.Request{Method: want.method})
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		if err != nil || string(got) != want.body || resp.StatusCode != 200 {
			t.Errorf("%s: status %d body %q err %v; want 200 %q", want.method, resp.StatusCode, got, err, want.body)
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("%s: no Date header", want.method)
		}
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("after Connection: close: %v, want EOF", err)
	}
	want := []string{"GET /one ", "POST /two hello", "POST /three abcde", "HEAD /four ", "POST /five ok"}
	if got := backend.requests(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("backend saw %q, want %q", got, want)
	}
}

// TestHTTP1HandOff: a request the fast path leaves to net/http (here
// HTTP/1.0, refused with 426 as before, and an Expect: 100-continue
// upload) is still served after fast-path requests on the connection.
func TestHTTP1HandOff(t *testing.T) {
	addr, _ := startConformanceProxy(t)
	out, closed := exchange(t, addr, "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") || !strings.Contains(out, " 426 Upgrade Required") || !closed {
		t.Errorf("got %q", out)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: a\r\n\r\nPUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("first: %v %v", resp, err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 ") {
		t.Fatalf("want 100 Continue, got %q %v", line, err)
	}
	br.ReadString('\n')
	io.WriteString(c, "abc")
	resp, err := http.ReadResponse(br, nil)
	for err == nil && resp.StatusCode == http.StatusContinue { // the backend's, forwarded
		resp, err = http.ReadResponse(br, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "abc" {
		t.Errorf("upload: %d %q", resp.StatusCode, body)
	}
}

// TestHTTP1UpstreamResetMidBody: an upstream that dies in the middle of
// a body aborts the response: the client sees a truncated response and a
// closed connection, and the proxy keeps serving.
func TestHTTP1UpstreamResetMidBody(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if req, err := http.ReadRequest(br); err == nil {
				if req.URL.Path == "/cut" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
				} else {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
				}
			}
			c.Close()
		}
	})
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	addr := startBenchWithBackend(t, port)
	out, closed := exchange(t, addr, "GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
	if !closed || !strings.HasPrefix(out, "HTTP/1.1 200 ") || strings.HasSuffix(out, "0123456789") && strings.Contains(out, "Content-Length: 10\r\n") {
		t.Errorf("cut response: closed %v, %q", closed, out)
	}
	out, _ = exchange(t, addr, "GET /whole HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") || !strings.HasSuffix(out, "\r\n\r\nok") {
		t.Errorf("after the cut: %q", out)
	}
}

// TestHTTP1LargeBodies: bodies larger than the buffers, each way, with a
// known length (head and body in one writev) and streamed (chunked).
func TestHTTP1LargeBodies(t *testing.T) {
	addr, _ := startConformanceProxy(t)
	big := strings.Repeat("0123456789abcdef", 20<<10) // 320 KiB
	for _, target := range []string{"/echo?cl", "/echo"} {
		resp, err := http.Post("http://"+addr+target, "text/plain", strings.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != big {
			t.Errorf("%s: %d bytes back, err %v", target, len(got), err)
		}
		chunked := len(resp.TransferEncoding) > 0
		if want := target == "/echo"; chunked != want {
			t.Errorf("%s: chunked %v, want %v", target, chunked, want)
		}
	}
}
