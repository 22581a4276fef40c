package listener

import (
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/siftmesh/sift/filters"
)

// PeekConn is the filters.Peeker over an accepted connection: it reads into a
// buffer that is later replayed to the connection's network filter, so no byte
// is lost. It is used by one goroutine, and only before a network filter takes
// the connection.
type PeekConn struct {
	conn net.Conn
	buf  []byte
	// limit is the byte cap; buf never grows past it.
	limit int
	// deadline is the listener filters' deadline (listener_filters_timeout);
	// zero means none.
	deadline time.Time
	// readDeadline is the deadline currently set on conn.
	readDeadline time.Time
	err          error // sticky read error (EOF, reset); deadlines are not sticky
	timedOut     bool  // the listener filters' deadline passed
	// interrupted is set by Interrupt, from any goroutine.
	interrupted atomic.Bool
}

// aLongTimeAgo is a read deadline in the past: it wakes a blocked Read.
var aLongTimeAgo = time.Unix(1, 0)

var _ filters.Peeker = (*PeekConn)(nil)

// NewPeekConn returns a Peeker over c that reads at most limit bytes, and
// never past deadline (zero: no deadline of its own).
func NewPeekConn(c net.Conn, limit int, deadline time.Time) *PeekConn {
	return &PeekConn{conn: c, limit: limit, deadline: deadline}
}

// Peeked implements filters.Peeker.
func (p *PeekConn) Peeked() []byte { return p.buf }

// Peek implements filters.Peeker.
func (p *PeekConn) Peek(n int, deadline time.Time) ([]byte, error) {
	if len(p.buf) >= n {
		return p.buf, nil
	}
	if p.err != nil {
		return p.buf, p.err
	}
	if p.interrupted.Load() {
		return p.buf, p.noteInterrupt()
	}
	if len(p.buf) >= p.limit {
		return p.buf, filters.ErrPeekCap
	}
	dl, listenerDeadline := p.deadline, true
	if !deadline.IsZero() && (dl.IsZero() || deadline.Before(dl)) {
		dl, listenerDeadline = deadline, false
	}
	if !dl.Equal(p.readDeadline) {
		if err := p.conn.SetReadDeadline(dl); err != nil {
			p.err = err
			return p.buf, err
		}
		p.readDeadline = dl
		// Interrupt stores its flag before moving the deadline: either its
		// deadline landed after ours and wakes the Read, or we see the flag.
		if p.interrupted.Load() {
			return p.buf, p.noteInterrupt()
		}
	}
	if cap(p.buf) == 0 {
		p.buf = make([]byte, 0, min(p.limit, initialPeekBuffer))
	}
	for len(p.buf) < n {
		if len(p.buf) == cap(p.buf) {
			if len(p.buf) >= p.limit {
				return p.buf, filters.ErrPeekCap
			}
			grown := make([]byte, len(p.buf), min(p.limit, 2*cap(p.buf)))
			copy(grown, p.buf)
			p.buf = grown
		}
		m, err := p.conn.Read(p.buf[len(p.buf):cap(p.buf)])
		p.buf = p.buf[:len(p.buf)+m]
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if p.interrupted.Load() {
					return p.buf, p.noteInterrupt()
				}
				// Bytes that arrived before the deadline still count.
				if err := p.readQueued(); err != nil {
					p.err = err
					return p.buf, err
				}
				if len(p.buf) >= n {
					return p.buf, nil
				}
				if listenerDeadline {
					p.timedOut = true
				}
				return p.buf, os.ErrDeadlineExceeded
			}
			if errors.Is(err, io.EOF) {
				err = io.EOF
			}
			p.err = err
			return p.buf, err
		}
	}
	return p.buf, nil
}

// readQueued reads, without blocking, what is queued on the socket. Go's
// poller fails a Read whose deadline has passed before it looks at the
// socket, so a client whose bytes arrived just before the deadline would
// otherwise be taken for a silent one (under load, the peek can start late).
// It returns io.EOF or a read error, nil otherwise.
func (p *PeekConn) readQueued() error {
	sc, ok := p.conn.(syscall.Conn)
	if !ok || len(p.buf) == cap(p.buf) {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	// A passed deadline also stops RawConn.Read before it calls us; the
	// function below never waits, so no deadline is needed for it.
	if err := p.conn.SetReadDeadline(time.Time{}); err != nil {
		return err
	}
	p.readDeadline = time.Time{}
	var (
		m    int
		rerr error
	)
	if err := raw.Read(func(fd uintptr) bool {
		m, rerr = syscall.Read(int(fd), p.buf[len(p.buf):cap(p.buf)])
		return true // one attempt: EAGAIN means nothing is queued
	}); err != nil {
		return err
	}
	switch {
	case rerr == syscall.EAGAIN || rerr == syscall.EINTR:
		return nil
	case rerr != nil:
		return rerr
	case m == 0:
		return io.EOF
	}
	p.buf = p.buf[:len(p.buf)+m]
	return nil
}

// Interrupt implements filters.Peeker: a Peek blocked now, or called later,
// returns filters.ErrPeekInterrupted. Safe to call from any goroutine.
func (p *PeekConn) Interrupt() {
	p.interrupted.Store(true)
	p.conn.SetReadDeadline(aLongTimeAgo)
}

// noteInterrupt records that the connection's read deadline may be in the
// past (Interrupt moved it), so that Release clears it.
func (p *PeekConn) noteInterrupt() error {
	p.readDeadline = aLongTimeAgo
	return filters.ErrPeekInterrupted
}

// TimedOut reports whether a Peek ended at the listener filters' deadline.
func (p *PeekConn) TimedOut() bool { return p.timedOut }

// Release clears the read deadline so the connection can be handed on, and
// returns the peeked bytes (owned by the caller from now on).
func (p *PeekConn) Release() ([]byte, error) {
	if !p.readDeadline.IsZero() || p.interrupted.Load() {
		if err := p.conn.SetReadDeadline(time.Time{}); err != nil {
			return p.buf, err
		}
		p.readDeadline = time.Time{}
	}
	return p.buf, nil
}

// initialPeekBuffer is the first allocation for peeked bytes: enough for an
// HTTP request line or a typical TLS ClientHello record header and body.
const initialPeekBuffer = 2048

// Conn returns the connection being peeked, for listener filters that read
// socket state (original_dst) rather than bytes.
func (p *PeekConn) Conn() net.Conn { return p.conn }
