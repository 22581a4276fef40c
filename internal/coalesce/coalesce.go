// Package coalesce batches a connection's small writes into fewer write(2)
// calls without waiting on a timer.
//
// An HTTP/2 framer (golang.org/x/net/http2's server, net/http's HTTP/2
// client) flushes every frame group it writes — a response's HEADERS, its
// DATA, its trailers, a request's HEADERS and its DATA — as soon as its own
// queue is empty, so one request costs several system calls, and on
// loopback every write wakes the peer for a read of its own. A Conn accepts
// such writes into a buffer and hands them to a flusher goroutine, which
// first yields the processor (runtime.Gosched) so that every goroutine that
// is ready to run — the handler about to write its DATA, the framer about
// to write trailers, other streams of the connection — can add its frames,
// then writes everything pending with one write. Nothing waits for bytes
// that are not already on their way: when no other goroutine is runnable
// the yield returns at once, so a lone request is written as soon as its
// writer blocks, without a timer.
package coalesce

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"
)

const (
	// directWrite: a write at least this large, with nothing pending, goes
	// out at once from the caller (it is a batch of its own; copying it
	// would only cost).
	directWrite = 16 << 10
	// maxPending bounds the buffered bytes: a Write that finds at least
	// this much pending waits until the flusher wrote it, so a peer that
	// does not read stops the writer as the socket would.
	maxPending = 64 << 10
	// closeFlushTimeout bounds how long Close and CloseWrite wait for
	// pending bytes to reach the socket when the peer does not read.
	closeFlushTimeout = time.Second
	// readBuf is the size of the read buffer (see New): a batch of small
	// frames fits; a server connection waiting for its next frame holds it.
	readBuf = 4 << 10
)

var (
	bufPool  = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}
	readPool = sync.Pool{New: func() any { b := make([]byte, readBuf); return &b }}
)

// Conn is a net.Conn whose writes are coalesced. Reads, addresses and
// deadlines are the embedded connection's.
//
// Write copies p and returns before the bytes reach the socket (except for a
// large write with nothing pending, which is written at once); the bytes
// are written in order. A write error is sticky: every later Write returns
// it, and the embedded connection is closed so that its reader sees the
// failure too. A write deadline applies to the writes in progress or started
// after it was set. Close and CloseWrite first write what is pending (for at
// most a second) — bytes are never dropped silently while the peer reads.
//
// With read buffering (see New), a Read smaller than the buffer reads up to
// 4 KiB from the connection and serves later Reads from what is left; the
// buffer is held while bytes are left, and while a Read waits unless the
// connection is a socket (then the buffer is taken once it is readable).
//
// Safe for concurrent use. An idle Conn on a socket holds no goroutine and
// no buffer.
type Conn struct {
	net.Conn

	bufferReads bool
	rmu         sync.Mutex      // serialises Reads
	rbuf        *[]byte         // read buffer; nil when empty
	rpos, rend  int             // unread bytes are (*rbuf)[rpos:rend]
	raw         syscall.RawConn // the socket, when c is one: reads wait without a buffer

	mu      sync.Mutex
	cond    sync.Cond // signalled when the flusher wrote or stopped
	buf     *[]byte   // pending bytes; nil when none
	writing bool      // the write side is owned by the flusher or a direct write
	err     error     // the first write error, sticky
	closed  bool
}

// New returns c with its writes coalesced and, when bufferReads, its small
// reads buffered.
func New(c net.Conn, bufferReads bool) *Conn {
	bc := &Conn{Conn: c, bufferReads: bufferReads}
	bc.cond.L = &bc.mu
	if sc, ok := c.(syscall.Conn); ok && bufferReads {
		if rc, err := sc.SyscallConn(); err == nil {
			bc.raw = rc
		}
	}
	return bc
}

// Read reads from the connection, through the read buffer when the Conn
// buffers reads and p is smaller than it.
func (c *Conn) Read(p []byte) (int, error) {
	if !c.bufferReads {
		return c.Conn.Read(p)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.rbuf == nil {
		if len(p) >= readBuf {
			return c.Conn.Read(p)
		}
		n, err := c.fill()
		if n == 0 {
			return 0, err
		}
		// An error with bytes is reported by the next Read, which meets
		// it again (a net.Conn's errors are sticky).
	}
	n := copy(p, (*c.rbuf)[c.rpos:c.rend])
	c.rpos += n
	if c.rpos == c.rend {
		readPool.Put(c.rbuf)
		c.rbuf = nil
	}
	return n, nil
}

// fill reads into a new read buffer, which it keeps when bytes came. When
// the connection is a socket (syscall.Conn), the buffer is taken only once
// the socket is readable: a connection waiting for its peer holds none.
// c.rmu is held.
func (c *Conn) fill() (int, error) {
	if c.raw == nil {
		b := readPool.Get().(*[]byte)
		n, err := c.Conn.Read(*b)
		if n == 0 {
			readPool.Put(b)
			return 0, err
		}
		c.rbuf, c.rpos, c.rend = b, 0, n
		return n, err
	}
	var (
		b    *[]byte
		n    int
		rerr error
	)
	err := c.raw.Read(func(fd uintptr) bool {
		b = readPool.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *b)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			readPool.Put(b)
			return false // wait until readable, then call again
		}
		return true
	})
	switch {
	case err != nil: // closed, or a deadline passed
		return 0, err
	case rerr != nil:
		readPool.Put(b)
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	case n == 0:
		readPool.Put(b)
		return 0, io.EOF
	}
	c.rbuf, c.rpos, c.rend = b, 0, n
	return n, nil
}

// Write queues p for the flusher (see Conn).
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	for c.err == nil && !c.closed && c.buf != nil && len(*c.buf) >= maxPending {
		c.cond.Wait()
	}
	switch {
	case c.err != nil:
		err := c.err
		c.mu.Unlock()
		return 0, err
	case c.closed:
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if !c.writing && len(p) >= directWrite {
		// Nothing pending, nothing being written: this write is a batch.
		c.writing = true
		c.mu.Unlock()
		n, err := c.Conn.Write(p)
		c.mu.Lock()
		c.writing = false
		if err != nil {
			c.fail(err)
		}
		c.startFlusher()
		c.cond.Broadcast()
		c.mu.Unlock()
		return n, err
	}
	if c.buf == nil {
		c.buf = bufPool.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p...)
	c.startFlusher()
	c.mu.Unlock()
	return len(p), nil
}

// startFlusher starts the flusher if bytes are pending and nobody owns the
// write side. c.mu is held.
func (c *Conn) startFlusher() {
	if c.buf == nil || c.writing || c.err != nil {
		return
	}
	c.writing = true
	go c.flush()
}

// flush writes pending bytes until none are left, yielding before each
// write so that goroutines about to write can join the batch.
func (c *Conn) flush() {
	c.mu.Lock()
	for c.buf != nil && c.err == nil {
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
		out := c.buf
		c.buf = nil
		c.cond.Broadcast() // room again for writers waiting on maxPending
		c.mu.Unlock()
		_, err := c.Conn.Write(*out)
		*out = (*out)[:0]
		if cap(*out) <= maxPending*2 {
			bufPool.Put(out)
		}
		c.mu.Lock()
		if err != nil {
			c.fail(err)
		}
		c.cond.Broadcast()
	}
	if c.err != nil && c.buf != nil {
		c.buf = nil // undeliverable
	}
	c.writing = false
	c.cond.Broadcast()
	c.mu.Unlock()
}

// fail records the first write error and closes the embedded connection, so
// that whoever reads it learns the connection is broken. c.mu is held.
func (c *Conn) fail(err error) {
	if c.err == nil {
		c.err = err
		c.Conn.Close()
	}
}

// drain waits, for at most closeFlushTimeout, until nothing is pending or
// being written. c.mu is held.
func (c *Conn) drain() {
	if c.writing {
		c.Conn.SetWriteDeadline(time.Now().Add(closeFlushTimeout))
	}
	for c.writing {
		c.cond.Wait()
	}
}

// Close writes what is pending (see Conn), then closes the connection.
// Writes after Close fail with net.ErrClosed.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast() // writers waiting for room give up
	c.drain()
	c.mu.Unlock()
	return c.Conn.Close()
}

// CloseWrite writes what is pending, then half-closes the connection when
// the embedded one can; otherwise it closes the connection. Writes after
// CloseWrite fail with net.ErrClosed.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.drain()
	c.mu.Unlock()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Flush waits until what is pending was written and returns the sticky
// write error, if any.
func (c *Conn) Flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.writing {
		c.cond.Wait()
	}
	return c.err
}
