package test

import (
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// hangingUpstream returns a loopback address whose TCP handshakes never
// complete: a listener with a full accept queue that never accepts (Linux
// then drops further SYNs), as a firewall that drops packets would, but
// without leaving the loopback interface.
func hangingUpstream(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := (&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*syscall.SockaddrInet4).Port}).String()
	// Fill the accept queue until a handshake no longer completes.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
		if i == 16 {
			t.Skip("this kernel completes every handshake to a listener with a full queue")
		}
	}
}

// TestSlowHTTPClientDoesNotWaitForTheFallbackConnect: an HTTP client that
// stays silent past the grace period (a lost first segment costs a 200 ms
// retransmission) on a detecting port whose fallback upstream does not
// answer SYNs must still reach its HTTP chain as soon as it speaks — not
// after the fallback's connect timeout.
// (The race opens the fallback in its own goroutine while it watches the
// client; it once opened it first, and the client waited for the connect.)
func TestSlowHTTPClientDoesNotWaitForTheFallbackConnect(t *testing.T) {
	t.Parallel()
	hole := hangingUpstream(t)
	yaml := `
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1]}, filters: {{http}}}
    default_filter_chain: {name: opaque, filters: {{hole}}}
  clusters:
` + staticCluster("http", httpBackend(t, "http")) +
		"  - {name: hole, type: STATIC, connect_timeout: 30s, load_assignment: {cluster_name: hole, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: " +
		hole[strings.LastIndexByte(hole, ':')+1:] + "}}}}]}]}}\n"
	p := startProxy(t, yaml, map[string]string{"http": tcpProxy("http"), "hole": tcpProxy("hole")})

	c := dial(t, p.addr(t, "sift"))
	time.Sleep(300 * time.Millisecond) // silent past the 50 ms grace period: the race starts
	if _, err := io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Not a speed assertion: 10 s is a third of the fallback's connect
	// timeout; waiting for that connect is the bug.
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("no HTTP response while the fallback's connect hangs: %v (read %q)", err, got)
	}
	if !strings.HasSuffix(string(got), "http GET /slow HTTP/1.1") {
		t.Errorf("response = %q", got)
	}
}
