package httplb

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"log"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/coalesce"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// ServeConn implements filters.NetworkFilter: it serves HTTP on d until the
// client is done, the connection idles out, or the connection must end.
//
// A plaintext connection that does not start with the HTTP/2 preface is
// served by the HTTP/1 fast path (fast.go) until it ends or a request
// needs net/http. Otherwise, and from then on, the connection gets its own
// http.Server (and x/net/http2.Server): codec
// HTTP1 serves HTTP/1.x; HTTP2 serves HTTP/2 with prior knowledge; AUTO
// serves HTTP/1.x, switching to HTTP/2 on the client preface or an h2c
// upgrade. When d.Draining closes, the server shuts down gracefully: HTTP/1
// responses in flight carry Connection: close and idle keep-alive
// connections close; HTTP/2 sends GOAWAY and finishes its streams. When ctx
// ends, the connection closes at once. ServeConn returns once the connection
// is closed and every request handler on it has returned.
func (h *HCM) ServeConn(ctx context.Context, d *filters.Downstream) {
	// Over TLS the codec follows ALPN: "h2" means HTTP/2 (the preface was
	// not peeked, it is inside TLS).
	useH2 := h.cfg.codec == codecHTTP2 || (h.cfg.codec == codecAuto &&
		(bytes.HasPrefix(d.Peeked(), []byte(h2Preface)) || d.Info.NegotiatedProtocol == "h2"))
	raw := d.Conn()
	if useH2 {
		// The HTTP/2 server flushes each frame group on its own and reads
		// each frame header and payload with reads of their own: coalesce
		// writes into one per batch of ready frames, and buffer reads
		// (performance.md).
		raw = coalesce.New(raw, true)
	}
	conn := &trackedConn{Conn: raw, closed: make(chan struct{})}
	if streaminfo.HasConnHook() {
		// The connection-level record (tcp_* metrics count HTTP connections
		// too, as Linkerd's do); requests have their own records.
		streaminfo.ReportConnStart(d.Info)
		defer h.reportConn(d.Info, conn)
	}
	cs := &connState{info: d.Info, remote: d.Info.RemoteAddr, tls: d.Info.TLS, peer: d.Info.PeerIdentity, local: d.Info.LocalIdentity}
	cs.external = !isInternal(cs.remote.Addr())

	var nc net.Conn = conn
	if !useH2 && !d.Info.TLS {
		// Plaintext HTTP/1.1: the fast path (fast.go), until a request
		// needs net/http; no http.Server is built unless then.
		rest, handOff := h.serveFast(ctx, d, conn, cs)
		if !handOff {
			return
		}
		cs.current = nil // net/http's request contexts end without serveFast's hook
		if h.cfg.codec == codecAuto && bytes.HasPrefix(rest, []byte(h2Preface[:16])) {
			// HTTP/2 with prior knowledge (the listener did not peek):
			// straight to the HTTP/2 server, as if it had been peeked
			// (net/http's h2c handler would hijack the connection and
			// hand it to the same server). The fast path is done with
			// conn.
			useH2 = true
			conn.Conn = coalesce.New(conn.Conn, true)
		}
		nc = &replayConn{trackedConn: conn, pending: rest}
	}

	var handlers sync.WaitGroup
	var hmu sync.Mutex // orders handlers.Add against Wait
	stopped := false
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hmu.Lock()
		if stopped {
			hmu.Unlock()
			return
		}
		handlers.Add(1)
		hmu.Unlock()
		defer handlers.Done()
		rcs := *cs
		rcs.h2 = r.ProtoMajor == 2
		h.serveHTTP(&rcs, w, r)
	})
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: h.cfg.requestHeadersTimeout,
		IdleTimeout:       h.cfg.idleTimeout,
		MaxHeaderBytes:    h.cfg.maxHeaderBytes,
		ErrorLog:          log.New(debugWriter{h}, "", 0),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	h2s := &http2.Server{
		MaxConcurrentStreams:         h.cfg.h2MaxStreams,
		MaxUploadBufferPerStream:     int32(h.cfg.h2StreamWin),
		MaxUploadBufferPerConnection: int32(h.cfg.h2ConnWin),
		IdleTimeout:                  h.cfg.idleTimeout,
		MaxReadFrameSize:             0,
	}
	if err := http2.ConfigureServer(srv, h2s); err != nil {
		h.log.Error("configuring HTTP/2", "err", err)
		conn.Close()
		return
	}

	served := make(chan struct{})
	var taken chan struct{} // closed once the HTTP/1 server accepted conn
	switch {
	case useH2:
		go func() {
			defer close(served)
			h2s.ServeConn(nc, &http2.ServeConnOpts{Context: ctx, BaseConfig: srv, Handler: handler})
			conn.Close()
		}()
	default:
		if h.cfg.codec == codecAuto {
			srv.Handler = h2c.NewHandler(handler, h2s)
		}
		l := &oneConnListener{conn: nc, done: make(chan struct{}), taken: make(chan struct{})}
		taken = l.taken
		go func() {
			defer close(served)
			srv.Serve(l)
		}()
	}

	select {
	case <-conn.closed:
	case <-d.Draining:
		// Shut down only once Serve holds the connection: a Shutdown
		// that came first would make Serve return without serving it,
		// and a connection dispatched by a generation already draining
		// would wait unserved for the drain time to end. Its first
		// request is served, then it closes (Envoy's drain).
		if taken != nil {
			select {
			case <-taken:
			case <-conn.closed:
			case <-ctx.Done():
			}
		}
		go srv.Shutdown(ctx)
		select {
		case <-conn.closed:
		case <-ctx.Done():
		}
	case <-ctx.Done():
	}
	srv.Close()
	conn.Close()
	<-served
	hmu.Lock()
	stopped = true
	hmu.Unlock()
	handlers.Wait()
}

// reportConn hands the finished connection's record to the process-wide hook.
func (h *HCM) reportConn(info *filters.ConnInfo, c *trackedConn) {
	rec := &streaminfo.Conn{Start: info.AcceptedAt, Filter: "http_connection_manager", StatPrefix: h.cfg.statPrefix,
		Info: info, BytesReceived: c.read.Load(), BytesSent: c.written.Load()}
	if !rec.Start.IsZero() {
		rec.Duration = time.Since(rec.Start)
	}
	streaminfo.ReportConn(rec)
}

// trackedConn reports its closing: the server closes the connection when it
// is done, and a hijacker (upgrade, CONNECT, h2c) when the tunnel ends. It
// counts the bytes each way (peeked bytes included: Downstream.Conn replays
// them through Read).
type trackedConn struct {
	net.Conn
	once          sync.Once
	closed        chan struct{}
	read, written atomic.Int64
}

func (c *trackedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	return n, err
}

func (c *trackedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.written.Add(int64(n))
	return n, err
}

func (c *trackedConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() { err = c.Conn.Close(); close(c.closed) })
	return err
}

// replayConn is a connection handed from the fast path to net/http: the
// bytes the fast path read and did not consume come first.
type replayConn struct {
	*trackedConn
	pending []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.trackedConn.Read(b)
}

// oneConnListener hands out one connection, then blocks until closed.
type oneConnListener struct {
	mu   sync.Mutex
	conn net.Conn
	once sync.Once
	done chan struct{}
	// taken is closed when Accept has handed out the connection, after
	// http.Server.Serve started tracking its listener.
	taken chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.conn
	l.conn = nil
	l.mu.Unlock()
	if c != nil {
		close(l.taken)
		return c, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return dummyAddr{} }

type dummyAddr struct{}

func (dummyAddr) Network() string { return "tcp" }
func (dummyAddr) String() string  { return "sift-downstream" }

// tunnel terminates a CONNECT request (upgrade_configs CONNECT with
// connect_config): it connects to an endpoint of the route's cluster,
// answers 200, and proxies bytes both ways until either side ends.
func (h *HCM) tunnel(w http.ResponseWriter, r *http.Request, st *reqState) {
	ep, err := st.pool.pick()
	if err != nil {
		h.localReply(w, r, st.rec, http.StatusServiceUnavailable, reasonNoHealthy, "no healthy upstream")
		return
	}
	st.rec.Endpoint, st.rec.Attempts = ep.Addr, 1
	ep.Start()
	defer ep.Done()
	up, err := st.pool.c.DialEndpoint(r.Context(), ep.Addr)
	if err != nil {
		st.pool.report(ep, 0)
		h.localReply(w, r, st.rec, http.StatusBadGateway, reasonConnect,
			"upstream connect error or disconnect/reset before headers. reset reason: connection failure")
		return
	}
	defer up.Close()
	stop := context.AfterFunc(r.Context(), func() { up.Close() })
	defer stop()

	if r.ProtoMajor == 1 {
		down, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer down.Close()
		st.rec.Status = http.StatusOK
		brw.WriteString("HTTP/1.1 200 OK\r\n\r\n")
		if err := brw.Flush(); err != nil {
			return
		}
		pipeBoth(up, io.MultiReader(bufReader(brw.Reader), down), down)
		return
	}
	// HTTP/2: the stream is the tunnel (RFC 9113 §8.5).
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, r.Body)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				break
			}
			rc.Flush()
		}
		if err != nil {
			break
		}
	}
	up.Close()
	<-done
}

// bufReader returns what the server's bufio.Reader already buffered.
func bufReader(br *bufio.Reader) io.Reader {
	n := br.Buffered()
	if n == 0 {
		return bytes.NewReader(nil)
	}
	b, _ := br.Peek(n)
	return bytes.NewReader(append([]byte(nil), b...))
}

// pipeBoth copies src→up and up→dst, half-closing as each side ends, and
// returns when both directions are done.
func pipeBoth(up net.Conn, src io.Reader, dst net.Conn) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(up, src)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	io.Copy(dst, up)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	} else {
		dst.Close()
	}
	// The client may keep its side open: give it a moment, then end.
	t := time.AfterFunc(5*time.Second, func() { up.Close(); dst.Close() })
	<-done
	t.Stop()
}

// writeBuffers writes b with one writev when the underlying connection is
// a TCP connection (net.Buffers), counting the bytes.
func (c *trackedConn) writeBuffers(b *net.Buffers) (int64, error) {
	n, err := b.WriteTo(c.Conn)
	c.written.Add(n)
	return n, err
}

// CloseWrite half-closes the connection when the underlying one can.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}
