package test

// Helpers of the mesh end-to-end test (mesh_e2e_test.go): network
// namespaces wired into one private network, processes run inside them, and
// a bounded HTTP load generator.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/siftmesh/sift/internal/netns"
)

// meshNSPrefix starts the name of every namespace the mesh test creates;
// the test process's pid follows, so that concurrent runs never collide and
// a crashed run's leftovers can be recognised (removeStaleNamespaces).
const meshNSPrefix = "siftmesh-"

var meshRunSeq atomic.Int64

// addNamespace creates a namespace named after this process and role, and
// deletes it when the test ends (after the processes in it, whose cleanups
// are registered later and so run first).
func addNamespace(t *testing.T, run int64, role string) *netns.NS {
	t.Helper()
	return addPrefixedNamespace(t, meshNSPrefix, run, role)
}

// addPrefixedNamespace is addNamespace with another prefix than
// meshNSPrefix (removeStaleNamespaces must be given the same).
func addPrefixedNamespace(t *testing.T, prefix string, run int64, role string) *netns.NS {
	t.Helper()
	n, err := netns.Add(fmt.Sprintf("%s%d-%d-%s", prefix, os.Getpid(), run, role))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return n
}

// removeStaleNamespaces deletes namespaces left by mesh test processes that
// no longer exist (killed before their cleanups ran): those named with
// prefix, meshNSPrefix if none is given.
func removeStaleNamespaces(t *testing.T, prefix ...string) {
	meshNSPrefix := meshNSPrefix
	if len(prefix) > 0 {
		meshNSPrefix = prefix[0]
	}
	names, err := netns.List()
	if err != nil {
		t.Logf("listing namespaces: %v", err)
		return
	}
	for _, name := range names {
		rest, ok := strings.CutPrefix(name, meshNSPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat("/proc/" + pidStr); err == nil {
			continue // its test is still running
		}
		if err := (&netns.NS{Name: name}).Delete(); err != nil {
			t.Logf("removing stale namespace: %v", err)
		}
	}
}

// dialIn connects to addr from inside ns; the connection has a 10 s deadline
// (a bound on a broken test, no assertion about speed) and is closed when
// the test ends.
func dialIn(t *testing.T, ns *netns.NS, addr string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s in %s: %v", addr, ns.Name, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// meshProc is a process (sift-proxy or sift-control) inside a namespace.
// Its stderr is kept line by line for waitLog, and shown when the test fails.
type meshProc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid after exited

	mu    sync.Mutex
	lines []string
}

// startMeshProc starts cmd; it is killed (SIGKILL) and reaped when the test
// ends. It also dies with the test process (Pdeathsig), so that a crashed
// test leaves no proxy behind.
func startMeshProc(t *testing.T, name string, cmd *exec.Cmd) *meshProc {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	p := &meshProc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			p.mu.Unlock()
		}
		io.Copy(io.Discard, stderr) // never leave the process blocked on a full pipe
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			p.mu.Lock()
			lines := p.lines
			if len(lines) > 300 {
				lines = lines[len(lines)-300:]
			}
			t.Logf("%s (%v) logs, last %d lines:\n%s", name, p.err, len(lines), strings.Join(lines, "\n"))
			p.mu.Unlock()
		}
	})
	return p
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *meshProc) kill() {
	p.cmd.Process.Kill()
	<-p.exited
}

// logCount is how many lines the process has logged so far: a mark for
// waitLog.
func (p *meshProc) logCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// waitLog polls the log lines from index from on until match accepts one
// and returns it; it fails the test after limit or when the process exits.
func (p *meshProc) waitLog(t *testing.T, from int, limit time.Duration, what string, match func(line string) bool) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		p.mu.Lock()
		lines := p.lines[min(from, len(p.lines)):]
		p.mu.Unlock()
		for _, l := range lines {
			if match(l) {
				return l
			}
		}
		from += len(lines)
		select {
		case <-p.exited:
			t.Fatalf("%s exited (%v) before logging %s", p.name, p.err, what)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not log %s within %v", p.name, what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// jsonRecord matches a JSON log line whose fields include every key/value
// of want (values compared as strings).
func jsonRecord(want map[string]string) func(string) bool {
	return func(line string) bool {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			return false
		}
		for k, v := range want {
			if fmt.Sprint(rec[k]) != v {
				return false
			}
		}
		return true
	}
}

// writeFileAtomic replaces path's contents in one rename, so that a poller
// never reads a half-written file.
func writeFileAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// httpServeIn serves h on ln until the test ends.
func httpServeIn(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
}

// meshLoad is a bounded HTTP load: workers each send at most max requests,
// one connection per request, until stopped. Every response is recorded in
// order as the name of the backend that answered it ("" for a failure).
type meshLoad struct {
	client *http.Client
	url    string
	stop   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	answers  []string // backend name per completed request, in completion order
	failures []string // the first few failures
	failed   int
}

func startMeshLoad(client *http.Client, url string, workers, max int) *meshLoad {
	l := &meshLoad{client: client, url: url, stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for range max {
				select {
				case <-l.stop:
					return
				default:
				}
				name, err := meshGet(l.client, l.url)
				l.mu.Lock()
				if err != nil {
					l.failed++
					if len(l.failures) < 10 {
						l.failures = append(l.failures, fmt.Sprintf("request %d at %s: %v", len(l.answers), time.Now().Format("15:04:05.000"), err))
					}
				}
				l.answers = append(l.answers, name)
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// meshGet fetches url and returns the name of the backend that answered
// (the body's first field, "name=app-0").
func meshGet(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("reading the body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %q", resp.StatusCode, b)
	}
	first, _, _ := strings.Cut(string(b), " ")
	name, ok := strings.CutPrefix(first, "name=")
	if !ok {
		return "", fmt.Errorf("unexpected body %q", b)
	}
	return name, nil
}

// finish stops the workers and waits for them.
func (l *meshLoad) finish() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// count is the number of completed requests: a mark for since and until.
func (l *meshLoad) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.answers)
}

// since returns how many requests completed after mark were answered by
// each backend.
func (l *meshLoad) since(mark int) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]int{}
	for _, a := range l.answers[mark:] {
		out[a]++
	}
	return out
}

// streak is how many of the latest responses in a row came from backend.
func (l *meshLoad) streak(backend string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for i := len(l.answers) - 1; i >= 0 && l.answers[i] == backend; i-- {
		n++
	}
	return n
}

func (l *meshLoad) failedRequests() (int, []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failed, append([]string(nil), l.failures...)
}

// until polls cond (under the load's lock, with the answers so far) until
// it holds; it fails the test when limit passes or the workers ran out of
// requests first.
func (l *meshLoad) until(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }() // ends with the workers (finish)
	deadline := time.Now().Add(limit)
	for !cond() {
		select {
		case <-done:
			if cond() {
				return
			}
			n, _ := l.failedRequests()
			t.Fatalf("the load ran out of requests (%d sent, %d failed) before %s", l.count(), n, what)
		default:
		}
		if time.Now().After(deadline) {
			n, _ := l.failedRequests()
			t.Fatalf("no %s within %v (%d requests sent, %d failed)", what, limit, l.count(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
