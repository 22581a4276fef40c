package httplb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawBackend is an HTTP/1.1 server written by hand on a real socket, so that
// a test decides exactly what goes on the wire: answer(n, conn, request line)
// writes the response to the n-th request on a connection (0-based) and
// returns false to close the connection after it.
type rawBackend struct {
	ln       net.Listener
	accepted atomic.Int32
	wg       sync.WaitGroup
}

func newRawBackend(t *testing.T, answer func(n int, c net.Conn, line string) bool) *rawBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawBackend{ln: ln}
	var conns sync.Map
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.accepted.Add(1)
			conns.Store(c, true)
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					for { // the rest of the head; these tests send no bodies
						h, err := br.ReadString('\n')
						if err != nil {
							return
						}
						if h == "\r\n" {
							break
						}
					}
					if !answer(n, c, strings.TrimSpace(line)) {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		b.wg.Wait()
	})
	return b
}

func (b *rawBackend) pool(maxConns int, idle time.Duration, maxHead int64) *h1Pool {
	addr := b.ln.Addr().String()
	var d net.Dialer
	return newH1Pool(func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }, maxConns, idle, maxHead)
}

func get(t *testing.T, p *h1Pool, ctx context.Context, path string) (string, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://upstream"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := p.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return fmt.Sprintf("%d %s", resp.StatusCode, b), err
}

func ok(body string) string {
	return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

func TestH1PoolReusesConnections(t *testing.T) {
	t.Parallel()
	b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
		io.WriteString(c, ok(fmt.Sprint("r", n)))
		return true
	})
	p := b.pool(0, time.Minute, 0)
	defer p.closeIdle(true)
	for i := range 5 {
		got, err := get(t, p, context.Background(), "/")
		if want := fmt.Sprintf("200 r%d", i); err != nil || got != want {
			t.Fatalf("request %d: %q, %v; want %q", i, got, err, want)
		}
	}
	if n := b.accepted.Load(); n != 1 {
		t.Errorf("5 sequential requests opened %d connections, want 1", n)
	}
}

// TestH1PoolServerClosedIdle: a server that closes a kept-alive connection
// without saying so (the keep-alive race): the next request finds the FIN
// before sending, or fails before any response byte, and goes out on a new
// connection; the client sees no error.
func TestH1PoolServerClosedIdle(t *testing.T) {
	t.Parallel()
	b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
		io.WriteString(c, ok("x"))
		return false // close after every response, without Connection: close
	})
	p := b.pool(0, time.Minute, 0)
	defer p.closeIdle(true)
	for i := range 4 {
		if got, err := get(t, p, context.Background(), "/"); err != nil || got != "200 x" {
			t.Fatalf("request %d: %q, %v", i, got, err)
		}
		time.Sleep(10 * time.Millisecond) // the FIN arrives
	}
	if n := b.accepted.Load(); n != 4 {
		t.Errorf("%d connections, want 4", n)
	}
}

// TestH1PoolServerClosedIdleBody: a request with a body cannot be sent
// again, so a connection idle for longer than peekAfter is peeked at
// before it is taken: the server's FIN is seen and a new connection used.
func TestH1PoolServerClosedIdleBody(t *testing.T) {
	t.Parallel()
	b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
		io.WriteString(c, ok("x"))
		return false // close after every response, without Connection: close
	})
	p := b.pool(0, time.Minute, 0)
	defer p.closeIdle(true)
	for i := range 3 {
		req, err := http.NewRequest("POST", "http://upstream/", strings.NewReader("body"))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := p.RoundTrip(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		time.Sleep(2 * peekAfter) // the FIN arrives, and the peek is due
	}
	if n := b.accepted.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

func TestH1PoolNoReuse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		resp    string
		readAll bool
	}{
		{"Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", true},
		{"HTTP/1.0 without keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", true},
		{"body left unread", ok(strings.Repeat("y", 10000)), false},
		{"extra bytes after the body", ok("x") + "junk", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
				io.WriteString(c, tc.resp)
				return true
			})
			p := b.pool(0, time.Minute, 0)
			defer p.closeIdle(true)
			for i := range 2 {
				req, _ := http.NewRequest("GET", "http://upstream/", nil)
				resp, err := p.RoundTrip(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				if tc.readAll {
					io.ReadAll(resp.Body)
				} else {
					resp.Body.Read(make([]byte, 10))
				}
				resp.Body.Close()
				time.Sleep(10 * time.Millisecond)
			}
			if n := b.accepted.Load(); n != 2 {
				t.Errorf("%d connections for 2 requests, want 2 (no reuse)", n)
			}
		})
	}
}

func TestH1PoolInterimResponses(t *testing.T) {
	t.Parallel()
	b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
		io.WriteString(c, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+ok("final"))
		return true
	})
	p := b.pool(0, time.Minute, 0)
	defer p.closeIdle(true)
	if got, err := get(t, p, context.Background(), "/"); err != nil || got != "200 final" {
		t.Fatalf("%q, %v", got, err)
	}
}

func TestH1PoolResponseHeadLimit(t *testing.T) {
	t.Parallel()
	b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Big: "+strings.Repeat("a", 4000)+"\r\nContent-Length: 0\r\n\r\n")
		return true
	})
	p := b.pool(0, time.Minute, 1024)
	defer p.closeIdle(true)
	if _, err := get(t, p, context.Background(), "/"); !errors.Is(err, errHeadTooLarge) {
		t.Fatalf("err = %v, want %v", err, errHeadTooLarge)
	}
}

// TestH1PoolCancel: cancelling the request's context ends a request whose
// response does not come, and its connection is not reused.
func TestH1PoolCancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	b := newRawBackend(t, func(n int, c net.Conn, line string) bool {
		if strings.Contains(line, "/slow") {
			<-release
			return false
		}
		io.WriteString(c, ok("fast"))
		return true
	})
	defer close(release)
	p := b.pool(0, time.Minute, 0)
	defer p.closeIdle(true)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := get(t, p, ctx, "/slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}
	if got, err := get(t, p, context.Background(), "/"); err != nil || got != "200 fast" {
		t.Fatalf("after a cancelled request: %q, %v", got, err)
	}
	if n := b.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2: the cancelled one is not reused", n)
	}
}

// TestH1PoolMaxConnections: with max_connections 1 a second request waits
// for the first one's connection, or for its context.
func TestH1PoolMaxConnections(t *testing.T) {
	t.Parallel()
	gate := make(chan struct{})
	b := newRawBackend(t, func(n int, c net.Conn, line string) bool {
		if strings.Contains(line, "/gated") {
			<-gate
		}
		io.WriteString(c, ok("x"))
		return true
	})
	p := b.pool(1, time.Minute, 0)
	defer p.closeIdle(true)
	first := make(chan error, 1)
	go func() {
		_, err := get(t, p, context.Background(), "/gated")
		first <- err
	}()
	for b.accepted.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := get(t, p, ctx, "/"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second request with the only connection busy: %v, want it to wait until its deadline", err)
	}
	second := make(chan error, 1)
	go func() {
		_, err := get(t, p, context.Background(), "/")
		second <- err
	}()
	close(gate)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if n := b.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (max_connections)", n)
	}
}

func TestH1PoolIdleTimeout(t *testing.T) {
	t.Parallel()
	b := newRawBackend(t, func(n int, c net.Conn, _ string) bool {
		io.WriteString(c, ok("x"))
		return true
	})
	p := b.pool(0, 30*time.Millisecond, 0)
	defer p.closeIdle(true)
	if _, err := get(t, p, context.Background(), "/"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		n := len(p.idle)
		p.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the idle connection was not closed after the idle timeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := get(t, p, context.Background(), "/"); err != nil {
		t.Fatal(err)
	}
	if n := b.accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// FuzzH1Response: whatever an upstream answers, the pool returns a response
// or an error, never panics or hangs, and gives the connection back only
// after a complete, well-framed response that allows keep-alive.
func FuzzH1Response(f *testing.F) {
	for _, s := range []string{
		ok("hello"),
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\n" + ok("x"),
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
		"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nuntil close",
		"HTTP/1.1 200 OK\nBare: lf\n\nbody",
		"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 999\r\n\r\n",
		"garbage",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, answer []byte) {
		p := newH1Pool(func(ctx context.Context) (net.Conn, error) {
			c, s := net.Pipe()
			go func() {
				defer s.Close()
				br := bufio.NewReader(s)
				for { // read the request head, then answer and close
					l, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if l == "\r\n" {
						break
					}
				}
				s.Write(answer)
			}()
			return c, nil
		}, 0, time.Minute, 4096)
		defer p.closeIdle(true)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://upstream/", nil)
		resp, err := p.RoundTrip(req)
		if err != nil {
			return
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		p.mu.Lock()
		n := len(p.idle)
		p.mu.Unlock()
		if n > 0 && resp.Close {
			t.Fatalf("connection kept after a response that closes it: %q", answer)
		}
	})
}
