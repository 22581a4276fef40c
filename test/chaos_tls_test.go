package test

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/testcerts"
)

// TestChaosTLSHandshakeFlood opens many TCP connections to an mTLS port that
// never finish their handshake — half send nothing, half the first bytes of
// a ClientHello — and checks that legitimate mTLS clients are served
// meanwhile, that the proxy's memory stays bounded (peak RSS reported), and
// that transport_socket_connect_timeout closes every half-open handshake,
// counted as listener.<name>.sift.ssl.handshake_timeout.
func TestChaosTLSHandshakeFlood(t *testing.T) {
	t.Parallel()
	halfOpen := chaosSize(500, 10000)
	const handshakeTimeout = 3 * time.Second
	ca := testcerts.NewCA("mesh")
	srv := ca.Issue(idServer)
	client := &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{ca.Issue(idClient).TLS()}}
	cfg := writeBootstrap(t, adminYAML+`
static_resources:
  listeners:
  - name: in
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - transport_socket_connect_timeout: `+handshakeTimeout.String()+`
      transport_socket: {name: envoy.transport_sockets.tls, typed_config: {"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, require_client_certificate: true, common_tls_context: {tls_certificates: [{certificate_chain: {inline_string: {{cert}}}, private_key: {inline_string: {{key}}}}], validation_context: {trusted_ca: {inline_string: {{ca}}}}}}}
      filters: {{tp}}
  clusters:
`+staticCluster("echo", echo(t)), map[string]string{"cert": q(srv.CertPEM), "key": q(srv.KeyPEM), "ca": q(ca.CertPEM), "tp": tcpProxy("echo")})
	p := startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json"}, "in", "admin")
	addr, admin := p.addrs["in"], p.addrs["admin"]
	pid := int(p.pid.Load())

	legit := func() error {
		d := &net.Dialer{Timeout: 10 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", addr, client)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "ping"); err != nil {
			return err
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			return fmt.Errorf("echo: %q, %v", buf, err)
		}
		return nil
	}
	if err := legit(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	baseGoroutines, baseFDs := processGauges(t, admin)
	baseRSS := gauge(t, scrape(t, admin), "process_resident_memory_bytes")
	hello := clientHelloPrefix(t, client, 60)

	conns := make([]net.Conn, 0, halfOpen)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range halfOpen {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatalf("half-open connection %d: %v", i, err)
		}
		if i%2 == 1 {
			c.Write(hello)
		}
		conns = append(conns, c)
	}
	opened := time.Since(start)
	eventually(t, "the half-open connections accepted", func() bool {
		g, _ := processGauges(t, admin)
		return g >= baseGoroutines+halfOpen
	})
	floodRSS := gauge(t, scrape(t, admin), "process_resident_memory_bytes")
	floodGoroutines, floodFDs := processGauges(t, admin)
	var legitFailed int
	var firstErr error
	for range 20 {
		if err := legit(); err != nil {
			legitFailed++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	// The proxy closes every half-open handshake at its timeout: each
	// client sees the end of its connection.
	closedByProxy := 0
	deadline := time.Now().Add(handshakeTimeout + 30*time.Second)
	for _, c := range conns {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closedByProxy++
		}
	}
	stat := func(name string) int {
		return gauge(t, scrape(t, admin), `envoy_listener_`+name+`\{envoy_listener_name="in"\}`)
	}
	timeouts := stat("sift_ssl_handshake_timeout")
	handshakes := stat("ssl_handshake")
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	var goroutines, fds int
	for end := time.Now().Add(30 * time.Second); ; {
		goroutines, fds = processGauges(t, admin)
		if goroutines <= baseGoroutines+leakSlack && fds <= baseFDs+leakSlack || time.Now().After(end) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	peak := vmHWM(t, pid)

	if legitFailed > 0 {
		t.Errorf("%d of 20 legitimate mTLS connections failed during the flood; the first: %v", legitFailed, firstErr)
	}
	if closedByProxy != halfOpen {
		t.Errorf("the proxy closed %d of %d half-open handshakes within their timeout", closedByProxy, halfOpen)
	}
	if timeouts != halfOpen {
		t.Errorf("sift.ssl.handshake_timeout = %d, want %d", timeouts, halfOpen)
	}
	if goroutines > baseGoroutines+leakSlack || fds > baseFDs+leakSlack {
		t.Errorf("after the flood: %d goroutines (%d before), %d fds (%d before)", goroutines, baseGoroutines, fds, baseFDs)
	}
	perConn := float64(floodRSS-baseRSS) / float64(halfOpen)
	chaosReport(t, "a flood of half-open TLS handshakes on an mTLS port", [][2]string{
		{"half-open handshakes (half silent, half a partial ClientHello)", fmt.Sprintf("%d, opened in %v", halfOpen, opened.Round(time.Millisecond))},
		{"legitimate mTLS connections during the flood / failed", fmt.Sprintf("20 / %d", legitFailed)},
		{"closed by the proxy at transport_socket_connect_timeout (" + handshakeTimeout.String() + ")", fmt.Sprintf("%d; counted as handshake timeouts: %d; completed handshakes: %d", closedByProxy, timeouts, handshakes)},
		{"RSS before / during the flood; peak (VmHWM)", fmt.Sprintf("%.1f MiB / %.1f MiB (%.1f KiB per half-open handshake); peak %.1f MiB",
			float64(baseRSS)/(1<<20), float64(floodRSS)/(1<<20), perConn/1024, float64(peak)/(1<<20))},
		{"goroutines before / during / after", fmt.Sprintf("%d / %d / %d", baseGoroutines, floodGoroutines, goroutines)},
		{"open fds before / during / after", fmt.Sprintf("%d / %d / %d", baseFDs, floodFDs, fds)},
	})
}

// clientHelloPrefix returns the first n bytes a TLS client with cfg sends.
func clientHelloPrefix(t *testing.T, cfg *tls.Config, n int) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go tls.Client(a, cfg).Handshake()
	buf := make([]byte, n)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(b, buf); err != nil {
		t.Fatal("capturing a ClientHello:", err)
	}
	return buf
}

// vmHWM is a process's peak resident set size in bytes (/proc/<pid>/status).
func vmHWM(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc/<pid>/status")
	return 0
}
