package tcpproxy

import (
	"context"
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
	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/internal/testnet"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/upstream"
)

// Every connection, backend and proxy goroutine a test starts must have
// ended when the tests are done.
// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

var quiet = slog.New(slog.DiscardHandler)

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
	return serveOn(t, p, ln, peek)
}

// serveOn is serve on ln, which may be other than TCP.
func serveOn(t *testing.T, p *Proxy, ln net.Listener, peek int) *front {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &front{addr: ln.Addr().String(), cancel: cancel, served: make(chan struct{}, 1000)}
	testnet.Serve(t, ln, func(c net.Conn) {
		defer func() { f.served <- struct{}{} }()
		var peeked []byte
		if peek > 0 {
			pc := listener.NewPeekConn(c, 64<<10, time.Now().Add(testnet.Limit))
			if _, err := pc.Peek(peek, time.Time{}); err != nil {
				t.Errorf("peeking %d bytes: %v", peek, err)
				return
			}
			var err error
			if peeked, err = pc.Release(); err != nil {
				t.Error(err)
			}
		}
		info := &filters.ConnInfo{LocalAddr: addrPort(c.LocalAddr()), RemoteAddr: addrPort(c.RemoteAddr()), AcceptedAt: time.Now()}
		p.ServeConn(ctx, filters.NewDownstream(c, peeked, info, nil))
	})
	// Registered after Serve's cleanup, so it runs first: a connection
	// waiting to retry its connect ends only with its context.
	t.Cleanup(cancel)
	return f
}

// addrPort is a's address and port; the zero value for a non-TCP address.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}

// waitServed waits until ServeConn has returned for one more connection.
func (f *front) waitServed(t *testing.T) {
	t.Helper()
	select {
	case <-f.served:
	case <-time.After(testnet.Limit):
		t.Fatal("ServeConn did not return")
	}
}

// greeter is a server-speaks-first backend: it sends greeting, then reads
// until the client ends.
func greeter(t *testing.T, greeting string) string {
	return testnet.Backend(t, func(c net.Conn) {
		io.WriteString(c, greeting)
		io.Copy(io.Discard, c)
	})
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
	deadline := time.After(testnet.Limit)
	for d.count(addr) < n {
		select {
		case <-d.changed:
		case <-deadline:
			t.Fatalf("%d connect attempts to %s, want at least %d", d.count(addr), addr, n)
		}
	}
}
