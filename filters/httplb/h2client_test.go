package httplb_test

import (
	"bytes"
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

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/siftmesh/sift/server"
)

// rawCodec carries gRPC messages as raw bytes (no protobuf types needed).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(b []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), b...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

// countingListener counts the connections it accepts and how many are open.
type countingListener struct {
	net.Listener
	accepted, open atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.accepted.Add(1)
	l.open.Add(1)
	return &countedConn{Conn: c, l: l}, nil
}

type countedConn struct {
	net.Conn
	l    *countingListener
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}

// grpcTestBackend is a gRPC server (raw codec, any method) on a counting
// listener. Methods, by name:
//
//	/t/Unary         echoes one message
//	/t/Status        fails with NotFound "nope", header and trailer metadata
//	/t/ServerStream  the request is "N SIZE": N messages of SIZE bytes
//	/t/ClientStream  answers the total length of every message received
//	/t/Bidi          echoes each message as it comes
//	/t/Wait          waits until its context ends, then reports it on canceled
//	/t/Slow          waits 100 ms, counting concurrent calls in maxSeen
type grpcTestBackend struct {
	l        *countingListener
	srv      *grpc.Server
	canceled chan struct{}
	cur      atomic.Int32
	maxSeen  atomic.Int32
}

func startGRPCBackend(t testing.TB, opts ...grpc.ServerOption) *grpcTestBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &grpcTestBackend{l: &countingListener{Listener: ln}, canceled: make(chan struct{}, 16)}
	opts = append(opts, grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(b.handle),
		grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20))
	b.srv = grpc.NewServer(opts...)
	go b.srv.Serve(b.l)
	t.Cleanup(b.srv.Stop)
	return b
}

func (b *grpcTestBackend) handle(_ any, ss grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(ss)
	var msg []byte
	switch method {
	case "/t/Unary":
		if err := ss.RecvMsg(&msg); err != nil {
			return err
		}
		return ss.SendMsg(&msg)
	case "/t/Status":
		ss.SetHeader(metadata.Pairs("x-head", "h"))
		ss.SetTrailer(metadata.Pairs("x-trail", "t"))
		return status.Error(codes.NotFound, "nope")
	case "/t/ServerStream":
		if err := ss.RecvMsg(&msg); err != nil {
			return err
		}
		var n, size int
		fmt.Sscan(string(msg), &n, &size)
		out := bytes.Repeat([]byte{'s'}, size)
		for range n {
			if err := ss.SendMsg(&out); err != nil {
				return err
			}
		}
		return nil
	case "/t/ClientStream":
		total := 0
		for {
			err := ss.RecvMsg(&msg)
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			total += len(msg)
		}
		out := []byte(fmt.Sprint(total))
		return ss.SendMsg(&out)
	case "/t/Bidi":
		for {
			err := ss.RecvMsg(&msg)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := ss.SendMsg(&msg); err != nil {
				return err
			}
		}
	case "/t/Wait":
		<-ss.Context().Done()
		b.canceled <- struct{}{}
		return ss.Context().Err()
	case "/t/Slow":
		n := b.cur.Add(1)
		for {
			m := b.maxSeen.Load()
			if n <= m || b.maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
		b.cur.Add(-1)
		return ss.SendMsg(&[]byte{'k'})
	}
	return status.Error(codes.Unimplemented, method)
}

// startH2ClusterProxy starts an in-process sift-proxy whose listener
// (codec AUTO) routes everything to one HTTP/2 cluster at backend;
// cluster is YAML added to the cluster's fields and h2opts to its
// http2_protocol_options, common to its common_http_protocol_options.
func startH2ClusterProxy(t testing.TB, backend, cluster, h2opts, common string) string {
	t.Helper()
	host, port, _ := net.SplitHostPort(backend)
	yaml := fmt.Sprintf(`
static_resources:
  listeners:
  - name: http
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http
          codec_type: AUTO
          route_config: {name: r, virtual_hosts: [{name: all, domains: ["*"], routes: [{match: {prefix: "/"}, route: {cluster: c, timeout: 0s}}]}]}
          http_filters: [{name: envoy.filters.http.router, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}]
  clusters:
  - name: c
    type: STATIC
    connect_timeout: 1s
    %s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {%s}
        explicit_http_config: {http2_protocol_options: {%s}}
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]}
`, cluster, common, h2opts, host, port)
	return startServer(t, yaml, server.Options{}).Listeners().Get("http").Addr().String()
}

func grpcClient(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{}), grpc.MaxCallRecvMsgSize(16<<20), grpc.MaxCallSendMsgSize(16<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func unary(ctx context.Context, cc *grpc.ClientConn, method string, in []byte, opts ...grpc.CallOption) ([]byte, error) {
	var out []byte
	err := cc.Invoke(ctx, method, &in, &out, opts...)
	return out, err
}

var streamDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// TestH2ClientGRPC: gRPC through the proxy's own HTTP/2 upstream client,
// every call shape, with windows small enough (64 KiB per stream and per
// connection) that large messages need WINDOW_UPDATEs both ways.
func TestH2ClientGRPC(t *testing.T) {
	t.Parallel()
	b := startGRPCBackend(t)
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "",
		"initial_stream_window_size: 65535, initial_connection_window_size: 65535", "")
	cc := grpcClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("unary", func(t *testing.T) {
		for i := range 20 {
			in := []byte(fmt.Sprintf("hello %d", i))
			out, err := unary(ctx, cc, "/t/Unary", in)
			if err != nil || !bytes.Equal(out, in) {
				t.Fatalf("call %d: %q, %v", i, out, err)
			}
		}
	})
	t.Run("concurrent unary", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for i := range 64 {
			wg.Go(func() {
				in := bytes.Repeat([]byte{byte(i)}, 100+i*37)
				out, err := unary(ctx, cc, "/t/Unary", in)
				if err == nil && !bytes.Equal(out, in) {
					err = fmt.Errorf("call %d: echo differs", i)
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("status, header and trailer metadata", func(t *testing.T) {
		var hdr, trl metadata.MD
		_, err := unary(ctx, cc, "/t/Status", []byte("x"), grpc.Header(&hdr), grpc.Trailer(&trl))
		if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "nope" {
			t.Errorf("status %v, want NotFound nope", err)
		}
		if got := hdr.Get("x-head"); len(got) != 1 || got[0] != "h" {
			t.Errorf("header x-head %q", got)
		}
		if got := trl.Get("x-trail"); len(got) != 1 || got[0] != "t" {
			t.Errorf("trailer x-trail %q", got)
		}
	})
	t.Run("unknown method", func(t *testing.T) {
		if _, err := unary(ctx, cc, "/t/Nope", []byte("x")); status.Code(err) != codes.Unimplemented {
			t.Errorf("got %v, want Unimplemented", err)
		}
	})
	t.Run("large messages beyond the windows", func(t *testing.T) {
		in := make([]byte, 3<<20)
		for i := range in {
			in[i] = byte(i * 7)
		}
		out, err := unary(ctx, cc, "/t/Unary", in)
		if err != nil || !bytes.Equal(out, in) {
			t.Fatalf("3 MiB echo: %d bytes back, %v", len(out), err)
		}
	})
	t.Run("server streaming", func(t *testing.T) {
		s, err := cc.NewStream(ctx, streamDesc, "/t/ServerStream")
		if err != nil {
			t.Fatal(err)
		}
		req := []byte("40 50000") // 2 MB in all, beyond every window
		if err := s.SendMsg(&req); err != nil {
			t.Fatal(err)
		}
		s.CloseSend()
		n := 0
		for {
			var m []byte
			err := s.RecvMsg(&m)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("after %d messages: %v", n, err)
			}
			if len(m) != 50000 {
				t.Fatalf("message %d: %d bytes", n, len(m))
			}
			n++
		}
		if n != 40 {
			t.Errorf("%d messages, want 40", n)
		}
	})
	t.Run("client streaming", func(t *testing.T) {
		s, err := cc.NewStream(ctx, streamDesc, "/t/ClientStream")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 30 {
			m := bytes.Repeat([]byte{'c'}, 40000+i)
			if err := s.SendMsg(&m); err != nil {
				t.Fatal(err)
			}
		}
		s.CloseSend()
		var out []byte
		if err := s.RecvMsg(&out); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprint(30*40000 + 29*30/2); string(out) != want {
			t.Errorf("total %s, want %s", out, want)
		}
	})
	t.Run("bidi ping-pong", func(t *testing.T) {
		s, err := cc.NewStream(ctx, streamDesc, "/t/Bidi")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 100 {
			m := []byte(fmt.Sprintf("ping %d", i))
			if i%10 == 0 {
				m = bytes.Repeat(m, 10000) // some beyond the stream window
			}
			if err := s.SendMsg(&m); err != nil {
				t.Fatal(err)
			}
			var got []byte
			if err := s.RecvMsg(&got); err != nil || !bytes.Equal(got, m) {
				t.Fatalf("round %d: %d bytes, %v", i, len(got), err)
			}
		}
		s.CloseSend()
		var m []byte
		if err := s.RecvMsg(&m); err != io.EOF {
			t.Errorf("after CloseSend: %v, want EOF", err)
		}
	})
	t.Run("deadline resets the upstream stream", func(t *testing.T) {
		dctx, dcancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer dcancel()
		_, err := unary(dctx, cc, "/t/Wait", []byte("x"))
		if status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("got %v, want DeadlineExceeded", err)
		}
		select {
		case <-b.canceled:
		case <-time.After(5 * time.Second):
			t.Fatal("the backend's call was not cancelled")
		}
	})
	t.Run("cancel resets the upstream stream", func(t *testing.T) {
		cctx, ccancel := context.WithCancel(ctx)
		s, err := cc.NewStream(cctx, streamDesc, "/t/Wait")
		if err != nil {
			t.Fatal(err)
		}
		m := []byte("x")
		s.SendMsg(&m)
		time.Sleep(50 * time.Millisecond)
		ccancel()
		select {
		case <-b.canceled:
		case <-time.After(5 * time.Second):
			t.Fatal("the backend's call was not cancelled")
		}
	})
	// Everything above on one upstream connection (max_concurrent_streams
	// is grpc-go's unlimited default).
	if n := b.l.accepted.Load(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// TestH2ClientMaxStreamsAndConnections: the backend allows 2 concurrent
// streams and the cluster 1 connection (circuit_breakers max_connections):
// 10 concurrent slow calls all succeed, never more than 2 at the backend,
// on one connection.
func TestH2ClientMaxStreamsAndConnections(t *testing.T) {
	t.Parallel()
	b := startGRPCBackend(t, grpc.MaxConcurrentStreams(2))
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "circuit_breakers: {thresholds: [{max_connections: 1}]}", "", "")
	cc := grpcClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := unary(ctx, cc, "/t/Unary", []byte("warm")); err != nil { // the backend's SETTINGS are known
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range 10 {
		wg.Go(func() {
			if _, err := unary(ctx, cc, "/t/Slow", []byte("x")); err != nil {
				t.Error(err)
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if m := b.maxSeen.Load(); m > 2 || m == 0 {
		t.Errorf("%d concurrent calls at the backend, want at most 2", m)
	}
	if n := b.l.accepted.Load(); n != 1 {
		t.Errorf("%d upstream connections, want 1", n)
	}
}

// TestH2ClientGoAway: the backend sends GOAWAY on every connection 100 ms
// after it opened (grpc-go's MaxConnectionAge, two-phase GOAWAY); calls
// made all along succeed, on new connections.
func TestH2ClientGoAway(t *testing.T) {
	t.Parallel()
	b := startGRPCBackend(t, grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 100 * time.Millisecond, MaxConnectionAgeGrace: 10 * time.Second}))
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "", "", "")
	cc := grpcClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	deadline := time.Now().Add(1500 * time.Millisecond)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				in := []byte(fmt.Sprintf("w%d c%d", w, i))
				out, err := unary(ctx, cc, "/t/Unary", in)
				if err != nil || !bytes.Equal(out, in) {
					t.Errorf("worker %d call %d: %q, %v", w, i, out, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if n := b.l.accepted.Load(); n < 3 {
		t.Errorf("%d upstream connections in 1.5 s with 100 ms ages, want several", n)
	}
	// Connections that went away close once their streams ended.
	waitFor(t, func() bool { return b.l.open.Load() <= 1 }, "upstream connections that went away to close")
}

// TestH2ClientIdleTimeout: an upstream connection idle for the cluster's
// idle_timeout closes; the next request opens a new one.
func TestH2ClientIdleTimeout(t *testing.T) {
	t.Parallel()
	b := startGRPCBackend(t)
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "", "", "idle_timeout: 0.2s")
	cc := grpcClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := unary(ctx, cc, "/t/Unary", []byte("a")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.l.open.Load() == 0 }, "the idle upstream connection to close")
	if _, err := unary(ctx, cc, "/t/Unary", []byte("b")); err != nil {
		t.Fatal(err)
	}
	if n := b.l.accepted.Load(); n != 2 {
		t.Errorf("%d upstream connections, want 2", n)
	}
}

// TestH2ClientUpstreamReset: a backend stream reset before its response
// head is a 502 local reply; one reset mid-body reaches the client as a
// failed body, never a clean end.
func TestH2ClientUpstreamReset(t *testing.T) {
	t.Parallel()
	addr, client := startH2Proxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/mid" {
			w.Write(bytes.Repeat([]byte{'m'}, 1000))
			http.NewResponseController(w).Flush()
			time.Sleep(50 * time.Millisecond)
		}
		panic(http.ErrAbortHandler) // RST_STREAM (INTERNAL_ERROR)
	}))
	resp, err := client.Get("http://" + addr + "/head")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Sift-Error") != "upstream_reset" {
		t.Errorf("reset before the head: %d %q %q", resp.StatusCode, resp.Header.Get("X-Sift-Error"), body)
	}
	resp, err = client.Get("http://" + addr + "/mid")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Errorf("reset mid-body: body ended cleanly after %d bytes, want an error", len(got))
	}
	// The connection carries on.
	resp, err = client.Get("http://" + addr + "/head")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("after the resets: %d", resp.StatusCode)
	}
}

// TestH2ClientResponseEndsBeforeRequest: the backend answers and ends its
// response while the request body is still open (RFC 9113 section 8.1);
// the client gets the whole response, and the proxy's stream ends when the
// client's request does.
func TestH2ClientResponseEndsBeforeRequest(t *testing.T) {
	t.Parallel()
	addr, client := startH2Proxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "early answer")
	}))
	pr, pw := io.Pipe()
	defer pw.Close()
	req, _ := http.NewRequest("POST", "http://"+addr+"/", pr)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || string(body) != "early answer" {
		t.Errorf("body %q, %v", body, err)
	}
	pw.CloseWithError(errors.New("client gave up"))
	for range 20 { // and the proxy still serves
		resp, err := client.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "early answer" {
			t.Fatalf("then %q", b)
		}
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawH2Backend serves HTTP/2 with prior knowledge from a bare framer:
// onHeaders is called for every request HEADERS frame with the
// connection's number (from 1) and may answer with respond, reset the
// stream, or send GOAWAY.
type rawH2Backend struct {
	l         *countingListener
	onHeaders func(conn int, id uint32, fr *rawH2Conn)
	n         atomic.Int32
}

type rawH2Conn struct {
	mu sync.Mutex
	fr *http2.Framer
	nc net.Conn
}

// respond answers stream id with 200 and body.
func (c *rawH2Conn) respond(id uint32, body string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndHeaders: true})
	c.fr.WriteData(id, true, []byte(body))
}

func (c *rawH2Conn) write(f func(fr *http2.Framer)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.fr)
}

func startRawH2Backend(t *testing.T, onHeaders func(conn int, id uint32, c *rawH2Conn)) *rawH2Backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &rawH2Backend{l: &countingListener{Listener: ln}, onHeaders: onHeaders}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			nc, err := b.l.Accept()
			if err != nil {
				return
			}
			go b.serve(nc)
		}
	}()
	return b
}

func (b *rawH2Backend) serve(nc net.Conn) {
	defer nc.Close()
	n := int(b.n.Add(1))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(nc, preface); err != nil {
		return
	}
	c := &rawH2Conn{fr: http2.NewFramer(nc, nc), nc: nc}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.write(func(fr *http2.Framer) { fr.WriteSettings() })
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func(fr *http2.Framer) { fr.WriteSettingsAck() })
			}
		case *http2.MetaHeadersFrame:
			b.onHeaders(n, f.StreamID, c)
		}
	}
}

// TestH2ClientGoAwayUnprocessed: the backend answers a request with GOAWAY
// whose last stream id is below it (not processed): the request goes
// again, on a new connection, and succeeds.
func TestH2ClientGoAwayUnprocessed(t *testing.T) {
	t.Parallel()
	b := startRawH2Backend(t, func(conn int, id uint32, c *rawH2Conn) {
		if conn == 1 {
			c.write(func(fr *http2.Framer) { fr.WriteGoAway(0, http2.ErrCodeNo, nil) })
			return
		}
		c.respond(id, fmt.Sprintf("conn %d", conn))
	})
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "", "", "")
	expectBody(t, "http://"+addr+"/", "conn 2")
}

// TestH2ClientRefusedStream: a stream refused (RST_STREAM REFUSED_STREAM)
// is sent again; the connection stays in use.
func TestH2ClientRefusedStream(t *testing.T) {
	t.Parallel()
	var refused atomic.Bool
	b := startRawH2Backend(t, func(conn int, id uint32, c *rawH2Conn) {
		if !refused.Swap(true) {
			c.write(func(fr *http2.Framer) { fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
			return
		}
		c.respond(id, fmt.Sprintf("conn %d stream %d", conn, id))
	})
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "", "", "")
	expectBody(t, "http://"+addr+"/", "conn 1 stream 3")
}

// TestH2ClientUpstreamConnectionLost: the backend closes the connection
// while a response is in progress: the client's response (HTTP/1.1,
// chunked: the body's length is unknown) fails — the connection ends
// without the last chunk, where it used to end cleanly short — and the
// next request opens a new upstream connection.
func TestH2ClientUpstreamConnectionLost(t *testing.T) {
	t.Parallel()
	b := startRawH2Backend(t, func(conn int, id uint32, c *rawH2Conn) {
		if conn == 1 {
			c.write(func(fr *http2.Framer) {
				var buf bytes.Buffer
				enc := hpack.NewEncoder(&buf)
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: buf.Bytes(), EndHeaders: true})
				fr.WriteData(id, false, []byte("partial"))
			})
			time.Sleep(20 * time.Millisecond)
			c.nc.Close()
			return
		}
		c.respond(id, "fine")
	})
	addr := startH2ClusterProxy(t, b.l.Addr().String(), "", "", "")
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Error("a response cut by the upstream's close ended cleanly")
	}
	expectBody(t, "http://"+addr+"/", "fine")
}

// TestH2ClientRequestTrailers: request trailers travel upstream after the
// body (HEADERS with END_STREAM), announced in the request head.
func TestH2ClientRequestTrailers(t *testing.T) {
	t.Parallel()
	addr, client := startH2Proxy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s|%s", body, r.Trailer.Get("X-Checksum"))
	}))
	req, _ := http.NewRequest("POST", "http://"+addr+"/", nil)
	req.Trailer = http.Header{"X-Checksum": nil}
	req.ContentLength = -1
	req.Body = &trailerBody{r: strings.NewReader("payload"), req: req}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != "payload|abc" {
		t.Errorf("backend saw %q, want payload|abc", got)
	}
}

// trailerBody sets the request's trailer when its body ends (as a client
// computing a checksum would).
type trailerBody struct {
	r   io.Reader
	req *http.Request
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.req.Trailer.Set("X-Checksum", "abc")
	}
	return n, err
}

func (b *trailerBody) Close() error { return nil }

// TestH2ClientConnectFailure: an HTTP/2 endpoint that refuses connections
// is a connect failure: 502 with upstream_connect_failure, and for gRPC a
// trailers-only UNAVAILABLE.
func TestH2ClientConnectFailure(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	addr := startH2ClusterProxy(t, dead, "", "", "")
	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("X-Sift-Error") != "upstream_connect_failure" {
		t.Errorf("got %d %q, want 502 upstream_connect_failure", resp.StatusCode, resp.Header.Get("X-Sift-Error"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := unary(ctx, grpcClient(t, addr), "/t/Unary", []byte("x")); status.Code(err) != codes.Unavailable {
		t.Errorf("gRPC: %v, want Unavailable", err)
	}
}

// expectBody GETs url and expects 200 with body want.
func expectBody(t *testing.T, url, want string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != want {
		t.Errorf("GET %s: %d %q, want 200 %q", url, resp.StatusCode, body, want)
	}
}
