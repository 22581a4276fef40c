// Package test holds Sift's end-to-end tests: real backends and clients on
// 127.0.0.1, sift-proxy in-process (server.Build from a bootstrap) and as a
// real process.
package test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/server"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// proxy runs sift-proxy in-process on the bootstrap YAML, with {{name}}
// placeholders replaced by vars. Listeners should bind 127.0.0.1 port 0; see
// addr. It is shut down (drain time 0) when the test ends.
type proxy struct {
	*server.Server
}

func startProxy(t *testing.T, yaml string, vars map[string]string) *proxy {
	t.Helper()
	return startProxyDraining(t, yaml, vars, 0)
}

// startProxyDraining is startProxy with a drain time for replaced listeners.
func startProxyDraining(t *testing.T, yaml string, vars map[string]string, drain time.Duration) *proxy {
	t.Helper()
	for k, v := range vars {
		yaml = strings.ReplaceAll(yaml, "{{"+k+"}}", v)
	}
	b, err := bootstrap.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	if err := bootstrap.Validate(b); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := server.Build(b, server.Options{Logger: log, DrainTime: drain})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return &proxy{srv}
}

// addr returns the bound address of the named listener.
func (p *proxy) addr(t *testing.T, listener string) string {
	t.Helper()
	l := p.Listeners().Get(listener)
	if l == nil {
		t.Fatalf("no listener %q", listener)
	}
	return l.Addr().String()
}

// testWriter sends logs to t.Log, so they show only for failing tests.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// staticCluster is the YAML of a STATIC cluster over addrs ("ip:port").
func staticCluster(name string, addrs ...string) string {
	var eps []string
	for _, a := range addrs {
		host, port, _ := net.SplitHostPort(a)
		eps = append(eps, fmt.Sprintf("{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}", host, port))
	}
	return fmt.Sprintf("  - {name: %s, type: STATIC, connect_timeout: 1s, load_assignment: {cluster_name: %s, endpoints: [{lb_endpoints: [%s]}]}}\n",
		name, name, strings.Join(eps, ", "))
}

// tcpProxy is the YAML of a tcp_proxy network filter list to cluster.
func tcpProxy(cluster string) string {
	return fmt.Sprintf(`[{name: envoy.filters.network.tcp_proxy, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: %s, cluster: %s}}]`, cluster, cluster)
}

// dial connects to addr, failing the test on error; closed at the end.
func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// readAllWithin reads c until EOF; the deadline only keeps a broken test
// from hanging, it is no assertion about speed.
func readAllWithin(t *testing.T, c net.Conn, limit time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("no EOF within %v; read %q", limit, sb.String())
			}
			return sb.String()
		}
	}
}

// decodeListener decodes the first listener of a bootstrap YAML against p's clusters.
func decodeListener(p *proxy, yaml string) (*listener.Config, error) {
	b, err := bootstrap.Parse([]byte(yaml))
	if err != nil {
		return nil, err
	}
	return p.DecodeListener(b.GetStaticResources().GetListeners()[0])
}
