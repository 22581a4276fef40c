package detect_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener"
)

// A client opens the connection: it writes to c, recording what it sends in
// sent (through send), and returns when done. stop is closed once the
// server side's listener filters have returned.
type client func(c *net.TCPConn, send io.Writer, stop <-chan struct{})

// tlsClient runs a crypto/tls client handshake, which blocks until the
// server side closes.
func tlsClient(cfg *tls.Config) client {
	return func(c *net.TCPConn, send io.Writer, _ <-chan struct{}) {
		_ = tls.Client(&teeConn{Conn: c, w: send}, cfg).Handshake()
	}
}

// writeClient writes each of chunks in its own Write, then half-closes once
// the listener filters are done.
func writeClient(chunks ...[]byte) client {
	return func(c *net.TCPConn, send io.Writer, stop <-chan struct{}) {
		for _, b := range chunks {
			if _, err := c.Write(b); err != nil {
				return
			}
			send.Write(b)
		}
		<-stop
		c.CloseWrite()
	}
}

// bytePerWrite writes b one byte per Write.
func bytePerWrite(b []byte) client {
	var chunks [][]byte
	for i := range b {
		chunks = append(chunks, b[i:i+1])
	}
	return writeClient(chunks...)
}

// halfCloseClient writes b and half-closes at once.
func halfCloseClient(b []byte) client {
	return func(c *net.TCPConn, send io.Writer, _ <-chan struct{}) {
		c.Write(b)
		send.Write(b)
		c.CloseWrite()
	}
}

// silentClient says nothing until the listener filters are done.
func silentClient(c *net.TCPConn, _ io.Writer, stop <-chan struct{}) {
	<-stop
	c.CloseWrite()
}

// resetClient resets the connection at once.
func resetClient(c *net.TCPConn, _ io.Writer, _ <-chan struct{}) {
	c.SetLinger(0)
	c.Close()
}

type teeConn struct {
	net.Conn
	w io.Writer
}

func (c *teeConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.w.Write(b[:n])
	return n, err
}

// outcome is what a run of listener filters over a real connection gave.
type outcome struct {
	info   filters.ConnInfo
	err    error
	peeked []byte // bytes peeked by the filters
	rest   []byte // bytes read after them (only when the client half-closes)
	sent   []byte // bytes the client sent
	// timedOut is the PeekConn's TimedOut: the listener filters' deadline passed.
	timedOut bool
}

// accept connects cl to a real TCP listener on 127.0.0.1, runs fs in order
// on the accepted side over a listener.PeekConn (byte cap limit, listener
// filters' deadline after listenerTimeout, zero: none), as the listener
// does, and reads the rest of the stream when readRest is set.
func accept(t *testing.T, cl client, fs []filters.ListenerFilter, info filters.ConnInfo, limit int, listenerTimeout time.Duration, readRest bool) outcome {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()

	var sent bytes.Buffer
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		cl(cc.(*net.TCPConn), &sent, stop)
	}()

	var deadline time.Time
	if listenerTimeout > 0 {
		deadline = time.Now().Add(listenerTimeout)
	}
	pc := listener.NewPeekConn(sc, limit, deadline)
	o := outcome{info: info}
	for _, f := range fs {
		if o.err = f.OnAccept(pc, &o.info); o.err != nil {
			break
		}
	}
	close(stop)
	o.timedOut = pc.TimedOut()
	peeked, err := pc.Release()
	if err != nil {
		t.Fatalf("Release: %v", err)
	}
	o.peeked = bytes.Clone(peeked)
	if readRest && o.err == nil {
		if o.rest, err = io.ReadAll(sc); err != nil {
			t.Fatalf("reading the rest: %v", err)
		}
	}
	sc.Close()
	<-done
	o.sent = sent.Bytes()
	return o
}

// build builds a listener filter from its typed config, as the listener does.
func build(t *testing.T, cfg proto.Message) filters.ListenerFilter {
	t.Helper()
	a, err := anypb.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f, err := filters.BuildListenerFilter(a, filters.BuildContext{ListenerName: "test"})
	if err != nil {
		t.Fatalf("BuildListenerFilter(%T): %v", cfg, err)
	}
	return f
}

// checkBytes checks that the filters lost nothing: the peeked bytes are a
// prefix of what the client sent and, with the rest, all of it.
func checkBytes(t *testing.T, o outcome, readRest bool) {
	t.Helper()
	if !bytes.HasPrefix(o.sent, o.peeked) {
		t.Errorf("peeked %q is not a prefix of what the client sent, %q", abbrev(o.peeked), abbrev(o.sent))
	}
	if readRest {
		if got := append(bytes.Clone(o.peeked), o.rest...); !bytes.Equal(got, o.sent) {
			t.Errorf("peeked+rest = %q, want what the client sent, %q", abbrev(got), abbrev(o.sent))
		}
	}
	if o.info.Detection.Ran && o.info.Detection.Bytes != len(o.peeked) {
		t.Errorf("Detection.Bytes = %d, want %d (bytes peeked)", o.info.Detection.Bytes, len(o.peeked))
	}
}

var ignoreTiming = cmp.Options{
	cmpopts.IgnoreFields(filters.Detection{}, "Duration", "Bytes", "Sniffer", "SnifferNames", "VerdictCodes", "NumVerdicts"),
	cmpopts.EquateComparable(netip.AddrPort{}),
}

func TestDetectFilter(t *testing.T) {
	t.Parallel()
	get := requestBytes(mustRequest(http.MethodGet, "http://example.com/get?x=1", nil))
	detected := func(proto, reason string) filters.Detection {
		return filters.Detection{Ran: true, Protocol: proto, Reason: reason}
	}
	tests := []struct {
		name     string
		cfg      *detectv1.Detect
		client   client
		limit    int  // PeekConn's byte cap; default 16384
		readRest bool // the client half-closes: read what follows the peeked bytes
		want     filters.ConnInfo
		wantErr  error
	}{
		{
			name:   "tls client with sni and alpn",
			client: tlsClient(&tls.Config{ServerName: "Svc.NS.svc.cluster.local", NextProtos: []string{"h2", "http/1.1"}}),
			want: filters.ConnInfo{
				TransportProtocol: "tls", ServerName: "svc.ns.svc.cluster.local",
				ApplicationProtocols: []string{"h2", "http/1.1"}, Detection: detected("tls", "match"),
			},
		},
		{
			name:   "tls client without sni",
			client: tlsClient(&tls.Config{InsecureSkipVerify: true}),
			want:   filters.ConnInfo{TransportProtocol: "tls", Detection: detected("tls", "match")},
		},
		{
			name:     "http/1.1 request",
			client:   writeClient(get),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1"}, Detection: detected("http/1.1", "match")},
		},
		{
			name:     "http/1.1 request one byte per write",
			client:   bytePerWrite(get),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1"}, Detection: detected("http/1.1", "match")},
		},
		{
			name:     "http/1.0 request",
			client:   writeClient([]byte("GET / HTTP/1.0\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.0"}, Detection: detected("http/1.0", "match")},
		},
		{
			name:     "h2 prior knowledge",
			client:   writeClient(h2Start()),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"h2c"}, Detection: detected("h2c", "match")},
		},
		{
			name:     "h2 preface one byte per write",
			client:   bytePerWrite(h2Start()),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"h2c"}, Detection: detected("h2c", "match")},
		},
		{
			name:     "ssh banner is opaque",
			client:   writeClient([]byte("SSH-2.0-OpenSSH_9.6\r\n")),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "no_match")},
		},
		{
			name:     "silent client times out to opaque",
			cfg:      &detectv1.Detect{Timeout: durationpb.New(50 * time.Millisecond)},
			client:   silentClient,
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "timeout")},
		},
		{
			name:     "half-close after GET is opaque",
			client:   halfCloseClient([]byte("GET")),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "eof")},
		},
		{
			name:     "close without a byte is opaque",
			client:   halfCloseClient(nil),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "eof")},
		},
		{
			name:     "peek cap reached",
			client:   writeClient([]byte("GET /" + strings.Repeat("x", 100) + " HTTP/1.1\r\n\r\n")),
			limit:    64,
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "byte_cap")},
		},
		{
			name:   "client hello over max_bytes",
			cfg:    &detectv1.Detect{MaxBytes: wrapperspb.UInt32(64)},
			client: tlsClient(&tls.Config{ServerName: "example.com"}),
			want:   filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "byte_cap")},
		},
		{
			name:     "only the http1 sniffer: h2 preface is opaque",
			cfg:      &detectv1.Detect{Sniffers: []string{"http1"}},
			client:   writeClient(h2Start()),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", Detection: detected("opaque", "no_match")},
		},
		{
			name:    "reset",
			client:  resetClient,
			want:    filters.ConnInfo{Detection: filters.Detection{Ran: true, Reason: filters.ReasonError}},
			wantErr: syscall.ECONNRESET,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg
			if cfg == nil {
				cfg = &detectv1.Detect{}
			}
			limit := tt.limit
			if limit == 0 {
				limit = 16384
			}
			f := build(t, cfg)
			if got := f.Provides(); got != filters.FieldsDetected {
				t.Errorf("Provides() = %v, want %v", got, filters.FieldsDetected)
			}
			o := accept(t, tt.client, []filters.ListenerFilter{f}, filters.ConnInfo{}, limit, 0, tt.readRest)
			if !errors.Is(o.err, tt.wantErr) || (o.err == nil) != (tt.wantErr == nil) {
				t.Fatalf("OnAccept() error = %v, want %v", o.err, tt.wantErr)
			}
			if o.err != nil && !strings.HasPrefix(o.err.Error(), "detect: ") {
				t.Errorf("OnAccept() error %q lacks the prefix %q", o.err, "detect: ")
			}
			if diff := cmp.Diff(tt.want, o.info, ignoreTiming, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ConnInfo (-want +got):\n%s", diff)
			}
			checkBytes(t, o, tt.readRest)
		})
	}
}

func TestEnvoyInspectors(t *testing.T) {
	t.Parallel()
	tlsInspector := func(cfg *tlsinspectorv3.TlsInspector) filters.ListenerFilter { return build(t, cfg) }
	httpInspector := build(t, &httpinspectorv3.HttpInspector{})
	both := []filters.ListenerFilter{tlsInspector(&tlsinspectorv3.TlsInspector{}), httpInspector}
	detected := func(proto, reason string) filters.Detection {
		return filters.Detection{Ran: true, Protocol: proto, Reason: reason}
	}
	tests := []struct {
		name            string
		filters         []filters.ListenerFilter
		client          client
		info            filters.ConnInfo // before the filters
		listenerTimeout time.Duration
		readRest        bool
		want            filters.ConnInfo
		wantErr         bool
		wantTimedOut    bool
	}{
		{
			name:    "tls_inspector: tls client",
			filters: both[:1],
			client:  tlsClient(&tls.Config{ServerName: "db.Example", NextProtos: []string{"postgresql"}}),
			want:    filters.ConnInfo{TransportProtocol: "tls", ServerName: "db.example", ApplicationProtocols: []string{"postgresql"}, Detection: detected("tls", "match")},
		},
		{
			name:     "tls_inspector: plaintext leaves transport_protocol unset",
			filters:  both[:1],
			client:   writeClient([]byte("GET / HTTP/1.1\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{Detection: detected("opaque", "no_match")},
		},
		{
			name:     "tls_inspector: plaintext closes with close_connection_on_client_hello_parsing_errors",
			filters:  []filters.ListenerFilter{tlsInspector(&tlsinspectorv3.TlsInspector{CloseConnectionOnClientHelloParsingErrors: true})},
			client:   writeClient([]byte("GET / HTTP/1.1\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{Detection: detected("opaque", "no_match")},
			wantErr:  true,
		},
		{
			name:    "tls_inspector: client hello over max_client_hello_size closes",
			filters: []filters.ListenerFilter{tlsInspector(&tlsinspectorv3.TlsInspector{MaxClientHelloSize: wrapperspb.UInt32(256)})},
			client:  tlsClient(&tls.Config{ServerName: "example.com"}),
			want:    filters.ConnInfo{Detection: detected("opaque", "byte_cap")},
			wantErr: true,
		},
		{
			name:            "tls_inspector: silent client returns at the listener deadline",
			filters:         both[:1],
			client:          silentClient,
			listenerTimeout: 50 * time.Millisecond,
			readRest:        true,
			want:            filters.ConnInfo{Detection: detected("opaque", "timeout")},
			wantTimedOut:    true,
		},
		{
			name:     "tls_inspector: eof",
			filters:  both[:1],
			client:   halfCloseClient([]byte{0x16, 0x03, 0x01}),
			readRest: true,
			want:     filters.ConnInfo{Detection: detected("opaque", "eof")},
		},
		{
			name:     "http_inspector: http/1.0",
			filters:  both[1:],
			client:   writeClient([]byte("POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{ApplicationProtocols: []string{"http/1.0"}, Detection: detected("http/1.0", "match")},
		},
		{
			name:     "http_inspector: h2c",
			filters:  both[1:],
			client:   writeClient(h2Start()),
			readRest: true,
			want:     filters.ConnInfo{ApplicationProtocols: []string{"h2c"}, Detection: detected("h2c", "match")},
		},
		{
			name:     "http_inspector: raw_buffer already set still inspects",
			filters:  both[1:],
			info:     filters.ConnInfo{TransportProtocol: "raw_buffer"},
			client:   writeClient([]byte("GET / HTTP/1.1\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1"}, Detection: detected("http/1.1", "match")},
		},
		{
			name:     "http_inspector: skips when transport_protocol is tls",
			filters:  both[1:],
			info:     filters.ConnInfo{TransportProtocol: "tls"},
			client:   writeClient([]byte("GET / HTTP/1.1\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{TransportProtocol: "tls"},
		},
		{
			name:     "http_inspector: not http",
			filters:  both[1:],
			client:   writeClient([]byte("*1\r\n$4\r\nPING\r\n")),
			readRest: true,
			want:     filters.ConnInfo{Detection: detected("opaque", "no_match")},
		},
		{
			name:            "http_inspector: silent client returns at the listener deadline",
			filters:         both[1:],
			client:          silentClient,
			listenerTimeout: 50 * time.Millisecond,
			readRest:        true,
			want:            filters.ConnInfo{Detection: detected("opaque", "timeout")},
			wantTimedOut:    true,
		},
		{
			name:    "both: tls client",
			filters: both,
			client:  tlsClient(&tls.Config{ServerName: "example.com", NextProtos: []string{"h2"}}),
			want:    filters.ConnInfo{TransportProtocol: "tls", ServerName: "example.com", ApplicationProtocols: []string{"h2"}, Detection: detected("tls", "match")},
		},
		{
			name:     "both: http/1.1 client",
			filters:  both,
			client:   bytePerWrite([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")),
			readRest: true,
			want:     filters.ConnInfo{ApplicationProtocols: []string{"http/1.1"}, Detection: detected("http/1.1", "match")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := accept(t, tt.client, tt.filters, tt.info, 16384, tt.listenerTimeout, tt.readRest)
			if (o.err != nil) != tt.wantErr {
				t.Fatalf("OnAccept() error = %v, want error: %v", o.err, tt.wantErr)
			}
			if o.err != nil && !strings.HasPrefix(o.err.Error(), "detect: ") {
				t.Errorf("OnAccept() error %q lacks the prefix %q", o.err, "detect: ")
			}
			if diff := cmp.Diff(tt.want, o.info, ignoreTiming, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("ConnInfo (-want +got):\n%s", diff)
			}
			if o.timedOut != tt.wantTimedOut {
				t.Errorf("listener deadline passed: %v, want %v", o.timedOut, tt.wantTimedOut)
			}
			if tt.info.TransportProtocol == "tls" && len(o.peeked) > 0 {
				t.Errorf("http_inspector peeked %q on a TLS connection", o.peeked)
			}
			checkBytes(t, o, tt.readRest && !tt.wantErr)
		})
	}
}
