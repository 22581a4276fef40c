package upstream

import (
	"context"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestDialKeepalive reads SO_KEEPALIVE off real dialed sockets: off unless
// the cluster sets upstream_connection_options.tcp_keepalive, as in Envoy.
func TestDialKeepalive(t *testing.T) {
	t.Parallel()
	b := newBackend(t)
	for _, tc := range []struct {
		name  string
		extra string
		want  int
	}{
		{"default", "", 0},
		{"tcp_keepalive", `"upstreamConnectionOptions":{"tcpKeepalive":{"keepaliveTime":30}},`, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := build(t, clusterJSON(t, staticCluster("c", tc.extra, b.addr)), Options{})
			conn, err := c.Dial(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			raw, err := conn.Conn.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var got int
			var gerr error
			raw.Control(func(fd uintptr) { got, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE) })
			if gerr != nil {
				t.Fatal(gerr)
			}
			if got != tc.want {
				t.Errorf("SO_KEEPALIVE = %d, want %d", got, tc.want)
			}
		})
	}
}
