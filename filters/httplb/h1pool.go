package httplb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/siftmesh/sift/filters/httplb/h1"
)

// h1Pool is one endpoint's pool of plaintext HTTP/1.1 connections, the
// router's transport for the common case (an HTTP/1 request that is not an
// upgrade, to a cluster without TLS). It does what net/http.Transport does
// for such a request with less: the request is written and its response
// read on the caller's goroutine — no read and write loop goroutines per
// connection, no channel hand-offs, no per-request cancellation context of
// its own. Everything else (HTTP/2, TLS, upgrades, Expect: 100-continue)
// keeps net/http.Transport (clusterPool.transport).
//
// Contract: RoundTrip is safe for concurrent use; a connection serves one
// request at a time and goes back to the pool when the response body has
// been read to its end and closed, on a response that allows keep-alive.
// Cancelling the request's context aborts its reads and writes (the
// connection is then closed, never reused).
type h1Pool struct {
	dial           func(ctx context.Context) (net.Conn, error)
	idleTimeout    time.Duration // 0: idle connections stay
	maxHeaderBytes int64
	maxConns       int // 0: no limit

	mu      sync.Mutex
	open    int            // connections open or being opened
	idle    []*h1Conn      // most recently used last
	waiters []chan *h1Conn // requests waiting for a connection (max_connections); nil sent: open one
	sweep   *time.Timer
	closed  bool
}

// defaultMaxResponseHeaderBytes is net/http's default: 1 MiB.
const defaultMaxResponseHeaderBytes = 1 << 20

func newH1Pool(dial func(ctx context.Context) (net.Conn, error), maxConns int, idleTimeout time.Duration, maxHeaderBytes int64) *h1Pool {
	p := &h1Pool{dial: dial, idleTimeout: idleTimeout, maxHeaderBytes: maxHeaderBytes, maxConns: maxConns}
	if p.maxHeaderBytes <= 0 {
		p.maxHeaderBytes = defaultMaxResponseHeaderBytes
	}
	return p
}

// h1Conn is one upstream connection: its input buffer, in which response
// heads are parsed (h1.ParseResponseHead) and bodies read, and its output
// buffer, into which request heads are written (writeRequest).
type h1Conn struct {
	pool      *h1Pool
	nc        net.Conn
	in        *h1.Reader
	head      h1.ResponseHead
	bw        *bufio.Writer
	idleSince time.Time

	unblock func() // abort, bound once: ends the read or write in progress

	raw    syscall.RawConn       // nil when not a socket
	peek   func(fd uintptr) bool // peekIdle
	peekOK bool
}

var errHeadTooLarge = errors.New("httplb: upstream response headers exceed max_response_headers_kb")

// RoundTrip sends req on an idle or new connection and returns the
// response, whose body gives the connection back when read to its end and
// closed. A reused connection that turns out closed by the server before
// any response byte arrived is replaced by a new one once, for requests
// without a body (a request with one cannot be sent again).
func (p *h1Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	return p.roundTripAt(req, time.Now())
}

// roundTripAt is RoundTrip for a request sent at about now (the router's
// reading of the clock, which it has anyway): how long a connection has
// been idle is measured to now.
func (p *h1Pool) roundTripAt(req *http.Request, now time.Time) (*http.Response, error) {
	ctx := req.Context()
	for try := 0; ; try++ {
		cc, reused, err := p.get(ctx, try > 0, now)
		if err != nil {
			return nil, err
		}
		resp, err, fresh := cc.roundTrip(req)
		if err == nil {
			return resp, nil
		}
		cc.close()
		if reused && fresh && try == 0 && (req.Body == nil || req.Body == http.NoBody) && ctx.Err() == nil {
			continue // the server had closed it: once more on a new connection
		}
		return nil, err
	}
}

// get returns an idle connection (reused) or a new one; with forceNew it
// takes no idle one. At max_connections it waits, until its context ends,
// for a connection another request releases or closes. now is the time
// idleness is measured to.
func (p *h1Pool) get(ctx context.Context, forceNew bool, now time.Time) (*h1Conn, bool, error) {
	for {
		p.mu.Lock()
		if !forceNew {
			if n := len(p.idle); n > 0 {
				cc := p.idle[n-1]
				p.idle[n-1] = nil
				p.idle = p.idle[:n-1]
				p.mu.Unlock()
				idleFor := now.Sub(cc.idleSince)
				if (p.idleTimeout == 0 || idleFor < p.idleTimeout) && cc.alive(idleFor) {
					return cc, true, nil
				}
				cc.close()
				continue
			}
		}
		if p.maxConns == 0 || p.open < p.maxConns {
			p.open++
			p.mu.Unlock()
			return p.connect(ctx)
		}
		w := make(chan *h1Conn, 1)
		p.waiters = append(p.waiters, w)
		p.mu.Unlock()
		select {
		case cc := <-w:
			if cc == nil {
				return p.connect(ctx) // a closed connection's slot, passed on
			}
			if cc.alive(0) {
				return cc, true, nil
			}
			cc.close()
		case <-ctx.Done():
			p.mu.Lock()
			i := slices.Index(p.waiters, w)
			if i >= 0 {
				p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			}
			p.mu.Unlock()
			if i < 0 { // handed something meanwhile: pass it on
				if cc := <-w; cc != nil {
					cc.release()
				} else {
					p.freeSlot()
				}
			}
			return nil, false, ctx.Err()
		}
	}
}

// connect opens a connection in a slot already counted in p.open.
func (p *h1Pool) connect(ctx context.Context) (*h1Conn, bool, error) {
	nc, err := p.dial(ctx)
	if err != nil {
		p.freeSlot()
		return nil, false, err
	}
	cc := &h1Conn{pool: p, nc: nc}
	cc.in = h1.NewReader(nc, 4096, int(min(p.maxHeaderBytes, math.MaxInt32)))
	cc.bw = bufio.NewWriterSize(nc, 4096)
	cc.unblock = cc.abort
	if sc, ok := nc.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			cc.raw, cc.peek = raw, cc.peekIdle
		}
	}
	return cc, false, nil
}

// firstWaiterLocked takes the longest-waiting request's channel off the
// queue, or returns nil. p.mu held.
func (p *h1Pool) firstWaiterLocked() chan *h1Conn {
	if len(p.waiters) == 0 {
		return nil
	}
	w := p.waiters[0]
	p.waiters = p.waiters[1:]
	return w
}

// freeSlot gives a closed connection's slot to the first waiting request,
// or frees it.
func (p *h1Pool) freeSlot() {
	p.mu.Lock()
	if w := p.firstWaiterLocked(); w != nil {
		p.mu.Unlock()
		w <- nil
		return
	}
	p.open--
	p.mu.Unlock()
}

// alive reports whether an idle connection can take a request: nothing is
// readable on it (a server that closed it has sent its FIN; one that sent
// bytes unasked is not speaking HTTP/1.1 keep-alive). One non-blocking
// MSG_PEEK; connections that are not TCP are taken as alive. A connection
// idle for less than peekAfter is taken as alive without the peek (a system
// call per request under load): a server closing it in that window is a
// race the peek could lose as well, and a request without a body is sent
// again on a new connection (RoundTrip).
func (cc *h1Conn) alive(idleFor time.Duration) bool {
	if len(cc.in.Buffered()) > 0 {
		return false // bytes beyond the last response: not an HTTP/1.1 exchange any more
	}
	if cc.raw == nil || idleFor < peekAfter {
		return true
	}
	cc.peekOK = false
	if cc.raw.Read(cc.peek) != nil {
		return false
	}
	return cc.peekOK
}

// peekAfter is how long a connection must have been idle before alive
// peeks at it.
const peekAfter = 50 * time.Millisecond

// peekIdle is alive's RawConn callback, bound once per connection.
func (cc *h1Conn) peekIdle(fd uintptr) bool {
	// EAGAIN: nothing to read, the connection is fine. 0 bytes: the
	// server's FIN. A byte, or another error: not reusable.
	var buf [1]byte
	_, _, err := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	cc.peekOK = errors.Is(err, unix.EAGAIN)
	return true
}

// roundTrip writes req and reads its response head. fresh reports that the
// failure came before any byte of a response: the server may have closed
// the connection while it was idle.
func (cc *h1Conn) roundTrip(req *http.Request) (resp *http.Response, err error, fresh bool) {
	ctx := req.Context()
	watch := watchContext(ctx, cc.unblock)
	if err := writeRequest(cc.bw, req); err != nil {
		watch.stop()
		return nil, fmt.Errorf("httplb: writing the request upstream: %w", err), true
	}
	if err := cc.bw.Flush(); err != nil {
		watch.stop()
		return nil, fmt.Errorf("httplb: writing the request upstream: %w", err), true
	}
	var body io.Reader
	b := new(h1Body) // its length reader is filled in by readResponse
	// Yield before reading: the other connections' goroutines run first,
	// and by the time this one reads, the upstream has often answered — a
	// read that finds the response instead of EAGAIN plus a poller round
	// trip (reads per request 4.0 → 3.25 under wrk -c32, +5 % req/s). With
	// nothing else runnable, Gosched returns at once.
	runtime.Gosched()
	for {
		resp, body, err = cc.readResponse(req, &b.length)
		if err != nil {
			watch.stop()
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			// Nothing of a response arrived when nothing is buffered.
			return nil, err, resp == nil && len(cc.in.Buffered()) == 0
		}
		// 1xx responses other than 101 are interim (100 Continue, 103
		// Early Hints): the final one follows. Upgrades do not come here.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		break
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		watch.stop()
		return nil, errors.New("httplb: upstream answered 101 to a request that asked no upgrade"), false
	}
	keep := !resp.Close && !req.Close
	b.body, b.cc, b.watch, b.keep = body, cc, watch, keep
	if body == nil {
		b.eof, b.stopped = true, watch.stop()
	}
	resp.Body = b
	return resp, nil, false
}

// readResponse reads a response head into an http.Response whose body
// reads from the connection, and that body's reader (nil: none). The head's fields become one string, and
// the header's keys and values substrings of it (keys that are already
// canonical, as servers send them, cost nothing more). On an error after
// the first bytes of a response, resp is non-nil (with no body).
//
// A body of known length reads through lb, the caller's storage.
func (cc *h1Conn) readResponse(req *http.Request, lb *h1.LengthBody) (resp *http.Response, body io.Reader, err error) {
	max := int(min(cc.pool.maxHeaderBytes, math.MaxInt32))
	var n int
	for {
		var err error
		n, err = h1.ParseResponseHead(cc.in.Buffered(), &cc.head, max)
		if err == nil {
			break
		}
		started := len(cc.in.Buffered()) > 0
		if err == h1.ErrIncomplete {
			if err = cc.in.Fill(); err == nil {
				continue
			}
		}
		if err == h1.ErrHeadTooLarge {
			err = errHeadTooLarge
		} else if err == io.EOF && started {
			err = io.ErrUnexpectedEOF
		}
		if started {
			return &http.Response{}, nil, fmt.Errorf("httplb: reading the upstream response: %w", err)
		}
		return nil, nil, err
	}
	hd := &cc.head
	s := string(cc.in.Buffered()[:n])
	cc.in.Discard(n)
	resp = &http.Response{
		Status: s[hd.StatusStart:hd.ReasonEnd], StatusCode: hd.Status,
		Proto: s[:8], ProtoMajor: 1, ProtoMinor: hd.Minor,
		ContentLength: -1, Request: req,
	}
	header := make(http.Header, len(hd.Fields))
	values := make([]string, len(hd.Fields))
	var trailerNames []string
	for i, f := range hd.Fields {
		key := textproto.CanonicalMIMEHeaderKey(s[f.NameStart:f.NameEnd])
		v := s[f.ValueStart:f.ValueEnd]
		if key == "Trailer" {
			// As net/http: the announced names key Trailer, and the
			// field itself is the transport's business.
			trailerNames = append(trailerNames, v)
			continue
		}
		if vs, ok := header[key]; ok {
			header[key] = append(vs, v)
			continue
		}
		values[i] = v
		header[key] = values[i : i+1 : i+1]
	}
	resp.Header = header
	resp.Close = hd.Close || (hd.Minor == 0 && !hd.KeepAlive)
	noBody := req.Method == http.MethodHead || hd.Status < 200 || hd.Status == http.StatusNoContent || hd.Status == http.StatusNotModified
	switch {
	case noBody:
		resp.Body = http.NoBody
		if hd.Status >= 200 && hd.ContentLength >= 0 {
			resp.ContentLength = hd.ContentLength
		}
	case hd.Chunked:
		resp.TransferEncoding = chunkedEncoding
		if len(trailerNames) > 0 {
			resp.Trailer = make(http.Header)
			for _, names := range trailerNames {
				for name := range strings.SplitSeq(names, ",") {
					if name = strings.TrimSpace(name); name != "" {
						resp.Trailer[textproto.CanonicalMIMEHeaderKey(name)] = nil
					}
				}
			}
		}
		cb := &h1.ChunkedBody{R: cc.in}
		cb.OnTrailer = func(name, value []byte) {
			if resp.Trailer == nil {
				resp.Trailer = make(http.Header)
			}
			k := textproto.CanonicalMIMEHeaderKey(string(name))
			resp.Trailer[k] = append(resp.Trailer[k], string(value))
		}
		body = cb
	case hd.ContentLength == 0:
		resp.Body, resp.ContentLength = http.NoBody, 0
	case hd.ContentLength > 0:
		*lb = h1.LengthBody{R: cc.in, N: hd.ContentLength}
		body, resp.ContentLength = lb, hd.ContentLength
	default:
		// Neither length nor chunking: the body runs to the connection's
		// end, which also ends the connection's use.
		body, resp.Close = cc.in, true
	}
	if body == nil {
		resp.Body = http.NoBody
	}
	return resp, body, nil
}

// h1Body is a response body that gives its connection back to the pool
// when it was read to its end and closed, and closes it otherwise.
type h1Body struct {
	body    io.Reader     // nil: the response has none
	length  h1.LengthBody // body, for a response of known length
	cc      *h1Conn
	watch   exchangeWatch // the request context's, over this exchange
	keep    bool          // the response allows keep-alive
	eof     bool
	stopped bool // stop ran, and in time: the connection is intact
	done    bool
}

// Ready reports whether Read returns without waiting for the connection:
// the body is over, or bytes of it are buffered (forward's bodyReady).
func (b *h1Body) Ready() bool {
	return b.body == nil || b.eof || b.done || len(b.cc.in.Buffered()) > 0
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, errors.New("httplb: read of a closed body")
	}
	if b.body == nil {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF && !b.eof {
		// The exchange is over: stop watching the request's context now,
		// since the router cancels it as soon as it sees the end.
		b.eof = true
		b.stopped = b.watch.stop()
	} else if err != nil && err != io.EOF {
		b.keep = false
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	if !b.eof {
		b.watch.stop()
	}
	if b.eof && b.keep && b.stopped {
		b.cc.release()
	} else {
		b.cc.close()
	}
	return nil
}

// abort makes the read or write in progress, and any later one, fail: the
// request's context ended. The connection is not reused.
func (cc *h1Conn) abort() { cc.nc.SetDeadline(aLongTimeAgo) }

// release puts the connection back in the pool.
func (cc *h1Conn) release() {
	p := cc.pool
	cc.idleSince = time.Now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cc.close()
		return
	}
	if w := p.firstWaiterLocked(); w != nil {
		p.mu.Unlock()
		w <- cc
		return
	}
	p.idle = append(p.idle, cc)
	if p.idleTimeout > 0 && p.sweep == nil {
		p.sweep = time.AfterFunc(p.idleTimeout, p.sweepIdle)
	}
	p.mu.Unlock()
}

// sweepIdle closes connections idle for the idle timeout, and comes back
// while any are left.
func (p *h1Pool) sweepIdle() {
	now := time.Now()
	var expired []*h1Conn
	p.mu.Lock()
	keep := p.idle[:0]
	for _, cc := range p.idle {
		if now.Sub(cc.idleSince) >= p.idleTimeout {
			expired = append(expired, cc)
		} else {
			keep = append(keep, cc)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	p.sweep = nil
	if len(p.idle) > 0 && !p.closed {
		p.sweep = time.AfterFunc(p.idleTimeout-now.Sub(p.idle[0].idleSince), p.sweepIdle)
	}
	p.mu.Unlock()
	for _, cc := range expired {
		cc.close()
	}
}

// close closes the connection and frees its slot.
func (cc *h1Conn) close() {
	cc.nc.Close()
	cc.pool.freeSlot()
}

// closeIdle closes the idle connections; with final, connections released
// later are closed too (the endpoint left, or the cluster closed).
func (p *h1Pool) closeIdle(final bool) {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	if final {
		p.closed = true
		if p.sweep != nil {
			p.sweep.Stop()
			p.sweep = nil
		}
	}
	p.mu.Unlock()
	for _, cc := range idle {
		cc.close()
	}
}
