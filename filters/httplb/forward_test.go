package httplb_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// startForwardProxy starts backend behind an in-process sift-proxy in the
// bench's shape (HTTP/1.1 downstream and upstream: the fast path and the
// HTTP/1 pool) and returns the proxy's address.
func startForwardProxy(t *testing.T, backend http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(backend)
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	return startBenchWithBackend(t, port)
}

// TestForwardHopByHop: fields that describe one connection — the standard
// ones and those a Connection header names — cross the proxy in neither
// direction; the client's forwarding headers are replaced by the proxy's.
func TestForwardHopByHop(t *testing.T) {
	seen := make(chan http.Header, 1)
	addr := startForwardProxy(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Connection", "X-Hop-Resp")
		w.Header().Set("X-Hop-Resp", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-End", "kept")
		io.WriteString(w, "ok")
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /x?a=1;b=2 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Hop-Req\r\n"+
		"X-Hop-Req: 1\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: secret\r\nForwarded: for=1.2.3.4\r\n"+
		"X-Forwarded-Host: fh\r\nX-End: kept\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if string(body) != "ok" {
		t.Fatalf("body %q", body)
	}
	for _, k := range []string{"X-Hop-Resp", "Keep-Alive"} {
		if v, ok := resp.Header[k]; ok {
			t.Errorf("client got response field %s: %q", k, v)
		}
	}
	if resp.Header.Get("X-End") != "kept" {
		t.Errorf("end-to-end response field lost: %v", resp.Header)
	}
	h := <-seen
	for _, k := range []string{"X-Hop-Req", "Keep-Alive", "Proxy-Authorization", "Forwarded"} {
		if v, ok := h[k]; ok {
			t.Errorf("upstream got request field %s: %q", k, v)
		}
	}
	if h.Get("X-End") != "kept" || h.Get("X-Forwarded-Host") != "fh" || h.Get("X-Forwarded-Proto") != "http" {
		t.Errorf("upstream request fields: %v", h)
	}
}

// TestForwardQueryCleaned: a query the proxy's routes would read
// differently from an upstream (semicolon separators) is re-encoded.
func TestForwardQueryCleaned(t *testing.T) {
	seen := make(chan string, 1)
	addr := startForwardProxy(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.URL.RawQuery
	})
	resp, err := http.Get("http://" + addr + "/q?a=1;b=2&c=3")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if q := <-seen; q != "c=3" {
		t.Errorf("upstream query %q, want %q", q, "c=3")
	}
}

// TestForwardNeverHoldsBack: the first part of a response reaches the
// client before the upstream sends the rest — for a streamed body and for
// one of known length — since the backend waits for the client to have
// read it (no clock involved: a held-back byte would deadlock until the
// test's deadline).
func TestForwardNeverHoldsBack(t *testing.T) {
	for _, known := range []bool{false, true} {
		name := "streamed"
		if known {
			name = "known length"
		}
		t.Run(name, func(t *testing.T) {
			got := make(chan struct{})
			addr := startForwardProxy(t, func(w http.ResponseWriter, r *http.Request) {
				if known {
					w.Header().Set("Content-Length", "10")
				}
				io.WriteString(w, "first")
				w.(http.Flusher).Flush()
				select {
				case <-got:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "-rest")
			})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			first := make([]byte, 5)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				t.Fatalf("first part: %v (held back by the proxy?)", err)
			}
			close(got)
			rest, err := io.ReadAll(resp.Body)
			if err != nil || string(first)+string(rest) != "first-rest" {
				t.Fatalf("body %q+%q, %v", first, rest, err)
			}
		})
	}
}

// TestForwardHeadNotHeldForTheBody: a response head reaches the client
// while the upstream has not sent any body yet — streamed (as gRPC, whose
// server may wait for the client) or of known length.
func TestForwardHeadNotHeldForTheBody(t *testing.T) {
	for _, known := range []bool{false, true} {
		name := "streamed"
		if known {
			name = "known length"
		}
		t.Run(name, func(t *testing.T) {
			got := make(chan struct{})
			addr := startForwardProxy(t, func(w http.ResponseWriter, r *http.Request) {
				if known {
					w.Header().Set("Content-Length", "4")
				}
				w.WriteHeader(http.StatusOK)
				w.(http.Flusher).Flush()
				select {
				case <-got:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "body")
			})
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: h\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("head: %v (held back by the proxy?)", err)
			}
			close(got)
			if b, err := io.ReadAll(resp.Body); err != nil || string(b) != "body" {
				t.Fatalf("body %q, %v", b, err)
			}
		})
	}
}

// TestForwardTrailers: an HTTP/1.1 upstream's trailers reach the client,
// announced or not.
func TestForwardTrailers(t *testing.T) {
	addr := startForwardProxy(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Sum")
		io.WriteString(w, "body")
		w.Header().Set("X-Sum", "42")
		w.Header().Set(http.TrailerPrefix+"X-Late", "yes")
	})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "body" {
		t.Fatalf("body %q, %v", body, err)
	}
	if resp.Trailer.Get("X-Sum") != "42" || resp.Trailer.Get("X-Late") != "yes" {
		t.Errorf("trailers %v", resp.Trailer)
	}
}

// TestForwardBodyCutShort: an upstream that dies midway through a body of
// known length leaves the client with a short body and a closed
// connection, never a response that looks complete.
func TestForwardBodyCutShort(t *testing.T) {
	addr := startForwardProxy(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, strings.Repeat("x", 10))
		w.(http.Flusher).Flush()
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	})
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatalf("a cut body read as complete: %d bytes", len(body))
	}
	if len(body) != 10 {
		t.Errorf("got %d bytes before the cut, want 10", len(body))
	}
}
