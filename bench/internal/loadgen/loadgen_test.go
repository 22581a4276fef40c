package loadgen

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siftmesh/sift/bench/internal/servers"
)

// Each client against its real backend on 127.0.0.1:0, bounded by count.
func listen(t *testing.T, serve func(context.Context, net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln.Addr().String()
}

func TestShortHTTPAgainstHTTP1(t *testing.T) {
	addr := listen(t, (&servers.HTTP1{}).Serve)
	r := ShortHTTP(addr, 4, 10*time.Second, 200)
	if r.Ops != 200 || r.Errors != 0 || r.Latency.N != 200 || r.Rate <= 0 {
		t.Fatalf("%+v", r)
	}
}

func TestHTTP1KeepAlivePipeliningAndClose(t *testing.T) {
	addr := listen(t, (&servers.HTTP1{Body: []byte("ok")}).Serve)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// two pipelined requests, one with a body, then one that closes
	req := "GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	var all []byte
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		all = append(all, buf[:n]...)
		if err != nil {
			break
		}
	}
	s := string(all)
	if strings.Count(s, "HTTP/1.1 200 OK") != 3 || !strings.Contains(s, "Connection: close") || !strings.HasSuffix(s, "ok") {
		t.Fatalf("responses: %q", s)
	}
}

func TestGreetAgainstGreeting(t *testing.T) {
	addr := listen(t, servers.ServeGreeting)
	r := Greet([]string{addr}, 5, 5, 5*time.Second)
	if r.Ops != 5 || r.Errors != 0 {
		t.Fatalf("%+v", r)
	}
}

func TestGreetSharesConnectionsAmongAddresses(t *testing.T) {
	var addrs []string
	var counts [3]atomic.Int64
	for i := range counts {
		addrs = append(addrs, listen(t, func(ctx context.Context, ln net.Listener) error {
			return servers.ServeGreeting(ctx, countingListener{ln, &counts[i]})
		}))
	}
	r := Greet(addrs, 9, 3, 5*time.Second)
	if r.Ops != 9 || r.Errors != 0 {
		t.Fatalf("%+v", r)
	}
	for i := range counts {
		if got := counts[i].Load(); got != 3 {
			t.Errorf("address %d got %d connections, want 3", i, got)
		}
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func TestIdleAgainstHolder(t *testing.T) {
	h := &servers.Holder{}
	addr := listen(t, h.Serve)
	conns, r := Idle(addr, 50, 8, 10*time.Second)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if r.Ops != 50 || len(conns) != 50 || h.Open.Load() != 50 {
		t.Fatalf("%+v, %d conns, holder %d", r, len(conns), h.Open.Load())
	}
}

func TestGRPCUnaryAndStream(t *testing.T) {
	addr := listen(t, servers.ServeGRPC)
	for _, mode := range []string{"unary", "stream"} {
		r, err := GRPC(addr, mode, 2, 4, 10*time.Second, 100, 16)
		if err != nil || r.Ops != 100 || r.Errors != 0 {
			t.Fatalf("%s: %+v %v", mode, r, err)
		}
	}
	if _, err := GRPC(addr, "bogus", 1, 1, time.Second, 1, 1); err != nil {
		t.Fatal(err) // the mode error is per call, counted
	}
}

func TestH2CServesPriorKnowledge(t *testing.T) {
	addr := listen(t, servers.ServeH2C)
	c := &http.Client{Transport: &http.Transport{Protocols: h2cOnly()}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
		t.Fatalf("proto %s status %d", resp.Proto, resp.StatusCode)
	}
}

func h2cOnly() *http.Protocols {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &p
}
