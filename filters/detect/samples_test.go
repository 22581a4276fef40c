package detect_test

import (
	"bytes"
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"

	"github.com/siftmesh/sift/filters/detect"
	"github.com/siftmesh/sift/internal/reactor"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

// recordConn is a net.Conn that records what is written to it and reports
// end of stream on every read: enough for a crypto/tls client to send its
// ClientHello and give up.
type recordConn struct{ buf bytes.Buffer }

func (c *recordConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c *recordConn) Write(p []byte) (int, error)      { return c.buf.Write(p) }
func (c *recordConn) Close() error                     { return nil }
func (c *recordConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *recordConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *recordConn) SetDeadline(time.Time) error      { return nil }
func (c *recordConn) SetReadDeadline(time.Time) error  { return nil }
func (c *recordConn) SetWriteDeadline(time.Time) error { return nil }

// clientHello returns the ClientHello records a real crypto/tls client sends.
func clientHello(cfg *tls.Config) []byte {
	var c recordConn
	_ = tls.Client(&c, cfg).Handshake() // fails at the first read, after the ClientHello
	return c.buf.Bytes()
}

// refragment re-frames the handshake bytes carried by the TLS records in b
// into records of at most size bytes each: still a valid ClientHello.
func refragment(b []byte, size int) []byte {
	var hs, out []byte
	for len(b) >= 5 {
		n := int(b[3])<<8 | int(b[4])
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
	}
	for len(hs) > 0 {
		n := min(size, len(hs))
		out = append(out, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, hs[:n]...)
		hs = hs[n:]
	}
	return out
}

// requestBytes returns what net/http's Request.Write sends for req.
func requestBytes(req *http.Request) []byte {
	var b bytes.Buffer
	if err := req.Write(&b); err != nil {
		panic(err)
	}
	return b.Bytes()
}

func mustRequest(method, target string, body io.Reader) *http.Request {
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		panic(err)
	}
	return req
}

// h2Start is what an HTTP/2 prior-knowledge client sends first: the preface
// and its SETTINGS frame, written by x/net/http2.
func h2Start() []byte {
	var b bytes.Buffer
	b.WriteString(http2.ClientPreface)
	fr := http2.NewFramer(&b, nil)
	if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}); err != nil {
		panic(err)
	}
	if err := fr.WriteWindowUpdate(0, 1<<24); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// sample is a captured client opening with what each built-in sniffer must
// answer for it (a sniffer not listed must answer NoMatch).
type sample struct {
	name  string
	in    []byte
	atEOF bool
	want  map[string]detect.Result
}

// valid reports whether some sniffer matches s.
func (s sample) valid() bool {
	for _, r := range s.want {
		if r.Verdict == detect.Match {
			return true
		}
	}
	return false
}

var samples = sync.OnceValue(func() []sample {
	match := func(name string, r detect.Result) map[string]detect.Result {
		r.Verdict = detect.Match
		return map[string]detect.Result{name: r}
	}
	http11 := func() map[string]detect.Result { return match("http1", detect.Result{Protocol: "http/1.1"}) }
	http10 := func() map[string]detect.Result { return match("http1", detect.Result{Protocol: "http/1.0"}) }
	tlsMatch := func(sni string, alpn ...string) map[string]detect.Result {
		return match("tls", detect.Result{Protocol: "tls", ServerName: sni, ALPN: alpn})
	}
	needMore := func(name string, need int) map[string]detect.Result {
		return map[string]detect.Result{name: {Verdict: detect.NeedMore, Need: need}}
	}
	none := map[string]detect.Result{}

	hello := clientHello(&tls.Config{ServerName: "Example.COM", NextProtos: []string{"h2", "http/1.1"}})
	hello12 := clientHello(&tls.Config{ServerName: "api.example.org", MaxVersion: tls.VersionTLS12})
	helloNoSNI := clientHello(&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
	helloIP := clientHello(&tls.Config{ServerName: "10.0.0.1", NextProtos: []string{"h2"}})
	var manyProtos []string
	for i := range 100 {
		manyProtos = append(manyProtos, strings.Repeat(string(rune('a'+i%26)), 199)+"x")
	}
	bigHello := clientHello(&tls.Config{ServerName: "big.example", NextProtos: manyProtos})

	connect := mustRequest(http.MethodConnect, "", nil)
	connect.URL = &url.URL{Host: "db.example:5432"}
	connect.Host = "db.example:5432"
	upgrade := mustRequest(http.MethodGet, "http://chat.example/ws", nil)
	upgrade.Header.Set("Connection", "Upgrade")
	upgrade.Header.Set("Upgrade", "websocket")
	upgrade.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
	upgrade.Header.Set("Sec-WebSocket-Version", "13")
	var proxied bytes.Buffer
	if err := mustRequest(http.MethodGet, "http://example.com/a?b=c", nil).WriteProxy(&proxied); err != nil {
		panic(err)
	}

	rnd := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 512)
	for i := range random {
		random[i] = byte(rnd.Uint32())
	}
	random[0] = 0x9e // neither 0x16 nor a token character nor 'P'

	return []sample{
		// TLS, from crypto/tls clients.
		{name: "tls13 sni alpn", in: hello, want: tlsMatch("example.com", "h2", "http/1.1")},
		{name: "tls12 sni", in: hello12, want: tlsMatch("api.example.org")},
		{name: "tls no sni", in: helloNoSNI, want: tlsMatch("", "http/1.1")},
		{name: "tls ip server name", in: helloIP, want: tlsMatch("", "h2")},
		{name: "tls hello at eof", in: hello, atEOF: true, want: tlsMatch("example.com", "h2", "http/1.1")},
		{name: "tls hello then more records", in: append(bytes.Clone(hello), 0x14, 0x03, 0x03, 0x00, 0x01, 0x01), want: tlsMatch("example.com", "h2", "http/1.1")},
		{name: "tls hello in 100-byte records", in: refragment(hello, 100), want: tlsMatch("example.com", "h2", "http/1.1")},
		{name: "tls hello header split over records", in: refragment(hello, 1), want: tlsMatch("example.com", "h2", "http/1.1")},
		{name: "tls hello over 16 KiB in two records", in: bigHello, want: tlsMatch("big.example", manyProtos...)},
		{name: "tls truncated hello", in: hello[:len(hello)-1], want: needMore("tls", len(hello))},
		{name: "tls truncated hello at eof", in: hello[:len(hello)-1], atEOF: true, want: none},
		{name: "tls record header only", in: hello[:5], want: needMore("tls", 0)},
		{name: "tls zero-length record", in: []byte{0x16, 0x03, 0x01, 0x00, 0x00}, want: none},
		{name: "tls oversized record", in: []byte{0x16, 0x03, 0x01, 0x40, 0x01}, want: none},
		{name: "tls oversized record high byte", in: []byte{0x16, 0x03, 0x01, 0x41}, want: none},
		{name: "tls bad major version", in: []byte{0x16, 0x02, 0x01}, want: none},
		{name: "tls bad minor version", in: []byte{0x16, 0x03, 0x05}, want: none},
		{name: "tls server hello", in: []byte{0x16, 0x03, 0x03, 0x00, 0x30, 0x02}, want: none},
		{name: "tls hello body too large", in: []byte{0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0x01, 0x00, 0x01}, want: none},
		{name: "tls alert record", in: []byte{0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28}, want: none},
		{name: "tls garbage hello body", in: []byte{0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef}, want: none},
		{name: "sslv2 hello", in: []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, want: none},

		// HTTP/1.x, from net/http.
		{name: "http11 get", in: requestBytes(mustRequest(http.MethodGet, "http://example.com/path?q=1", nil)), want: http11()},
		{name: "http11 post with body", in: requestBytes(mustRequest(http.MethodPost, "http://example.com/submit", strings.NewReader("a=b"))), want: http11()},
		{name: "http11 connect", in: requestBytes(connect), want: http11()},
		{name: "http11 websocket upgrade", in: requestBytes(upgrade), want: http11()},
		{name: "http11 absolute form", in: proxied.Bytes(), want: http11()},
		{name: "http11 propfind", in: requestBytes(mustRequest("PROPFIND", "http://dav.example/files/", nil)), want: http11()},
		{name: "http11 purge", in: []byte("PURGE /cache/item HTTP/1.1\r\nHost: x\r\n\r\n"), want: http11()},
		{name: "http11 options asterisk", in: []byte("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), want: http11()},
		{name: "http11 extension method token", in: []byte("M-SEARCH * HTTP/1.1\r\n"), want: http11()},
		{name: "http11 h2c upgrade", in: []byte("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"), want: http11()},
		{name: "http11 utf-8 target", in: []byte("GET /caf\xc3\xa9 HTTP/1.1\r\n"), want: http11()},
		{name: "http11 bare lf", in: []byte("GET / HTTP/1.1\nHost: x\n\n"), want: http11()},
		{name: "http11 request line only at eof", in: []byte("GET / HTTP/1.1\r\n"), atEOF: true, want: http11()},
		{name: "http10", in: []byte("GET /index.html HTTP/1.0\r\n\r\n"), want: http10()},
		{name: "http10 head", in: []byte("HEAD / HTTP/1.0\r\nUser-Agent: curl\r\n\r\n"), want: http10()},
		{name: "http line at the cap", in: []byte("GET /" + strings.Repeat("a", detect.MaxRequestLine-15) + " HTTP/1.1\n"), want: http11()},
		{name: "http partial", in: []byte("GET / HTTP/1.1\r"), want: needMore("http1", 0)},
		{name: "http get at eof", in: []byte("GET"), atEOF: true, want: none},
		{name: "http get", in: []byte("GET"), want: needMore("http1", 0)},
		{name: "http line over the cap", in: []byte("GET /" + strings.Repeat("a", detect.MaxRequestLine) + " HTTP/1.1\r\n"), want: none},
		{name: "http09", in: []byte("GET /\r\n"), want: none},
		{name: "http version 1.2", in: []byte("GET / HTTP/1.2\r\n"), want: none},
		{name: "http version lower case", in: []byte("GET / http/1.1\r\n"), want: none},
		{name: "http version 2.0", in: []byte("GET / HTTP/2.0\r\n"), want: none},
		{name: "http double space", in: []byte("GET  / HTTP/1.1\r\n"), want: none},
		{name: "http tab in target", in: []byte("GET /a\tb HTTP/1.1\r\n"), want: none},
		{name: "http space in target", in: []byte("GET /a b HTTP/1.1\r\n"), want: none},
		{name: "http cr without lf", in: []byte("GET / HTTP/1.1\rX"), want: none},
		{name: "http leading crlf", in: []byte("\r\nGET / HTTP/1.1\r\n"), want: none},
		{name: "http trailing garbage after version", in: []byte("GET / HTTP/1.10\r\n"), want: none},

		// HTTP/2 with prior knowledge, from x/net/http2.
		{name: "h2 preface and settings", in: h2Start(), want: match("h2", detect.Result{Protocol: "h2c"})},
		{name: "h2 preface only", in: []byte(http2.ClientPreface), want: match("h2", detect.Result{Protocol: "h2c"})},
		{name: "h2 partial preface", in: []byte("PRI * HTTP/2.0\r\n\r\n"), want: needMore("h2", 0)},
		{name: "h2 partial preface at eof", in: []byte("PRI * HTTP/2.0\r\n\r\n"), atEOF: true, want: none},
		{name: "h2 pri prefix", in: []byte("PRI * HTTP/"), want: map[string]detect.Result{"h2": {Verdict: detect.NeedMore}, "http1": {Verdict: detect.NeedMore}}},
		{name: "h2 wrong preface tail", in: []byte("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), want: none},

		// Other protocols: opaque.
		{name: "ssh banner", in: []byte("SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"), want: none},
		{name: "redis resp ping", in: []byte("*1\r\n$4\r\nPING\r\n"), want: none},
		{name: "redis inline ping", in: []byte("PING\r\n"), want: none},
		{name: "server first silence", in: nil, atEOF: true, want: none},
		{name: "nothing yet", in: nil, want: map[string]detect.Result{"tls": {Verdict: detect.NeedMore}, "h2": {Verdict: detect.NeedMore}, "http1": {Verdict: detect.NeedMore}}},
		{name: "smtp ehlo", in: []byte("EHLO client.example\r\n"), want: none},
		{name: "postgres startup", in: []byte{0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f}, want: none},
		{name: "random binary", in: random, want: none},
	}
})

// sampleInputs returns every sample's input, for fuzz seeds.
func sampleInputs() [][]byte {
	var in [][]byte
	for _, s := range samples() {
		in = append(in, s.in)
	}
	return in
}
