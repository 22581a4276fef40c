package httplb

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/httplb/h1"
)

// The HTTP/1 fast path (docs/performance.md, "HTTP/1 fast path") serves
// plaintext HTTP/1.1 connections without net/http's server: heads are
// parsed in place by package h1, each request runs on the connection's
// own goroutine (no background reader, no per-request server context),
// and responses are framed into one buffered writer, so that a small
// response goes out in one write. The request still takes the HCM's one
// request path (serveHTTP: routing, access log, metrics, tracing, the
// router with its retries, timeouts and endpoint accounting), so both
// paths feed the same records.
//
// A request the fast path does not handle — HTTP/1.0, CONNECT, the
// HTTP/2 preface, a target not in origin form, an Upgrade (WebSocket,
// h2c), Expect, a Trailer announcement — hands the whole connection over
// to the net/http server at that request's first byte (nothing of it
// consumed): the decision is per connection, taken at a request boundary.

// fastInitialBuffer is a connection's initial input buffer; it grows to
// the head size limit only for a larger head.
const fastInitialBuffer = 4 << 10

// fastDrainLimit is how much of an unread request body is read and
// dropped after the response so that the connection can serve the next
// request (net/http's limit); a longer rest closes the connection.
const fastDrainLimit = 256 << 10

// fastConn is one connection served by the fast path.
type fastConn struct {
	h        *HCM
	conn     *trackedConn
	in       *h1.Reader
	out      *bufferedWriter
	head     h1.Head
	headLen  int // the parsed head's length in bytes
	remote   string
	pending  []byte     // a response's first bytes while its framing is open
	w        fastWriter // the current request's response writer
	draining atomic.Bool
	// wait is connBusy, connWaiting (for a request's first byte: the
	// connection is idle) or connWoken (a drain or the idle timeout set a
	// read deadline in the past to end the wait); waits counts the changes
	// between busy and waiting, the idle timeout's activity. wakeMu orders
	// a wake against readHead clearing the deadline of one that raced a
	// request's arrival, and guards the fields below it.
	wait      atomic.Int32
	waits     atomic.Uint64
	wakeMu    sync.Mutex
	idleTimer *time.Timer // the connection idle timeout; nil: none, or no wait yet
	idleWatch quietWatch
	ended     bool // serveFast returned: no more wakes
	// served: a request was served. A drain closes an idle connection at
	// once only after that: a new connection's first request may be on its
	// way (its client has no reason to retry it), so it is served first,
	// with Connection: close — as the net/http path does (serve.go).
	served atomic.Bool
}

// aLongTimeAgo is a deadline in the past: it wakes a blocked read.
var aLongTimeAgo = time.Unix(1, 0)

// serveFast serves conn with the fast path until the connection ends
// (handOff false; conn is then closed) or a request needs net/http
// (handOff true: rest are the bytes read and not consumed, to be
// replayed to net/http first).
func (h *HCM) serveFast(ctx context.Context, d *filters.Downstream, conn *trackedConn, cs *connState) (rest []byte, handOff bool) {
	f := &fastConn{h: h, conn: conn, remote: cs.remote.String()}
	f.in = h1.NewReader(conn, fastInitialBuffer, h.cfg.maxHeaderBytes)
	f.out = newBufferedWriter(conn)
	// A drain makes an idle connection end at once (after its first
	// request); the end of the drain time (ctx) closes it whatever it is
	// doing. Both are callbacks (context.AfterFunc), not a goroutine per
	// connection; once serveFast returns, neither acts any more.
	var hooks sync.Mutex
	returned := false
	onDrain := func() {
		hooks.Lock()
		defer hooks.Unlock()
		if returned {
			return
		}
		f.draining.Store(true)
		if f.served.Load() {
			f.wake()
		}
	}
	var stopDrain func() bool
	if d.DrainContext != nil {
		stopDrain = context.AfterFunc(d.DrainContext, onDrain)
	} else if d.Draining != nil {
		stop := make(chan struct{})
		go func() {
			select {
			case <-d.Draining:
				onDrain()
			case <-stop:
			}
		}()
		stopDrain = func() bool { close(stop); return true }
	}
	// The requests' upstream aborts (upstreamAbort) count on this hook.
	var current atomic.Pointer[upstreamAbort]
	cs.current = &current
	stopEnd := context.AfterFunc(ctx, func() {
		hooks.Lock()
		defer hooks.Unlock()
		if !returned {
			conn.Close()
			if a := current.Load(); a != nil {
				a.end(context.Cause(ctx))
			}
		}
	})
	defer func() {
		if stopDrain != nil {
			stopDrain()
		}
		stopEnd()
		hooks.Lock()
		returned = true
		hooks.Unlock()
		f.wakeMu.Lock()
		f.ended = true
		if f.idleTimer != nil {
			f.idleTimer.Stop()
		}
		f.wakeMu.Unlock()
		if !handOff {
			conn.Close()
		}
	}()
	for {
		ok, off := f.readHead()
		if off {
			conn.SetReadDeadline(time.Time{})
			return append([]byte(nil), f.in.Buffered()...), true
		}
		if !ok {
			return nil, false
		}
		keep := f.serveOne(ctx, cs)
		f.served.Store(true)
		if !keep {
			return nil, false
		}
	}
}

// Connection states (fastConn.wait).
const (
	connBusy    = iota // reading or serving a request
	connWaiting        // waiting for a request's first byte
	connWoken          // the wait was ended by a read deadline in the past
)

// readHead waits for and parses the next request head. ok is false when
// the connection must end (closed, timed out, draining, or a malformed
// head, which has been answered); handOff is true when the request is one
// for net/http.
//
// The connection idle timeout (idle_timeout) costs no system call per
// request: a per-connection timer (idleCheck) wakes a wait that has lasted
// the timeout, as a drain does. request_headers_timeout, when set, is a
// read deadline from the head's first byte to its end.
func (f *fastConn) readHead() (ok, handOff bool) {
	cfg := f.h.cfg
	if len(f.in.Buffered()) == 0 {
		f.startWait()
		if f.draining.Load() && f.served.Load() {
			return false, false
		}
		// No yield before this read (unlike the upstream response's, see
		// h1Conn.roundTrip): with both, wrk -c32's p99 rose from 3.3 to
		// 5 ms (docs/performance.md).
		err := f.in.Fill()
		f.endWait()
		if err != nil {
			return false, false
		}
	}
	deadline := false
	if cfg.requestHeadersTimeout > 0 {
		f.conn.SetReadDeadline(time.Now().Add(cfg.requestHeadersTimeout))
		deadline = true
	}
	for {
		buf := f.in.Buffered()
		if len(buf) >= 16 && string(buf[:16]) == h2Preface[:16] {
			// The HTTP/2 preface: net/http's h2c handling decides.
			return false, true
		}
		n, err := h1.ParseHead(buf, &f.head, cfg.maxHeaderBytes)
		if err == nil {
			if deadline {
				f.conn.SetReadDeadline(time.Time{})
			}
			if f.needsNetHTTP(buf) {
				return false, true
			}
			f.headLen = n
			return true, false
		}
		if err != h1.ErrIncomplete {
			f.badRequest(err)
			return false, false
		}
		if err := f.in.Fill(); err != nil {
			if err == h1.ErrHeadTooLarge {
				f.badRequest(err)
			}
			return false, false
		}
	}
}

// startWait marks the connection idle, waiting for a request, and starts
// the idle timer with the first wait.
func (f *fastConn) startWait() {
	f.wait.Store(connWaiting)
	n := f.waits.Add(1)
	if f.idleTimer != nil || f.h.cfg.idleTimeout <= 0 {
		return
	}
	f.wakeMu.Lock()
	f.idleWatch = quietWatch{timeout: f.h.cfg.idleTimeout, last: n, since: time.Now()}
	f.idleTimer = time.AfterFunc(f.idleWatch.tick(), f.idleCheck)
	f.wakeMu.Unlock()
}

// endWait ends the wait: a request's first byte came, or the read failed.
// A wake that raced the request's arrival left a deadline in the past: it
// is cleared, and the request served (during a drain, with Connection:
// close).
func (f *fastConn) endWait() {
	if !f.wait.CompareAndSwap(connWaiting, connBusy) {
		f.wakeMu.Lock()
		f.conn.SetReadDeadline(time.Time{})
		f.wait.Store(connBusy)
		f.wakeMu.Unlock()
	}
	f.waits.Add(1)
}

// wake ends a wait for a request, if the connection is waiting, with a
// read deadline in the past.
func (f *fastConn) wake() {
	f.wakeMu.Lock()
	defer f.wakeMu.Unlock()
	if !f.ended && f.wait.CompareAndSwap(connWaiting, connWoken) {
		f.conn.SetReadDeadline(aLongTimeAgo)
	}
}

// idleCheck is the idle timer's function: it wakes (ending the connection)
// a wait that has lasted the whole idle timeout — between 1 and 1.25
// timeouts after the wait began (quietWatch). A request longer than the
// timeout is not idleness: the timer looks again a tick later.
func (f *fastConn) idleCheck() {
	f.wakeMu.Lock()
	defer f.wakeMu.Unlock()
	if f.ended {
		return
	}
	expired, next := f.idleWatch.sample(time.Now(), f.waits.Load())
	if expired {
		if f.wait.CompareAndSwap(connWaiting, connWoken) {
			f.conn.SetReadDeadline(aLongTimeAgo)
			return
		}
		next = f.idleWatch.tick()
	}
	f.idleTimer.Reset(next)
}

// needsNetHTTP reports whether the parsed request is one the fast path
// leaves to net/http.
func (f *fastConn) needsNetHTTP(buf []byte) bool {
	hd := &f.head
	if hd.Special || hd.Minor != 1 {
		return true
	}
	method := buf[hd.MethodStart:hd.MethodEnd]
	if string(method) == "CONNECT" || string(method) == "PRI" {
		return true
	}
	return buf[hd.TargetStart] != '/'
}

// badRequest answers a malformed head: 400 (431 for a head too large),
// Connection: close; the connection then ends.
func (f *fastConn) badRequest(err error) {
	status, text := http.StatusBadRequest, "Bad Request"
	if err == h1.ErrHeadTooLarge {
		status, text = http.StatusRequestHeaderFieldsTooLarge, "Request Header Fields Too Large"
	}
	msg := strings.TrimPrefix(err.Error(), "h1: ")
	f.out.WriteString("HTTP/1.1 " + strconv.Itoa(status) + " " + text +
		"\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " +
		strconv.Itoa(len(msg)+len(text)+3) + "\r\n\r\n" + text + ": " + msg + "\n")
	f.out.Flush()
	f.h.log.Debug("malformed HTTP/1.1 request", "remote", f.remote, "err", err)
}

// commonMethods are interned request methods.
var commonMethods = []string{"GET", "POST", "PUT", "HEAD", "DELETE", "PATCH", "OPTIONS"}

var chunkedEncoding = []string{"chunked"}

// serveOne serves the parsed request; it reports whether the connection
// may serve another.
func (f *fastConn) serveOne(ctx context.Context, cs *connState) bool {
	hd := &f.head
	raw := f.in.Buffered()
	n := f.headLen
	s := string(raw[:n])
	f.in.Discard(n)

	method := s[hd.MethodStart:hd.MethodEnd]
	for _, m := range commonMethods {
		if m == method {
			method = m
			break
		}
	}
	target := s[hd.TargetStart:hd.TargetEnd]
	u, err := parseOriginForm(target)
	if err != nil {
		f.badRequest(errors.New("h1: malformed request target"))
		return false
	}
	header := make(http.Header, len(hd.Fields))
	values := make([]string, len(hd.Fields))
	host := ""
	for i, fl := range hd.Fields {
		v := s[fl.ValueStart:fl.ValueEnd]
		if i == hd.Host {
			host = v
			continue
		}
		key := textproto.CanonicalMIMEHeaderKey(s[fl.NameStart:fl.NameEnd])
		if vs, ok := header[key]; ok {
			header[key] = append(vs, v)
			continue
		}
		values[i] = v
		header[key] = values[i : i+1 : i+1]
	}
	// Built on the stack: WithContext below makes the one heap copy.
	base := http.Request{Method: method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: header, Host: host, RequestURI: target, RemoteAddr: f.remote, Close: hd.Close, Body: http.NoBody}
	var body *fastBody
	switch {
	case hd.Chunked:
		body = &fastBody{r: &h1.ChunkedBody{R: f.in}}
		base.ContentLength, base.TransferEncoding = -1, chunkedEncoding
	case hd.ContentLength > 0:
		body = &fastBody{r: &h1.LengthBody{R: f.in, N: hd.ContentLength}}
		base.ContentLength = hd.ContentLength
	}
	if body != nil {
		base.Body = body
	}
	req := base.WithContext(ctx)

	w := &f.w // the connection's: one request at a time
	*w = fastWriter{c: f, header: make(http.Header), isHead: method == "HEAD", body: body, cl: -1}
	w.closeAfter = hd.Close || f.draining.Load()
	if !f.serve(cs, w, req) {
		return false
	}
	w.finish()
	reusable := !w.closeAfter && !f.draining.Load()
	if body != nil && !body.finish() {
		reusable = false
	}
	if err := f.out.Flush(); err != nil {
		return false
	}
	return reusable
}

// serve runs the HCM's request path; it reports false when the handler
// panicked. As net/http's server does, a panic ends the connection after
// what was written (http.ErrAbortHandler silently, others logged) instead
// of the process. (ReverseProxy aborts a response whose upstream body
// fails midway by panicking only under net/http's server; here it returns
// and finish sees the short body.)
func (f *fastConn) serve(cs *connState, w *fastWriter, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				f.h.log.Error("panic serving HTTP/1.1 request", "remote", f.remote, "panic", v, "stack", string(debug.Stack()))
			}
			f.out.Flush()
		}
	}()
	f.h.serveHTTP(cs, w, req)
	return true
}

// parseOriginForm parses an origin-form target as url.ParseRequestURI
// does, without its allocations when the target has no escapes.
func parseOriginForm(target string) (*url.URL, error) {
	if strings.ContainsAny(target, "%#") {
		return url.ParseRequestURI(target)
	}
	u := &url.URL{Path: target}
	if i := strings.IndexByte(target, '?'); i >= 0 {
		u.Path, u.RawQuery = target[:i], target[i+1:]
		u.ForceQuery = u.RawQuery == ""
	}
	return u, nil
}

// fastBody is a request body on the fast path. Reads are serialized (a
// transport may read the body on its own goroutine); once the handler has
// returned, finish takes the body back for the connection: later reads
// fail.
type fastBody struct {
	mu     sync.Mutex
	r      io.Reader
	closed bool
	done   bool  // read to its end
	err    error // the first error other than io.EOF
}

var errBodyAfterHandler = errors.New("httplb: request body read after its handler returned")

func (b *fastBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.done {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.done = true
	} else if err != nil {
		b.err = err
	}
	return n, err
}

// Close ends the handler's use of the body; the rest is drained by the
// connection after the response.
func (b *fastBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// malformed reports whether reading the body found it malformed.
func (b *fastBody) malformed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err == h1.ErrChunk
}

// finish drains what the handler left of the body, up to fastDrainLimit;
// it reports whether the body ended well-formed, leaving the connection at
// the next request.
func (b *fastBody) finish() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	if b.err != nil {
		return false
	}
	if b.done {
		return true
	}
	buf := copyBufferPool.Get().(*[]byte)
	defer copyBufferPool.Put(buf)
	left := int64(fastDrainLimit)
	for left > 0 {
		p := *buf
		if int64(len(p)) > left {
			p = p[:left]
		}
		n, err := b.r.Read(p)
		left -= int64(n)
		if err == io.EOF {
			b.done = true
			return true
		}
		if err != nil {
			b.err = err
			return false
		}
	}
	return false
}

// fastWriter is the fast path's http.ResponseWriter: it frames the
// response (Content-Length when known, at the handler's end when the
// whole body fit the pending buffer, else chunked) into the connection's
// buffered writer. Not safe for concurrent use (nor is net/http's).
type fastWriter struct {
	c           *fastConn
	header      http.Header
	body        *fastBody
	isHead      bool
	status      int
	wroteHeader bool
	headWritten bool
	chunked     bool
	bodyless    bool
	discard     bool  // the response was replaced (malformed request body)
	cl          int64 // declared Content-Length; -1: none
	written     int64
	closeAfter  bool
	trailers    bool
}

// pendingLimit is how much of a response of unknown length is held back
// before the fast path commits to chunked framing (net/http's 2048).
const pendingLimit = 2 << 10

func (w *fastWriter) Header() http.Header { return w.header }

func (w *fastWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		// Informational: out at once, the header map as it is.
		out := w.c.out
		writeStatusLine(out, code)
		for k, vs := range w.header {
			writeField(out, k, vs)
		}
		out.WriteString("\r\n")
		out.Flush()
		return
	}
	if code < 100 || code > 999 {
		code = http.StatusInternalServerError
	}
	w.wroteHeader, w.status = true, code
	w.bodyless = w.isHead || code == http.StatusNoContent || code == http.StatusNotModified
	if v := w.header.Get("Content-Length"); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
			w.cl = n
		}
	}
	_, w.trailers = w.header["Trailer"]
	if hasToken(w.header["Connection"], "close") {
		w.closeAfter = true
	}
}

func (w *fastWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.bodyless || w.discard {
		return len(p), nil
	}
	if !w.headWritten {
		if w.cl < 0 && !w.trailers && len(w.c.pending)+len(p) <= pendingLimit {
			w.c.pending = append(w.c.pending, p...)
			w.written += int64(len(p))
			return len(p), nil
		}
		if w.writeHead(w.cl < 0) {
			return len(p), nil
		}
	}
	return w.writeBody(p)
}

func (w *fastWriter) writeBody(p []byte) (int, error) {
	out := w.c.out
	if w.chunked {
		if len(p) == 0 {
			return 0, nil
		}
		out.WriteInt(int64(len(p)), 16)
		out.WriteString("\r\n")
		n, err := out.Write(p)
		out.WriteString("\r\n")
		w.written += int64(n)
		return n, err
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	n, err := out.Write(p)
	w.written += int64(n)
	return n, err
}

// writeHead writes the status line and fields, chunked or not, then the
// pending bytes; it reports whether the response was replaced by a 400
// because the request body was malformed.
func (w *fastWriter) writeHead(chunked bool) (replaced bool) {
	w.headWritten = true
	out := w.c.out
	if w.body != nil && w.body.malformed() {
		// The upstream saw a truncated request: whatever it or the
		// router answered, the client is told its body was malformed.
		w.discard, w.closeAfter = true, true
		msg := "Bad Request: malformed chunked request body\n"
		out.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " +
			strconv.Itoa(len(msg)) + "\r\n\r\n" + msg)
		w.c.pending = w.c.pending[:0]
		return true
	}
	w.chunked = chunked && !w.bodyless
	writeStatusLine(out, w.status)
	for k, vs := range w.header {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection":
			continue
		case "Trailer":
			if !w.chunked {
				continue
			}
		}
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		writeField(out, k, vs)
	}
	if _, ok := w.header["Date"]; !ok {
		out.WriteString("Date: ")
		out.WriteString(httpDate())
		out.WriteString("\r\n")
	}
	switch {
	case w.chunked:
		out.WriteString("Transfer-Encoding: chunked\r\n")
	case w.bodyless:
		if v := w.header["Content-Length"]; len(v) > 0 && w.status != http.StatusNoContent {
			writeField(out, "Content-Length", v[:1])
		}
	default:
		out.WriteString("Content-Length: ")
		out.WriteInt(w.cl, 10)
		out.WriteString("\r\n")
	}
	if w.c.draining.Load() {
		w.closeAfter = true // drain began while the request was served
	}
	if w.closeAfter {
		out.WriteString("Connection: close\r\n")
	}
	out.WriteString("\r\n")
	if len(w.c.pending) > 0 {
		p := w.c.pending
		w.c.pending = w.c.pending[:0]
		w.written -= int64(len(p))
		w.writeBody(p)
	}
	return false
}

// Flush commits the response's framing and sends what is buffered.
func (w *fastWriter) Flush() { w.FlushError() }

// FlushError is Flush, reporting a write error (http.ResponseController).
func (w *fastWriter) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headWritten {
		w.writeHead(w.cl < 0)
	}
	return w.c.out.Flush()
}

// finish completes the response after the handler returned.
func (w *fastWriter) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.headWritten {
		if w.cl < 0 && !w.trailers {
			w.cl = int64(len(w.c.pending))
		}
		if w.writeHead(w.cl < 0) {
			return
		}
	}
	if w.discard {
		return
	}
	if w.chunked {
		out := w.c.out
		out.WriteString("0\r\n")
		w.writeTrailers()
		out.WriteString("\r\n")
		return
	}
	if !w.bodyless && w.cl >= 0 && w.written != w.cl {
		w.closeAfter = true // a short body: the client sees the connection end
	}
}

// writeTrailers writes the announced trailers and those set with
// http.TrailerPrefix.
func (w *fastWriter) writeTrailers() {
	out := w.c.out
	for _, names := range w.header["Trailer"] {
		for _, name := range strings.Split(names, ",") {
			k := textproto.CanonicalMIMEHeaderKey(strings.TrimSpace(name))
			if vs := w.header[k]; len(vs) > 0 {
				writeField(out, k, vs)
			}
		}
	}
	for k, vs := range w.header {
		if strings.HasPrefix(k, http.TrailerPrefix) {
			writeField(out, k[len(http.TrailerPrefix):], vs)
		}
	}
}

func writeStatusLine(out *bufferedWriter, code int) {
	out.WriteString("HTTP/1.1 ")
	out.WriteInt(int64(code), 10)
	out.WriteString(" ")
	out.WriteString(http.StatusText(code))
	out.WriteString("\r\n")
}

// writeField writes a field line per value; a name that is not a token is
// dropped, and CR, LF and NUL in a value become spaces (as net/http does).
func writeField(out *bufferedWriter, k string, vs []string) {
	if k == "" {
		return
	}
	for i := 0; i < len(k); i++ {
		if !isTokenChar(k[i]) {
			return
		}
	}
	for _, v := range vs {
		out.WriteString(k)
		out.WriteString(": ")
		if strings.ContainsAny(v, "\r\n\x00") {
			v = strings.NewReplacer("\r", " ", "\n", " ", "\x00", " ").Replace(v)
		}
		out.WriteString(strings.TrimSpace(v))
		out.WriteString("\r\n")
	}
}

func isTokenChar(c byte) bool {
	return c < 0x80 && c > ' ' && c != 0x7f && !strings.ContainsRune("\"(),/:;<=>?@[\\]{}", rune(c))
}

func hasToken(vs []string, tok string) bool {
	for _, v := range vs {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), tok) {
				return true
			}
		}
	}
	return false
}

// httpDate is the current time in the Date header's format. It is
// formatted once a second, and a response reads no clock for it: a timer
// drops the text at the start of the next second (so the text lags the
// clock by that timer's lateness at most, milliseconds under load), and
// the next response formats it anew. No traffic, no timer.
func httpDate() string {
	if d := cachedDate.Load(); d != nil {
		return *d
	}
	now := time.Now()
	d := now.UTC().Format(http.TimeFormat)
	if cachedDate.CompareAndSwap(nil, &d) {
		next := now.Truncate(time.Second).Add(time.Second)
		time.AfterFunc(next.Sub(now), func() { cachedDate.Store(nil) })
	}
	return d
}

var cachedDate atomic.Pointer[string]

// bufferedWriter buffers a connection's output; a write larger than the
// buffer goes out with what is buffered in one writev.
type bufferedWriter struct {
	w   io.Writer
	buf []byte
	err error
}

const outBufferSize = 4 << 10

func newBufferedWriter(w io.Writer) *bufferedWriter {
	return &bufferedWriter{w: w, buf: make([]byte, 0, outBufferSize)}
}

func (b *bufferedWriter) WriteString(s string) {
	if len(b.buf)+len(s) > cap(b.buf) {
		b.Flush()
		if len(s) > cap(b.buf) {
			b.Write([]byte(s))
			return
		}
	}
	b.buf = append(b.buf, s...)
}

func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(b.buf)+len(p) <= cap(b.buf) {
		b.buf = append(b.buf, p...)
		return len(p), nil
	}
	if len(b.buf) == 0 {
		n, err := b.w.Write(p)
		b.err = err
		return n, err
	}
	// Head and body in one system call.
	bufs := net.Buffers{b.buf, p}
	var err error
	if bw, ok := b.w.(buffersWriter); ok {
		_, err = bw.writeBuffers(&bufs)
	} else {
		_, err = bufs.WriteTo(b.w)
	}
	b.buf = b.buf[:0]
	if err != nil {
		b.err = err
		return 0, err
	}
	return len(p), nil
}

// buffersWriter writes several buffers at once (trackedConn).
type buffersWriter interface {
	writeBuffers(*net.Buffers) (int64, error)
}

// WriteInt writes n in base (strconv.AppendInt's digits) without an
// allocation.
func (b *bufferedWriter) WriteInt(n int64, base int) {
	if len(b.buf)+20 > cap(b.buf) {
		b.Flush()
	}
	b.buf = strconv.AppendInt(b.buf, n, base)
}

// Flush writes what is buffered.
func (b *bufferedWriter) Flush() error {
	if b.err != nil {
		return b.err
	}
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	b.err = err
	return err
}
