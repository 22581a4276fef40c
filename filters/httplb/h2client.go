package httplb

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/siftmesh/sift/internal/coalesce"
)

// h2Pool is one endpoint's pool of plaintext HTTP/2 connections, the
// router's transport for requests to a cluster without TLS whose upstream
// protocol is HTTP/2 (gRPC, h2c), that ask for no upgrade or
// 100-continue, on a cluster without keep-alive pings. It does what
// net/http's HTTP/2 Transport does for such a request with less: one read
// loop goroutine per connection and no goroutine per request but the one
// that sends a request body; the request's HEADERS are encoded and written
// on the caller's goroutine; the response head, body and trailers are
// handed over under the connection's mutex, with no channel per frame.
//
// What it keeps of RFC 9113: stream and connection flow control both ways
// (WINDOW_UPDATE sent as the response body is read, at half the window;
// request DATA waits for the peer's windows), the peer's
// SETTINGS_MAX_CONCURRENT_STREAMS (a request waits for a stream or opens
// another connection, up to max_connections), MAX_FRAME_SIZE,
// INITIAL_WINDOW_SIZE and HEADER_TABLE_SIZE, PING answered, RST_STREAM
// (CANCEL) when the request's context ends or its response body is closed
// early, GOAWAY (the connection takes no new stream; streams above its last
// stream id, and streams refused with REFUSED_STREAM, are sent again on
// another connection when their request body was not read yet), trailers
// both ways, max_response_headers_kb (SETTINGS_MAX_HEADER_LIST_SIZE, and a
// larger response head fails the request) and idle_timeout (an idle
// connection sends GOAWAY and closes).
//
// Contract: RoundTrip is safe for concurrent use. It returns when the
// response head arrived (1xx heads are skipped), the request's context
// ended, or the stream failed; the request body goes on being sent by a
// goroutine of its own until its end, the response's end, or the context's.
// The response body must be read to its end or closed; the caller's request
// context must end at some point (serveHTTP cancels it when the request is
// done), which releases a stream whose request body is still open.
type h2Pool struct {
	dial           func(ctx context.Context) (net.Conn, error)
	idleTimeout    time.Duration // 0: idle connections stay
	maxHeaderBytes uint32
	maxConns       int    // 0: no limit
	streamWin      uint32 // SETTINGS_INITIAL_WINDOW_SIZE we announce
	connWin        uint32 // our connection receive window

	mu      sync.Mutex
	conns   []*h2Conn
	dialing *h2Dial         // the connection being opened, or nil
	waiters []chan struct{} // requests waiting for a stream (max_connections)
	closed  atomic.Bool     // the endpoint left: connections close when idle
	nwait   atomic.Int32    // len(waiters), read without p.mu
}

// Defaults as net/http's HTTP/2 Transport's.
const (
	h2DefaultStreamWin = 4 << 20
	h2DefaultConnWin   = 1 << 30
	h2InitialWin       = 65535
	h2MaxFrame         = 16 << 10
)

type h2Dial struct {
	done chan struct{}
	err  error
}

func newH2Pool(dial func(ctx context.Context) (net.Conn, error), maxConns int, idleTimeout time.Duration, maxHeaderBytes int64, streamWin, connWin uint32) *h2Pool {
	p := &h2Pool{dial: dial, maxConns: maxConns, idleTimeout: idleTimeout, streamWin: streamWin, connWin: connWin}
	if maxHeaderBytes <= 0 {
		maxHeaderBytes = defaultMaxResponseHeaderBytes
	}
	p.maxHeaderBytes = uint32(min(maxHeaderBytes, math.MaxUint32))
	if p.streamWin == 0 {
		p.streamWin = h2DefaultStreamWin
	}
	if p.connWin == 0 {
		p.connWin = h2DefaultConnWin
	}
	p.streamWin = min(p.streamWin, math.MaxInt32)
	p.connWin = max(min(p.connWin, math.MaxInt32), h2InitialWin)
	return p
}

// errH2Unprocessed: the stream was not processed by the server (GOAWAY
// above its last stream id, REFUSED_STREAM, or the connection failed before
// the request's head was written); it may be sent again.
type errH2Unprocessed struct{ err error }

func (e *errH2Unprocessed) Error() string { return e.err.Error() }
func (e *errH2Unprocessed) Unwrap() error { return e.err }

// h2MaxUnprocessedRetries bounds how often one request is sent again after
// a connection did not process it.
const h2MaxUnprocessedRetries = 4

// RoundTrip sends req on a connection with a free stream and returns the
// response once its head arrived.
func (p *h2Pool) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := validateRequest(req); err != nil {
		return nil, err
	}
	ctx := req.Context()
	for try := 0; ; try++ {
		cc, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		res, bodyRead, err := cc.roundTrip(req)
		if err == nil {
			return res, nil
		}
		var up *errH2Unprocessed
		if errors.As(err, &up) && !bodyRead && try < h2MaxUnprocessedRetries && ctx.Err() == nil {
			continue
		}
		return nil, err
	}
}

// get returns a connection with a stream reserved for the caller, opening
// one when none has a free stream; at max_connections it waits until a
// stream or a connection slot frees, or ctx ends. Only one connection is
// opened at a time: the others wait for it.
func (p *h2Pool) get(ctx context.Context) (*h2Conn, error) {
	for {
		p.mu.Lock()
		for _, cc := range p.conns {
			if cc.reserve() {
				p.mu.Unlock()
				return cc, nil
			}
		}
		if d := p.dialing; d != nil {
			p.mu.Unlock()
			select {
			case <-d.done:
				if d.err != nil && ctx.Err() == nil && (errors.Is(d.err, context.Canceled) || errors.Is(d.err, context.DeadlineExceeded)) {
					continue // the dialer's request ended, not ours: dial again
				}
				if d.err != nil {
					return nil, d.err
				}
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if p.maxConns == 0 || len(p.conns) < p.maxConns {
			d := &h2Dial{done: make(chan struct{})}
			p.dialing = d
			p.mu.Unlock()
			cc, err := p.connect(ctx)
			p.mu.Lock()
			p.dialing = nil
			if err == nil {
				p.conns = append(p.conns, cc)
			}
			p.mu.Unlock()
			d.err = err
			close(d.done)
			if err != nil {
				return nil, err
			}
			go cc.readLoop()
			continue
		}
		w := make(chan struct{})
		p.waiters = append(p.waiters, w)
		p.nwait.Add(1)
		p.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			p.mu.Lock()
			for i, x := range p.waiters {
				if x == w {
					p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
					p.nwait.Add(-1)
					break
				}
			}
			p.mu.Unlock()
			return nil, ctx.Err()
		}
	}
}

// wake lets every waiting request look again (a stream or a connection
// slot freed).
func (p *h2Pool) wake() {
	if p.nwait.Load() == 0 {
		return
	}
	p.mu.Lock()
	for _, w := range p.waiters {
		close(w)
	}
	p.waiters = p.waiters[:0]
	p.nwait.Store(0)
	p.mu.Unlock()
}

// remove takes cc out of the pool (it goes away or closed).
func (p *h2Pool) remove(cc *h2Conn) {
	p.mu.Lock()
	for i, x := range p.conns {
		if x == cc {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	p.wake()
}

// closeIdle closes the connections without streams; with final, every
// other one closes when its last stream ends.
func (p *h2Pool) closeIdle(final bool) {
	if final {
		p.closed.Store(true)
	}
	p.mu.Lock()
	conns := append([]*h2Conn(nil), p.conns...)
	p.mu.Unlock()
	for _, cc := range conns {
		cc.mu.Lock()
		idle := cc.active == 0
		cc.mu.Unlock()
		if idle {
			cc.goAway()
		}
	}
}

// connect opens a connection and writes the client preface, SETTINGS and
// the connection window.
func (p *h2Pool) connect(ctx context.Context) (*h2Conn, error) {
	nc, err := p.dial(ctx)
	if err != nil {
		return nil, err
	}
	// Coalesce the frames of concurrent streams (and of one stream's HEADERS
	// and DATA) into one write per batch (performance.md).
	nc = coalesce.New(nc, false)
	cc := &h2Conn{pool: p, nc: nc, streams: make(map[uint32]*h2Stream), nextID: 1,
		maxStreams: 100, initWin: h2InitialWin, maxFrame: h2MaxFrame, sendWin: h2InitialWin,
		recvWin: int64(p.connWin), idleSince: time.Now()}
	cc.cond.L = &cc.mu
	cc.br = bufio.NewReaderSize(nc, 16<<10)
	cc.fr = http2.NewFramer(nc, cc.br)
	cc.fr.SetReuseFrames() // frames are not kept past the next read
	cc.fr.SetMaxReadFrameSize(h2MaxFrame)
	cc.fr.MaxHeaderListSize = p.maxHeaderBytes
	cc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	cc.henc = hpack.NewEncoder(&cc.hbuf)

	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if _, err := io.WriteString(nc, http2.ClientPreface); err != nil {
		nc.Close()
		return nil, fmt.Errorf("httplb: http2 upstream: writing the preface: %w", err)
	}
	err = cc.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: p.streamWin},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: p.maxHeaderBytes},
	)
	if err == nil && p.connWin > h2InitialWin {
		err = cc.fr.WriteWindowUpdate(0, p.connWin-h2InitialWin)
	}
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("httplb: http2 upstream: writing settings: %w", err)
	}
	return cc, nil
}

// h2Conn is one upstream HTTP/2 connection.
type h2Conn struct {
	pool *h2Pool
	nc   net.Conn
	br   *bufio.Reader
	fr   *http2.Framer // read by readLoop; written under wmu

	wmu  sync.Mutex // frame writes, henc and hbuf
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu         sync.Mutex
	cond       sync.Cond // send windows grew, or the connection ended
	streams    map[uint32]*h2Stream
	nextID     uint32
	active     int    // streams reserved or open
	maxStreams uint32 // the peer's SETTINGS_MAX_CONCURRENT_STREAMS
	seenMax    bool
	initWin    int32  // the peer's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame   uint32 // the peer's SETTINGS_MAX_FRAME_SIZE
	sendWin    int64  // connection send window
	recvWin    int64  // what the peer may still send on the connection
	unacked    int64  // bytes consumed, not yet given back with WINDOW_UPDATE
	goingAway  bool   // GOAWAY received or sent: no new streams
	err        error  // set once the connection is closed
	idleSince  time.Time
	idleArmed  bool
	idleTimer  *time.Timer
}

// reserve takes a stream slot on cc if it can take a new stream.
func (cc *h2Conn) reserve() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil || cc.goingAway || uint32(cc.active) >= cc.maxStreams || cc.nextID+2*uint32(cc.active) >= math.MaxInt32-2 {
		return false
	}
	cc.active++
	return true
}

// releaseLocked frees a stream slot. cc.mu held; it returns whether the
// pool's waiters must be woken and whether the connection must go away.
func (cc *h2Conn) releaseLocked() (wake, away bool) {
	cc.active--
	if cc.active > 0 {
		return true, false
	}
	cc.idleSince = time.Now()
	if cc.goingAway || cc.pool.closed.Load() {
		return true, true
	}
	if d := cc.pool.idleTimeout; d > 0 && !cc.idleArmed && cc.err == nil {
		cc.idleArmed = true
		if cc.idleTimer == nil {
			cc.idleTimer = time.AfterFunc(d, cc.idleCheck)
		} else {
			cc.idleTimer.Reset(d)
		}
	}
	return true, false
}

// released finishes releaseLocked's work, without cc.mu.
func (cc *h2Conn) released(wake, away bool) {
	if away {
		cc.goAway()
	}
	if wake {
		cc.pool.wake()
	}
}

// idleCheck closes the connection when it has been idle for idle_timeout.
func (cc *h2Conn) idleCheck() {
	cc.mu.Lock()
	cc.idleArmed = false
	if cc.err != nil || cc.active > 0 {
		cc.mu.Unlock()
		return
	}
	if left := cc.pool.idleTimeout - time.Since(cc.idleSince); left > 0 {
		cc.idleArmed = true
		cc.idleTimer.Reset(left)
		cc.mu.Unlock()
		return
	}
	cc.mu.Unlock()
	cc.goAway()
}

// goAway sends GOAWAY (no error) and closes the connection when it has no
// stream; otherwise it takes no new stream and closes after the last.
func (cc *h2Conn) goAway() {
	cc.mu.Lock()
	cc.goingAway = true
	idle := cc.active == 0 && cc.err == nil
	cc.mu.Unlock()
	cc.pool.remove(cc)
	if !idle {
		return
	}
	cc.wmu.Lock()
	cc.fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	cc.wmu.Unlock()
	cc.close(errH2ConnClosed)
}

var (
	errH2ConnClosed   = errors.New("httplb: http2 upstream: connection closed")
	errH2GoAway       = errors.New("httplb: http2 upstream: server sent GOAWAY before processing the stream")
	errH2Refused      = errors.New("httplb: http2 upstream: stream refused")
	errH2BodyClosed   = errors.New("httplb: http2 upstream: response body closed")
	errH2HeadTooLarge = errors.New("httplb: http2 upstream: response headers exceed max_response_headers_kb")
)

// close ends the connection: every stream still open fails with err (or,
// when the request's head may not have reached the server, as
// unprocessed).
func (cc *h2Conn) close(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = err
	if cc.idleTimer != nil {
		cc.idleTimer.Stop()
	}
	streams := make([]*h2Stream, 0, len(cc.streams))
	for _, s := range cc.streams {
		streams = append(streams, s)
	}
	for _, s := range streams {
		s.failLocked(err)
	}
	cc.cond.Broadcast()
	cc.mu.Unlock()
	cc.nc.Close()
	cc.pool.remove(cc)
	for _, s := range streams {
		s.stopCtx()
	}
}

// h2Stream is one request and its response; it is the response's Body.
type h2Stream struct {
	cc   *h2Conn
	id   uint32
	req  *http.Request
	stop func() bool // the context.AfterFunc registration; guarded by cc.mu

	// Guarded by cc.mu.
	cond       sync.Cond // the response head, data, its end, or the stream's end
	res        *http.Response
	headDone   bool // res or headErr is set
	headErr    error
	buf        []byte // response data not yet read: buf[rd:]
	rd         int
	readErr    error // after the buffered data: io.EOF, or why the stream failed
	recvWin    int64 // what the peer may still send on the stream
	unacked    int64
	sendWin    int64
	remoteDone bool        // END_STREAM received
	localDone  bool        // END_STREAM sent (or the request body is no longer sent)
	reset      bool        // RST_STREAM sent or received, or the connection ended
	closed     bool        // released: no longer in cc.streams
	bodyRead   bool        // the request body was read from (a resend is not possible)
	trailer    http.Header // received trailers, moved to res.Trailer by the Read that returns io.EOF
	rstSent    atomic.Bool
}

// roundTrip sends req's head on a stream reserved by get and waits for the
// response head. bodyRead reports that the request body was read from, so
// that the request cannot be sent again.
func (cc *h2Conn) roundTrip(req *http.Request) (res *http.Response, bodyRead bool, err error) {
	s := &h2Stream{cc: cc, req: req}
	s.cond.L = &cc.mu
	body := req.Body
	if body == http.NoBody {
		body = nil
	}
	endStream := body == nil && len(req.Trailer) == 0

	// Stream ids must reach the server in increasing order: the id is
	// taken under the write lock.
	cc.wmu.Lock()
	cc.mu.Lock()
	if cc.err != nil || cc.goingAway {
		wake, away := cc.releaseLocked()
		cerr := cc.err
		cc.mu.Unlock()
		cc.wmu.Unlock()
		cc.released(wake, away)
		if cerr == nil {
			cerr = errH2GoAway
		}
		return nil, false, &errH2Unprocessed{cerr}
	}
	s.id = cc.nextID
	cc.nextID += 2
	s.sendWin = int64(cc.initWin)
	s.recvWin = int64(cc.pool.streamWin)
	s.localDone = endStream
	cc.streams[s.id] = s
	cc.mu.Unlock()
	err = cc.writeHeaders(s.id, req, endStream)
	cc.wmu.Unlock()
	if err != nil {
		cc.close(err)
		return nil, false, &errH2Unprocessed{err}
	}
	stop := context.AfterFunc(req.Context(), s.cancel)
	cc.mu.Lock()
	if s.closed {
		cc.mu.Unlock()
		stop()
	} else {
		s.stop = stop
		cc.mu.Unlock()
	}
	if body != nil {
		go s.writeBody(body)
	} else if !endStream {
		go s.writeBody(nil) // trailers only
	}
	// The head, or the stream's failure (its context's end included:
	// cancel aborts the stream).
	cc.mu.Lock()
	for !s.headDone {
		s.cond.Wait()
	}
	herr, bodyRead, res := s.headErr, s.bodyRead, s.res
	cc.mu.Unlock()
	if herr != nil {
		return nil, bodyRead, herr
	}
	return res, bodyRead, nil
}

// h2InvalidHeader: a request field that HTTP/2 cannot carry.
type h2InvalidHeader struct{ what string }

func (e *h2InvalidHeader) Error() string { return "httplb: http2 upstream: invalid request " + e.what }

// validateRequest checks that HTTP/2 can carry req's head and trailers,
// before anything is encoded: a field rejected halfway through a header
// block would leave the HPACK encoder's table ahead of the server's.
func validateRequest(req *http.Request) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !httpguts.ValidHostHeader(host) {
		return &h2InvalidHeader{"host " + strconv.Quote(host)}
	}
	if req.Method != "" && !httpguts.ValidHeaderFieldName(req.Method) {
		return &h2InvalidHeader{"method"}
	}
	if path := req.URL.RequestURI(); !validPseudoPath(path) {
		return &h2InvalidHeader{"path " + strconv.Quote(path)}
	}
	for _, h := range []http.Header{req.Header, req.Trailer} {
		for k, vs := range h {
			if !httpguts.ValidHeaderFieldName(k) {
				return &h2InvalidHeader{"field name " + strconv.Quote(k)}
			}
			for _, v := range vs {
				if !httpguts.ValidHeaderFieldValue(v) {
					return &h2InvalidHeader{"value of " + k}
				}
			}
		}
	}
	return nil
}

// writeHeaders encodes req's head (validateRequest accepted it) and
// writes it as HEADERS and CONTINUATION frames. cc.wmu held.
func (cc *h2Conn) writeHeaders(id uint32, req *http.Request, endStream bool) error {
	cc.hbuf.Reset()
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	path := req.URL.RequestURI()
	enc := cc.henc
	enc.WriteField(hpack.HeaderField{Name: ":authority", Value: host})
	enc.WriteField(hpack.HeaderField{Name: ":method", Value: method})
	enc.WriteField(hpack.HeaderField{Name: ":path", Value: path})
	enc.WriteField(hpack.HeaderField{Name: ":scheme", Value: "http"})
	encodeFields(enc, req.Header, false)
	if len(req.Trailer) > 0 {
		names := make([]string, 0, len(req.Trailer))
		for k := range req.Trailer {
			names = append(names, lowerHeader(k))
		}
		enc.WriteField(hpack.HeaderField{Name: "trailer", Value: strings.Join(names, ",")})
	}
	if cl := req.ContentLength; cl > 0 || cl == 0 && (method == "POST" || method == "PUT" || method == "PATCH") {
		enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.FormatInt(cl, 10)})
	}
	return cc.writeHeaderBlock(id, endStream)
}

// encodeFields encodes a header map's fields (validateRequest accepted
// them), lower-cased, without the ones HTTP/2 forbids (RFC 9113 section
// 8.2.2) and those the pseudo-header fields carry. cc.wmu held.
func encodeFields(enc *hpack.Encoder, h http.Header, trailers bool) {
	for k, vs := range h {
		switch k {
		case "Connection", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Keep-Alive", "Host", "Content-Length", "Trailer":
			continue
		case "Te":
			// Only "trailers" may be sent (RFC 9113 section 8.2.2).
			if !trailers && httpguts.HeaderValuesContainsToken(vs, "trailers") {
				enc.WriteField(hpack.HeaderField{Name: "te", Value: "trailers"})
			}
			continue
		}
		name := lowerHeader(k)
		for _, v := range vs {
			enc.WriteField(hpack.HeaderField{Name: name, Value: v, Sensitive: neverIndex(k)})
		}
	}
}

// neverIndex reports the fields whose values are new on every request (a
// request id, a deadline, trace and span ids): adding them to the HPACK
// dynamic table would only evict the fields that repeat, so they are sent
// as literals that are never indexed (RFC 7541 section 6.2.3).
func neverIndex(k string) bool {
	switch k {
	case "X-Request-Id", "Grpc-Timeout", "Traceparent", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid":
		return true
	}
	return false
}

// writeHeaderBlock writes cc.hbuf as HEADERS and CONTINUATION frames of at
// most the peer's frame size. cc.wmu held.
func (cc *h2Conn) writeHeaderBlock(id uint32, endStream bool) error {
	block := cc.hbuf.Bytes()
	cc.mu.Lock()
	maxFrame := int(cc.maxFrame)
	cc.mu.Unlock()
	first := true
	for first || len(block) > 0 {
		chunk := block
		if len(chunk) > maxFrame {
			chunk = chunk[:maxFrame]
		}
		block = block[len(chunk):]
		var err error
		if first {
			err = cc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: chunk, EndStream: endStream, EndHeaders: len(block) == 0})
			first = false
		} else {
			err = cc.fr.WriteContinuation(id, len(block) == 0, chunk)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// validPseudoPath reports whether a :path value is an origin form ("/…")
// or "*", without the bytes a request line cannot carry.
func validPseudoPath(v string) bool {
	if v == "" || (v[0] != '/' && v != "*") {
		return false
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// commonLower is the lower-case form of the fields most requests carry,
// so that encoding them allocates nothing.
var commonLower = func() map[string]string {
	m := map[string]string{}
	for _, k := range []string{"Accept", "Accept-Encoding", "Accept-Language", "Authorization", "Cache-Control",
		"Content-Encoding", "Content-Type", "Cookie", "Grpc-Accept-Encoding", "Grpc-Encoding", "Grpc-Timeout",
		"Grpc-Message", "Grpc-Status", "Grpc-Status-Details-Bin", "If-Modified-Since", "If-None-Match", "Origin",
		"Referer", "Te", "Traceparent", "Tracestate", "User-Agent", "Via", "X-Forwarded-For", "X-Forwarded-Host",
		"X-Forwarded-Proto", "X-Request-Id", "L5d-Orig-Proto", "B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled",
		"X-B3-Parentspanid"} {
		m[k] = strings.ToLower(k)
	}
	return m
}()

func lowerHeader(k string) string {
	if v, ok := commonLower[k]; ok {
		return v
	}
	return strings.ToLower(k)
}

// writeBody sends the request body (nil: none, only trailers) as DATA
// frames within the peer's windows, then END_STREAM (with the trailers,
// if any). A failing body resets the stream.
func (s *h2Stream) writeBody(body io.ReadCloser) {
	cc := s.cc
	var rerr error
	if body != nil {
		// Once the body is read from, the request cannot be sent again
		// (RoundTrip); a stream that already failed reads nothing.
		cc.mu.Lock()
		if s.reset {
			cc.mu.Unlock()
			return
		}
		s.bodyRead = true
		cc.mu.Unlock()
		bp := copyBufferPool.Get().(*[]byte)
		buf := *bp
		for {
			n, err := body.Read(buf)
			if n > 0 {
				last := err == io.EOF && len(s.req.Trailer) == 0
				if !s.writeData(buf[:n], last) {
					copyBufferPool.Put(bp)
					return
				}
				if last {
					copyBufferPool.Put(bp)
					s.sentEnd()
					return
				}
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				rerr = err
				break
			}
		}
		copyBufferPool.Put(bp)
	}
	if rerr != nil {
		s.abort(fmt.Errorf("httplb: http2 upstream: reading the request body: %w", rerr), http2.ErrCodeCancel)
		return
	}
	if len(s.req.Trailer) == 0 {
		if s.writeData(nil, true) {
			s.sentEnd()
		}
		return
	}
	cc.wmu.Lock()
	if s.rstSent.Load() {
		cc.wmu.Unlock()
		return
	}
	cc.hbuf.Reset()
	encodeFields(cc.henc, s.req.Trailer, true)
	err := cc.writeHeaderBlock(s.id, true)
	cc.wmu.Unlock()
	if err != nil {
		cc.close(err)
		return
	}
	s.sentEnd()
}

// writeData sends p, within the stream's and the connection's send
// windows, with END_STREAM on its last frame when end is set. It reports
// false when the stream or the connection ended first.
func (s *h2Stream) writeData(p []byte, end bool) bool {
	cc := s.cc
	for first := true; first || len(p) > 0; first = false {
		n := 0
		if len(p) > 0 {
			cc.mu.Lock()
			for !s.reset && cc.err == nil && (s.sendWin <= 0 || cc.sendWin <= 0) {
				cc.cond.Wait()
			}
			if s.reset || cc.err != nil {
				cc.mu.Unlock()
				return false
			}
			n = int(min(int64(len(p)), s.sendWin, cc.sendWin, int64(cc.maxFrame)))
			s.sendWin -= int64(n)
			cc.sendWin -= int64(n)
			cc.mu.Unlock()
		}
		cc.wmu.Lock()
		if s.rstSent.Load() {
			cc.wmu.Unlock()
			return false
		}
		err := cc.fr.WriteData(s.id, end && n == len(p), p[:n])
		cc.wmu.Unlock()
		if err != nil {
			cc.close(err)
			return false
		}
		p = p[n:]
	}
	return true
}

// sentEnd records END_STREAM sent; the stream is released when the
// response has ended too.
func (s *h2Stream) sentEnd() {
	cc := s.cc
	cc.mu.Lock()
	s.localDone = true
	if s.remoteDone && !s.closed {
		wake, away := s.releaseLocked()
		cc.mu.Unlock()
		s.stopCtx()
		cc.released(wake, away)
		return
	}
	cc.mu.Unlock()
}

// releaseLocked takes the stream out of the connection. cc.mu held.
func (s *h2Stream) releaseLocked() (wake, away bool) {
	s.closed = true
	delete(s.cc.streams, s.id)
	return s.cc.releaseLocked()
}

func (s *h2Stream) stopCtx() {
	s.cc.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.cc.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// failLocked ends the stream with err: its head (if not yet there) and
// its body fail, unless the response had ended (its buffered data stays
// readable); the request body is no longer sent. It takes the stream out
// of the connection and its slot back without the idle bookkeeping
// (releaseLockedAfterFail does that). cc.mu held.
func (s *h2Stream) failLocked(err error) {
	s.reset = true
	if !s.headDone {
		s.headDone = true
		s.headErr = err
		s.cond.Broadcast()
	}
	if !s.remoteDone && s.readErr == nil {
		s.readErr = err
	}
	if !s.closed {
		s.closed = true
		delete(s.cc.streams, s.id)
		s.cc.active--
	}
	s.cond.Broadcast()
	s.cc.cond.Broadcast()
}

// cancel is the request context's AfterFunc.
func (s *h2Stream) cancel() {
	err := context.Cause(s.req.Context())
	if err == nil {
		err = context.Canceled
	}
	s.abort(err, http2.ErrCodeCancel)
}

// abort resets the stream with code, unless it has ended both ways.
func (s *h2Stream) abort(err error, code http2.ErrCode) {
	cc := s.cc
	cc.mu.Lock()
	if s.closed {
		cc.mu.Unlock()
		return
	}
	s.failLocked(err)
	if !s.remoteDone {
		s.refundLocked()
	}
	wake, away := cc.releaseLockedAfterFail()
	cerr := cc.err
	cc.mu.Unlock()
	if cerr == nil {
		s.sendReset(code)
	}
	s.stopCtx()
	cc.released(wake, away)
}

// releaseLockedAfterFail is releaseLocked for a slot failLocked already
// took back.
func (cc *h2Conn) releaseLockedAfterFail() (wake, away bool) {
	cc.active++
	return cc.releaseLocked()
}

// refundLocked gives back to the connection window the response data the
// stream buffered and nobody will read. cc.mu held.
func (s *h2Stream) refundLocked() {
	if n := len(s.buf) - s.rd; n > 0 {
		s.cc.unacked += int64(n)
	}
	s.buf, s.rd = nil, 0
}

func (s *h2Stream) sendReset(code http2.ErrCode) {
	cc := s.cc
	cc.wmu.Lock()
	if !s.rstSent.Swap(true) {
		cc.fr.WriteRSTStream(s.id, code)
	}
	if upd := cc.takeConnUpdate(); upd > 0 {
		cc.fr.WriteWindowUpdate(0, upd)
	}
	cc.wmu.Unlock()
}

// sendConnUpdate sends the connection WINDOW_UPDATE that is due, if any.
func (cc *h2Conn) sendConnUpdate() {
	if upd := cc.takeConnUpdate(); upd > 0 {
		cc.wmu.Lock()
		cc.fr.WriteWindowUpdate(0, upd)
		cc.wmu.Unlock()
	}
}

// takeConnUpdate returns the connection WINDOW_UPDATE to send now (0:
// none yet), and counts it as sent.
func (cc *h2Conn) takeConnUpdate() uint32 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.unacked < int64(cc.pool.connWin)/2 || cc.err != nil {
		return 0
	}
	n := cc.unacked
	cc.unacked = 0
	cc.recvWin += n
	return uint32(n)
}

// Read reads the response body.
func (s *h2Stream) Read(p []byte) (int, error) {
	cc := s.cc
	cc.mu.Lock()
	for s.rd == len(s.buf) && s.readErr == nil {
		s.cond.Wait()
	}
	if s.rd == len(s.buf) {
		err := s.readErr
		if err == io.EOF && s.trailer != nil {
			// On the reader's goroutine, as net/http's bodies do: the
			// caller reads res.Trailer after io.EOF.
			if s.res.Trailer == nil {
				s.res.Trailer = s.trailer
			} else {
				for k, vs := range s.trailer {
					s.res.Trailer[k] = vs
				}
			}
			s.trailer = nil
		}
		cc.mu.Unlock()
		return 0, err
	}
	n := copy(p, s.buf[s.rd:])
	s.rd += n
	if s.rd == len(s.buf) {
		s.buf, s.rd = s.buf[:0], 0
	}
	// Flow control: give the window back at half of it.
	var connUpd, streamUpd uint32
	cc.unacked += int64(n)
	if cc.unacked >= int64(cc.pool.connWin)/2 && cc.err == nil {
		connUpd = uint32(cc.unacked)
		cc.recvWin += cc.unacked
		cc.unacked = 0
	}
	if !s.remoteDone && !s.reset {
		s.unacked += int64(n)
		if s.unacked >= int64(cc.pool.streamWin)/2 {
			streamUpd = uint32(s.unacked)
			s.recvWin += s.unacked
			s.unacked = 0
		}
	}
	cc.mu.Unlock()
	if connUpd > 0 || streamUpd > 0 {
		cc.wmu.Lock()
		if connUpd > 0 {
			cc.fr.WriteWindowUpdate(0, connUpd)
		}
		if streamUpd > 0 && !s.rstSent.Load() {
			cc.fr.WriteWindowUpdate(s.id, streamUpd)
		}
		cc.wmu.Unlock()
	}
	return n, nil
}

// Ready reports whether Read would return without waiting (forward's
// bodyReady).
func (s *h2Stream) Ready() bool {
	s.cc.mu.Lock()
	defer s.cc.mu.Unlock()
	return s.rd < len(s.buf) || s.readErr != nil
}

// Close ends the response body: a stream still open is reset (CANCEL).
func (s *h2Stream) Close() error {
	cc := s.cc
	cc.mu.Lock()
	if s.readErr == nil || s.readErr == io.EOF {
		// Read after Close fails, as net/http's bodies do.
		eof := s.readErr == io.EOF && s.rd == len(s.buf)
		s.readErr = errH2BodyClosed
		if eof {
			s.readErr = io.EOF
		}
	}
	if s.closed {
		s.refundLocked()
		cc.mu.Unlock()
		cc.sendConnUpdate()
		return nil
	}
	cc.mu.Unlock()
	s.abort(errH2BodyClosed, http2.ErrCodeCancel)
	return nil
}

// readLoop reads frames until the connection fails, handing each to its
// stream.
func (cc *h2Conn) readLoop() {
	for {
		f, err := cc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				cc.streamError(se.StreamID, se.Code, se)
				continue
			}
			cc.fail(err)
			return
		}
		if err := cc.handle(f); err != nil {
			cc.fail(err)
			return
		}
	}
}

// fail ends the connection after a read or protocol error, telling the
// server with GOAWAY when it is a connection error.
func (cc *h2Conn) fail(err error) {
	var ce http2.ConnectionError
	if errors.As(err, &ce) {
		cc.wmu.Lock()
		cc.fr.WriteGoAway(0, http2.ErrCode(ce), nil)
		cc.wmu.Unlock()
	}
	cc.close(fmt.Errorf("httplb: http2 upstream: %w", err))
}

// streamError resets one stream for a protocol error in its frames.
func (cc *h2Conn) streamError(id uint32, code http2.ErrCode, err error) {
	cc.mu.Lock()
	s := cc.streams[id]
	cc.mu.Unlock()
	if s != nil {
		s.abort(fmt.Errorf("httplb: http2 upstream: %w", err), code)
	}
}

func (cc *h2Conn) handle(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return cc.onHeaders(f)
	case *http2.DataFrame:
		return cc.onData(f)
	case *http2.SettingsFrame:
		return cc.onSettings(f)
	case *http2.WindowUpdateFrame:
		cc.mu.Lock()
		if f.StreamID == 0 {
			cc.sendWin += int64(f.Increment)
			if cc.sendWin > math.MaxInt32 {
				cc.mu.Unlock()
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
		} else if s := cc.streams[f.StreamID]; s != nil {
			s.sendWin += int64(f.Increment)
			if s.sendWin > math.MaxInt32 {
				cc.mu.Unlock()
				s.abort(errors.New("httplb: http2 upstream: stream window overflow"), http2.ErrCodeFlowControl)
				return nil
			}
		}
		cc.cond.Broadcast()
		cc.mu.Unlock()
	case *http2.RSTStreamFrame:
		cc.onReset(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			cc.wmu.Lock()
			err := cc.fr.WritePing(true, f.Data)
			cc.wmu.Unlock()
			return err
		}
	case *http2.GoAwayFrame:
		cc.onGoAway(f)
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // we sent ENABLE_PUSH 0
	}
	return nil
}

func (cc *h2Conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	cc.mu.Lock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		switch st.ID {
		case http2.SettingMaxConcurrentStreams:
			cc.maxStreams = min(st.Val, 1000)
			cc.seenMax = true
		case http2.SettingInitialWindowSize:
			if st.Val > math.MaxInt32 {
				return http2.ConnectionError(http2.ErrCodeFlowControl)
			}
			delta := int64(st.Val) - int64(cc.initWin)
			for _, s := range cc.streams {
				s.sendWin += delta
			}
			cc.initWin = int32(st.Val)
		case http2.SettingMaxFrameSize:
			cc.maxFrame = st.Val
		case http2.SettingHeaderTableSize:
			// The encoder is the writers': set it under wmu below.
		}
		return nil
	})
	if !cc.seenMax {
		cc.maxStreams, cc.seenMax = 1000, true // RFC 9113: no limit announced
	}
	cc.cond.Broadcast()
	cc.mu.Unlock()
	if err != nil {
		return err
	}
	cc.wmu.Lock()
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		cc.henc.SetMaxDynamicTableSize(v)
	}
	err = cc.fr.WriteSettingsAck()
	cc.wmu.Unlock()
	cc.pool.wake()
	return err
}

func (cc *h2Conn) onHeaders(f *http2.MetaHeadersFrame) error {
	cc.mu.Lock()
	s := cc.streams[f.StreamID]
	if s == nil {
		cc.mu.Unlock()
		return nil // a stream we reset, or one long ended
	}
	if f.Truncated {
		cc.mu.Unlock()
		s.abort(errH2HeadTooLarge, http2.ErrCodeCancel)
		return nil
	}
	if !s.headDone {
		status := f.PseudoValue("status")
		code, err := strconv.Atoi(status)
		if err != nil || len(status) != 3 || code < 100 {
			cc.mu.Unlock()
			s.abort(errors.New("httplb: http2 upstream: malformed :status "+strconv.Quote(status)), http2.ErrCodeProtocol)
			return nil
		}
		if code == http.StatusSwitchingProtocols {
			cc.mu.Unlock()
			s.abort(errors.New("httplb: http2 upstream: 101 on HTTP/2"), http2.ErrCodeProtocol)
			return nil
		}
		if code < 200 {
			cc.mu.Unlock()
			if f.StreamEnded() {
				s.abort(errors.New("httplb: http2 upstream: 1xx response ended the stream"), http2.ErrCodeProtocol)
			}
			return nil // interim responses are not forwarded (as the HTTP/1 pool)
		}
		fields := f.RegularFields()
		hdr := make(http.Header, len(fields))
		vals := make([]string, len(fields)) // one array for every field's first value
		var trailer http.Header
		for i, hf := range fields {
			k := textproto.CanonicalMIMEHeaderKey(hf.Name)
			if k == "Trailer" {
				for name := range strings.SplitSeq(hf.Value, ",") {
					if name = textproto.TrimString(name); name != "" {
						if trailer == nil {
							trailer = make(http.Header)
						}
						trailer[textproto.CanonicalMIMEHeaderKey(name)] = nil
					}
				}
			}
			if prior, ok := hdr[k]; ok {
				hdr[k] = append(prior, hf.Value)
			} else {
				vals[i] = hf.Value
				hdr[k] = vals[i : i+1 : i+1]
			}
		}
		res := &http.Response{Status: status, StatusCode: code, Proto: "HTTP/2.0", ProtoMajor: 2,
			Header: hdr, Trailer: trailer, ContentLength: -1, Body: s, Request: s.req}
		if text := http.StatusText(code); text != "" {
			if code == http.StatusOK {
				res.Status = "200 OK"
			} else {
				res.Status = status + " " + text
			}
		}
		if f.StreamEnded() {
			res.ContentLength = 0
		} else if cl := hdr["Content-Length"]; len(cl) == 1 {
			if n, err := strconv.ParseInt(cl[0], 10, 64); err == nil && n >= 0 {
				res.ContentLength = n
			}
		}
		s.res = res
		s.headDone = true
		s.cond.Broadcast()
	} else {
		// Trailers: they end the stream (RFC 9113 section 8.1).
		if !f.StreamEnded() {
			cc.mu.Unlock()
			s.abort(errors.New("httplb: http2 upstream: trailers without END_STREAM"), http2.ErrCodeProtocol)
			return nil
		}
		fields := f.RegularFields()
		s.trailer = make(http.Header, len(fields))
		vals := make([]string, len(fields))
		for i, hf := range fields {
			k := textproto.CanonicalMIMEHeaderKey(hf.Name)
			if prior, ok := s.trailer[k]; ok {
				s.trailer[k] = append(prior, hf.Value)
			} else {
				vals[i] = hf.Value
				s.trailer[k] = vals[i : i+1 : i+1]
			}
		}
	}
	if f.StreamEnded() {
		return cc.endRemoteLocked(s)
	}
	cc.mu.Unlock()
	return nil
}

// endRemoteLocked records END_STREAM received: the body ends after what is
// buffered; a stream whose request has ended too is released. It unlocks
// cc.mu.
func (cc *h2Conn) endRemoteLocked(s *h2Stream) error {
	s.remoteDone = true
	if s.readErr == nil {
		s.readErr = io.EOF
	}
	s.cond.Broadcast()
	if !s.localDone {
		// The response is complete before the request (RFC 9113
		// section 8.1): the request body goes on until the request's
		// context ends or its body does.
		cc.mu.Unlock()
		return nil
	}
	wake, away := s.releaseLocked()
	cc.mu.Unlock()
	s.stopCtx()
	cc.released(wake, away)
	return nil
}

func (cc *h2Conn) onData(f *http2.DataFrame) error {
	n := int64(f.Length)
	cc.mu.Lock()
	cc.recvWin -= n
	if cc.recvWin < 0 {
		cc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	s := cc.streams[f.StreamID]
	if s == nil || s.reset || !s.headDone || s.remoteDone {
		// Nobody reads it: the connection window gets it back at once.
		cc.unacked += n
		cc.mu.Unlock()
		if s != nil && (!s.headDone || s.remoteDone) {
			s.abort(errors.New("httplb: http2 upstream: DATA out of place"), http2.ErrCodeProtocol)
		}
		cc.sendConnUpdate()
		return nil
	}
	s.recvWin -= n
	if s.recvWin < 0 {
		cc.unacked += n
		cc.mu.Unlock()
		s.abort(errors.New("httplb: http2 upstream: stream flow control window exceeded"), http2.ErrCodeFlowControl)
		return nil
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		cc.unacked += pad // padding is never read: given back with the next update
		s.unacked += pad
	}
	if len(data) > 0 {
		s.buf = append(s.buf, data...)
		s.cond.Broadcast()
	}
	if f.StreamEnded() {
		return cc.endRemoteLocked(s)
	}
	cc.mu.Unlock()
	return nil
}

func (cc *h2Conn) onReset(f *http2.RSTStreamFrame) {
	cc.mu.Lock()
	s := cc.streams[f.StreamID]
	if s == nil {
		cc.mu.Unlock()
		return
	}
	var err error
	switch {
	case f.ErrCode == http2.ErrCodeRefusedStream && !s.headDone:
		err = &errH2Unprocessed{errH2Refused}
	case f.ErrCode == http2.ErrCodeNo && s.remoteDone:
		// "Stop sending the request": the response is complete.
		err = nil
	default:
		err = http2.StreamError{StreamID: f.StreamID, Code: f.ErrCode}
	}
	s.rstSent.Store(true) // the stream is closed: send nothing more on it
	if err == nil {
		s.reset = true
		wake, away := s.releaseLocked()
		cc.cond.Broadcast()
		cc.mu.Unlock()
		s.stopCtx()
		cc.released(wake, away)
		return
	}
	s.failLocked(fmt.Errorf("httplb: http2 upstream: %w", err))
	if !s.remoteDone {
		s.refundLocked()
	}
	wake, away := cc.releaseLockedAfterFail()
	cc.mu.Unlock()
	s.stopCtx()
	cc.released(wake, away)
}

// onGoAway: no new streams; the streams the server did not process fail
// as unprocessed (RoundTrip sends them again elsewhere).
func (cc *h2Conn) onGoAway(f *http2.GoAwayFrame) {
	cc.mu.Lock()
	cc.goingAway = true
	var gone []*h2Stream
	for id, s := range cc.streams {
		if id > f.LastStreamID {
			gone = append(gone, s)
		}
	}
	for _, s := range gone {
		s.rstSent.Store(true) // the server will not read it
		s.failLocked(&errH2Unprocessed{errH2GoAway})
		s.refundLocked()
	}
	cc.active += len(gone)
	wake, away := false, false
	for range gone {
		w, a := cc.releaseLocked()
		wake, away = wake || w, away || a
	}
	if cc.active == 0 {
		away = true
	}
	cc.mu.Unlock()
	for _, s := range gone {
		s.stopCtx()
	}
	cc.pool.remove(cc)
	cc.released(wake, away)
}
