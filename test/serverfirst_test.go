package test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/testnet"
	"github.com/siftmesh/sift/listener"
)

// TestServerFirstOnUnconfiguredPort: a client that waits for the server's
// greeting on a detecting port — the default detect config, no port marked
// opaque — is greeted after the grace period, not the 10 s timeout; the
// conversation then goes on through tcp_proxy, and /detections says why.
func TestServerFirstOnUnconfiguredPort(t *testing.T) {
	t.Parallel()
	p, addr := startSifting(t, "10s")
	for i := range 4 {
		start := time.Now()
		c := dial(t, addr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second)) // a hang guard: the old behaviour took 10 s
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("connection %d: no greeting: %v", i, err)
		}
		t.Logf("connection %d: greeted after %v", i, time.Since(start).Round(10*time.Microsecond))
		if line != "220 greeter ready\r\n" {
			t.Fatalf("greeting = %q", line)
		}
		io.WriteString(c, "HELO sift\r\n")
		if line, err = r.ReadString('\n'); err != nil || line != "got HELO sift\r\n" {
			t.Fatalf("reply = %q, %v", line, err)
		}
		c.Close()
	}
	recs := p.Detections().Recent(4, func(r *listener.DetectionRecord) bool { return r.Listener == "sift" })
	var reasons []string
	for _, r := range recs {
		if r.Chain != "opaque" || r.Outcome != listener.OutcomeDispatched || r.EarlyUpstream == "" {
			t.Errorf("record %+v: want the opaque chain, dispatched over the early upstream", r)
		}
		reasons = append(reasons, r.Detection.Reason)
	}
	// Newest first: the fourth connection went to a learned destination.
	if got, want := strings.Join(reasons, ","), "learned_server_first,server_first,server_first,server_first"; got != want {
		t.Errorf("reasons = %s, want %s", got, want)
	}
}

// countingEcho is an echo server that counts connections and the bytes it
// read on each.
type countingEcho struct {
	addr  string
	conns atomic.Int32
	read  chan int // bytes read by each connection, when it ends
}

func startCountingEcho(t *testing.T) *countingEcho {
	e := &countingEcho{read: make(chan int, 16)}
	e.addr = testnet.Backend(t, func(c net.Conn) {
		e.conns.Add(1)
		n, _ := io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
		e.read <- int(n)
	})
	return e
}

// lateClientProxy detects with a 20 ms grace period: HTTP to an HTTP
// backend, everything else to backend.
func lateClientProxy(t *testing.T, backend *countingEcho) *proxy {
	yaml := `
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, server_first_grace_period: 0.02s}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1]}, filters: {{http}}}
    default_filter_chain: {name: opaque, filters: {{echo}}}
  clusters:
` + staticCluster("echo", backend.addr) + staticCluster("http", httpBackend(t, "http1"))
	p := startProxy(t, yaml, map[string]string{"http": tcpProxy("http"), "echo": tcpProxy("echo")})
	return p
}

// TestEarlyUpstreamReusedWhenClientSpeaksLate: a client-first protocol whose
// client speaks after the grace period gets the early upstream — one
// connection to the backend, not two.
func TestEarlyUpstreamReusedWhenClientSpeaksLate(t *testing.T) {
	t.Parallel()
	backend := startCountingEcho(t)
	p := lateClientProxy(t, backend)
	c := dial(t, p.addr(t, "sift"))
	time.Sleep(100 * time.Millisecond) // well past the grace period: the race has begun
	io.WriteString(c, "late but client-first\n")
	c.CloseWrite()
	if got := readAllWithin(t, c, 10*time.Second); got != "late but client-first\n" {
		t.Fatalf("echoed %q", got)
	}
	if n := <-backend.read; n != len("late but client-first\n") {
		t.Errorf("backend read %d bytes", n)
	}
	if got := backend.conns.Load(); got != 1 {
		t.Errorf("backend saw %d connections, want 1 (the early upstream, reused)", got)
	}
	r := p.Detections().Recent(1, nil)[0]
	if !r.Detection.Raced || r.Detection.Reason != "no_match" || r.EarlyUpstream != backend.addr {
		t.Errorf("record: raced %v reason %q early %q; want a race, no_match, early upstream %s",
			r.Detection.Raced, r.Detection.Reason, r.EarlyUpstream, backend.addr)
	}
}

// TestEarlyUpstreamClosedWhenHTTPChosen: when the late client turns out to
// speak HTTP, the early opaque upstream is closed without a byte and the
// request reaches the HTTP chain.
func TestEarlyUpstreamClosedWhenHTTPChosen(t *testing.T) {
	t.Parallel()
	backend := startCountingEcho(t)
	p := lateClientProxy(t, backend)
	c := dial(t, p.addr(t, "sift"))
	time.Sleep(100 * time.Millisecond)
	io.WriteString(c, "GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if got := readAllWithin(t, c, 10*time.Second); !strings.HasSuffix(got, "http1 GET /late HTTP/1.1") {
		t.Fatalf("response %q", got)
	}
	if n := <-backend.read; n != 0 {
		t.Errorf("the early opaque upstream received %d bytes, want 0", n)
	}
	r := p.Detections().Recent(1, nil)[0]
	if !r.Detection.Raced || r.Chain != "http" || r.EarlyUpstream != "" {
		t.Errorf("record: raced %v chain %q early %q; want a race, the http chain, no early upstream", r.Detection.Raced, r.Chain, r.EarlyUpstream)
	}
}

// TestAdminDetections: /detections and /detections/learned on the admin
// server answer why recent connections went where they went.
func TestAdminDetections(t *testing.T) {
	t.Parallel()
	yaml := `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, server_first_grace_period: 0.01s}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1]}, filters: {{http}}}
    default_filter_chain: {name: opaque, filters: {{greeter}}}
  clusters:
` + staticCluster("greeter", greeter(t, "220 hi\r\n")) + staticCluster("http", httpBackend(t, "http1"))
	p := startProxy(t, yaml, map[string]string{"http": tcpProxy("http"), "greeter": tcpProxy("greeter")})
	addr := p.addr(t, "sift")
	c := dial(t, addr)
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	readAllWithin(t, c, 10*time.Second)
	c = dial(t, addr)
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	c.Close()
	admin := "http://" + p.AdminAddr()

	var recs []struct {
		Reason   string `json:"reason"`
		Protocol string `json:"protocol"`
		Chain    string `json:"chain"`
		Verdicts []struct{ Sniffer, Verdict string }
	}
	getJSON(t, admin+"/detections?listener=sift", &recs)
	if len(recs) != 2 || recs[0].Reason != "server_first" || recs[0].Chain != "opaque" ||
		recs[1].Reason != "match" || recs[1].Protocol != "http/1.1" || recs[1].Chain != "http" || len(recs[1].Verdicts) != 3 {
		t.Errorf("/detections = %+v; want the server-first connection, then the HTTP one with three verdicts", recs)
	}
	getJSON(t, admin+"/detections?reason=match", &recs)
	if len(recs) != 1 || recs[0].Protocol != "http/1.1" {
		t.Errorf("/detections?reason=match = %+v", recs)
	}
	text := fetch(t, admin+"/detections?format=text")
	if !strings.Contains(text, "server_first") || !strings.Contains(text, "tls:no_match,h2:no_match,http1:match") {
		t.Errorf("/detections?format=text =\n%s", text)
	}
	var learned struct {
		Stats        struct{ Entries int }
		Destinations []struct {
			Destination string
			Count       int `json:"server_first_count"`
		}
	}
	getJSON(t, admin+"/detections/learned", &learned)
	if len(learned.Destinations) != 1 || learned.Destinations[0].Destination != addr || learned.Destinations[0].Count != 1 {
		t.Errorf("/detections/learned = %+v; want %s counted once", learned, addr)
	}
	if resp, err := http.Get(admin + "/detections?port=x"); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("/detections?port=x: %v %v, want 400", resp.Status, err)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(fetch(t, url)), v); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
}
