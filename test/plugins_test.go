package test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// redisPlugin returns the example Redis sniffer plugin, built for the test,
// and its SHA-256 in hex.
func redisPlugin(t *testing.T) (path, sum string) {
	t.Helper()
	path = binary(t, "github.com/siftmesh/sift/examples/plugins/redis")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return path, hex.EncodeToString(s[:])
}

// pluginBootstrap is a detecting listener whose plugin sends Redis clients
// to redis and everything else undetected to echo.
func pluginBootstrap(t *testing.T, plugin, sum, redis, echoAddr string) string {
	return writeBootstrap(t, `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config:
        "@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect
        plugins: [{path: "{{plugin}}", sha256: "{{sum}}", call_timeout: 2s}]
    filter_chains:
    - {name: redis, filter_chain_match: {application_protocols: [redis]}, filters: {{redis}}}
    default_filter_chain: {name: opaque, filters: {{echo}}}
  clusters:
`+staticCluster("redis", redis)+staticCluster("echo", echoAddr),
		map[string]string{"plugin": plugin, "sum": sum, "redis": tcpProxy("redis"), "echo": tcpProxy("echo")})
}

// childPIDs returns the processes whose parent is pid.
func childPIDs(t *testing.T, pid int) []int {
	t.Helper()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at the last ')'.
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b)[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(s)))
			out = append(out, child)
		}
	}
	return out
}

// TestPluginSnifferEndToEnd runs a real sift-proxy whose detect filter asks
// the example Redis plugin: redis-cli's connections land on the redis chain
// by the plugin's verdict; with the plugin killed, connections still go
// through (undetected, to the default chain) and the plugin is restarted;
// killing sift-proxy leaves no plugin behind.
func TestPluginSnifferEndToEnd(t *testing.T) {
	t.Parallel()
	server := realBinary(t, "redis-server", []string{"redis-server"})
	cli := realBinary(t, "redis-tools", []string{"redis-cli"})
	dir := t.TempDir()
	port := startServer(t, "redis-server", func(port int) *exec.Cmd {
		return exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--protected-mode", "no")
	}, logged("Ready to accept connections"))
	plugin, sum := redisPlugin(t)
	cfg := pluginBootstrap(t, plugin, sum, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), echo(t))
	proc := startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json"}, "sift", "admin")
	p := realProxy{addr: proc.addrs["sift"], admin: proc.addrs["admin"]}
	_, pport, _ := net.SplitHostPort(p.addr)

	for _, args := range [][]string{{"PING"}, {"SET", "plugin", "redis"}, {"GET", "plugin"}} {
		want := map[string]string{"PING": "PONG", "SET": "OK", "GET": "redis"}[args[0]]
		if got, _ := runClient(t, cli, append([]string{"-h", "127.0.0.1", "-p", pport}, args...)...); got != want {
			t.Errorf("redis-cli %v = %q, want %q", args, got, want)
		}
	}
	for i, r := range p.detections(t) {
		if r.Reason != "match" || r.Chain != "redis" {
			t.Errorf("connection %d: %+v, want a match sending it to the redis chain", i, r)
		}
	}
	waitMetric(t, p.admin, `sift_plugin_calls_total{plugin="redis",result="match"} 3`)
	waitMetric(t, p.admin, `sift_plugin_up{plugin="redis"} 1`)

	// The plugin dies: connections are not lost — with no verdict from it
	// they are opaque (the echo chain) — and it comes back.
	pids := childPIDs(t, int(proc.pid.Load()))
	if len(pids) != 1 {
		t.Fatalf("sift-proxy's children: %v, want the one plugin", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	const ping = "*1\r\n$4\r\nPING\r\n"
	c := dial(t, p.addr)
	c.Write([]byte(ping))
	c.CloseWrite()
	if got := readAllWithin(t, c, 30*time.Second); got != ping && got != "+PONG\r\n" {
		t.Errorf("a connection while the plugin was down got %q, want it echoed (or, restarted already, PONG)", got)
	}
	waitMetric(t, p.admin, `sift_plugin_restarts_total{plugin="redis"} 1`)
	eventually(t, "redis-cli through the restarted plugin", func() bool {
		got, _ := runClient(t, cli, "-h", "127.0.0.1", "-p", pport, "PING")
		return got == "PONG"
	})

	// sift-proxy killed outright: its plugin does not outlive it.
	pids = childPIDs(t, int(proc.pid.Load()))
	if len(pids) != 1 {
		t.Fatalf("sift-proxy's children after the restart: %v", pids)
	}
	syscall.Kill(int(proc.pid.Load()), syscall.SIGKILL)
	eventually(t, "the plugin to exit with sift-proxy", func() bool { return errors.Is(syscall.Kill(pids[0], 0), syscall.ESRCH) })
}

// TestPluginChecksumRefused: a plugin whose file does not have the
// configured SHA-256 is never started, and the listener is rejected with an
// error saying so.
func TestPluginChecksumRefused(t *testing.T) {
	t.Parallel()
	plugin, _ := redisPlugin(t)
	wrong := strings.Repeat("ab", 32)
	cfg := pluginBootstrap(t, plugin, wrong, "127.0.0.1:1", "127.0.0.1:2")
	out, err := exec.Command(siftProxyBinary(t), "--mode", "validate", "-c", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "detect: plugins[0]: plugin "+plugin+": checksums did not match") {
		t.Errorf("validate with a wrong sha256: %v\n%s", err, out)
	}
}

// TestPluginJudgesServerFirstMySQL: MariaDB behind a detecting port nobody
// configured, with the example MySQL plugin. The client waits for the
// server; the server greets first; the plugin recognises the greeting, so
// the connection is "mysql" (not just opaque) and the mysql chain serves
// it — also once the destination is learned as server-first.
func TestPluginJudgesServerFirstMySQL(t *testing.T) {
	t.Parallel()
	client := realBinary(t, "mariadb-client", []string{"mariadb", "mysql"})
	db := startMariaDB(t)
	plugin := binary(t, "github.com/siftmesh/sift/examples/plugins/mysql")
	cfg := writeBootstrap(t, `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - name: sift.detect
      typed_config:
        "@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect
        plugins: [{path: "{{plugin}}", call_timeout: 2s}]
    filter_chains:
    - {name: mysql, filter_chain_match: {application_protocols: [mysql]}, filters: {{db}}}
    default_filter_chain: {name: opaque, filters: {{db}}}
  clusters:
`+staticCluster("db", db), map[string]string{"plugin": plugin, "db": tcpProxy("db")})
	proc := startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json"}, "sift", "admin")
	p := realProxy{addr: proc.addrs["sift"], admin: proc.addrs["admin"]}
	host, port, _ := net.SplitHostPort(p.addr)
	for i := range 4 { // the 4th after the destination was learned server-first
		out, _ := runClient(t, client, "--no-defaults", "--protocol=TCP", "-h", host, "-P", port, "-u", "sift",
			"--connect-timeout=30", "-N", "-B", "-e", "SELECT 1")
		if out != "1" {
			t.Fatalf("query %d: SELECT 1 printed %q", i, out)
		}
	}
	var recs []struct {
		Protocol   string            `json:"protocol"`
		Reason     string            `json:"reason"`
		Sniffer    string            `json:"sniffer"`
		Chain      string            `json:"chain"`
		Attributes map[string]string `json:"attributes"`
	}
	p.adminJSON(t, "/detections?limit=10&port="+port, &recs)
	if len(recs) != 4 {
		t.Fatalf("%d detection records, want 4: %+v", len(recs), recs)
	}
	for i, r := range recs {
		if r.Protocol != "mysql" || r.Sniffer != "mysql" || r.Chain != "mysql" || !strings.Contains(r.Attributes["server_version"], "MariaDB") ||
			(r.Reason != "server_first" && r.Reason != "learned_server_first") {
			t.Errorf("record %d: %+v, want the server-first MySQL greeting recognised and the mysql chain", i, r)
		}
	}
	if recs[0].Reason != "learned_server_first" {
		t.Errorf("the newest record's reason is %q, want learned_server_first", recs[0].Reason)
	}
}
