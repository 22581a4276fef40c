package originaldst

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/netns"
	"github.com/siftmesh/sift/internal/reactor"
	"github.com/siftmesh/sift/internal/testnet"
	"github.com/siftmesh/sift/listener"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

// TestBuild: the filter is built from its typed config (which has no
// fields) through the registry, and establishes the destination only.
func TestBuild(t *testing.T) {
	t.Parallel()
	typed, err := anypb.New(&originaldstv3.OriginalDst{})
	if err != nil {
		t.Fatal(err)
	}
	f, err := filters.BuildListenerFilter(typed, filters.BuildContext{})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Provides(); got != filters.FieldDestination {
		t.Errorf("Provides() = %04b, want FieldDestination", got)
	}
}

func TestSockaddrDecoding(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		b    []byte // struct sockaddr_in or sockaddr_in6, as the kernel fills it
		v6   bool
		want netip.AddrPort
	}{
		{
			name: "sockaddr_in",
			b:    []byte{2, 0, 0x1f, 0x90, 10, 96, 0, 99, 0, 0, 0, 0, 0, 0, 0, 0},
			want: netip.MustParseAddrPort("10.96.0.99:8080"),
		},
		{
			name: "sockaddr_in6",
			b: []byte{10, 0, 0x01, 0xbb, 0, 0, 0, 0,
				0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0},
			v6:   true,
			want: netip.MustParseAddrPort("[2001:db8::1]:443"),
		},
		{
			name: "IPv4-mapped sockaddr_in6 is IPv4",
			b: []byte{10, 0, 0, 80, 0, 0, 0, 0,
				0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7, 0, 0, 0, 0},
			v6:   true,
			want: netip.MustParseAddrPort("192.0.2.7:80"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			decode := ipv4Addr
			if tt.v6 {
				decode = ipv6Addr
			}
			if got := decode(tt.b); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// cmpAddrPort compares netip.AddrPorts, whose fields are unexported.
var cmpAddrPort = cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })

// restored is what OnAccept leaves in a ConnInfo.
type restored struct {
	LocalAddr         netip.AddrPort
	LocalAddrRestored bool
}

// onAccept runs the filter on the accepted connection c, read through a
// listener.PeekConn as the listener passes it.
func onAccept(t *testing.T, c net.Conn) restored {
	t.Helper()
	info := &filters.ConnInfo{}
	if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
		info.LocalAddr = ta.AddrPort()
	}
	if err := (Filter{}).OnAccept(listener.NewPeekConn(c, 1024, time.Time{}), info); err != nil {
		t.Fatalf("OnAccept: %v", err)
	}
	if n := len(info.ApplicationProtocols) + len(info.ServerName) + len(info.TransportProtocol); n != 0 {
		t.Errorf("OnAccept set detection fields: %+v", info)
	}
	return restored{info.LocalAddr, info.LocalAddrRestored}
}

// TestNotRedirected: a connection that reached the listener directly keeps
// its local address, whatever the family or socket type.
func TestNotRedirected(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		network string
		address func(t *testing.T) string
	}{
		{name: "IPv4", network: "tcp4", address: func(*testing.T) string { return "127.0.0.1:0" }},
		{name: "IPv6", network: "tcp6", address: func(*testing.T) string { return "[::1]:0" }},
		{name: "not TCP", network: "unix", address: func(t *testing.T) string { return filepath.Join(t.TempDir(), "s") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen(tt.network, tt.address(t))
			if err != nil {
				t.Skipf("no %s listener here: %v", tt.name, err)
			}
			defer ln.Close()
			c := testnet.Accept(t, ln, nil)
			var want restored
			if ta, ok := c.LocalAddr().(*net.TCPAddr); ok {
				want.LocalAddr = ta.AddrPort()
			}
			if diff := cmp.Diff(want, onAccept(t, c), cmpAddrPort); diff != "" {
				t.Errorf("ConnInfo (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRedirected runs the filter on connections that an iptables REDIRECT
// rule (ip6tables for IPv6) sent to the listener, inside a network namespace
// of its own.
func TestRedirected(t *testing.T) {
	if err := netns.Check(); err != nil {
		t.Skipf("skipped: the REDIRECT test runs in a network namespace with iptables: %v", err)
	}
	t.Parallel()
	ns, err := netns.Add(fmt.Sprintf("sift-originaldst-%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	// connect() needs a route to the redirected ranges before the OUTPUT
	// rules rewrite the destination (a veth pair with both ends here;
	// nothing is sent on it).
	for _, args := range [][]string{
		{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"link", "set", "v0", "up"}, {"link", "set", "v1", "up"},
		{"addr", "add", "10.98.0.1/24", "dev", "v0"},
		{"route", "add", "10.96.0.0/16", "dev", "v0"},
		{"-6", "addr", "add", "fd00:98::1/64", "dev", "v0", "nodad"},
		{"-6", "route", "add", "fd00:96::/64", "dev", "v0"},
	} {
		if err := ns.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	redirect := []string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001", "-d"}
	if err := ns.Iptables(append(redirect, "10.96.0.0/16")...); err != nil {
		t.Fatal(err)
	}
	ip6tables, err := exec.LookPath("ip6tables")
	if err == nil {
		err = ns.Run(append([]string{ip6tables, "-w"}, append(redirect, "fd00:96::/64")...)...)
	}
	v6 := err == nil
	if !v6 {
		t.Logf("IPv6 cases skipped: no ip6tables REDIRECT: %v", err)
	}
	listeners := map[string]net.Listener{}
	for _, addr := range []string{"127.0.0.1:15001", "[::1]:15001"} {
		ln, err := ns.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		listeners[addr] = ln
	}
	tests := []struct {
		name     string
		listener string
		dst      string
		ipv6     bool
		want     restored
	}{
		{
			name:     "IPv4 redirected",
			listener: "127.0.0.1:15001",
			dst:      "10.96.0.99:8080",
			want:     restored{LocalAddr: netip.MustParseAddrPort("10.96.0.99:8080"), LocalAddrRestored: true},
		},
		{
			name:     "IPv4 direct",
			listener: "127.0.0.1:15001",
			dst:      "127.0.0.1:15001",
			want:     restored{LocalAddr: netip.MustParseAddrPort("127.0.0.1:15001")},
		},
		{
			name:     "IPv6 redirected",
			listener: "[::1]:15001",
			dst:      "[fd00:96::99]:8080",
			ipv6:     true,
			want:     restored{LocalAddr: netip.MustParseAddrPort("[fd00:96::99]:8080"), LocalAddrRestored: true},
		},
		{
			name:     "IPv6 direct",
			listener: "[::1]:15001",
			dst:      "[::1]:15001",
			ipv6:     true,
			want:     restored{LocalAddr: netip.MustParseAddrPort("[::1]:15001")},
		},
	}
	for _, tt := range tests { // serially: the listeners are shared
		if tt.ipv6 && !v6 {
			continue
		}
		c := testnet.Accept(t, listeners[tt.listener], func() (net.Conn, error) { return ns.DialContext(context.Background(), "tcp", tt.dst) })
		if diff := cmp.Diff(tt.want, onAccept(t, c), cmpAddrPort); diff != "" {
			t.Errorf("%s: ConnInfo (-want +got):\n%s", tt.name, diff)
		}
	}
}
