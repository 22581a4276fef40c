// Package loadgen holds the benchmark's own Go load clients, for what the
// packaged tools do not measure: short connections with connect-to-first-byte
// latency, server-speaks-first greetings, gRPC unary/streaming, and holding
// thousands of idle connections. Every loop is bounded in time and in count.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/bench/internal/stats"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
)

// Result is what every client prints as JSON.
type Result struct {
	Ops      int           `json:"ops"`
	Errors   int           `json:"errors"`
	FirstErr string        `json:"first_error,omitempty"`
	Seconds  float64       `json:"seconds"`
	Rate     float64       `json:"rate"`
	Latency  stats.Summary `json:"latency"`
}

const sampleCap = 2_000_000

type worker struct {
	s     stats.Samples
	ops   int
	errs  int
	first error
}

func (w *worker) fail(err error) {
	w.errs++
	if w.first == nil {
		w.first = err
	}
}

func collect(ws []*worker, elapsed time.Duration) Result {
	var all stats.Samples
	r := Result{Seconds: elapsed.Seconds()}
	for _, w := range ws {
		all.Merge(&w.s)
		r.Ops += w.ops
		r.Errors += w.errs
		if r.FirstErr == "" && w.first != nil {
			r.FirstErr = w.first.Error()
		}
	}
	if r.Seconds > 0 {
		r.Rate = float64(r.Ops) / r.Seconds
	}
	r.Latency = all.Summarize()
	return r
}

// run starts c workers, each calling op until the duration or the total
// count max is reached.
func run(c int, d time.Duration, max int, op func(w *worker) error) Result {
	if c < 1 {
		c = 1
	}
	deadline := time.Now().Add(d)
	var mu sync.Mutex
	left := max
	take := func() bool {
		mu.Lock()
		defer mu.Unlock()
		if left <= 0 {
			return false
		}
		left--
		return true
	}
	ws := make([]*worker, c)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range ws {
		w := &worker{s: stats.Samples{Cap: sampleCap / c}}
		ws[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && take() {
				if err := op(w); err != nil {
					w.fail(err)
					if w.errs > 1000 && w.ops == 0 {
						return // nothing works: stop hammering
					}
				}
			}
		}()
	}
	wg.Wait()
	return collect(ws, time.Since(start))
}

// ShortHTTP opens one connection per request: connect, send an HTTP/1.1 GET
// with "Connection: close", read the response to EOF, close. The latency
// recorded is connect-start to first response byte.
func ShortHTTP(addr string, c int, d time.Duration, max int) Result {
	req := []byte("GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: siftbench\r\nConnection: close\r\n\r\n")
	return shortConns(addr, c, d, max, req, func(conn net.Conn, answered func()) error {
		var buf [4096]byte
		n, err := conn.Read(buf[:])
		if n == 0 {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("no response: %w", err)
		}
		answered()
		for err == nil {
			_, err = conn.Read(buf[:])
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	})
}

// shortConns runs c workers that each open one connection per operation:
// connect, write req, then reply reads the answer and calls answered when
// enough of it arrived (the latency recorded is connect-start to then).
func shortConns(addr string, c int, d time.Duration, max int, req []byte, reply func(conn net.Conn, answered func()) error) Result {
	return run(c, d, max, func(w *worker) error {
		t0 := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := conn.Write(req); err != nil {
			return err
		}
		if err := reply(conn, func() { w.s.Add(time.Since(t0)) }); err != nil {
			return err
		}
		w.ops++
		return nil
	})
}

// Greet connects n times (all at once, c at a time) to a server-speaks-first
// service, sends nothing, and records connect-start to the first byte of
// the server's greeting. Connection i goes to addrs[i % len(addrs)]: with
// several listeners of one kind, each gets an equal share.
func Greet(addrs []string, n, c int, timeout time.Duration) Result {
	if len(addrs) == 0 {
		return Result{Errors: 1, FirstErr: "greet: no address"}
	}
	var next atomic.Uint64
	return run(c, timeout+time.Second, n, func(w *worker) error {
		addr := addrs[(next.Add(1)-1)%uint64(len(addrs))]
		t0 := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		defer conn.Close()
		conn.SetDeadline(t0.Add(timeout))
		var b [1]byte
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			return fmt.Errorf("no greeting: %w", err)
		}
		w.s.Add(time.Since(t0))
		w.ops++
		return nil
	})
}

// GRPC drives grpc.testing.BenchmarkService: "unary" calls UnaryCall,
// "stream" does ping-pong on one StreamingCall per worker. conns client
// connections are shared round-robin by c concurrent workers.
func GRPC(addr, mode string, conns, c int, d time.Duration, max, payload int) (Result, error) {
	return GRPCRate(addr, mode, conns, c, d, max, payload, 0)
}

// GRPCRate is GRPC at a fixed rate of rate calls (or streamed messages) per
// second across all workers (0: as fast as they go): call n starts no
// earlier than n/rate seconds after the first, so that a proxy's CPU per
// call can be compared at the same load.
func GRPCRate(addr, mode string, conns, c int, d time.Duration, max, payload int, rate float64) (Result, error) {
	if conns < 1 {
		conns = 1
	}
	ccs := make([]*grpc.ClientConn, conns)
	for i := range ccs {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return Result{}, err
		}
		defer cc.Close()
		ccs[i] = cc
	}
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: make([]byte, payload)}}
	// Warm up every connection so that connection setup is not measured.
	for _, cc := range ccs {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := testpb.NewBenchmarkServiceClient(cc).UnaryCall(ctx, req, grpc.WaitForReady(true))
		cancel()
		if err != nil {
			return Result{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), d+10*time.Second)
	defer cancel()
	var mu sync.Mutex
	next := 0
	streams := map[*worker]grpc.BidiStreamingClient[testpb.SimpleRequest, testpb.SimpleResponse]{}
	var started atomic.Int64
	start := time.Now()
	r := run(c, d, max, func(w *worker) error {
		if rate > 0 {
			n := started.Add(1) - 1
			if wait := time.Until(start.Add(time.Duration(float64(n) / rate * float64(time.Second)))); wait > 0 {
				time.Sleep(wait)
			}
		}
		mu.Lock()
		st, ok := streams[w]
		cc := ccs[next%len(ccs)]
		if !ok {
			next++
		}
		mu.Unlock()
		client := testpb.NewBenchmarkServiceClient(cc)
		t0 := time.Now()
		switch mode {
		case "unary":
			if _, err := client.UnaryCall(ctx, req); err != nil {
				return err
			}
		case "stream":
			if !ok {
				var err error
				st, err = client.StreamingCall(ctx)
				if err != nil {
					return err
				}
				mu.Lock()
				streams[w] = st
				mu.Unlock()
				t0 = time.Now()
			}
			if err := st.Send(req); err != nil {
				return err
			}
			if _, err := st.Recv(); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown mode %q", mode)
		}
		w.s.Add(time.Since(t0))
		w.ops++
		return nil
	})
	for _, st := range streams {
		st.CloseSend()
	}
	return r, nil
}

// Idle opens n connections (c dials at a time), proves each is established
// end to end by a one-byte echo, and returns them open. The caller closes them.
func Idle(addr string, n, c int, timeout time.Duration) ([]net.Conn, Result) {
	var mu sync.Mutex
	conns := make([]net.Conn, 0, n)
	r := run(c, timeout, n, func(w *worker) error {
		t0 := time.Now()
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return err
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		var b = [1]byte{'x'}
		if _, err := conn.Write(b[:]); err != nil {
			conn.Close()
			return err
		}
		if _, err := io.ReadFull(conn, b[:]); err != nil {
			conn.Close()
			return fmt.Errorf("no echo: %w", err)
		}
		conn.SetDeadline(time.Time{})
		w.s.Add(time.Since(t0))
		w.ops++
		mu.Lock()
		conns = append(conns, conn)
		mu.Unlock()
		return nil
	})
	return conns, r
}

// ShortRESP opens one connection per command, as a Redis client that
// connects for each: connect, send PING as a RESP array, read "+PONG",
// close. The latency recorded is connect-start to the whole reply.
func ShortRESP(addr string, c int, d time.Duration, max int) Result {
	return shortConns(addr, c, d, max, []byte("*1\r\n$4\r\nPING\r\n"), func(conn net.Conn, answered func()) error {
		var buf [7]byte
		if _, err := io.ReadFull(conn, buf[:]); err != nil {
			return fmt.Errorf("no reply: %w", err)
		}
		answered()
		if string(buf[:]) != "+PONG\r\n" {
			return fmt.Errorf("reply %q, want +PONG", buf)
		}
		return nil
	})
}

// Bulk writes bufSize-byte buffers on c connections to addr for d, as an
// ordinary Go client does (one Write per buffer, no tuning), then
// half-closes and waits for the sink's close. Ops is the bytes written,
// Rate bytes per second; no latency.
func Bulk(addr string, c int, d time.Duration, bufSize int) Result {
	type out struct {
		n   int64
		err error
	}
	results := make(chan out, c)
	start := time.Now()
	for range c {
		go func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				results <- out{err: err}
				return
			}
			defer conn.Close()
			buf := make([]byte, bufSize)
			var n int64
			for end := start.Add(d); time.Now().Before(end); {
				m, err := conn.Write(buf)
				n += int64(m)
				if err != nil {
					results <- out{n, err}
					return
				}
			}
			conn.(*net.TCPConn).CloseWrite()
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, err = io.Copy(io.Discard, conn)
			results <- out{n, err}
		}()
	}
	var r Result
	for range c {
		o := <-results
		r.Ops += int(o.n)
		if o.err != nil {
			r.Errors++
			if r.FirstErr == "" {
				r.FirstErr = o.err.Error()
			}
		}
	}
	r.Seconds = time.Since(start).Seconds()
	r.Rate = float64(r.Ops) / r.Seconds
	return r
}
