package test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/siftmesh/sift/listener"
)

// greetingOf reads one line: the server's greeting.
func greetingOf(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("waiting for the greeting: %v", err)
	}
	return line
}

// The detection timeout in these tests is an hour: a greeting that arrives
// proves detection did not run, without any clock in the assertion.
func TestOpaquePortsSkipDetection(t *testing.T) {
	t.Parallel()
	yaml := `
static_resources:
  listeners:
  - name: port-decides
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 3600s}}
    filter_chains:
    - {filters: {{g}}}
  - name: disabled
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 3600s}
      filter_disabled: {destination_port_range: {start: 1, end: 65536}}
    filter_chains:
    - {filter_chain_match: {application_protocols: [http/1.1]}, filters: {{g}}}
    - {filters: {{g}}}
  clusters:
` + staticCluster("g", greeter(t, "220 hi\r\n"))
	p := startProxy(t, yaml, map[string]string{"g": tcpProxy("g")})
	for _, name := range []string{"port-decides", "disabled"} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, p.addr(t, name))
			if got := greetingOf(t, c); got != "220 hi\r\n" {
				t.Errorf("greeting = %q", got)
			}
			st := p.Listeners().Get(name).Stats()
			if st.DetectionRan.Load() != 0 {
				t.Errorf("detection ran %d times", st.DetectionRan.Load())
			}
		})
	}
}

func TestListenerFiltersTimeout(t *testing.T) {
	t.Parallel()
	// Envoy's tls_inspector has no timeout of its own: the listener's decides.
	yaml := `
static_resources:
  listeners:
  - name: close
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters_timeout: 0.05s
    listener_filters: [{name: envoy.filters.listener.tls_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}]
    filter_chains:
    - {filter_chain_match: {transport_protocol: tls}, filters: {{g}}}
    - {filters: {{g}}}
  - name: continue
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters_timeout: 0.05s
    continue_on_listener_filters_timeout: true
    listener_filters: [{name: envoy.filters.listener.tls_inspector, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}]
    filter_chains:
    - {filter_chain_match: {transport_protocol: tls}, filters: {{g}}}
    - {filters: {{g}}}
  clusters:
` + staticCluster("g", greeter(t, "220 hi\r\n"))
	p := startProxy(t, yaml, map[string]string{"g": tcpProxy("g")})

	c := dial(t, p.addr(t, "close"))
	if got := readAllWithin(t, c, 30*time.Second); got != "" {
		t.Errorf("closed listener sent %q", got)
	}
	if n := p.Listeners().Get("close").Stats().FiltersTimeout.Load(); n != 1 {
		t.Errorf("FiltersTimeout = %d, want 1", n)
	}
	c = dial(t, p.addr(t, "continue"))
	if got := greetingOf(t, c); got != "220 hi\r\n" {
		t.Errorf("greeting = %q", got)
	}
}

func TestNoFilterChainMatchClosesAndCounts(t *testing.T) {
	t.Parallel()
	yaml := `
static_resources:
  listeners:
  - name: tls-only
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, timeout: 3600s}}
    filter_chains:
    - {filter_chain_match: {transport_protocol: tls}, filters: {{g}}}
  clusters:
` + staticCluster("g", greeter(t, "220 hi\r\n"))
	p := startProxy(t, yaml, map[string]string{"g": tcpProxy("g")})
	c := dial(t, p.addr(t, "tls-only"))
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if got := readAllWithin(t, c, 30*time.Second); got != "" {
		t.Errorf("unmatched connection got %q", got)
	}
	if n := p.Listeners().Get("tls-only").Stats().NoChain.Load(); n != 1 {
		t.Errorf("NoChain = %d, want 1", n)
	}
}

// TestListenerUpdateLosesNothing replaces a listener's configuration many
// times under load on the same address: no connection is refused or cut,
// connections keep the generation they started on, and new ones get the
// new configuration.
func TestListenerUpdateLosesNothing(t *testing.T) {
	t.Parallel()
	yaml := `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: {{a}}}]
  clusters:
` + staticCluster("a", httpBackend(t, "a")) + staticCluster("b", httpBackend(t, "b"))
	// A long drain: connections of replaced generations run until they end.
	p := startProxyDraining(t, yaml, map[string]string{"a": tcpProxy("a")}, time.Hour)
	addr := p.addr(t, "l")
	base := p.Listeners().Get("l").Config()

	// A connection opened before the updates keeps going to "a".
	old := dial(t, addr)
	oldReader := bufio.NewReader(old)
	roundTrip := func() string {
		io.WriteString(old, "GET /old HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(oldReader, nil)
		if err != nil {
			t.Fatalf("old connection: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	if got := roundTrip(); !strings.HasPrefix(got, "a ") {
		t.Fatalf("before: %q", got)
	}

	// Configurations differing in cluster, decoded as the xDS path will.
	cfgB := rebuildWithCluster(t, p, "b")
	var stop atomic.Bool
	var failures, requests atomic.Int64
	var wg sync.WaitGroup
	defer func() { stop.Store(true); wg.Wait() }()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
			for !stop.Load() {
				requests.Add(1)
				resp, err := client.Get("http://" + addr + "/")
				if err != nil {
					failures.Add(1)
					t.Errorf("request during updates: %v", err)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	for i := 0; i < 50; i++ {
		next := base
		if i%2 == 0 {
			next = cfgB
		}
		if err := p.Listeners().Apply([]*listener.Config{next}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Listeners().Apply([]*listener.Config{cfgB}); err != nil {
		t.Fatal(err)
	}
	stop.Store(true)
	wg.Wait()
	if failures.Load() != 0 {
		t.Errorf("%d of %d requests failed during updates", failures.Load(), requests.Load())
	}
	// The pre-update connection is still served by its own generation.
	if got := roundTrip(); !strings.HasPrefix(got, "a ") {
		t.Errorf("connection from before the updates: %q, want cluster a", got)
	}
	old.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	if got := get(t, client, "http://"+addr+"/new"); !strings.HasPrefix(got, "b ") {
		t.Errorf("after updates: %q, want the new cluster b", got)
	}
}

// rebuildWithCluster decodes listener "l" again — same configured address,
// as an xDS update repeats it — with its tcp_proxy pointed at cluster.
func rebuildWithCluster(t *testing.T, p *proxy, cluster string) *listener.Config {
	t.Helper()
	yaml := `
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: ` + tcpProxy(cluster) + `}]
`
	cfg, err := decodeListener(p, yaml)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestConnectionLimitFilter(t *testing.T) {
	t.Parallel()
	yaml := `
static_resources:
  listeners:
  - name: limited
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - {name: envoy.filters.network.connection_limit, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: lim, max_connections: 2}}
      - {name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: g, cluster: g}}
  clusters:
` + staticCluster("g", greeter(t, "220 hi\r\n"))
	p := startProxy(t, yaml, nil)
	addr := p.addr(t, "limited")
	first, second := dial(t, addr), dial(t, addr)
	for _, c := range []net.Conn{first, second} {
		if got := greetingOf(t, c); got != "220 hi\r\n" {
			t.Fatalf("admitted connection: %q", got)
		}
	}
	if got := readAllWithin(t, dial(t, addr), 30*time.Second); got != "" {
		t.Errorf("third connection got %q, want a close", got)
	}
	first.Close()
	// The slot frees once the first connection's proxying has ended.
	eventually(t, "a freed slot", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line == "220 hi\r\n"
	})
}

// TestIdleConnectionsHoldNoPipes: an idle proxied connection costs its two
// sockets, not splice pipes too. In this one process each connection has
// four descriptors — client, proxy downstream, proxy upstream, backend — and
// pipes held while waiting would add four more.
func TestIdleConnectionsHoldNoPipes(t *testing.T) {
	// Not parallel: it counts the process's descriptors.
	yaml := `
static_resources:
  listeners:
  - name: opaque
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains: [{filters: {{g}}}]
  clusters:
` + staticCluster("g", greeter(t, "220 hi\r\n"))
	p := startProxy(t, yaml, map[string]string{"g": tcpProxy("g")})
	openFDs := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip("no /proc/self/fd:", err)
		}
		return len(entries)
	}
	const n = 50
	before := openFDs()
	for i := 0; i < n; i++ {
		c := dial(t, p.addr(t, "opaque"))
		// The greeting has crossed the proxy: both directions are in their
		// copy loops, now idle.
		if got := greetingOf(t, c); got != "220 hi\r\n" {
			t.Fatalf("connection %d: %q", i, got)
		}
	}
	perConn := float64(openFDs()-before) / n
	t.Logf("%.2f descriptors per idle proxied connection", perConn)
	if perConn > 5 {
		t.Errorf("%.2f descriptors per idle connection, want about 4: idle connections hold splice pipes", perConn)
	}
}
