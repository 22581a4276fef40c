// Package servers holds the benchmark's backends. They are deliberately small
// and cheap, so that on a shared core the proxy under test, not the backend,
// is what the numbers measure. Every server listens on 127.0.0.1 only.
package servers

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Greeting is what the server-speaks-first backend writes on accept (an SMTP-like banner).
const Greeting = "220 siftbench ESMTP ready\r\n"

// ServeGreeting writes Greeting as soon as a connection is accepted, then
// discards whatever the client sends until it closes.
func ServeGreeting(ctx context.Context, ln net.Listener) error {
	return acceptLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		if _, err := io.WriteString(c, Greeting); err != nil {
			return
		}
		io.Copy(io.Discard, c)
	})
}

// Holder is the backend for the idle-connection memory scenario: it echoes
// the first byte of every connection (so the client knows the connection is
// established end to end through the proxy) and then holds it open.
type Holder struct {
	Open atomic.Int64
}

// Serve runs the holder until ctx ends.
func (h *Holder) Serve(ctx context.Context, ln net.Listener) error {
	return acceptLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		h.Open.Add(1)
		defer h.Open.Add(-1)
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		if _, err := c.Write(b[:]); err != nil {
			return
		}
		io.Copy(io.Discard, c)
	})
}

// HTTP1 is a minimal HTTP/1.1 server for GET load: keep-alive, pipelining,
// "Connection: close", Content-Length request bodies skipped, a fixed small
// response. It is far cheaper than net/http, so the load generator and the
// backend (which share one core) leave the proxy as the bottleneck.
type HTTP1 struct {
	Delay time.Duration // added before every response (the slow LB endpoint)
	Body  []byte
}

var (
	crlf2     = []byte("\r\n\r\n")
	connClose = []byte("connection: close")
	clHeader  = []byte("content-length:")
)

// Serve runs the server until ctx ends.
func (h *HTTP1) Serve(ctx context.Context, ln net.Listener) error {
	body := h.Body
	if body == nil {
		body = []byte("hello from siftbench\n")
	}
	keep := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
	keep = append(keep, body...)
	closing := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
	closing = append(closing, body...)
	return acceptLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReaderSize(c, 16<<10)
		buf := make([]byte, 0, 16<<10)
		out := make([]byte, 0, 4<<10)
		for {
			// Read until at least one complete request head is buffered.
			i := bytes.Index(buf, crlf2)
			for i < 0 {
				if len(buf) > 64<<10 {
					return // absurd header: drop the connection
				}
				chunk := make([]byte, 16<<10)
				n, err := r.Read(chunk)
				buf = append(buf, chunk[:n]...)
				if err != nil {
					return
				}
				i = bytes.Index(buf, crlf2)
			}
			// Answer every complete request in the buffer (pipelining).
			out = out[:0]
			closeAfter := false
			for i >= 0 {
				head := buf[:i+4]
				lower := bytes.ToLower(head)
				skip := 0
				if j := bytes.Index(lower, clHeader); j >= 0 {
					line := lower[j+len(clHeader):]
					if k := bytes.IndexByte(line, '\r'); k >= 0 {
						skip, _ = strconv.Atoi(string(bytes.TrimSpace(line[:k])))
					}
				}
				if len(buf) < i+4+skip {
					break // body not fully here yet; read more
				}
				buf = buf[i+4+skip:]
				if bytes.Contains(lower, connClose) || bytes.Contains(lower, []byte("http/1.0")) {
					out = append(out, closing...)
					closeAfter = true
					break
				}
				out = append(out, keep...)
				i = bytes.Index(buf, crlf2)
			}
			if len(out) > 0 {
				if h.Delay > 0 {
					time.Sleep(h.Delay)
				}
				if _, err := c.Write(out); err != nil {
					return
				}
			}
			if closeAfter {
				return
			}
			buf = append(buf[:0:0], buf...)
		}
	})
}

// ServeH2C serves a small response over HTTP/1.1 and cleartext HTTP/2
// (prior knowledge), using net/http's own HTTP/2 server.
func ServeH2C(ctx context.Context, ln net.Listener) error {
	body := []byte("hello from siftbench h2c\n")
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "text/plain")
			w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Protocols = &p
	go func() { <-ctx.Done(); srv.Close() }()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

type benchService struct {
	testpb.UnimplementedBenchmarkServiceServer
}

func (benchService) UnaryCall(_ context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Payload: in.GetPayload()}, nil
}

func (benchService) StreamingCall(st grpc.BidiStreamingServer[testpb.SimpleRequest, testpb.SimpleResponse]) error {
	for {
		in, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := st.Send(&testpb.SimpleResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}

// ServeGRPC serves grpc.testing.BenchmarkService (unary and ping-pong
// streaming echo) with grpc-go.
func ServeGRPC(ctx context.Context, ln net.Listener) error {
	s := grpc.NewServer()
	testpb.RegisterBenchmarkServiceServer(s, benchService{})
	go func() { <-ctx.Done(); s.Stop() }()
	return s.Serve(ln)
}

func acceptLoop(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and friends: back off and keep serving.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go handle(c)
	}
}

// ServePONG answers Redis clients: every RESP command array gets "+PONG",
// until the client closes (the plugin scenario's backend).
func ServePONG(ctx context.Context, ln net.Listener) error {
	return acceptLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			var n int
			if _, err := fmt.Sscanf(line, "*%d\r\n", &n); err != nil || n < 1 || n > 1024 {
				return
			}
			for range n { // $len, then the bytes
				hdr, err := r.ReadString('\n')
				if err != nil {
					return
				}
				var size int
				if _, err := fmt.Sscanf(hdr, "$%d\r\n", &size); err != nil || size < 0 || size > 1<<20 {
					return
				}
				if _, err := io.CopyN(io.Discard, r, int64(size)+2); err != nil {
					return
				}
			}
			if _, err := io.WriteString(c, "+PONG\r\n"); err != nil {
				return
			}
		}
	})
}

// ServeSink reads and discards everything each client sends, then closes
// (the bulk scenario's backend: a plain Go reader, not iperf3).
func ServeSink(ctx context.Context, ln net.Listener) error {
	return acceptLoop(ctx, ln, func(c net.Conn) {
		defer c.Close()
		io.Copy(io.Discard, c)
	})
}
