// Package host runs protocol-sniffer plugins for sift-proxy: it starts each
// plugin executable once per process (hashicorp/go-plugin, gRPC), shares it
// between every listener and generation that names it, supervises it
// (health checks, restart with backoff, checksum checked before every
// start), and answers Sniff calls within a per-call budget — a plugin that
// is down, slow, hung or answers garbage costs a connection at most the
// budget, and its answer is then NoMatch. The SDK plugins are built with is
// package plugins; the contract is in docs/plugins.md.
package host

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/siftmesh/sift/plugins"
)

// Spec names a plugin process: the executable, its arguments and the
// SHA-256 its file must have (nil: not checked).
type Spec struct {
	Path   string
	Args   []string
	SHA256 []byte
}

func (s Spec) key() string {
	return s.Path + "\x00" + strings.Join(s.Args, "\x00") + "\x00" + hex.EncodeToString(s.SHA256)
}

// Supervision timings.
const (
	startTimeout   = 10 * time.Second
	healthInterval = 2 * time.Second
	backoffBase    = 100 * time.Millisecond
	backoffMax     = 30 * time.Second
	// stableAfter is how long a plugin must stay up for its restart backoff
	// to start over.
	stableAfter = 10 * time.Second
	// maxAttributes bounds the attributes of one answer (bytes of keys and
	// values); more is a garbage answer.
	maxAttributes = 4096
)

// ErrDown is Sniff's error while the plugin is not running.
var ErrDown = errors.New("plugin is down")

// Plugin is one running plugin process and its supervisor. Safe for
// concurrent use.
type Plugin struct {
	spec Spec
	// log names the plugin: by its path until its first start reports its
	// name. Read through logger(): the stderr copiers use it concurrently.
	log  atomic.Pointer[slog.Logger]
	info plugins.Info // from the first start; restarts must report the same name
	// label names the plugin in logs and metrics: its name, with "#2",
	// "#3"… when other processes (other args) report the same name.
	label string

	client atomic.Pointer[plugins.Client] // nil while down
	poke   chan struct{}                  // an RPC failed: check health now
	done   chan struct{}                  // closed by stop
	exited chan struct{}                  // closed when the supervisor ended

	mu      sync.Mutex
	process *plugin.Client // the running process, or nil

	// Counters, read by Collect.
	calls, matches, noMatches, needMores, timeouts, errs, restarts atomic.Uint64
	latency                                                        prometheus.Histogram
}

var (
	registryMu sync.Mutex
	registry   = map[string]*Plugin{}
)

// Get returns the running plugin for spec, starting it (once per process)
// if it is not running yet. The first start must succeed — the executable
// exists, its checksum matches, it completes the handshake and answers Info
// — or Get returns the error and the configuration that names it should be
// rejected. Later crashes are the supervisor's business.
func Get(spec Spec, log *slog.Logger) (*Plugin, error) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if p := registry[spec.key()]; p != nil {
		return p, nil
	}
	if log == nil {
		log = slog.Default()
	}
	p := &Plugin{spec: spec, poke: make(chan struct{}, 1), done: make(chan struct{}), exited: make(chan struct{})}
	p.log.Store(log.With("plugin", spec.Path))
	info, err := p.start()
	if err != nil {
		return nil, fmt.Errorf("plugin %s: %w", spec.Path, err)
	}
	p.info = info
	p.label = uniqueLabel(info.Name)
	p.log.Store(log.With("plugin", p.label))
	p.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "sift_plugin_call_duration_seconds", Help: "Latency of Sniff calls to protocol-sniffer plugins, by plugin.",
		ConstLabels: prometheus.Labels{"plugin": p.label},
		Buckets:     []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3},
	})
	p.logger().Info("plugin started", "path", spec.Path, "version", info.Version, "protocols", info.Protocols)
	go p.supervise()
	registry[spec.key()] = p
	return p, nil
}

// uniqueLabel returns name, or name#N when a registered plugin has it.
// registryMu is held.
func uniqueLabel(name string) string {
	label := name
	for n := 2; ; n++ {
		used := false
		for _, p := range registry {
			used = used || p.label == label
		}
		if !used {
			return label
		}
		label = fmt.Sprintf("%s#%d", name, n)
	}
}

// Label names the plugin in logs and metrics (see Plugin.label).
func (p *Plugin) Label() string { return p.label }

// All returns the plugins started in this process.
func All() []*Plugin {
	registryMu.Lock()
	defer registryMu.Unlock()
	out := make([]*Plugin, 0, len(registry))
	for _, p := range registry {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *Plugin) int { return strings.Compare(a.label, b.label) })
	return out
}

// StopAll stops every plugin process and forgets them; a later Get starts
// them afresh. sift-proxy calls it on shutdown.
func StopAll() {
	registryMu.Lock()
	ps := registry
	registry = map[string]*Plugin{}
	registryMu.Unlock()
	for _, p := range ps {
		p.stop()
	}
}

// Info is what the plugin reported at its first start.
func (p *Plugin) Info() plugins.Info { return p.info }

// Up reports whether the plugin is running.
func (p *Plugin) Up() bool { return p.client.Load() != nil }

// Sniff asks the plugin about data within budget. It returns ErrDown at once
// while the plugin is down, and an error for a late or garbage answer (a
// verdict it does not know, a protocol it did not declare, oversized
// attributes); the caller takes any error as NoMatch.
func (p *Plugin) Sniff(data []byte, atEOF bool, budget time.Duration) (plugins.Result, error) {
	return p.call(budget, func(ctx context.Context, c *plugins.Client) (plugins.Result, error) { return c.Sniff(ctx, data, atEOF) })
}

// SniffServer asks the plugin about a server's greeting, as Sniff does (a
// plugin whose Info has ServerFirst).
func (p *Plugin) SniffServer(greeting []byte, budget time.Duration) (plugins.Result, error) {
	return p.call(budget, func(ctx context.Context, c *plugins.Client) (plugins.Result, error) {
		return c.SniffServer(ctx, greeting)
	})
}

func (p *Plugin) call(budget time.Duration, sniff func(context.Context, *plugins.Client) (plugins.Result, error)) (plugins.Result, error) {
	c := p.client.Load()
	p.calls.Add(1)
	if c == nil {
		p.errs.Add(1)
		return plugins.Result{}, ErrDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	r, err := sniff(ctx, c)
	p.latency.Observe(time.Since(start).Seconds())
	if err == nil {
		err = p.check(r)
	}
	if err != nil {
		if ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded {
			p.timeouts.Add(1)
			return plugins.Result{}, fmt.Errorf("plugin %s: no answer within %v", p.info.Name, budget)
		}
		p.errs.Add(1)
		select { // let the supervisor look at once
		case p.poke <- struct{}{}:
		default:
		}
		return plugins.Result{}, fmt.Errorf("plugin %s: %w", p.info.Name, err)
	}
	switch r.Verdict {
	case plugins.Match:
		p.matches.Add(1)
	case plugins.NoMatch:
		p.noMatches.Add(1)
	default:
		p.needMores.Add(1)
	}
	return r, nil
}

// check rejects garbage answers.
func (p *Plugin) check(r plugins.Result) error {
	if r.Verdict != plugins.Match {
		return nil
	}
	if !slices.Contains(p.info.Protocols, r.Protocol) {
		return fmt.Errorf("matched protocol %q, which it did not declare (%s)", r.Protocol, strings.Join(p.info.Protocols, ", "))
	}
	size := 0
	for k, v := range r.Attributes {
		size += len(k) + len(v)
	}
	if size > maxAttributes {
		return fmt.Errorf("answer with %d bytes of attributes (at most %d)", size, maxAttributes)
	}
	return nil
}

// start starts the process and returns its Info.
func (p *Plugin) start() (plugins.Info, error) {
	var secure *plugin.SecureConfig
	if len(p.spec.SHA256) > 0 {
		secure = &plugin.SecureConfig{Checksum: p.spec.SHA256, Hash: sha256.New()}
	}
	cmd := exec.Command(p.spec.Path, p.spec.Args...)
	setParentDeathSignal(cmd)
	proc := plugin.NewClient(&plugin.ClientConfig{
		HandshakeConfig:  plugins.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{plugins.APIVersion: {plugins.PluginName: &plugins.GRPCPlugin{}}},
		Cmd:              cmd,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		SecureConfig:     secure,
		StartTimeout:     startTimeout,
		Stderr:           &lineLogger{p: p}, // before Serve, and the plugin's own go-plugin logs
		SyncStderr:       &lineLogger{p: p}, // os.Stderr inside Serve, carried over gRPC
		Logger: hclog.New(&hclog.LoggerOptions{Name: "go-plugin", Level: hclog.Off,
			Output: &lineLogger{p: p}}),
	})
	info, err := p.connect(proc)
	if err != nil {
		proc.Kill()
		if errors.Is(err, plugin.ErrChecksumsDoNotMatch) {
			err = fmt.Errorf("%w: %s does not have sha256 %x", err, p.spec.Path, p.spec.SHA256)
		}
		return plugins.Info{}, err
	}
	if p.info.Name != "" && info.Name != p.info.Name {
		proc.Kill()
		return plugins.Info{}, fmt.Errorf("restarted plugin reports name %q, was %q", info.Name, p.info.Name)
	}
	p.mu.Lock()
	p.process = proc
	p.mu.Unlock()
	return info, nil
}

func (p *Plugin) connect(proc *plugin.Client) (plugins.Info, error) {
	rpc, err := proc.Client()
	if err != nil {
		return plugins.Info{}, err
	}
	raw, err := rpc.Dispense(plugins.PluginName)
	if err != nil {
		return plugins.Info{}, err
	}
	c, ok := raw.(*plugins.Client)
	if !ok {
		return plugins.Info{}, fmt.Errorf("dispensed %T, want *plugins.Client", raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return plugins.Info{}, fmt.Errorf("info: %w", err)
	}
	if info.Name == "" || len(info.Protocols) == 0 {
		return plugins.Info{}, fmt.Errorf("info: a plugin must report its name and at least one protocol (got name %q, protocols %q)", info.Name, info.Protocols)
	}
	p.client.Store(c)
	return info, nil
}

// supervise checks health every healthInterval (and at once after a failed
// call) and restarts a dead plugin with backoff; the plugin answers NoMatch
// (ErrDown) meanwhile.
func (p *Plugin) supervise() {
	defer close(p.exited)
	tick := time.NewTicker(healthInterval)
	defer tick.Stop()
	backoff := backoffBase
	upSince := time.Now()
	for {
		select {
		case <-p.done:
			return
		case <-tick.C:
		case <-p.poke:
		}
		if p.healthy() {
			continue
		}
		p.client.Store(nil)
		p.kill()
		if time.Since(upSince) > stableAfter {
			backoff = backoffBase
		}
		for {
			p.logger().Warn("plugin is down; restarting (its verdict is NoMatch meanwhile)", "retry_in", backoff)
			select {
			case <-p.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, backoffMax)
			p.restarts.Add(1)
			if _, err := p.start(); err != nil {
				p.logger().Error("plugin restart failed", "err", err)
				continue
			}
			p.logger().Info("plugin restarted")
			upSince = time.Now()
			break
		}
	}
}

// healthy reports whether the process runs and answers go-plugin's ping.
func (p *Plugin) healthy() bool {
	p.mu.Lock()
	proc := p.process
	p.mu.Unlock()
	if proc == nil || proc.Exited() {
		return false
	}
	rpc, err := proc.Client()
	if err != nil {
		return false
	}
	return rpc.Ping() == nil
}

func (p *Plugin) kill() {
	p.mu.Lock()
	proc := p.process
	p.process = nil
	p.mu.Unlock()
	if proc != nil {
		proc.Kill()
	}
}

func (p *Plugin) stop() {
	close(p.done)
	<-p.exited
	p.client.Store(nil)
	p.kill()
}

func (p *Plugin) logger() *slog.Logger { return p.log.Load() }

// lineLogger logs each line written to it (a plugin's stderr) with the
// plugin's name.
type lineLogger struct {
	p   *Plugin
	mu  sync.Mutex
	buf []byte
}

func (w *lineLogger) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		if line := strings.TrimSpace(string(w.buf[:i])); line != "" {
			w.p.logger().Info("plugin stderr: " + line)
		}
		w.buf = w.buf[i+1:]
	}
	if len(w.buf) > 64<<10 { // a line without end: log what there is
		w.p.logger().Info("plugin stderr: " + string(w.buf))
		w.buf = w.buf[:0]
	}
	return len(b), nil
}

// PID returns the plugin process's id, or 0 while it is down.
func (p *Plugin) PID() int {
	p.mu.Lock()
	proc := p.process
	p.mu.Unlock()
	if proc == nil {
		return 0
	}
	if rc := proc.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}
