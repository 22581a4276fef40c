package coalesce

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns both ends of a real TCP connection on 127.0.0.1.
func tcpPair(t *testing.T) (client, server *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// countingConn counts the writes that reach a real connection; while gate
// is set, the first write waits for it to close.
type countingConn struct {
	*net.TCPConn
	writes atomic.Int64
	gate   chan struct{}
	gated  chan struct{} // closed when the first write is waiting
	once   sync.Once
}

func (c *countingConn) Write(p []byte) (int, error) {
	if c.writes.Add(1) == 1 && c.gate != nil {
		c.once.Do(func() { close(c.gated) })
		<-c.gate
	}
	return c.TCPConn.Write(p)
}

// TestConcurrentWritesCoalesce: writes from many goroutines made while a
// write is in progress go out together, in one write of the connection.
func TestConcurrentWritesCoalesce(t *testing.T) {
	a, b := tcpPair(t)
	cc := &countingConn{TCPConn: a, gate: make(chan struct{}), gated: make(chan struct{})}
	c := New(cc, false)
	defer c.Close()
	if _, err := c.Write([]byte("first;")); err != nil {
		t.Fatal(err)
	}
	<-cc.gated // the flusher is inside the first write
	const writers, each = 16, 8
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := fmt.Fprintf(c, "w%d.%d;", w, i); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait() // every Write returned while the first is still held
	close(cc.gate)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := cc.writes.Load(); n != 2 {
		t.Errorf("%d writes reached the connection, want 2 (the first and one batch of %d)", n, writers*each)
	}
	c.Close()
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	// Every record arrives whole, each writer's in order.
	recs := bytes.Split(bytes.TrimSuffix(got, []byte(";")), []byte(";"))
	if len(recs) != 1+writers*each || string(recs[0]) != "first" {
		t.Fatalf("got %d records, first %q", len(recs), recs[0])
	}
	next := make([]int, writers)
	for _, r := range recs[1:] {
		var w, i int
		if _, err := fmt.Sscanf(string(r), "w%d.%d", &w, &i); err != nil || w >= writers || i != next[w] {
			t.Fatalf("record %q out of order or mangled (want w%d.%d)", r, w, next[w])
		}
		next[w]++
	}
}

// TestLoneWriteNotHeld: a write with nothing after it reaches the peer
// while the writer waits for the peer's answer — it is not held back for
// a batch. Ping-pong would deadlock (and the test time out) otherwise.
func TestLoneWriteNotHeld(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, true)
	defer c.Close()
	go func() {
		buf := make([]byte, 4)
		for {
			if _, err := io.ReadFull(b, buf); err != nil {
				return
			}
			if _, err := b.Write([]byte("pong")); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 4)
	for i := range 200 {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "pong" {
			t.Fatalf("round %d: %q %v", i, buf, err)
		}
	}
}

// TestLargeAndSmallWritesInOrder: large writes (written at once) and small
// ones (queued) from one writer arrive in order and intact.
func TestLargeAndSmallWritesInOrder(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, false)
	var want bytes.Buffer
	go func() {
		for i := range 200 {
			size := 1 + i%7
			if i%5 == 0 {
				size = directWrite + i
			}
			p := bytes.Repeat([]byte{byte(i)}, size)
			want.Write(p)
			if _, err := c.Write(p); err != nil {
				t.Error(err)
				break
			}
		}
		c.Close()
	}()
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("got %d bytes, want %d, or different", len(got), want.Len())
	}
}

// TestCloseWritesPending: bytes accepted before Close reach the peer, then
// the end of the stream; a Write after Close fails.
func TestCloseWritesPending(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, false)
	for i := range 100 {
		fmt.Fprintf(c, "%03d", i)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after Close: %v, want net.ErrClosed", err)
	}
	got, err := io.ReadAll(b)
	if err != nil || len(got) != 300 || string(got[297:]) != "099" {
		t.Fatalf("peer read %d bytes (%v), want 300 ending in 099", len(got), err)
	}
}

// TestCloseWriteFlushes: CloseWrite writes what is pending, then half-closes;
// the connection still reads.
func TestCloseWriteFlushes(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, true)
	defer c.Close()
	c.Write([]byte("request"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "request" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	b.Write([]byte("answer"))
	b.Close()
	got, err = io.ReadAll(c)
	if err != nil || string(got) != "answer" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestWriteDeadline: a deadline that passed makes the pending write fail;
// the error is sticky and the connection is closed for its reader too.
func TestWriteDeadline(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, true)
	defer c.Close()
	_ = b
	c.SetWriteDeadline(aLongTimeAgo)
	c.Write([]byte("too late"))
	err := c.Flush()
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Flush after an expired deadline: %v", err)
	}
	if _, werr := c.Write([]byte("more")); !errors.Is(werr, os.ErrDeadlineExceeded) {
		t.Errorf("Write after the failure: %v, want the same error", werr)
	}
	if _, rerr := c.Read(make([]byte, 1)); rerr == nil {
		t.Error("Read after a write failure succeeded; the connection should be closed")
	}
}

// TestStuckPeer: against a peer that does not read, Write blocks once the
// socket and maxPending are full (backpressure), and a write deadline or
// Close ends the wait with an error.
func TestStuckPeer(t *testing.T) {
	for _, end := range []string{"deadline", "close"} {
		t.Run(end, func(t *testing.T) {
			a, _ := tcpPair(t)
			a.SetWriteBuffer(16 << 10)
			c := New(a, false)
			defer c.Close()
			blocked := make(chan error, 1)
			go func() {
				chunk := make([]byte, 1000) // small: queued, not written directly
				for {
					if _, err := c.Write(chunk); err != nil {
						blocked <- err
						return
					}
				}
			}()
			// The writer is stuck once the flusher is in a write that cannot
			// finish and maxPending more bytes are queued.
			for {
				c.mu.Lock()
				full := c.writing && c.buf != nil && len(*c.buf) >= maxPending
				c.mu.Unlock()
				if full {
					break
				}
				select {
				case err := <-blocked:
					t.Fatalf("writer stopped early: %v", err)
				default:
				}
				runtimeYield()
			}
			switch end {
			case "deadline":
				c.SetWriteDeadline(aLongTimeAgo)
				if err := <-blocked; !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("blocked Write: %v, want a deadline error", err)
				}
			case "close":
				c.SetWriteDeadline(aLongTimeAgo) // Close's own bound would take a second
				c.Close()
				if err := <-blocked; err == nil {
					t.Fatal("blocked Write returned no error after Close")
				}
			}
		})
	}
}

// TestWriteErrorSurfaces: when the peer resets the connection, writes fail
// with the error (not silently dropped), and every later Write returns it.
func TestWriteErrorSurfaces(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, true)
	defer c.Close()
	b.SetLinger(0)
	b.Close() // RST
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		if _, err = c.Write([]byte("x")); err == nil {
			err = c.Flush()
		}
	}
	if err == nil {
		t.Fatal("no error writing to a reset connection")
	}
	if _, werr := c.Write([]byte("y")); werr == nil {
		t.Error("Write after a failed write succeeded")
	}
}

// TestBufferedReads: small reads through the buffer return the stream
// exactly, larger reads bypass it, and the end of the stream is reported.
func TestBufferedReads(t *testing.T) {
	a, b := tcpPair(t)
	c := New(a, true)
	defer c.Close()
	want := make([]byte, 100_000)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() {
		b.Write(want)
		b.Close()
	}()
	var got []byte
	sizes := []int{9, 1, 4, 16, 100, readBuf, readBuf + 1, 3}
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := c.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d, or different", len(got), len(want))
	}
	if c.rbuf != nil {
		t.Error("read buffer held after the stream ended")
	}
}

var aLongTimeAgo = time.Unix(1, 0)

func runtimeYield() { runtime.Gosched() }

// TestBufferedReadWaits: a buffered Read waiting on a socket ends with the
// connection's read deadline, or with Close, as a plain Read would; and a
// reset peer is an error, not the end of the stream.
func TestBufferedReadWaits(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		a, _ := tcpPair(t)
		c := New(a, true)
		defer c.Close()
		c.SetReadDeadline(aLongTimeAgo)
		if _, err := c.Read(make([]byte, 9)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read past the deadline: %v", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		a, _ := tcpPair(t)
		c := New(a, true)
		done := make(chan error)
		go func() {
			_, err := c.Read(make([]byte, 9))
			done <- err
		}()
		c.Close()
		if err := <-done; !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed connection: %v", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		a, b := tcpPair(t)
		c := New(a, true)
		defer c.Close()
		b.Write([]byte("last"))
		b.SetLinger(0)
		b.Close()
		var got []byte
		var err error
		for err == nil {
			p := make([]byte, 9)
			var n int
			n, err = c.Read(p)
			got = append(got, p[:n]...)
		}
		if err == io.EOF {
			t.Fatalf("a reset read as the end of the stream (after %q)", got)
		}
	})
}
