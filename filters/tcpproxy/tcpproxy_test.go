package tcpproxy

import (
	"bufio"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/testnet"
)

// echoAtEOF reads until the client's EOF, then sends back everything it
// read and closes: what the client gets is exactly what reached the backend.
func echoAtEOF(t *testing.T) string {
	return testnet.Backend(t, func(c net.Conn) {
		b, err := io.ReadAll(c)
		if err != nil {
			t.Errorf("backend: %v", err)
		}
		c.Write(b)
	})
}

func TestPeekedBytesDeliveredFirstExactlyOnce(t *testing.T) {
	t.Parallel()
	large := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range large {
		large[i] = byte(rng.Uint32())
	}
	tests := []struct {
		name    string
		payload []byte
		peek    int // bytes read before the proxy takes the connection
	}{
		{name: "nothing peeked", payload: []byte("hello, world")},
		{name: "a prefix peeked", payload: []byte("hello, world"), peek: 5},
		{name: "everything peeked", payload: []byte("hello"), peek: 5},
		{name: "1 MiB after a peeked prefix", payload: large, peek: 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newProxy(t, `{"statPrefix": "s", "cluster": "echo"}`, staticCluster(t, "echo", nil, echoAtEOF(t)))
			c := testnet.Dial(t, serve(t, p, tt.peek).addr)
			go func() {
				c.Write(tt.payload)
				c.CloseWrite()
			}()
			got := testnet.ReadAll(t, c)
			if got != string(tt.payload) {
				t.Errorf("the backend received %d bytes (prefix %q), want the %d sent (prefix %q)",
					len(got), prefix(got), len(tt.payload), prefix(string(tt.payload)))
			}
		})
	}
}

func prefix(s string) string { return s[:min(len(s), 16)] }

func TestHalfClose(t *testing.T) {
	t.Parallel()
	t.Run("client first", func(t *testing.T) {
		t.Parallel()
		// The client's FIN reaches the backend, whose answer still flows back.
		p := newProxy(t, `{"statPrefix": "s", "cluster": "echo"}`, staticCluster(t, "echo", nil, echoAtEOF(t)))
		c := testnet.Dial(t, serve(t, p, 0).addr)
		io.WriteString(c, "request")
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if got := testnet.ReadAll(t, c); got != "request" {
			t.Errorf("answer after the client's half-close = %q, want %q", got, "request")
		}
	})
	t.Run("server first", func(t *testing.T) {
		t.Parallel()
		// The backend's FIN reaches the client, which can still send.
		received := make(chan string, 1)
		addr := testnet.Backend(t, func(c net.Conn) {
			io.WriteString(c, "220 bye\r\n")
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Error(err)
			}
			b, _ := io.ReadAll(c)
			received <- string(b)
		})
		p := newProxy(t, `{"statPrefix": "s", "cluster": "b"}`, staticCluster(t, "b", nil, addr))
		c := testnet.Dial(t, serve(t, p, 0).addr)
		if got := testnet.ReadAll(t, c); got != "220 bye\r\n" {
			t.Fatalf("client read %q before EOF", got)
		}
		io.WriteString(c, "QUIT\r\n")
		c.CloseWrite()
		select {
		case got := <-received:
			if got != "QUIT\r\n" {
				t.Errorf("backend received %q after its half-close, want %q", got, "QUIT\r\n")
			}
		case <-time.After(testnet.Limit):
			t.Fatal("the backend never saw the client's EOF")
		}
	})
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	t.Run("a silent connection is closed", func(t *testing.T) {
		t.Parallel()
		p := newProxy(t, `{"statPrefix": "s", "cluster": "g", "idleTimeout": "0.2s"}`, staticCluster(t, "g", nil, greeter(t, "220 hi\r\n")))
		c := testnet.Dial(t, serve(t, p, 0).addr)
		if got := testnet.ReadAll(t, c); got != "220 hi\r\n" {
			t.Errorf("read %q before the close, want the greeting", got)
		}
	})
	// Traffic keeps the connection open: lines are exchanged for well over
	// the idle timeout, each gap far under it (a loaded machine running the
	// race detector can stall for a while: the margin is 50 times the
	// pacing).
	for _, network := range []string{"tcp", "unix"} {
		t.Run("traffic keeps the connection open/"+network, func(t *testing.T) {
			t.Parallel()
			lines := testnet.Backend(t, func(c net.Conn) {
				s := bufio.NewScanner(c)
				for s.Scan() {
					fmt.Fprintf(c, "got %s\n", s.Text())
				}
			})
			p := newProxy(t, `{"statPrefix": "s", "cluster": "l", "idleTimeout": "1s"}`, staticCluster(t, "l", nil, lines))
			ln, err := net.Listen(network, map[string]string{"tcp": "127.0.0.1:0", "unix": filepath.Join(t.TempDir(), "s")}[network])
			if err != nil {
				t.Fatal(err)
			}
			f := serveOn(t, p, ln, 0)
			c, err := net.Dial(network, f.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			c.SetReadDeadline(time.Now().Add(testnet.Limit))
			start := time.Now()
			for i := 0; time.Since(start) < 2500*time.Millisecond; i++ {
				fmt.Fprintf(c, "ping %d\n", i)
				if line, err := r.ReadString('\n'); err != nil || line != fmt.Sprintf("got ping %d\n", i) {
					t.Fatalf("exchange %d after %v: %q, %v", i, time.Since(start), line, err)
				}
				time.Sleep(20 * time.Millisecond) // pacing the client, not synchronising
			}
		})
	}
}

func TestMaxDownstreamConnectionDuration(t *testing.T) {
	t.Parallel()
	// A busy connection is closed too, with idle_timeout disabled.
	lines := testnet.Backend(t, func(c net.Conn) { io.Copy(c, c) })
	p := newProxy(t, `{"statPrefix": "s", "cluster": "l", "idleTimeout": "0s", "maxDownstreamConnectionDuration": "0.3s"}`,
		staticCluster(t, "l", nil, lines))
	f := serve(t, p, 0)
	c := testnet.Dial(t, f.addr)
	c.SetDeadline(time.Now().Add(testnet.Limit))
	buf := make([]byte, 4)
	for i := 0; ; i++ {
		if _, err := io.WriteString(c, "ping"); err != nil {
			break
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("still open after %v", testnet.Limit)
			}
			break // closed by the proxy
		}
		time.Sleep(10 * time.Millisecond) // pacing the client, not synchronising
	}
	f.waitServed(t)
}

func TestConnectAttempts(t *testing.T) {
	t.Parallel()
	t.Run("every attempt refused", func(t *testing.T) {
		t.Parallel()
		dead, dials := testnet.RefusingAddr(t), newDialCounter()
		p := newProxy(t, `{"statPrefix": "s", "cluster": "dead", "maxConnectAttempts": 3, "backoffOptions": {"baseInterval": "0.001s"}}`,
			staticCluster(t, "dead", dials.dialer(), dead))
		f := serve(t, p, 0)
		c := testnet.Dial(t, f.addr)
		if got := testnet.ReadAll(t, c); got != "" {
			t.Errorf("read %q, want a plain close", got)
		}
		f.waitServed(t)
		if n := dials.count(dead); n != 3 {
			t.Errorf("%d connect attempts, want max_connect_attempts 3", n)
		}
	})
	t.Run("a later attempt connects", func(t *testing.T) {
		t.Parallel()
		// The endpoint refuses until it starts listening, after the proxy
		// has tried (and backed off) a few times.
		addr, dials := testnet.RefusingAddr(t), newDialCounter()
		p := newProxy(t, `{"statPrefix": "s", "cluster": "late", "maxConnectAttempts": 1000, "backoffOptions": {"baseInterval": "0.001s", "maxInterval": "0.01s"}}`,
			staticCluster(t, "late", dials.dialer(), addr))
		c := testnet.Dial(t, serve(t, p, 0).addr)
		dials.waitAttempts(t, addr, 3)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("the refusing port was taken meanwhile: %v", err)
		}
		testnet.Serve(t, ln, func(c net.Conn) { io.WriteString(c, "220 late\r\n") })
		if got := testnet.ReadAll(t, c); got != "220 late\r\n" {
			t.Errorf("read %q, want the greeting of the endpoint once it listens", got)
		}
	})
	t.Run("each attempt may pick another endpoint", func(t *testing.T) {
		t.Parallel()
		// Round robin over [dead, alive] with two attempts: every connection lands.
		dead, alive := testnet.RefusingAddr(t), greeter(t, "220 alive\r\n")
		p := newProxy(t, `{"statPrefix": "s", "cluster": "mixed", "maxConnectAttempts": 2, "backoffOptions": {"baseInterval": "0.001s"}}`,
			staticCluster(t, "mixed", nil, dead, alive))
		f := serve(t, p, 0)
		for i := 0; i < 4; i++ {
			c := testnet.Dial(t, f.addr)
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != "220 alive\r\n" {
				t.Fatalf("connection %d: %q, %v", i, line, err)
			}
			c.Close()
		}
	})
	t.Run("cancelled while backing off", func(t *testing.T) {
		t.Parallel()
		// A base interval of an hour: only the connection's context ends the wait.
		dead, dials := testnet.RefusingAddr(t), newDialCounter()
		p := newProxy(t, `{"statPrefix": "s", "cluster": "dead", "maxConnectAttempts": 2, "backoffOptions": {"baseInterval": "3600s"}}`,
			staticCluster(t, "dead", dials.dialer(), dead))
		f := serve(t, p, 0)
		c := testnet.Dial(t, f.addr)
		dials.waitAttempts(t, dead, 1)
		f.cancel()
		f.waitServed(t)
		if got := testnet.ReadAll(t, c); got != "" {
			t.Errorf("read %q, want a plain close", got)
		}
		if n := dials.count(dead); n != 1 {
			t.Errorf("%d connect attempts, want 1 before the cancel", n)
		}
	})
	t.Run("unknown cluster", func(t *testing.T) {
		t.Parallel()
		p := newProxy(t, `{"statPrefix": "s", "cluster": "nope"}`)
		f := serve(t, p, 0)
		if got := testnet.ReadAll(t, testnet.Dial(t, f.addr)); got != "" {
			t.Errorf("read %q, want a plain close", got)
		}
	})
}

func TestWeightedClusters(t *testing.T) {
	t.Parallel()
	t.Run("picks follow the weights", func(t *testing.T) {
		t.Parallel()
		p := newProxy(t, `{"statPrefix": "s", "weightedClusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}, {"name": "c", "weight": 4}]}}`)
		const n = 80000
		got := map[string]int{}
		for range n {
			got[p.pickCluster()]++
		}
		// Expected 10000, 30000, 40000; a binomial's standard deviation is
		// under 140 here: 1000 is over 7 of them.
		for name, weight := range map[string]int{"a": 1, "b": 3, "c": 4} {
			want := n * weight / 8
			if d := got[name] - want; d < -1000 || d > 1000 {
				t.Errorf("cluster %s picked %d times in %d, want about %d", name, got[name], n, want)
			}
		}
	})
	t.Run("connections reach every cluster", func(t *testing.T) {
		t.Parallel()
		a := staticCluster(t, "a", nil, greeter(t, "a\n"))
		b := staticCluster(t, "b", nil, greeter(t, "b\n"))
		p := newProxy(t, `{"statPrefix": "s", "weightedClusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}`, a, b)
		f := serve(t, p, 0)
		seen := map[string]int{}
		// 64 connections all to one of two equal clusters: odds of 2^-63.
		for range 64 {
			c := testnet.Dial(t, f.addr)
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			seen[strings.TrimSpace(line)]++
			c.Close()
		}
		if seen["a"] == 0 || seen["b"] == 0 || len(seen) != 2 {
			t.Errorf("connections per cluster: %v, want both a and b", seen)
		}
	})
}

// TestPeekedBytesWithSplice checks the bytes cross in order when the peeked
// prefix is written by the proxy and the rest is spliced: the backend sees
// one continuous stream whatever the split.
func TestPeekedBytesWithSplice(t *testing.T) {
	t.Parallel()
	p := newProxy(t, `{"statPrefix": "s", "cluster": "echo"}`, staticCluster(t, "echo", nil, echoAtEOF(t)))
	f := serve(t, p, 3)
	for _, chunks := range [][]string{{"abc", "def"}, {"ab", "cdef"}, {"abcdef"}} {
		c := testnet.Dial(t, f.addr)
		for _, ch := range chunks {
			io.WriteString(c, ch)
			time.Sleep(time.Millisecond) // separate segments, not synchronising
		}
		c.CloseWrite()
		if got := testnet.ReadAll(t, c); got != "abcdef" {
			t.Errorf("chunks %q: backend received %q", chunks, got)
		}
	}
}
