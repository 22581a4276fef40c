package host

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/siftmesh/sift/plugins"
)

var (
	buildOnce sync.Once
	builtPath string
	buildErr  error
)

// buildTestPlugin builds testdata/testplugin once per test binary.
func buildTestPlugin() (string, error) {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sift-testplugin")
		if err != nil {
			buildErr = err
			return
		}
		builtPath = filepath.Join(dir, "testplugin")
		out, err := exec.Command("go", "build", "-o", builtPath, "./testdata/testplugin").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	return builtPath, buildErr
}

// testPlugin builds testdata/testplugin once and returns a private copy of
// it (tests may replace their copy).
func testPlugin(t *testing.T) string {
	t.Helper()
	built, err := buildTestPlugin()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "testplugin")
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMain(m *testing.M) {
	code := m.Run()
	StopAll()
	if builtPath != "" {
		os.RemoveAll(filepath.Dir(builtPath))
	}
	os.Exit(code)
}

// logBuffer collects a test's plugin logs.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func start(t *testing.T, path string, args ...string) (*Plugin, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	p, err := Get(Spec{Path: path, Args: args}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopOne(p) })
	return p, logs
}

// stopOne stops one plugin and forgets it.
func stopOne(p *Plugin) {
	registryMu.Lock()
	delete(registry, p.spec.key())
	registryMu.Unlock()
	p.stop()
}

func eventually(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const budget = 2 * time.Second // generous: a slow CI machine must not turn answers into timeouts

func TestSniffAndShare(t *testing.T) {
	t.Parallel()
	path := testPlugin(t)
	p, _ := start(t, path, "-mode", "ok")
	if info := p.Info(); info.Name != "test" || info.Protocols[0] != "test" || info.MaxBytes != 32 {
		t.Errorf("Info() = %+v", info)
	}
	again, err := Get(Spec{Path: path, Args: []string{"-mode", "ok"}}, nil)
	if err != nil || again != p {
		t.Errorf("a second Get started another process (%p, %p, %v)", again, p, err)
	}
	for _, tt := range []struct {
		in    string
		atEOF bool
		want  plugins.Verdict
	}{
		{"TE", false, plugins.NeedMore}, {"TEST 1", false, plugins.Match}, {"GET /", false, plugins.NoMatch}, {"TE", true, plugins.NoMatch},
	} {
		r, err := p.Sniff([]byte(tt.in), tt.atEOF, budget)
		if err != nil || r.Verdict != tt.want {
			t.Errorf("Sniff(%q, %v) = %+v, %v; want %v", tt.in, tt.atEOF, r, err, tt.want)
		}
	}
	// It implements no ServerSniffer: a server's greeting is never its.
	if p.Info().ServerFirst {
		t.Error("Info().ServerFirst set for a plugin without SniffServer")
	}
	if r, err := p.SniffServer([]byte("TEST"), budget); err != nil || r.Verdict != plugins.NoMatch {
		t.Errorf("SniffServer = %+v, %v; want NoMatch", r, err)
	}
	// Many connections at once share the one process.
	var wg sync.WaitGroup
	var failed sync.Map
	for i := range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.Sniff([]byte(fmt.Sprintf("TEST %d", i)), false, 10*time.Second)
			if err != nil || r.Verdict != plugins.Match || r.Attributes["len"] != fmt.Sprint(len(fmt.Sprintf("TEST %d", i))) {
				failed.Store(i, fmt.Sprintf("%+v %v", r, err))
			}
		}()
	}
	wg.Wait()
	failed.Range(func(k, v any) bool { t.Errorf("concurrent call %v: %v", k, v); return false })
	if got := p.matches.Load(); got < 1001 {
		t.Errorf("matches = %d, want at least 1001", got)
	}
}

func TestMisbehavingPluginCostsAtMostItsBudget(t *testing.T) {
	t.Parallel()
	path := testPlugin(t)
	// The hanging plugin gets a short budget (it must cost no more); the
	// others the usual one, so that a loaded machine's slow answer is not
	// mistaken for a hang.
	for _, tc := range []struct {
		mode, want string
		budget     time.Duration
		count      func(*Plugin) uint64
	}{
		{"hang", "no answer within 50ms", 50 * time.Millisecond, func(p *Plugin) uint64 { return p.timeouts.Load() }},
		{"garbage", `matched protocol "not-declared", which it did not declare (test)`, budget, func(p *Plugin) uint64 { return p.errs.Load() }},
		{"big", "bytes of attributes (at most 4096)", budget, func(p *Plugin) uint64 { return p.errs.Load() }},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			p, _ := start(t, path, "-mode", tc.mode)
			_, err := p.Sniff([]byte("TEST"), false, tc.budget)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Sniff() error = %v, want %q", err, tc.want)
			}
			if tc.count(p) != 1 {
				t.Errorf("the failure was not counted")
			}
		})
	}
}

func TestStderrGoesToTheLogWithThePluginsName(t *testing.T) {
	t.Parallel()
	p, logs := start(t, testPlugin(t), "-mode", "stderr")
	if _, err := p.Sniff([]byte("TEST"), false, budget); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the plugin's stderr in the log", func() bool {
		return strings.Contains(logs.String(), `msg="plugin stderr: sniffing 4 bytes" plugin=`+p.Label())
	})
}

func TestCrashedPluginIsNoMatchThenRestarted(t *testing.T) {
	t.Parallel()
	p, _ := start(t, testPlugin(t), "-mode", "ok", "-id", "crash")
	pid := p.PID()
	if pid == 0 {
		t.Fatal("no pid")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Calls fail (the caller's NoMatch) until the supervisor has restarted it.
	_, err := p.Sniff([]byte("TEST"), false, budget)
	if err == nil {
		t.Log("the call raced the crash and won; the supervisor must still notice")
	}
	eventually(t, "the restart", func() bool { return p.Up() && p.PID() != pid && p.PID() != 0 })
	if r, err := p.Sniff([]byte("TEST"), false, budget); err != nil || r.Verdict != plugins.Match {
		t.Errorf("after the restart: %+v, %v", r, err)
	}
	if p.restarts.Load() < 1 {
		t.Error("the restart was not counted")
	}
	// The dead process is gone, not a zombie or an orphan.
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the crashed process %d: kill -0 = %v, want ESRCH", pid, err)
	}
}

func TestChecksum(t *testing.T) {
	t.Parallel()
	path := testPlugin(t)
	b, _ := os.ReadFile(path)
	sum := sha256.Sum256(b)
	wrong := sha256.Sum256([]byte("another binary"))
	if _, err := Get(Spec{Path: path, Args: []string{"-id", "checksum-wrong"}, SHA256: wrong[:]}, nil); err == nil ||
		!strings.Contains(err.Error(), "checksums did not match") || !strings.Contains(err.Error(), path) {
		t.Errorf("Get with a wrong checksum: %v", err)
	}
	logs := &logBuffer{}
	p, err := Get(Spec{Path: path, Args: []string{"-id", "checksum-right"}, SHA256: sum[:]}, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopOne(p) })
	// The binary is replaced, then the plugin dies: the restart refuses the
	// new binary, and the plugin stays down (NoMatch) rather than run it.
	if err := os.WriteFile(path+".new", append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(p.PID(), syscall.SIGKILL)
	eventually(t, "a refused restart", func() bool { return strings.Contains(logs.String(), "checksums did not match") })
	if _, err := p.Sniff([]byte("TEST"), false, budget); !errors.Is(err, ErrDown) {
		t.Errorf("Sniff with the plugin refused: %v, want ErrDown", err)
	}
}

func TestIncompatibleAPIVersionIsRefused(t *testing.T) {
	t.Parallel()
	_, err := Get(Spec{Path: testPlugin(t), Args: []string{"-api", "2"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "incompatible API version with plugin. Plugin version: 2, Client versions: [1]") {
		t.Errorf("Get of an API-2 plugin: %v, want go-plugin's incompatible version error", err)
	}
}

func TestStopAllEndsTheProcesses(t *testing.T) {
	// Not parallel: StopAll stops every test's plugins.
	p, err := Get(Spec{Path: testPlugin(t), Args: []string{"-id", "stop"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	StopAll()
	eventually(t, "the plugin process to end", func() bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) })
	if _, err := p.Sniff([]byte("TEST"), false, budget); !errors.Is(err, ErrDown) {
		t.Errorf("Sniff after StopAll: %v", err)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	p, _ := start(t, testPlugin(t), "-mode", "ok", "-id", "metrics")
	p.Sniff([]byte("TEST"), false, budget)
	p.Sniff([]byte("NOPE"), false, budget)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, mf := range mfs {
		found[mf.GetName()] = true
	}
	for _, name := range []string{"sift_plugin_calls_total", "sift_plugin_restarts_total", "sift_plugin_up", "sift_plugin_call_duration_seconds"} {
		if !found[name] {
			t.Errorf("no %s", name)
		}
	}
	if n := testutil.CollectAndCount(Collector(), "sift_plugin_calls_total"); n < 5 {
		t.Errorf("sift_plugin_calls_total has %d series, want one per result", n)
	}
}

// BenchmarkSniff measures one Sniff call to a real plugin process: what a
// connection whose verdict the built-ins left open pays per read round.
func BenchmarkSniff(b *testing.B) {
	path := testPluginB(b)
	p, err := Get(Spec{Path: path, Args: []string{"-id", "bench"}}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer stopOne(p)
	data := []byte("*1\r\n$4\r\nPING\r\n")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Sniff(data, false, time.Second); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func testPluginB(b *testing.B) string {
	path, err := buildTestPlugin()
	if err != nil {
		b.Fatal(err)
	}
	return path
}
