package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/upstream"
)

// Every connection, backend and proxy goroutine a test starts must have
// ended when the tests are done.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// limit bounds every blocking step of a test: it keeps a broken test from
// hanging and is no assertion about speed.
const limit = 30 * time.Second

// build decodes a TcpProxy written as protojson and builds it through the
// filter registry, as a listener does, against clusters.
func build(js string, clusters ...*upstream.Cluster) (*Proxy, error) {
	cfg := &tcpproxyv3.TcpProxy{}
	if err := protojson.Unmarshal([]byte(js), cfg); err != nil {
		return nil, fmt.Errorf("test config: %w", err)
	}
	typed, err := anypb.New(cfg)
	if err != nil {
		return nil, err
	}
	m := upstream.NewManager()
	if _, err := m.Replace(clusters); err != nil {
		return nil, err
	}
	f, err := filters.BuildNetworkFilter(typed, filters.BuildContext{ListenerName: "test", Clusters: m, Logger: quiet})
	if err != nil {
		return nil, err
	}
	return f.(*Proxy), nil
}

// newProxy is build, failing the test on error.
func newProxy(t *testing.T, js string, clusters ...*upstream.Cluster) *Proxy {
	t.Helper()
	p, err := build(js, clusters...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// staticCluster builds a STATIC round-robin cluster over addrs ("ip:port"),
// dialled with d (nil: the cluster's default dialer).
func staticCluster(t *testing.T, name string, d *net.Dialer, addrs ...string) *upstream.Cluster {
	t.Helper()
	var eps []string
	for _, a := range addrs {
		ap := netip.MustParseAddrPort(a)
		eps = append(eps, fmt.Sprintf(`{"endpoint": {"address": {"socketAddress": {"address": %q, "portValue": %d}}}}`, ap.Addr(), ap.Port()))
	}
	js := fmt.Sprintf(`{"name": %q, "type": "STATIC", "connectTimeout": "5s", "loadAssignment": {"clusterName": %q, "endpoints": [{"lbEndpoints": [%s]}]}}`,
		name, name, strings.Join(eps, ", "))
	pb := &clusterv3.Cluster{}
	if err := protojson.Unmarshal([]byte(js), pb); err != nil {
		t.Fatal(err)
	}
	c, err := upstream.Build(pb, upstream.Options{Dialer: d, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// front is a real listener on 127.0.0.1 whose connections a Proxy serves,
// handed over as the listener package hands them: the first peek bytes are
// read through a listener.PeekConn and passed on as the Downstream's peeked
// bytes, not yet delivered.
type front struct {
	addr string
	// cancel ends the context of every connection (the listener
	// generation's: drain time over).
	cancel context.CancelFunc
	// served receives once per connection when ServeConn has returned.
	served chan struct{}
}

func serve(t *testing.T, p *Proxy, peek int) *front {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &front{addr: ln.Addr().String(), cancel: cancel, served: make(chan struct{}, 1000)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { f.served <- struct{}{} }()
				var peeked []byte
				if peek > 0 {
					pc := listener.NewPeekConn(c, 64<<10, time.Now().Add(limit))
					if _, err := pc.Peek(peek, time.Time{}); err != nil {
						t.Errorf("peeking %d bytes: %v", peek, err)
						c.Close()
						return
					}
					if peeked, err = pc.Release(); err != nil {
						t.Error(err)
					}
				}
				info := &filters.ConnInfo{LocalAddr: addrPort(c.LocalAddr()), RemoteAddr: addrPort(c.RemoteAddr()), AcceptedAt: time.Now()}
				p.ServeConn(ctx, filters.NewDownstream(c, peeked, info, nil))
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return f
}

func addrPort(a net.Addr) netip.AddrPort { return a.(*net.TCPAddr).AddrPort() }

// waitServed waits until ServeConn has returned for one more connection.
func (f *front) waitServed(t *testing.T) {
	t.Helper()
	select {
	case <-f.served:
	case <-time.After(limit):
		t.Fatal("ServeConn did not return")
	}
}

// backend listens on 127.0.0.1 and runs handle on each connection, which it
// closes afterwards. Connections still open when the test ends are closed.
func backend(t *testing.T, handle func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveBackend(t, ln, handle)
	return ln.Addr().String()
}

func serveBackend(t *testing.T, ln net.Listener, handle func(*net.TCPConn)) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// greeter is a server-speaks-first backend: it sends greeting, then reads
// until the client ends.
func greeter(t *testing.T, greeting string) string {
	return backend(t, func(c *net.TCPConn) {
		io.WriteString(c, greeting)
		io.Copy(io.Discard, c)
	})
}

// refusingAddr returns an address on which nothing listens: connecting to
// it is refused.
func refusingAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// dialCounter is a real dialer that counts the connection attempts to each
// address (its Control hook runs before every connect).
type dialCounter struct {
	mu       sync.Mutex
	attempts map[string]int
	changed  chan struct{} // receives after every attempt
}

func newDialCounter() *dialCounter {
	return &dialCounter{attempts: map[string]int{}, changed: make(chan struct{}, 1)}
}

func (d *dialCounter) dialer() *net.Dialer {
	return &net.Dialer{KeepAlive: -1, Control: func(_, address string, _ syscall.RawConn) error {
		d.mu.Lock()
		d.attempts[address]++
		d.mu.Unlock()
		select {
		case d.changed <- struct{}{}:
		default:
		}
		return nil
	}}
}

func (d *dialCounter) count(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attempts[addr]
}

// waitAttempts waits until at least n attempts were made to addr.
func (d *dialCounter) waitAttempts(t *testing.T, addr string, n int) {
	t.Helper()
	deadline := time.After(limit)
	for d.count(addr) < n {
		select {
		case <-d.changed:
		case <-deadline:
			t.Fatalf("%d connect attempts to %s, want at least %d", d.count(addr), addr, n)
		}
	}
}

// dial connects to addr; the connection is closed when the test ends.
func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readAll reads c until EOF, failing the test if that takes longer than
// limit; a reset after the bytes counts as the end too.
func readAll(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	if err != nil {
		t.Fatalf("reading until EOF: %v (read %q)", err, b)
	}
	return string(b)
}
