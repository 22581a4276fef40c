//go:build linux

package tcpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/filters"
	_ "github.com/siftmesh/sift/filters/connlimit"
	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/internal/testnet"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/upstream"
)

// Tests of parked connections (relay.go, splice_linux.go): connections are
// served by a real listener (listener.Manager), which lets tcp_proxy detach
// them, so that the listener's own bookkeeping is what is checked. None is
// parallel: they count the process's goroutines and parked sockets.

func init() { streaminfo.SetConnHook(records) }

// records counts the finished-connection records per stat prefix (the
// access-log and metrics path: streaminfo's process-wide hook).
var records = &recordCounter{byPrefix: map[string][]streaminfo.Conn{}}

type recordCounter struct {
	mu       sync.Mutex
	byPrefix map[string][]streaminfo.Conn
}

func (r *recordCounter) OnConn(c *streaminfo.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byPrefix[c.StatPrefix] = append(r.byPrefix[c.StatPrefix], *c)
}

func (r *recordCounter) reset(prefix string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.byPrefix, prefix)
}

func (r *recordCounter) get(prefix string) []streaminfo.Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]streaminfo.Conn(nil), r.byPrefix[prefix]...)
}

// parkedProxy is a real listener on 127.0.0.1:0 with one tcp_proxy chain
// to backend, stat prefix prefix, and tcp_proxy config extra (YAML fields),
// after the connection filters before (YAML filters).
type parkedProxy struct {
	addr string
	mgr  *listener.Manager
	l    *listener.Listener
}

func newParkedProxy(t *testing.T, prefix, backend, extra string, before ...string) *parkedProxy {
	t.Helper()
	records.reset(prefix) // a test's earlier run (-count) left its records
	tp := `{name: tcp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: ` +
		prefix + `, cluster: b` + extra + `}}`
	b, err := bootstrap.Parse([]byte(`static_resources: {listeners: [{name: ` + prefix + `, address: {socket_address: {address: 127.0.0.1, port_value: 0}}, ` +
		`filter_chains: [{filters: [` + strings.Join(append(before, tp), ", ") + `]}]}]}`))
	if err != nil {
		t.Fatalf("test YAML: %v", err)
	}
	clusters := upstream.NewManager()
	if _, err := clusters.Replace([]*upstream.Cluster{staticCluster(t, "b", nil, backend)}); err != nil {
		t.Fatal(err)
	}
	cfg, err := listener.Decode(b.GetStaticResources().GetListeners()[0], filters.BuildContext{ListenerName: prefix, Clusters: clusters, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	m := listener.NewManager(quiet, 100*time.Millisecond)
	if err := m.Apply([]*listener.Config{cfg}); err != nil {
		t.Fatal(err)
	}
	l := m.Get(prefix)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testnet.Limit)
		defer cancel()
		m.Shutdown(ctx)
	})
	return &parkedProxy{addr: l.Addr().String(), mgr: m, l: l}
}

// lineEcho is a backend that answers each line with "echo <line>", and at
// the client's EOF writes "bye" and closes.
func lineEcho(t *testing.T) string {
	return testnet.Backend(t, func(c net.Conn) {
		s := bufio.NewScanner(c)
		for s.Scan() {
			fmt.Fprintf(c, "echo %s\n", s.Text())
		}
		io.WriteString(c, "bye\n")
	})
}

// relayGoroutines counts the goroutines running tcp_proxy connections.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "tcpproxy.(*direction)") || strings.Contains(g, "tcpproxy.(*Proxy).ServeConn") {
			count++
		}
	}
	return count
}

// waitFor polls cond until it holds, failing the test after testnet.Limit.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testnet.Limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exchange writes line and expects "echo line" back.
func exchange(t *testing.T, c net.Conn, r *bufio.Reader, line string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(testnet.Limit))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := r.ReadString('\n')
	if err != nil || got != "echo "+line+"\n" {
		t.Fatalf("answer to %q: %q, %v", line, got, err)
	}
}

type client struct {
	c *net.TCPConn
	r *bufio.Reader
}

func dialClients(t *testing.T, addr string, n int) []client {
	cs := make([]client, n)
	for i := range cs {
		c := testnet.Dial(t, addr)
		cs[i] = client{c, bufio.NewReader(c)}
		exchange(t, c, cs[i].r, fmt.Sprintf("hello %d", i))
	}
	return cs
}

func TestParkedConnectionsHoldNoGoroutines(t *testing.T) {
	const n = 200
	before := runtime.NumGoroutine()
	p := newParkedProxy(t, "park_many", lineEcho(t), "")
	cs := dialClients(t, p.addr, n)
	// Every connection went quiet after its exchange: all park, the
	// goroutines that served them end.
	waitFor(t, "idle connections to park", func() bool { return relayGoroutines() == 0 })
	after := runtime.NumGoroutine()
	// The backend still holds a goroutine per connection; the proxy none.
	t.Logf("goroutines: %d before, %d with %d parked connections (the backend's %d included)", before, after, n, n)
	if after > before+n+20 {
		t.Errorf("%d goroutines with %d parked connections, started with %d: the proxy holds goroutines for parked connections", after, n, before)
	}
	if got := p.l.Stats().Active.Load(); got != n {
		t.Errorf("listener Active = %d with %d parked connections, want %d", got, n, n)
	}
	// Each still carries bytes both ways when woken, in any order.
	for i := n - 1; i >= 0; i-- {
		exchange(t, cs[i].c, cs[i].r, fmt.Sprintf("again %d", i))
	}
	waitFor(t, "connections to park again", func() bool { return relayGoroutines() == 0 })
	for i, c := range cs {
		c.c.CloseWrite()
		c.c.SetDeadline(time.Now().Add(testnet.Limit))
		if rest, err := io.ReadAll(c.r); err != nil || string(rest) != "bye\n" {
			t.Fatalf("connection %d after the client's half-close: %q, %v", i, rest, err)
		}
	}
	waitFor(t, "every connection to end", func() bool { return p.l.Stats().Active.Load() == 0 })
	waitFor(t, "every record", func() bool { return len(records.get("park_many")) == n })
	for _, r := range records.get("park_many") {
		if r.Err != nil {
			t.Errorf("connection from %v ended with %v, want a clean end", r.Info.RemoteAddr, r.Err)
		}
		if want := int64(len("hello 000\nagain 000\n")); r.BytesReceived < want-4 {
			t.Errorf("connection from %v: %d bytes received, want about %d", r.Info.RemoteAddr, r.BytesReceived, want)
		}
	}
	waitFor(t, "no relay goroutine", func() bool { return relayGoroutines() == 0 })
}

func TestParkedServerSpeaksFirst(t *testing.T) {
	// The backend writes while both directions are parked: up→down wakes.
	speak := make(chan struct{})
	backend := testnet.Backend(t, func(c net.Conn) {
		io.WriteString(c, "220 hello\n")
		<-speak
		io.WriteString(c, "NOTICE late\n")
		b := make([]byte, 16)
		n, _ := c.Read(b)
		fmt.Fprintf(c, "got %s", b[:n])
	})
	p := newParkedProxy(t, "park_server", backend, "")
	c := testnet.Dial(t, p.addr)
	r := bufio.NewReader(c)
	c.SetDeadline(time.Now().Add(testnet.Limit))
	if l, err := r.ReadString('\n'); err != nil || l != "220 hello\n" {
		t.Fatalf("greeting: %q, %v", l, err)
	}
	waitForParked(t, p)
	close(speak)
	if l, err := r.ReadString('\n'); err != nil || l != "NOTICE late\n" {
		t.Fatalf("server's line while parked: %q, %v", l, err)
	}
	io.WriteString(c, "ok\n")
	if l, err := r.ReadString('\n'); err != nil || l != "got ok\n" {
		t.Fatalf("answer: %q, %v", l, err)
	}
}

// waitForParked waits until p's one connection is alive with both
// directions parked in the reactor and no goroutine.
func waitForParked(t *testing.T, p *parkedProxy) {
	t.Helper()
	waitFor(t, "the connection to park", func() bool {
		return p.l.Stats().Active.Load() == 1 && parked() == 2 && relayGoroutines() == 0
	})
}

// parked returns how many sockets are parked in the reactor. The tests of
// parking run one at a time (none is parallel), so these are theirs.
func parked() int {
	r, err := reactor.Default()
	if err != nil {
		panic(err)
	}
	return r.Armed()
}

func TestParkedHalfClose(t *testing.T) {
	t.Run("client", func(t *testing.T) {
		p := newParkedProxy(t, "park_hc_client", lineEcho(t), "")
		c := testnet.Dial(t, p.addr)
		r := bufio.NewReader(c)
		exchange(t, c, r, "one")
		waitForParked(t, p)
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		if rest, err := io.ReadAll(r); err != nil || string(rest) != "bye\n" {
			t.Fatalf("after the client's half-close while parked: %q, %v", rest, err)
		}
		waitFor(t, "the record", func() bool { return len(records.get("park_hc_client")) == 1 })
		if rec := records.get("park_hc_client")[0]; rec.Err != nil || rec.BytesReceived != 4 || rec.BytesSent != 13 {
			t.Errorf("record: err %v, received %d, sent %d; want nil, 4, 13", rec.Err, rec.BytesReceived, rec.BytesSent)
		}
	})
	t.Run("server", func(t *testing.T) {
		half := make(chan struct{})
		got := make(chan string, 1)
		backend := testnet.Backend(t, func(c net.Conn) {
			io.WriteString(c, "hi\n")
			<-half
			c.(*net.TCPConn).CloseWrite()
			b, _ := io.ReadAll(c)
			got <- string(b)
		})
		p := newParkedProxy(t, "park_hc_server", backend, "")
		c := testnet.Dial(t, p.addr)
		r := bufio.NewReader(c)
		c.SetDeadline(time.Now().Add(testnet.Limit))
		if l, err := r.ReadString('\n'); err != nil || l != "hi\n" {
			t.Fatalf("greeting: %q, %v", l, err)
		}
		waitForParked(t, p)
		close(half)
		if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
			t.Fatalf("after the server's half-close while parked: %q, %v; want EOF", rest, err)
		}
		// The client can still send; wait until the upstream direction
		// parks again before it does.
		waitFor(t, "the client's direction to park", func() bool { return parked() == 1 })
		io.WriteString(c, "late words")
		c.CloseWrite()
		select {
		case s := <-got:
			if s != "late words" {
				t.Errorf("backend received %q after its half-close, want %q", s, "late words")
			}
		case <-time.After(testnet.Limit):
			t.Fatal("the backend never saw the client's EOF")
		}
		waitFor(t, "the connection to end", func() bool { return p.l.Stats().Active.Load() == 0 })
	})
}

func TestParkedPeerReset(t *testing.T) {
	ended := make(chan error, 1)
	backend := testnet.Backend(t, func(c net.Conn) {
		s := bufio.NewScanner(c)
		for s.Scan() {
			fmt.Fprintf(c, "echo %s\n", s.Text())
		}
		ended <- s.Err()
	})
	p := newParkedProxy(t, "park_rst", backend, "")
	c := testnet.Dial(t, p.addr)
	exchange(t, c, bufio.NewReader(c), "x")
	waitForParked(t, p)
	c.SetLinger(0) // close sends a reset
	c.Close()
	select {
	case <-ended: // EOF or reset: the proxy closed its upstream
	case <-time.After(testnet.Limit):
		t.Fatal("the backend's connection outlived the client's reset")
	}
	waitFor(t, "the connection to end", func() bool { return p.l.Stats().Active.Load() == 0 })
	waitFor(t, "the record", func() bool { return len(records.get("park_rst")) == 1 })
	if rec := records.get("park_rst")[0]; rec.Err == nil || !expectedEnd(rec.Err) {
		t.Errorf("record error %v, want a reset", rec.Err)
	}
	if got := len(records.get("park_rst")); got != 1 {
		t.Errorf("%d records, want 1", got)
	}
}

func TestParkedIdleTimeout(t *testing.T) {
	p := newParkedProxy(t, "park_idle", lineEcho(t), `, idle_timeout: 1s`)
	c := testnet.Dial(t, p.addr)
	r := bufio.NewReader(c)
	exchange(t, c, r, "x")
	waitForParked(t, p)
	// idle_timeout closes the parked connection: the client reads EOF.
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("parked connection after idle_timeout: %q, %v; want EOF", rest, err)
	}
	waitFor(t, "the connection to end", func() bool { return p.l.Stats().Active.Load() == 0 })
	waitFor(t, "the record", func() bool { return len(records.get("park_idle")) == 1 })
	if rec := records.get("park_idle")[0]; !errors.Is(rec.Err, net.ErrClosed) {
		t.Errorf("record error %v, want the closed connection", rec.Err)
	}
	if parked() != 0 {
		t.Errorf("%d directions still parked", parked())
	}
}

func TestParkedConnectionsDrained(t *testing.T) {
	const n = 20
	p := newParkedProxy(t, "park_drain", lineEcho(t), "")
	cs := dialClients(t, p.addr, n)
	waitFor(t, "the connections to park", func() bool { return parked() == 2*n })
	// The listener is removed: its generation drains (100 ms here), then
	// its connections are closed — parked ones included.
	if err := p.mgr.Apply(nil); err != nil {
		t.Fatal(err)
	}
	for i, c := range cs {
		c.c.SetDeadline(time.Now().Add(testnet.Limit))
		if rest, err := io.ReadAll(c.r); err != nil || len(rest) != 0 {
			t.Fatalf("connection %d after drain: %q, %v; want EOF", i, rest, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), testnet.Limit)
	defer cancel()
	p.mgr.Shutdown(ctx) // returns once every connection of every generation has ended
	if got := p.l.Stats().Active.Load(); got != 0 {
		t.Errorf("Active = %d after drain, want 0", got)
	}
	if got := len(records.get("park_drain")); got != n {
		t.Errorf("%d records after drain, want %d (exactly one per connection)", got, n)
	}
	if parked() != 0 {
		t.Errorf("%d directions still parked", parked())
	}
}

func TestParkedMaxDuration(t *testing.T) {
	p := newParkedProxy(t, "park_maxdur", lineEcho(t), `, max_downstream_connection_duration: 1s`)
	c := testnet.Dial(t, p.addr)
	r := bufio.NewReader(c)
	exchange(t, c, r, "x")
	waitForParked(t, p)
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Fatalf("parked connection after max_downstream_connection_duration: %q, %v; want EOF", rest, err)
	}
	waitFor(t, "the connection to end", func() bool { return p.l.Stats().Active.Load() == 0 })
	waitFor(t, "the record", func() bool { return len(records.get("park_maxdur")) == 1 })
}

func TestParkedConnectionLimit(t *testing.T) {
	// connection_limit's count is released when a parked connection ends,
	// not when ServeConn returns.
	p := newParkedProxy(t, "park_limit", lineEcho(t), "", `{name: limit, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: park_limit, max_connections: 1}}`)
	first := testnet.Dial(t, p.addr)
	r := bufio.NewReader(first)
	exchange(t, first, r, "first")
	waitForParked(t, p)
	refused := testnet.Dial(t, p.addr)
	refused.SetDeadline(time.Now().Add(testnet.Limit))
	if b, err := io.ReadAll(refused); err != nil || len(b) != 0 {
		t.Fatalf("second connection while the first is parked: %q, %v; want it closed", b, err)
	}
	first.CloseWrite()
	if rest, err := io.ReadAll(r); err != nil || string(rest) != "bye\n" {
		t.Fatalf("first connection's end: %q, %v", rest, err)
	}
	waitFor(t, "the first connection to end", func() bool { return p.l.Stats().Active.Load() == 0 })
	third := testnet.Dial(t, p.addr)
	exchange(t, third, bufio.NewReader(third), "third")
}
