// Package harness runs the benchmark scenarios: it starts the backends and
// load clients on the load core, each proxy on the proxy core, visits the
// targets interleaved (A B C D A B C D ...) and records every number.
package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/siftmesh/sift/bench/internal/gen"
	"github.com/siftmesh/sift/bench/internal/loadgen"
	"github.com/siftmesh/sift/bench/internal/procs"
	"github.com/siftmesh/sift/bench/internal/report"
	"github.com/siftmesh/sift/bench/internal/stats"
)

// Options configure a run.
type Options struct {
	Quick bool
	// SiftTelemetry runs sift-proxy with its metrics on (an admin server).
	SiftTelemetry bool
	// SiftEnv is added to sift-proxy's environment only (KEY=VALUE items,
	// e.g. GOGC=50), to compare runtime settings.
	SiftEnv []string
	// Plugin is the Redis sniffer plugin's binary (s9).
	Plugin    string
	Repeats   int
	Dur       time.Duration // one load measurement
	ProxyCPU  string        // taskset list for the proxy under test
	LoadCPU   string        // taskset list for backends and load generators
	Targets   []string
	Scenarios map[string]bool // empty: all
	OutDir    string
	WorkDir   string
	SiftBin   string // empty: Sift unavailable (SiftReason says why)
	SiftWhy   string
	Self      string // this binary (backends and Go load clients)
	WrkScript string
	Fortio    string
	PortBase  int
}

// Runner holds a run's state.
type Runner struct {
	o   Options
	res report.Results
	env gen.Env
	// siftDown: scenario → reason Sift could not run it (found on first try)
	siftDown map[string]string
	log      io.Writer
}

// Main parses flags and runs the benchmark.
func Main(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var o Options
	quick := os.Getenv("BENCH_QUICK") == "1"
	fs.BoolVar(&o.Quick, "quick", quick, "smoke run (BENCH_QUICK=1): 1 repeat, short loads")
	fs.IntVar(&o.Repeats, "repeats", 0, "interleaved repeats (default 3, quick 1)")
	fs.DurationVar(&o.Dur, "d", 0, "duration of one load measurement (default 5s, quick 2s)")
	fs.StringVar(&o.ProxyCPU, "proxy-cpu", envOr("BENCH_PROXY_CPU", "1"), "taskset CPU list for the proxy")
	fs.StringVar(&o.LoadCPU, "load-cpu", envOr("BENCH_LOAD_CPU", "0"), "taskset CPU list for backends and load generators")
	targets := fs.String("targets", envOr("BENCH_TARGETS", strings.Join(report.AllTargets, ",")), "targets, comma-separated")
	scen := fs.String("scenarios", os.Getenv("BENCH_SCENARIOS"), "scenario ids to run (s1..s8), comma-separated; empty = all")
	fs.StringVar(&o.OutDir, "out", "bench/results", "output directory")
	fs.StringVar(&o.Plugin, "plugin", os.Getenv("BENCH_PLUGIN"), "the example Redis sniffer plugin's binary, for s9 (bench/run.sh builds it)")
	fs.Func("sift-env", "KEY=VALUE added to sift-proxy's environment only (repeatable; BENCH_SIFT_ENV: space-separated)", func(v string) error {
		if !strings.Contains(v, "=") {
			return fmt.Errorf("%q is not KEY=VALUE", v)
		}
		o.SiftEnv = append(o.SiftEnv, v)
		return nil
	})
	o.SiftEnv = strings.Fields(os.Getenv("BENCH_SIFT_ENV"))
	fs.BoolVar(&o.SiftTelemetry, "sift-telemetry", os.Getenv("BENCH_SIFT_TELEMETRY") == "1",
		"give sift-proxy an admin server, which turns its Prometheus metrics on (BENCH_SIFT_TELEMETRY=1); off by default, as the others log and count nothing")
	fs.StringVar(&o.WorkDir, "work", "bench/.work", "scratch directory (configs, logs)")
	fs.StringVar(&o.SiftBin, "sift", "", "sift-proxy binary (empty: Sift is reported unavailable)")
	fs.StringVar(&o.SiftWhy, "sift-unavailable", "sift-proxy was not built", "why Sift is unavailable when -sift is empty")
	fs.StringVar(&o.WrkScript, "wrk-script", "bench/wrk/percentiles.lua", "wrk Lua script printing the percentile curve")
	fs.StringVar(&o.Fortio, "fortio", "fortio", "fortio binary")
	fs.IntVar(&o.PortBase, "port-base", atoiOr(os.Getenv("BENCH_PORT_BASE"), 15000), "first port of the 127.0.0.1 port block used")
	fs.Parse(args)
	if o.Repeats == 0 {
		o.Repeats = 3
		if o.Quick {
			o.Repeats = 1
		}
	}
	if o.Dur == 0 {
		o.Dur = 5 * time.Second
		if o.Quick {
			o.Dur = 2 * time.Second
		}
	}
	o.Targets = splitList(*targets)
	o.Scenarios = map[string]bool{}
	for _, s := range splitList(*scen) {
		o.Scenarios[s] = true
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	o.Self = self
	r := &Runner{o: o, siftDown: map[string]string{}, log: os.Stderr}
	return r.Run()
}

// Run runs every selected scenario and writes the report.
func (r *Runner) Run() error {
	for _, d := range []*string{&r.o.OutDir, &r.o.WorkDir} {
		abs, err := filepath.Abs(*d) // nginx resolves relative paths against its prefix
		if err != nil {
			return err
		}
		*d = abs
	}
	o := r.o
	for _, d := range []string{o.OutDir, o.WorkDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	fdHard := procs.RaiseFDLimit()
	certs, err := gen.GenerateCerts(o.WorkDir)
	if err != nil {
		return err
	}
	r.env = gen.Env{WorkDir: o.WorkDir, Certs: certs, FDLimit: int(fdHard), MaxConns: 4096, SiftTelemetry: o.SiftTelemetry}
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err == nil {
		r.env.NginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"
	}
	os.MkdirAll(filepath.Join(o.WorkDir, "nginx-tmp"), 0o755)
	r.collectMeta(fdHard)
	start := time.Now()
	for _, sc := range r.scenarios() {
		if len(o.Scenarios) > 0 && !o.Scenarios[sc.info.ID] {
			continue
		}
		r.res.Scenarios = append(r.res.Scenarios, sc.info)
		r.logf("== %s: %s", sc.info.ID, sc.info.Title)
		t0 := time.Now()
		if err := sc.run(); err != nil {
			r.logf("   scenario %s aborted: %v", sc.info.ID, err)
			r.res.Failures = append(r.res.Failures, report.Failure{Scenario: sc.info.ID, Target: "all", Err: err.Error()})
		}
		r.logf("   %s took %.0fs", sc.info.ID, time.Since(t0).Seconds())
	}
	r.res.SetMeta("wall time", time.Since(start).Round(time.Second).String())
	r.res.SetMeta("load average at end", loadAvg())
	if b, err := os.ReadFile(filepath.Join(o.OutDir, "splicecheck.txt")); err == nil {
		r.res.Extra = append(r.res.Extra, report.Section{Title: "Zero-copy evidence (bench/splicecheck.sh)", Body: string(b)})
	}
	if b, err := os.ReadFile(filepath.Join(o.OutDir, "profile.txt")); err == nil {
		r.res.Extra = append(r.res.Extra, report.Section{Title: "Sift profile (bench/profile.sh)", Body: string(b)})
	}
	if err := report.Write(o.OutDir, &r.res); err != nil {
		return err
	}
	r.logf("report: %s", filepath.Join(o.OutDir, "latest.md"))
	return nil
}

func (r *Runner) collectMeta(fdHard uint64) {
	o := r.o
	mode := "full"
	if o.Quick {
		mode = "quick (BENCH_QUICK=1)"
	}
	r.res.SetMeta("date", time.Now().UTC().Format(time.RFC3339))
	r.res.SetMeta("mode", fmt.Sprintf("%s: %d interleaved repeat(s), %v per load measurement", mode, o.Repeats, o.Dur))
	r.res.SetMeta("pinning", fmt.Sprintf("proxy under test on CPU %s; backends and load generators on CPU %s (taskset)", o.ProxyCPU, o.LoadCPU))
	r.res.SetMeta("machine", fmt.Sprintf("%d CPUs, %s, kernel %s", onlineCPUs(), cpuModel(), firstLine(cmdOut("uname", "-r"))))
	settings := "one thread/worker/GOMAXPROCS each (HAProxy nbthread 1, nginx worker_processes 1, Sift pinned to one CPU so Go sets GOMAXPROCS=1); no access logs"
	if o.SiftTelemetry {
		settings += "; Sift's metrics on (an admin server: -sift-telemetry)"
	} else {
		settings += "; Sift's metrics off (no admin server; -sift-telemetry turns them on)"
	}
	if len(o.SiftEnv) > 0 {
		settings += "; sift-proxy's environment adds " + strings.Join(o.SiftEnv, " ")
	}
	r.res.SetMeta("proxy settings", settings)
	r.res.SetMeta("fd limit", strconv.FormatUint(fdHard, 10))
	la := loadAvg()
	if f := strings.Fields(la); len(f) > 0 {
		if v, err := strconv.ParseFloat(f[0], 64); err == nil && v > 0.5 {
			la += " — the machine was busy before the run: expect noise (interleaving spreads it over all targets alike; see the min–max spreads)"
		}
	}
	r.res.SetMeta("load average at start", la)
	r.res.SetMeta("haproxy", firstLine(cmdOut("haproxy", "-v")))
	r.res.SetMeta("nginx", firstLine(cmdOut("nginx", "-v")))
	r.res.SetMeta("wrk", firstLine(cmdOut("wrk", "-v")))
	r.res.SetMeta("h2load", firstLine(cmdOut("h2load", "--version")))
	r.res.SetMeta("iperf3", firstLine(cmdOut("iperf3", "--version")))
	r.res.SetMeta("fortio", firstLine(cmdOut(o.Fortio, "version")))
	r.res.SetMeta("go", runtime.Version())
	if o.SiftBin != "" {
		r.res.SetMeta("sift", "sift-proxy from "+firstLine(cmdOut("git", "-C", filepath.Dir(o.OutDir), "describe", "--always", "--dirty"))+" (working tree)")
	} else {
		r.res.SetMeta("sift", "unavailable: "+o.SiftWhy)
	}
}

func (r *Runner) logf(format string, a ...any) {
	fmt.Fprintf(r.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (r *Runner) port(n int) int { return r.o.PortBase + n }

func (r *Runner) record(sc, cs, tg string, rep int, metric, unit string, b report.Better, v float64) {
	r.res.Measurements = append(r.res.Measurements, report.Measurement{Scenario: sc, Case: cs, Target: tg, Repeat: rep, Metric: metric, Unit: unit, Better: b, Value: v})
}

func (r *Runner) curve(sc, cs, tg string, rep int, pts []stats.Point) {
	if len(pts) > 0 {
		r.res.Curves = append(r.res.Curves, report.Curve{Scenario: sc, Case: cs, Target: tg, Repeat: rep, Points: pts})
	}
}

func (r *Runner) fail(sc, cs, tg string, rep int, err error) {
	r.logf("   FAIL %s/%s/%s #%d: %v", sc, cs, tg, rep, err)
	r.res.Failures = append(r.res.Failures, report.Failure{Scenario: sc, Case: cs, Target: tg, Repeat: rep, Err: err.Error()})
}

func (r *Runner) unavailable(sc, cs, tg, why string) {
	for _, u := range r.res.Unavailable {
		if u.Scenario == sc && u.Case == cs && u.Target == tg {
			return
		}
	}
	r.res.Unavailable = append(r.res.Unavailable, report.Unavailable{Scenario: sc, Case: cs, Target: tg, Reason: why})
}

// backend starts one of siftbench's own backends on the load CPU.
func (r *Runner) backend(name string, port int, extra ...string) (*procs.Proc, error) {
	args := append([]string{r.o.Self, "serve", name, "-addr", fmt.Sprintf("127.0.0.1:%d", port)}, extra...)
	p, err := procs.Start(name, r.o.LoadCPU, filepath.Join(r.o.WorkDir, fmt.Sprintf("backend-%s-%d.log", name, port)), nil, args...)
	if err != nil {
		return nil, err
	}
	if err := p.WaitListening([]int{port}, 10*time.Second); err != nil {
		p.Stop(time.Second)
		return nil, err
	}
	return p, nil
}

type backends []*procs.Proc

func (b backends) stop() {
	for _, p := range b {
		p.Stop(2 * time.Second)
	}
}

// startBackends starts all specs or none.
func (r *Runner) startBackends(specs ...func() (*procs.Proc, error)) (backends, error) {
	var bs backends
	for _, s := range specs {
		p, err := s()
		if err != nil {
			bs.stop()
			return nil, err
		}
		bs = append(bs, p)
	}
	return bs, nil
}

// startProxy writes the target's configuration for top and starts it on the
// proxy CPU; it returns when every listener is up.
func (r *Runner) startProxy(sc, tg string, top gen.Topology, env gen.Env) (*procs.Proc, error) {
	dir := filepath.Join(r.o.WorkDir, sc)
	os.MkdirAll(dir, 0o755)
	env.WorkDir = dir
	os.MkdirAll(filepath.Join(dir, "nginx-tmp"), 0o755)
	var argv []string
	var cfg, file string
	var err error
	switch tg {
	case report.HAProxy:
		file = filepath.Join(dir, "haproxy.cfg")
		cfg, err = gen.HAProxy(top, env)
		argv = []string{"haproxy", "-db", "-f", file}
	case report.Nginx:
		file = filepath.Join(dir, "nginx.conf")
		cfg, err = gen.Nginx(top, env)
		argv = []string{"nginx", "-p", dir, "-e", filepath.Join(dir, "nginx-error.log"), "-c", file}
	case report.Sift:
		file = filepath.Join(dir, "sift.yaml")
		cfg, err = gen.Sift(top, env)
		argv = []string{r.o.SiftBin, "-c", file, "-l", "warning"}
	default:
		return nil, fmt.Errorf("no proxy for target %q", tg)
	}
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(file, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	var penv []string
	if tg == report.Sift {
		penv = r.o.SiftEnv
	}
	p, err := procs.Start(tg, r.o.ProxyCPU, filepath.Join(dir, tg+".log"), penv, argv...)
	if err != nil {
		return nil, err
	}
	if err := p.WaitListening(top.Ports(), 15*time.Second); err != nil {
		p.Stop(2 * time.Second)
		return nil, err
	}
	return p, nil
}

// visit is called once per (repeat, target) with the running proxy (nil for
// direct) and an address resolver for the topology's listeners.
type visit func(tg string, rep int, px *procs.Proc, addr func(listener string) string)

// interleave runs body for every repeat and target, A B C D A B C D. The
// topology may differ per target (only where a scenario says why). A Sift
// that refuses the topology (exits at startup) is reported unavailable for
// the scenario with its own words, and skipped from then on.
func (r *Runner) interleave(sc string, targets []string, top func(tg string) gen.Topology, env gen.Env, body visit) {
	for rep := 1; rep <= r.o.Repeats; rep++ {
		for _, tg := range targets {
			if !r.wants(tg) {
				continue
			}
			if tg == report.Sift {
				if r.o.SiftBin == "" {
					r.unavailable(sc, "", tg, r.o.SiftWhy)
					continue
				}
				if why, down := r.siftDown[sc]; down {
					_ = why
					continue
				}
			}
			t := top(tg)
			if tg == report.Direct {
				body(tg, rep, nil, func(l string) string { return directAddr(t, l) })
				continue
			}
			px, err := r.startProxy(sc, tg, t, env)
			if err != nil {
				if tg == report.Sift {
					why := "sift-proxy refused this configuration: " + err.Error()
					r.siftDown[sc] = why
					r.unavailable(sc, "", tg, why)
					r.logf("   sift unavailable for %s: %v", sc, err)
				} else {
					r.fail(sc, "", tg, rep, err)
				}
				continue
			}
			body(tg, rep, px, func(l string) string { return listenerAddr(t, l) })
			if ok, err := px.Exited(); ok {
				r.fail(sc, "", tg, rep, fmt.Errorf("%s died during the measurement (%v): %s", tg, err, procs.LastLines(px.Tail(), 5)))
			}
			px.Stop(3 * time.Second)
		}
	}
}

func (r *Runner) wants(tg string) bool {
	for _, t := range r.o.Targets {
		if t == tg {
			return true
		}
	}
	return false
}

func listenerAddr(t gen.Topology, name string) string {
	for _, l := range t.Listeners {
		if l.Name == name {
			return fmt.Sprintf("127.0.0.1:%d", l.Port)
		}
	}
	panic("no listener " + name)
}

// directAddr is where a direct client goes instead of listener name: its
// first upstream, following upstreams that are themselves listeners of the
// topology (the mTLS pair) to the real backend.
func directAddr(t gen.Topology, name string) string {
	byPort := map[int]gen.Listener{}
	var cur gen.Listener
	for _, l := range t.Listeners {
		byPort[l.Port] = l
		if l.Name == name {
			cur = l
		}
	}
	if cur.Name == "" {
		panic("no listener " + name)
	}
	for hops := 0; hops < 10; hops++ {
		next, ok := byPort[cur.Upstreams[0]]
		if !ok {
			break
		}
		cur = next
	}
	return fmt.Sprintf("127.0.0.1:%d", cur.Upstreams[0])
}

// tool runs an external load tool on the load CPU, bounded by timeout.
func (r *Runner) tool(timeout time.Duration, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"taskset", "-c", r.o.LoadCPU}, argv...)
	cmd := exec.CommandContext(ctx, full[0], full[1:]...)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return out, fmt.Errorf("%s: timed out after %v", argv[0], timeout)
	}
	if err != nil {
		return out, fmt.Errorf("%s: %v: %s", argv[0], err, lastLines(string(out), 3))
	}
	return out, nil
}

// goLoad runs `siftbench load ...` and decodes its JSON result.
func (r *Runner) goLoad(timeout time.Duration, args ...string) (loadgen.Result, error) {
	var res loadgen.Result
	out, err := r.tool(timeout, append([]string{r.o.Self, "load"}, args...)...)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(lastJSONLine(out), &res); err != nil {
		return res, fmt.Errorf("load %s: %v: %q", args[0], err, lastLines(string(out), 2))
	}
	if res.Ops == 0 {
		return res, fmt.Errorf("load %s: nothing succeeded (%d errors, first: %s)", args[0], res.Errors, res.FirstErr)
	}
	return res, nil
}

func lastJSONLine(out []byte) []byte {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "{") {
			return []byte(lines[i])
		}
	}
	return out
}

// holdIdle starts the idle-connection client and returns once it reports
// its connections open; release() closes them.
func (r *Runner) holdIdle(addr string, n int, timeout time.Duration) (loadgen.Result, func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+30*time.Second)
	cmd := exec.CommandContext(ctx, "taskset", "-c", r.o.LoadCPU, r.o.Self, "load", "idle", "-addr", addr,
		"-n", strconv.Itoa(n), "-c", "64", "-timeout", timeout.String())
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	var res loadgen.Result
	if err := cmd.Start(); err != nil {
		cancel()
		return res, nil, err
	}
	release := func() {
		stdin.Close()
		cmd.Wait()
		cancel()
	}
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		release()
		return res, nil, fmt.Errorf("idle client: %v %s", err, stderr.String())
	}
	if err := json.Unmarshal(line, &res); err != nil {
		release()
		return res, nil, err
	}
	return res, release, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func atoiOr(s string, def int) int {
	if v, err := strconv.Atoi(s); err == nil {
		return v
	}
	return def
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return "not found"
	}
	return strings.TrimSpace(string(out))
}

// onlineCPUs counts the machine's CPUs (runtime.NumCPU only sees this
// process's affinity mask, which run.sh narrows to the load CPU).
func onlineCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	n := strings.Count(string(b), "\nprocessor")
	if strings.HasPrefix(string(b), "processor") {
		n++
	}
	if n == 0 {
		return runtime.NumCPU()
	}
	return n
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "model name") {
			if i := strings.IndexByte(l, ':'); i >= 0 {
				return strings.TrimSpace(l[i+1:])
			}
		}
	}
	return "unknown CPU"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func lastLines(s string, n int) string { return procs.LastLines(s, n) }

var errSkip = errors.New("skip")
