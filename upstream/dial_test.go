package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestDialRoundRobin(t *testing.T) {
	t.Parallel()
	b1, b2, b3 := newBackend(t), newBackend(t), newBackend(t)
	c := build(t, clusterJSON(t, staticCluster("rr", "", b1.addr, b2.addr, b3.addr)), Options{})
	got := map[string]int{}
	var seq []string
	for range 9 {
		conn, err := c.Dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if conn.RemoteAddr().String() != conn.Addr {
			t.Errorf("connected to %s, Addr says %s", conn.RemoteAddr(), conn.Addr)
		}
		got[conn.Addr]++
		seq = append(seq, conn.Addr)
		defer conn.Close()
	}
	if diff := cmp.Diff(map[string]int{b1.addr: 3, b2.addr: 3, b3.addr: 3}, got); diff != "" {
		t.Errorf("connections per backend (-want +got):\n%s", diff)
	}
	for i := 3; i < len(seq); i++ {
		if seq[i] != seq[i-3] {
			t.Errorf("not a rotation: %v", seq)
			break
		}
	}
}

func TestDialWeightedRoundRobin(t *testing.T) {
	t.Parallel()
	b1, b2 := newBackend(t), newBackend(t)
	js := `{"name":"wrr","loadAssignment":{"endpoints":[{"lbEndpoints":[` +
		`{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":` + port(b1.addr) + `}}},"loadBalancingWeight":2},` +
		`{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":` + port(b2.addr) + `}}}}]}]}}`
	c := build(t, clusterJSON(t, js), Options{})
	got := map[string]int{}
	for range 6 {
		conn, err := c.Dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got[conn.Addr]++
		conn.Close()
	}
	if diff := cmp.Diff(map[string]int{b1.addr: 4, b2.addr: 2}, got); diff != "" {
		t.Errorf("connections per backend (-want +got):\n%s", diff)
	}
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// An endpoint holding many open connections gets fewer new ones.
func TestDialLeastRequest(t *testing.T) {
	t.Parallel()
	busy, idle := newBackend(t), newBackend(t)
	c := build(t, clusterJSON(t, staticCluster("lr", `"lbPolicy":"LEAST_REQUEST",`, busy.addr)), Options{rand: seeded(7)})
	dialOpen(t, c, 20)
	// The endpoint set grows (as an EDS update would): busy keeps its count.
	c.setEndpoints([]resolvedEndpoint{{addr: busy.addr, weight: 1}, {addr: idle.addr, weight: 1}})
	if diff := cmp.Diff([]int64{20, 0}, actives(c)); diff != "" {
		t.Fatalf("active counts after update (-want +got):\n%s", diff)
	}
	got := dialOpen(t, c, 20)
	// Busy is picked only when both choices fall on it: about 1 in 4.
	if got[busy.addr] > 10 || got[idle.addr] < 10 {
		t.Errorf("new connections: busy %d, idle %d; want most on idle", got[busy.addr], got[idle.addr])
	}
	if diff := cmp.Diff([]int64{20 + int64(got[busy.addr]), int64(got[idle.addr])}, actives(c)); diff != "" {
		t.Errorf("active counts (-want +got):\n%s", diff)
	}
}

// dialOpen dials c n times and counts the connections per endpoint. They
// stay open until the test ends.
func dialOpen(t *testing.T, c *Cluster, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		conn, err := c.Dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got[conn.Addr]++
		t.Cleanup(func() { conn.Close() })
	}
	return got
}

func actives(c *Cluster) []int64 {
	var out []int64
	for _, e := range c.Endpoints() {
		out = append(out, e.Active)
	}
	return out
}

func TestDialRefused(t *testing.T) {
	t.Parallel()
	addr := closedAddr(t)
	c := build(t, clusterJSON(t, staticCluster("backend", "", addr)), Options{})
	_, err := c.Dial(t.Context())
	if err == nil {
		t.Fatal("Dial succeeded")
	}
	if want := `upstream: cluster "backend": connect ` + addr + `: connection refused`; err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("errors.Is(%v, ECONNREFUSED) = false", err)
	}
	var de *DialError
	if !errors.As(err, &de) || de.Addr != addr || de.Cluster != "backend" || de.Timeout() {
		t.Errorf("DialError = %+v", de)
	}
	if diff := cmp.Diff([]int64{0}, actives(c)); diff != "" {
		t.Errorf("active counts after a failed dial (-want +got):\n%s", diff)
	}
}

// blockingDialer never connects: its Control hook waits for the dial's
// context to end, which makes connect timeouts deterministic without sending
// a packet anywhere.
func blockingDialer() *net.Dialer {
	return &net.Dialer{ControlContext: func(ctx context.Context, _, _ string, _ syscall.RawConn) error {
		<-ctx.Done()
		return ctx.Err()
	}}
}

func TestDialConnectTimeout(t *testing.T) {
	t.Parallel()
	c := build(t, clusterJSON(t, staticCluster("slow", `"connectTimeout":"0.05s",`, "127.0.0.1:9")), Options{Dialer: blockingDialer()})
	start := time.Now()
	_, err := c.Dial(t.Context())
	if err == nil {
		t.Fatal("Dial succeeded")
	}
	if elapsed := time.Since(start); elapsed < 50*time.Millisecond || elapsed > 5*time.Second {
		t.Errorf("Dial returned after %v, want about 50ms", elapsed)
	}
	if want := `upstream: cluster "slow": connect 127.0.0.1:9: connect_timeout 50ms exceeded`; err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("not a net.Error timeout: %v", err)
	}
	if diff := cmp.Diff([]int64{0}, actives(c)); diff != "" {
		t.Errorf("active counts (-want +got):\n%s", diff)
	}
}

// The caller's deadline wins when it is sooner than connect_timeout.
func TestDialCallerDeadline(t *testing.T) {
	t.Parallel()
	c := build(t, clusterJSON(t, staticCluster("slow", `"connectTimeout":"60s",`, "127.0.0.1:9")), Options{Dialer: blockingDialer()})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Dial(ctx)
	if err == nil {
		t.Fatal("Dial succeeded")
	}
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("Dial returned after %v, want about 50ms", elapsed)
	}
	var de *DialError
	if !errors.As(err, &de) || !de.Timeout() {
		t.Errorf("want a timeout DialError, got %v", err)
	}
	if de != nil && de.connectTimeout != 0 {
		t.Errorf("blamed connect_timeout for the caller's deadline: %v", err)
	}
}

func TestDialNoHealthyEndpoint(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, cluster string }{
		{"no endpoints", `{"name":"empty"}`},
		{"all unhealthy", `{"name":"empty","loadAssignment":{"endpoints":[{"lbEndpoints":[` +
			`{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":9}}},"healthStatus":"UNHEALTHY"},` +
			`{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":9}}},"healthStatus":"DRAINING"}]}]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := build(t, clusterJSON(t, tt.cluster), Options{})
			_, err := c.Dial(t.Context())
			if !errors.Is(err, ErrNoHealthyEndpoint) {
				t.Fatalf("Dial: %v, want ErrNoHealthyEndpoint", err)
			}
			if want := `upstream: cluster "empty": no healthy endpoint`; err.Error() != want {
				t.Errorf("error:\n got %s\nwant %s", err, want)
			}
		})
	}
}

// The embedded connection is the raw *net.TCPConn (for splice), closing the
// Conn releases the active count exactly once, and half-close works.
func TestConn(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer s.Close()
		b, err := io.ReadAll(s) // until the client's half-close
		if err == nil {
			_, err = s.Write(append([]byte("got "), b...))
		}
		served <- err
	}()

	c := build(t, clusterJSON(t, staticCluster("c", `"lbPolicy":"LEAST_REQUEST",`, ln.Addr().String())), Options{})
	conn, err := c.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := conn.Conn.(*net.TCPConn); !ok {
		t.Errorf("embedded conn is %T, want *net.TCPConn", conn.Conn)
	}
	if diff := cmp.Diff([]int64{1}, actives(c)); diff != "" {
		t.Errorf("active counts (-want +got):\n%s", diff)
	}
	// A proxy copies from a downstream *net.TCPConn: io.Copy goes through
	// Conn.ReadFrom to the kernel's splice.
	down := tcpPair(t, "hello")
	if n, err := io.Copy(conn, down); err != nil || n != 5 {
		t.Fatalf("io.Copy: %d, %v", n, err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	reply, err := io.ReadAll(conn)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "got hello" {
		t.Errorf("reply %q, want %q", reply, "got hello")
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	conn.Close()
	conn.Close()
	if diff := cmp.Diff([]int64{0}, actives(c)); diff != "" {
		t.Errorf("active counts after two Close calls (-want +got):\n%s", diff)
	}
}

// tcpPair returns the server side of a loopback TCP connection whose client
// has sent data and half-closed.
func tcpPair(t *testing.T, data string) *net.TCPConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	if _, err := io.WriteString(client, data); err != nil {
		t.Fatal(err)
	}
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	return server.(*net.TCPConn)
}

// Many goroutines dialling and closing at once (run with -race).
func TestDialConcurrent(t *testing.T) {
	t.Parallel()
	b1, b2 := newBackend(t), newBackend(t)
	for _, policy := range []string{"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"} {
		c := build(t, clusterJSON(t, staticCluster("c", `"lbPolicy":"`+policy+`",`, b1.addr, b2.addr)), Options{})
		errs := make(chan error, 8)
		for range 8 {
			go func() {
				for range 10 {
					conn, err := c.Dial(t.Context())
					if err != nil {
						errs <- err
						return
					}
					conn.Close()
				}
				errs <- nil
			}()
		}
		for range 8 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if diff := cmp.Diff([]int64{0, 0}, actives(c)); diff != "" {
			t.Errorf("%s: active counts (-want +got):\n%s", policy, diff)
		}
	}
}

// Close is idempotent, and Dial still works on a closed STATIC cluster.
func TestCloseIdempotent(t *testing.T) {
	t.Parallel()
	b := newBackend(t)
	c, err := Build(clusterJSON(t, staticCluster("c", "", b.addr)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	c.Close()
	conn, err := c.Dial(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}
