package test

// End-to-end tests of protocol detection against real servers from the
// operating system's packages (issue 17): MariaDB and Exim speak first,
// Redis and PostgreSQL wait for the client. Each test starts its own server
// on a free loopback port with a temporary data directory (never the system
// service, never a default port), and real sift-proxy processes on a
// detecting listener with no per-port configuration: the default detect
// config, an HTTP chain, and a default chain whose tcp_proxy goes to the
// server.
//
// A missing server or client binary skips the test, unless
// SIFT_REQUIRE_REAL_SERVERS=1 (set by .ci/run, which installs them): then it
// fails.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/md5"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// requireRealServers makes a missing binary a failure instead of a skip.
const requireRealServers = "SIFT_REQUIRE_REAL_SERVERS"

// realBinary returns the path of the first of names found on PATH or in
// dirs (glob patterns allowed, the last match wins: the highest version).
// Without one it skips the test, or fails it under SIFT_REQUIRE_REAL_SERVERS=1.
func realBinary(t *testing.T, pkg string, names []string, dirs ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range dirs {
			m, _ := filepath.Glob(filepath.Join(d, n))
			sort.Strings(m)
			for i := len(m) - 1; i >= 0; i-- {
				if fi, err := os.Stat(m[i]); err == nil && fi.Mode()&0o111 != 0 {
					return m[i]
				}
			}
		}
	}
	msg := fmt.Sprintf("%s not found (Debian package %s; .ci/run installs it)", strings.Join(names, " or "), pkg)
	if os.Getenv(requireRealServers) == "1" {
		t.Fatalf("%s=1: %s", requireRealServers, msg)
	}
	t.Skip(msg)
	return ""
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// syncBuffer is a bytes.Buffer safe for a process's output and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer runs the command build returns for a free loopback port, in
// its own process group until the test ends (then the whole group is
// killed), and waits until ready reports true; ready is given the process's
// output so far. Should the port be taken between freePort and the server's
// bind (another test's connection can get it), it tries again on another.
// The output is logged if the test fails. It returns the port.
func startServer(t *testing.T, name string, build func(port int) *exec.Cmd, ready func(out string) bool) int {
	t.Helper()
	for attempt := 1; ; attempt++ {
		port := freePort(t)
		out, err := launch(t, name, build(port), ready)
		if err == nil {
			return port
		}
		if attempt < 3 && strings.Contains(out, "Address already in use") {
			t.Logf("%s: port %d was taken; trying another", name, port)
			continue
		}
		t.Fatalf("%s: %v:\n%s", name, err, out)
	}
}

// launch starts cmd (see startServer) and waits for it to be ready. It
// returns the output so far and an error if the process exited first.
func launch(t *testing.T, name string, cmd *exec.Cmd, ready func(out string) bool) (string, error) {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // the server and its children, nothing else
		<-exited
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	start := time.Now()
	for deadline := start.Add(60 * time.Second); !ready(out.String()); {
		select {
		case <-exited:
			return out.String(), fmt.Errorf("exited before it was ready (%v)", cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 60s:\n%s", name, out.String())
		}
	}
	t.Logf("%s ready in %v", name, time.Since(start).Round(time.Millisecond))
	return out.String(), nil
}

// logged returns a ready function for startServer that waits for line in
// the output.
func logged(line string) func(string) bool {
	return func(out string) bool { return strings.Contains(out, line) }
}

// realProxy is a sift-proxy process with one detecting listener.
type realProxy struct {
	addr, admin string
}

// startDetectingProxy runs sift-proxy with a listener that has the detect
// filter with its default config (no per-port policy: grace period, learning
// and timeout all default), an HTTP chain to a Go backend, and a default
// ("opaque") chain whose tcp_proxy goes to upstream.
func startDetectingProxy(t *testing.T, upstream string) realProxy {
	t.Helper()
	cfg := writeBootstrap(t, `
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 0}}}
static_resources:
  listeners:
  - name: sift
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    listener_filters:
    - {name: sift.detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}}
    filter_chains:
    - {name: http, filter_chain_match: {application_protocols: [http/1.1, http/1.0, h2c]}, filters: {{http}}}
    default_filter_chain: {name: opaque, filters: {{server}}}
  clusters:
`+staticCluster("http", httpBackend(t, "http"))+staticCluster("server", upstream),
		map[string]string{"http": tcpProxy("http"), "server": tcpProxy("server")})
	p := startProcess(t, []string{siftProxyBinary(t), "-c", cfg, "--log-format", "json"}, "sift", "admin")
	return realProxy{addr: p.addrs["sift"], admin: p.addrs["admin"]}
}

// detection is the part of a /detections record these tests check.
type detection struct {
	Reason  string `json:"reason"`
	Chain   string `json:"chain"`
	Outcome string `json:"outcome"`
	// Raced: the server-first race ran (an early upstream was opened).
	Raced bool `json:"server_first_race"`
	// EarlyUpstream is the endpoint of the early upstream the chain reused.
	EarlyUpstream string `json:"early_upstream_reused"`
}

// detections returns the proxy's detection records for its listener, oldest first.
func (p realProxy) detections(t *testing.T) []detection {
	t.Helper()
	_, port, _ := net.SplitHostPort(p.addr)
	var recs []detection
	p.adminJSON(t, "/detections?limit=1000&port="+port, &recs)
	slices.Reverse(recs)
	return recs
}

// learned reports whether /detections/learned lists the proxy's listener as
// a learned server-first destination.
func (p realProxy) learned(t *testing.T) bool {
	t.Helper()
	var l struct {
		Destinations []struct {
			Destination string `json:"destination"`
			Learned     bool   `json:"learned"`
		} `json:"destinations"`
	}
	p.adminJSON(t, "/detections/learned", &l)
	for _, d := range l.Destinations {
		if d.Destination == p.addr {
			return d.Learned
		}
	}
	return false
}

func (p realProxy) adminJSON(t *testing.T, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + p.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, body)
	}
}

// reasons are the records' reasons, oldest first.
func reasons(recs []detection) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Reason
	}
	return out
}

// checkRecords compares the records' reasons with want and requires every
// one to have gone to the opaque chain.
func checkRecords(t *testing.T, who string, recs []detection, want []string) {
	t.Helper()
	if diff := cmp.Diff(want, reasons(recs)); diff != "" {
		t.Errorf("%s: /detections reasons, oldest first (-want +got):\n%s", who, diff)
	}
	for i, r := range recs {
		if r.Chain != "opaque" || r.Outcome != "dispatched" {
			t.Errorf("%s: record %d went to chain %q (%s), want opaque (dispatched)", who, i, r.Chain, r.Outcome)
		}
	}
}

// repeat returns n copies of s.
func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// timeToGreeting connects to addr, sends nothing, and returns the time from
// dialling to the first bytes the server sent, and those bytes.
func timeToGreeting(t *testing.T, addr string) (time.Duration, []byte) {
	t.Helper()
	start := time.Now()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(30 * time.Second)) // a bound for a broken test, no assertion about speed
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	d := time.Since(start)
	if err != nil {
		t.Fatalf("%s: no greeting: %v", addr, err)
	}
	return d, buf[:n]
}

// runClient runs a client program and returns its trimmed standard output
// and how long it took (process start included).
func runClient(t *testing.T, name string, args ...string) (string, time.Duration) {
	t.Helper()
	return runClientStdin(t, "", name, args...)
}

// runClientStdin is runClient with stdin as the program's standard input.
func runClientStdin(t *testing.T, stdin, name string, args ...string) (string, time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second) // a bound for a broken test
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=30")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdin = strings.NewReader(stdin)
	start := time.Now()
	out, err := cmd.Output()
	d := time.Since(start)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(name), strings.Join(args, " "), err, out, stderr.String())
	}
	return strings.TrimSpace(string(out)), d
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// --- MariaDB (server speaks first) ------------------------------------------

// startMariaDB runs mariadbd on a free port with an empty data directory and
// no grant tables (any user, no password), and returns its address.
func startMariaDB(t *testing.T) string {
	t.Helper()
	bin := realBinary(t, "mariadb-server", []string{"mariadbd", "mysqld"}, "/usr/sbin", "/usr/libexec")
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	port := startServer(t, "mariadbd", func(port int) *exec.Cmd {
		args := []string{"--no-defaults", "--datadir=" + filepath.Join(dir, "data"), "--socket=" + filepath.Join(dir, "sock"),
			"--pid-file=" + filepath.Join(dir, "pid"), "--bind-address=127.0.0.1", "--port=" + strconv.Itoa(port),
			"--skip-grant-tables", "--skip-log-bin", "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M",
			"--innodb-doublewrite=0", "--innodb-flush-log-at-trx-commit=0", "--performance-schema=0"}
		if os.Geteuid() == 0 {
			args = append(args, "--user=root")
		}
		return exec.Command(bin, args...)
	}, logged("ready for connections"))
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func TestRealMariaDBServerFirst(t *testing.T) {
	t.Parallel()
	client := realBinary(t, "mariadb-client", []string{"mariadb", "mysql"})
	db := startMariaDB(t)

	// query runs SELECT 1 with the real client over TCP to addr.
	query := func(t *testing.T, addr string) time.Duration {
		host, port, _ := net.SplitHostPort(addr)
		out, d := runClient(t, client, "--no-defaults", "--protocol=TCP", "-h", host, "-P", port, "-u", "sift",
			"--connect-timeout=30", "-N", "-B", "-e", "SELECT 1")
		if out != "1" {
			t.Fatalf("SELECT 1 through %s printed %q, want 1", addr, out)
		}
		return d
	}
	greet := func(t *testing.T, addr string) time.Duration {
		d, b := timeToGreeting(t, addr)
		// The handshake packet: 3-byte length, sequence 0, protocol version 10.
		if len(b) < 5 || b[3] != 0 || b[4] != 10 {
			t.Fatalf("greeting through %s is not a MariaDB handshake: %q", addr, b)
		}
		return d
	}
	// bulk sends 1 MiB to the server and gets 2 MiB back on one connection:
	// the rest of the session after the greeting, over the early upstream.
	bulk := func(t *testing.T, addr string) time.Duration {
		host, port, _ := net.SplitHostPort(addr)
		up := strings.Repeat("sift", 1<<18)
		sql := fmt.Sprintf("SELECT LENGTH('%s'), MD5('%s');\nSELECT REPEAT('z', %d);\n", up, up, 2<<20)
		out, d := runClientStdin(t, sql, client, "--no-defaults", "--protocol=TCP", "-h", host, "-P", port, "-u", "sift",
			"--connect-timeout=30", "-N", "-B")
		want := fmt.Sprintf("%d\t%x\n%s", len(up), md5.Sum([]byte(up)), strings.Repeat("z", 2<<20))
		if out != want {
			t.Fatalf("1 MiB up, 2 MiB down through %s: got %d bytes (%.40q…), want %d", addr, len(out), out, len(want))
		}
		return d
	}
	// exercise makes six connections through addr, the first three to an
	// unknown destination and the last three once it has been learned.
	exercise := func(t *testing.T, how, addr string) {
		t.Logf("%s: greeting %s, SELECT 1 %s (server first, after the grace period)", how, ms(greet(t, addr)), ms(query(t, addr)))
		t.Logf("%s: SELECT 1 %s (server first; the third proof: learned)", how, ms(query(t, addr)))
		t.Logf("%s: greeting %s, SELECT 1 %s (learned server-first destination)", how, ms(greet(t, addr)), ms(query(t, addr)))
		t.Logf("%s: 1 MiB up, 2 MiB down in %s (learned server-first destination)", how, ms(bulk(t, addr)))
	}
	want := append(repeat("server_first", 3), repeat("learned_server_first", 3)...)

	t.Run("direct", func(t *testing.T) {
		t.Parallel()
		t.Logf("direct: greeting %s, SELECT 1 %s (no proxy: the reference)", ms(greet(t, db)), ms(query(t, db)))
	})
	t.Run("one proxy", func(t *testing.T) {
		t.Parallel()
		p := startDetectingProxy(t, db)
		exercise(t, "1 proxy", p.addr)
		checkRecords(t, "proxy", p.detections(t), want)
		if !p.learned(t) {
			t.Errorf("/detections/learned does not list %s as learned", p.addr)
		}
	})
	t.Run("two proxies", func(t *testing.T) {
		t.Parallel()
		// Proxy A's opaque fallback goes to proxy B's detecting listener:
		// both must see the server speak first, through one another.
		b := startDetectingProxy(t, db)
		a := startDetectingProxy(t, b.addr)
		exercise(t, "2 proxies", a.addr)
		checkRecords(t, "proxy A", a.detections(t), want)
		checkRecords(t, "proxy B", b.detections(t), want)
	})
}

// --- Exim (SMTP, server speaks first) ---------------------------------------

// eximConfig accepts every message and only queues it (no delivery), so the
// spool shows what arrived.
const eximConfig = `primary_hostname = sift.test
spool_directory = {{dir}}/spool
log_file_path = {{dir}}/%slog
pid_file_path = {{dir}}/exim.pid
exim_user = {{user}}
exim_group = {{group}}
keep_environment =
never_users =
tls_advertise_hosts =
host_lookup =
rfc1413_hosts =
local_interfaces = 127.0.0.1
daemon_smtp_ports = {{port}}
# A taken port fails at once (the default retries for 4.5 minutes).
daemon_startup_retries = 0
smtp_banner = $primary_hostname ESMTP Exim $version_number sift-test
queue_only = true
acl_smtp_rcpt = accept_all
begin acl
accept_all:
  accept
`

// startExim runs the Exim daemon in the foreground with its own config,
// spool and logs in a temporary directory, and returns its address and
// spool's input directory.
func startExim(t *testing.T) (addr, spool string) {
	t.Helper()
	bin := realBinary(t, "exim4-daemon-light", []string{"exim4", "exim"}, "/usr/sbin")
	dir := t.TempDir()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "exim.conf")
	// -bdf: the daemon, in the foreground; its log goes to files, so
	// readiness is the listening port answering with its banner.
	port := startServer(t, "exim", func(port int) *exec.Cmd {
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		r := strings.NewReplacer("{{dir}}", dir, "{{port}}", strconv.Itoa(port), "{{user}}", u.Username, "{{group}}", g.Name)
		if err := os.WriteFile(conf, []byte(r.Replace(eximConfig)), 0o600); err != nil {
			t.Fatal(err)
		}
		return exec.Command(bin, "-C", conf, "-bdf", "-oX", strconv.Itoa(port))
	}, func(string) bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.HasPrefix(line, "220 ")
	})
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), filepath.Join(dir, "spool", "input")
}

func TestRealSMTPServerFirst(t *testing.T) {
	t.Parallel()
	mta, spool := startExim(t)
	p := startDetectingProxy(t, mta)

	d, b := timeToGreeting(t, mta)
	t.Logf("direct: greeting %s %q (no proxy: the reference)", ms(d), strings.TrimSpace(string(b)))
	const sessions = 4
	for i := range sessions {
		start := time.Now()
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		sc, err := smtp.NewClient(c, "sift.test") // reads the 220 greeting
		if err != nil {
			c.Close()
			t.Fatalf("session %d: %v", i, err)
		}
		what := "server first, after the grace period"
		if i >= 3 {
			what = "learned server-first destination"
		}
		t.Logf("1 proxy: session %d: greeting %s (%s)", i, ms(time.Since(start)), what)
		body := fmt.Sprintf("Subject: sift %d\r\n\r\nthrough sift, session %d\r\n", i, i)
		if err := sendMail(sc, "a@sift.test", "b@sift.test", body); err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
	}
	// The MTA queued every message, with its body intact.
	var got []string
	files, _ := filepath.Glob(filepath.Join(spool, "*-D"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, body, ok := strings.Cut(string(b), "through sift"); ok {
			got = append(got, "through sift"+strings.TrimSpace(body))
		}
	}
	sort.Strings(got)
	var want []string
	for i := range sessions {
		want = append(want, fmt.Sprintf("through sift, session %d", i))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("message bodies in Exim's spool (-want +got):\n%s", diff)
	}
	checkRecords(t, "proxy", p.detections(t), append(repeat("server_first", 3), "learned_server_first"))
}

// sendMail sends one message on sc and quits.
func sendMail(sc *smtp.Client, from, to, body string) error {
	if err := sc.Hello("client.sift.test"); err != nil {
		return err
	}
	if err := sc.Mail(from); err != nil {
		return err
	}
	if err := sc.Rcpt(to); err != nil {
		return err
	}
	w, err := sc.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, body); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return sc.Quit()
}

// --- Redis and PostgreSQL (client speaks first: the controls) ---------------

func TestRealRedisClientFirst(t *testing.T) {
	t.Parallel()
	server := realBinary(t, "redis-server", []string{"redis-server"})
	cli := realBinary(t, "redis-tools", []string{"redis-cli"})
	dir := t.TempDir()
	port := startServer(t, "redis-server", func(port int) *exec.Cmd {
		return exec.Command(server, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir, "--daemonize", "no", "--protected-mode", "no")
	}, logged("Ready to accept connections"))
	startedRedis := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p := startDetectingProxy(t, startedRedis)

	_, pport, _ := net.SplitHostPort(p.addr)
	redis := func(args ...string) string {
		out, d := runClient(t, cli, append([]string{"-h", "127.0.0.1", "-p", pport}, args...)...)
		t.Logf("1 proxy: redis-cli %s: %q in %s", strings.Join(args, " "), out, ms(d))
		return out
	}
	// More connections than it takes to learn a server-first destination:
	// a client-first one is never learned.
	for i, tc := range []struct{ args []string }{{[]string{"PING"}}, {[]string{"SET", "sift", "detected"}}, {[]string{"GET", "sift"}}, {[]string{"PING"}}} {
		want := map[string]string{"PING": "PONG", "SET": "OK", "GET": "detected"}[tc.args[0]]
		if got := redis(tc.args...); got != want {
			t.Errorf("connection %d: redis-cli %v = %q, want %q", i, tc.args, got, want)
		}
	}
	// RESP ("*1\r\n$4\r\nPING...") is no protocol a sniffer knows: opaque,
	// decided by the client's bytes, never by the server.
	checkRecords(t, "proxy", p.detections(t), repeat("no_match", 4))

	// Clients that stay silent past the grace period, then speak first: the
	// race runs and Redis, silent too, loses it. A Redis client's bytes go
	// over the early upstream (the opaque chain's own cluster); an HTTP
	// client's go to the HTTP chain and the early upstream is closed.
	slow := func(req string) string {
		c := dial(t, p.addr)
		time.Sleep(500 * time.Millisecond) // ten grace periods: the race has started
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		return readAllWithin(t, c, 30*time.Second)
	}
	if got := slow("PING\r\n"); got != "+PONG\r\n" {
		t.Errorf("slow Redis client: got %q, want +PONG", got)
	}
	if got := slow("GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"); !strings.HasSuffix(got, "http GET /slow HTTP/1.1") {
		t.Errorf("slow HTTP client: got %q", got)
	}
	recs := p.detections(t)
	if len(recs) != 6 {
		t.Fatalf("%d detection records, want 6: %+v", len(recs), recs)
	}
	got := recs[4:]
	want := []detection{
		{Reason: "no_match", Chain: "opaque", Outcome: "dispatched", Raced: true, EarlyUpstream: startedRedis},
		{Reason: "match", Chain: "http", Outcome: "dispatched", Raced: true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("slow clients' detection records (-want +got):\n%s", diff)
	}
	if p.learned(t) {
		t.Errorf("/detections/learned lists Redis behind %s as server-first", p.addr)
	}
}

// startPostgres runs initdb and postgres on a free port, as the postgres
// user when the test runs as root (PostgreSQL refuses root), and returns
// its address.
func startPostgres(t *testing.T) string {
	t.Helper()
	initdb := realBinary(t, "postgresql", []string{"initdb"}, "/usr/lib/postgresql/*/bin")
	postgres := filepath.Join(filepath.Dir(initdb), "postgres")
	var cred *syscall.Credential
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and PostgreSQL refuses root: %v (the postgresql package creates the postgres user)", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		// t.TempDir's parents are root's, mode 0700: a directory of its own.
		if dir, err = os.MkdirTemp("", "sift-pg-"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	asPostgres := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		return cmd
	}
	data := filepath.Join(dir, "data")
	if out, err := asPostgres(initdb, "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	port := startServer(t, "postgres", func(port int) *exec.Cmd {
		return asPostgres(postgres, "-D", data, "-p", strconv.Itoa(port), "-k", dir,
			"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "shared_buffers=16MB")
	}, logged("database system is ready to accept connections"))
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func TestRealPostgresClientFirst(t *testing.T) {
	t.Parallel()
	psql := realBinary(t, "postgresql-client", []string{"psql"})
	db := startPostgres(t)
	p := startDetectingProxy(t, db)

	query := func(addr string) (string, time.Duration) {
		host, port, _ := net.SplitHostPort(addr)
		return runClient(t, psql, "-X", "-w", "-tA", "-h", host, "-p", port, "-U", "postgres", "-d", "postgres", "-c", "SELECT 1")
	}
	out, d := query(db)
	t.Logf("direct: psql SELECT 1 %q in %s (no proxy: the reference)", out, ms(d))
	for i := range 4 {
		out, d := query(p.addr)
		t.Logf("1 proxy: connection %d: psql SELECT 1 %q in %s", i, out, ms(d))
		if out != "1" {
			t.Errorf("connection %d: SELECT 1 printed %q, want 1", i, out)
		}
	}
	// psql opens with an SSLRequest (or a StartupMessage): binary, client
	// first, no protocol a sniffer knows.
	checkRecords(t, "proxy", p.detections(t), repeat("no_match", 4))
	if p.learned(t) {
		t.Errorf("/detections/learned lists PostgreSQL behind %s as server-first", p.addr)
	}
}
