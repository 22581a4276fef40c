package tcpproxy

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	peakewmav1 "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/upstream"
)

// A tcp_proxy whose cluster asks for peak EWMA sends connections to the
// endpoint that connects fast, over real sockets end to end: client → proxy
// → backend, the backend's name read back through the proxy. Least request
// over the same endpoints is the control: with every connection closed before
// the next, it spreads them.
func TestPeakEWMAPrefersFastEndpoint(t *testing.T) {
	t.Parallel()
	const conns = 40
	tests := []struct {
		name     string
		policy   proto.Message
		wantSlow func(n int) bool
	}{
		// The slow endpoint gets a connection while nothing is known of it
		// (or when a fast connect stalls on a busy machine); its connect
		// time then keeps it out.
		{"peak EWMA", &peakewmav1.PeakEwma{DefaultRtt: durationpb.New(time.Millisecond)}, func(n int) bool { return n <= 8 }},
		// About half; fewer than 6 of 40 has odds of about 1 in 200,000.
		{"least request", &leastrequestv3.LeastRequest{}, func(n int) bool { return n >= 6 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fast, slow := nameServer(t, "fast"), nameServer(t, "slow")
			addr := startProxy(t, cluster(t, tt.policy, fast, slow), slowDialer(slow, 250*time.Millisecond))
			got := map[string]int{}
			for range conns {
				got[roundTrip(t, addr)]++
			}
			t.Logf("connections: %v", got)
			if !tt.wantSlow(got["slow"]) {
				t.Errorf("connections: %v", got)
			}
			if diff := cmp.Diff(conns, got["fast"]+got["slow"]); diff != "" {
				t.Errorf("connections answered (-want +got):\n%s", diff)
			}
		})
	}
}

// nameServer writes name to each connection and closes it.
func nameServer(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, name)
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr().String()
}

// cluster is a STATIC cluster over addrs balanced by policy.
func cluster(t *testing.T, policy proto.Message, addrs ...string) *clusterv3.Cluster {
	t.Helper()
	var lbs []*endpointv3.LbEndpoint
	for _, a := range addrs {
		ap := netip.MustParseAddrPort(a)
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: ap.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())}}}},
		}}})
	}
	tc, err := anypb.New(policy)
	if err != nil {
		t.Fatal(err)
	}
	return &clusterv3.Cluster{
		Name:           "backends",
		ConnectTimeout: durationpb.New(5 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "backends", Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}},
		LoadBalancingPolicy: &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
			{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "p", TypedConfig: tc}},
		}},
	}
}

// slowDialer delays connecting to addr by delay (its Control hook runs just
// before connect(2)); other addresses connect at once. The connection itself
// is real.
func slowDialer(addr string, delay time.Duration) *net.Dialer {
	return &net.Dialer{KeepAlive: -1, ControlContext: func(ctx context.Context, _, address string, _ syscall.RawConn) error {
		if address != addr {
			return nil
		}
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
}

// startProxy serves a tcp_proxy to pb on a new 127.0.0.1:0 listener until the
// test ends, and returns the listener's address.
func startProxy(t *testing.T, pb *clusterv3.Cluster, dialer *net.Dialer) string {
	t.Helper()
	c, err := upstream.Build(pb, upstream.Options{Dialer: dialer})
	if err != nil {
		t.Fatal(err)
	}
	m := upstream.NewManager()
	if _, err := m.Replace([]*upstream.Cluster{c}); err != nil {
		t.Fatal(err)
	}
	p, err := New(&tcpproxyv3.TcpProxy{StatPrefix: "test", ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: pb.GetName()}},
		filters.BuildContext{Clusters: m})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			info := &filters.ConnInfo{RemoteAddr: netip.MustParseAddrPort(conn.RemoteAddr().String()), AcceptedAt: time.Now()}
			wg.Go(func() { p.ServeConn(ctx, filters.NewDownstream(conn, nil, info, nil)) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		cancel()
		wg.Wait()
		c.Close()
	})
	return ln.Addr().String()
}

// roundTrip connects to the proxy and returns what the backend said.
func roundTrip(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The deadline only keeps a broken test from hanging.
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading through the proxy: %v", err)
	}
	return string(b)
}
