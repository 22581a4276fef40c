package detect

import (
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/detect/learn"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/plugins/host"
)

func init() {
	filters.RegisterListenerFilter(&detectv1.Detect{}, buildDetect)
	filters.RegisterListenerFilter(tlsInspectorConfig(), buildTLSInspector)
	filters.RegisterListenerFilter(httpInspectorConfig(), buildHTTPInspector)
}

// policy lists the fields of the listener filters' configs this package
// implements (see ParseConfig, NewTLSInspector, NewHTTPInspector); a config
// with any other field set, or one this build does not know, is rejected.
var policy = pbcheck.Policy{
	"sift.filters.listener.detect.v1.Detect": pbcheck.Fields("timeout, max_bytes, sniffers, server_first_grace_period, " +
		"on_timeout, learn_server_first, port_policies, max_concurrent_races, plugins"),
	"sift.filters.listener.detect.v1.Detect.Plugin":           pbcheck.Fields("path, args, sha256, call_timeout, max_bytes"),
	"sift.filters.listener.detect.v1.Detect.LearnServerFirst": pbcheck.Fields("after, ttl"),
	"sift.filters.listener.detect.v1.Detect.PortPolicy":       pbcheck.Fields("ports, timeout, max_bytes, server_first_grace_period, on_timeout"),
	"sift.filters.listener.detect.v1.Detect.PortRange":        pbcheck.Fields("start, end"),
	"envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": pbcheck.Fields("max_client_hello_size, "+
		"close_connection_on_client_hello_parsing_errors, enable_ja3_fingerprinting, enable_ja4_fingerprinting").
		Ignore("initial_read_buffer_size", "the listener's Peeker sizes its own buffer"),
	"envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": pbcheck.Fields(""),
}

// Detect filter defaults and limits (see detect.proto).
const (
	DefaultTimeout     = 10 * time.Second
	DefaultMaxBytes    = 16384
	MinMaxBytes        = 64
	DefaultGracePeriod = 50 * time.Millisecond
	DefaultLearnAfter  = 3
	DefaultLearnTTL    = 10 * time.Minute
	DefaultMaxRaces    = 1024
)

// TimeoutAction is what detection does when the client stays silent until
// the timeout.
type TimeoutAction uint8

const (
	// TimeoutAuto fails closed when the listener's fallback chain would
	// bypass HTTP-level policy (filters.Fallback.GuardsHTTP), open otherwise.
	TimeoutAuto TimeoutAction = iota
	// TimeoutFailOpen proceeds as opaque TCP (Linkerd's behaviour).
	TimeoutFailOpen
	// TimeoutFailClosed resets the connection.
	TimeoutFailClosed
)

// Policy is how detection treats connections to one destination port.
type Policy struct {
	// Timeout bounds how long the filter waits for the client's bytes,
	// counted from accept. Positive.
	Timeout time.Duration
	// MaxBytes is the most bytes the filter peeks (the Peeker's own cap may
	// be lower). At least MinMaxBytes.
	MaxBytes int
	// GracePeriod is how long a silent client waits before the server-first
	// race starts; 0 disables the race.
	GracePeriod time.Duration
	// OnTimeout is what a silent client gets at Timeout.
	OnTimeout TimeoutAction
}

// PortPolicy applies Policy to the destination ports First..Last (inclusive).
type PortPolicy struct {
	First, Last uint16
	Policy      Policy
}

// Config is the validated configuration of a detect Filter.
type Config struct {
	// Policy applies to ports no PortPolicy names.
	Policy
	// Ports are per-port overrides; the first that contains the port wins.
	Ports []PortPolicy
	// Sniffers are asked in order; the first to match wins. Built-ins come
	// first (see Builtins); plugin sniffers are appended after them.
	Sniffers []Sniffer
	// LearnAfter is how many server-first proofs make a destination learned
	// (0: never), and LearnTTL how long it stays learned.
	LearnAfter int
	LearnTTL   time.Duration
	// MaxRaces bounds the server-first races in flight at once
	// (≤ 0: DefaultMaxRaces).
	MaxRaces int
	// Learned is the process's table of learned destinations; nil: nothing
	// is learned (LearnAfter is ignored).
	Learned *learn.Table
	// Plugins are the configured plugin sniffers; building the filter
	// (buildDetect) starts them and appends them to Sniffers.
	Plugins []PluginConfig
}

// ParseConfig validates a Detect typed config and applies its defaults:
// timeout 10s (must be positive), max_bytes 16384 (at least 64), grace
// period 50ms, on_timeout automatic, learning after 3 proofs for 10 min,
// 1024 races at once, sniffers all built-ins. Named sniffers run in the
// built-in order (tls, h2, http1) whatever order they are listed in. Errors
// name the offending field.
func ParseConfig(pb *detectv1.Detect) (Config, error) {
	if err := policy.Check(pb); err != nil {
		return Config{}, fmt.Errorf("detect: %w", err)
	}
	c := Config{
		Policy:     Policy{Timeout: DefaultTimeout, MaxBytes: DefaultMaxBytes, GracePeriod: DefaultGracePeriod},
		LearnAfter: DefaultLearnAfter, LearnTTL: DefaultLearnTTL, MaxRaces: DefaultMaxRaces,
	}
	var err error
	if c.Policy, err = parsePolicy(c.Policy, pb.GetTimeout(), pb.GetMaxBytes(), pb.GetServerFirstGracePeriod(), pb.GetOnTimeout(), "detect: "); err != nil {
		return Config{}, err
	}
	for i, pp := range pb.GetPortPolicies() {
		prefix := fmt.Sprintf("detect: port_policies[%d].", i)
		pol, err := parsePolicy(c.Policy, pp.GetTimeout(), pp.GetMaxBytes(), pp.GetServerFirstGracePeriod(), pp.GetOnTimeout(), prefix)
		if err != nil {
			return Config{}, err
		}
		if len(pp.GetPorts()) == 0 {
			return Config{}, fmt.Errorf("%sports: at least one port range is required", prefix)
		}
		for j, r := range pp.GetPorts() {
			first, last := r.GetStart(), r.GetEnd()
			if last == 0 {
				last = first
			}
			if first == 0 || last > 65535 || last < first {
				return Config{}, fmt.Errorf("%sports[%d]: invalid port range %d-%d (ports are 1-65535, start ≤ end)", prefix, j, r.GetStart(), r.GetEnd())
			}
			c.Ports = append(c.Ports, PortPolicy{First: uint16(first), Last: uint16(last), Policy: pol})
		}
	}
	if l := pb.GetLearnServerFirst(); l != nil {
		if a := l.GetAfter(); a != nil {
			c.LearnAfter = int(min(a.GetValue(), 1<<20))
		}
		if c.LearnTTL, err = pbcheck.Duration(l.GetTtl(), "learn_server_first.ttl", c.LearnTTL, pbcheck.Positive); err != nil {
			return Config{}, fmt.Errorf("detect: %w", err)
		}
	}
	if m := pb.GetMaxConcurrentRaces(); m != nil {
		if m.GetValue() < 1 {
			return Config{}, fmt.Errorf("detect: max_concurrent_races: must be at least 1, got %d", m.GetValue())
		}
		c.MaxRaces = int(min(m.GetValue(), 1<<20))
	}
	if c.Plugins, err = parsePlugins(pb.GetPlugins()); err != nil {
		return Config{}, err
	}
	names := pb.GetSniffers()
	if len(names) == 0 {
		c.Sniffers = Builtins()
		return c, nil
	}
	for i, name := range names {
		if _, ok := Builtin(name); !ok {
			return Config{}, fmt.Errorf("detect: sniffers[%d]: unknown sniffer %q (known: %s)", i, name, knownSniffers)
		}
		if j := slices.Index(names, name); j < i {
			return Config{}, fmt.Errorf("detect: sniffers[%d]: duplicate sniffer %q (also sniffers[%d])", i, name, j)
		}
	}
	for _, s := range Builtins() {
		if slices.Contains(names, s.Name()) {
			c.Sniffers = append(c.Sniffers, s)
		}
	}
	return c, nil
}

// parsePolicy overrides base with the fields that are set; prefix starts
// error messages ("detect: " or "detect: port_policies[i].").
func parsePolicy(base Policy, timeout *durationpb.Duration, maxBytes *wrapperspb.UInt32Value,
	grace *durationpb.Duration, onTimeout detectv1.Detect_TimeoutAction, prefix string) (Policy, error) {
	p := base
	var err error
	if p.Timeout, err = pbcheck.Duration(timeout, prefix+"timeout", p.Timeout, pbcheck.Positive); err != nil {
		return Policy{}, err
	}
	if maxBytes != nil {
		if maxBytes.GetValue() < MinMaxBytes {
			return Policy{}, fmt.Errorf("%smax_bytes: must be at least %d, got %d", prefix, MinMaxBytes, maxBytes.GetValue())
		}
		p.MaxBytes = int(min(maxBytes.GetValue(), 1<<30))
	}
	if p.GracePeriod, err = pbcheck.Duration(grace, prefix+"server_first_grace_period", p.GracePeriod, pbcheck.NonNegative); err != nil {
		return Policy{}, err
	}
	switch onTimeout {
	case detectv1.Detect_TIMEOUT_ACTION_UNSPECIFIED:
	case detectv1.Detect_FAIL_OPEN:
		p.OnTimeout = TimeoutFailOpen
	case detectv1.Detect_FAIL_CLOSED:
		p.OnTimeout = TimeoutFailClosed
	default:
		return Policy{}, fmt.Errorf("%son_timeout: unknown action %d", prefix, onTimeout)
	}
	return p, nil
}

// Filter is Sift's protocol-detection listener filter (typed config
// sift.filters.listener.detect.v1.Detect). It is immutable (but for its
// count of races in flight) and safe for concurrent use.
type Filter struct {
	policy     Policy
	ports      []PortPolicy
	sniffers   []Sniffer
	names      []string // the sniffers' names, shared by every connection's record
	learned    *learn.Table
	learnAfter int
	learnTTL   time.Duration
	maxRaces   int64
	races      atomic.Int64 // races in flight
}

var _ filters.ListenerFilter = (*Filter)(nil)

// New returns a detect filter for c, which it validates (a Config from
// ParseConfig always passes). c.Sniffers and c.Ports are copied.
func New(c Config) (*Filter, error) {
	if err := c.Policy.validate("detect: "); err != nil {
		return nil, err
	}
	for i, pp := range c.Ports {
		if err := pp.Policy.validate(fmt.Sprintf("detect: ports[%d]: ", i)); err != nil {
			return nil, err
		}
	}
	switch {
	case len(c.Sniffers) == 0:
		return nil, fmt.Errorf("detect: sniffers: none")
	case c.LearnAfter > 0 && c.LearnTTL <= 0:
		return nil, fmt.Errorf("detect: learn ttl: %v: must be positive", c.LearnTTL)
	}
	for i, s := range c.Sniffers {
		if s == nil {
			return nil, fmt.Errorf("detect: sniffers[%d]: nil", i)
		}
	}
	if c.MaxRaces <= 0 {
		c.MaxRaces = DefaultMaxRaces
	}
	names := make([]string, len(c.Sniffers))
	for i, s := range c.Sniffers {
		names[i] = s.Name()
	}
	return &Filter{names: names, policy: c.Policy, ports: slices.Clone(c.Ports), sniffers: slices.Clone(c.Sniffers),
		learned: c.Learned, learnAfter: c.LearnAfter, learnTTL: c.LearnTTL, maxRaces: int64(c.MaxRaces)}, nil
}

func (p Policy) validate(prefix string) error {
	switch {
	case p.Timeout <= 0:
		return fmt.Errorf("%stimeout: %v: must be positive", prefix, p.Timeout)
	case p.MaxBytes < MinMaxBytes:
		return fmt.Errorf("%smax_bytes: must be at least %d, got %d", prefix, MinMaxBytes, p.MaxBytes)
	case p.GracePeriod < 0:
		return fmt.Errorf("%sserver_first_grace_period: %v: must not be negative", prefix, p.GracePeriod)
	case p.OnTimeout > TimeoutFailClosed:
		return fmt.Errorf("%son_timeout: unknown action %d", prefix, p.OnTimeout)
	}
	return nil
}

// policyFor returns the policy for a destination port.
func (f *Filter) policyFor(port uint16) *Policy {
	for i := range f.ports {
		if pp := &f.ports[i]; port >= pp.First && port <= pp.Last {
			return &pp.Policy
		}
	}
	return &f.policy
}

// Provides implements filters.ListenerFilter: server name, transport
// protocol and application protocols.
func (f *Filter) Provides() filters.Field { return filters.FieldsDetected }

func buildDetect(cfg proto.Message, bc filters.BuildContext) (filters.ListenerFilter, error) {
	pb, ok := cfg.(*detectv1.Detect)
	if !ok {
		return nil, fmt.Errorf("detect: config is %T, want *detectv1.Detect", cfg)
	}
	c, err := ParseConfig(pb)
	if err != nil {
		return nil, err
	}
	c.Learned = bc.Learned
	for i, pc := range c.Plugins {
		p, err := host.Get(pc.Spec, bc.Logger)
		if err != nil {
			return nil, fmt.Errorf("detect: plugins[%d]: %w", i, err)
		}
		c.Sniffers = append(c.Sniffers, NewPluginSniffer(p, pc.CallTimeout, pc.MaxBytes))
	}
	return New(c)
}
