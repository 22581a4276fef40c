package detect

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/pbcheck"
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
	"sift.filters.listener.detect.v1.Detect": pbcheck.Fields("timeout, max_bytes, sniffers"),
	"envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector": pbcheck.Fields("max_client_hello_size, "+
		"close_connection_on_client_hello_parsing_errors, enable_ja3_fingerprinting, enable_ja4_fingerprinting").
		Ignore("initial_read_buffer_size", "the listener's Peeker sizes its own buffer"),
	"envoy.extensions.filters.listener.http_inspector.v3.HttpInspector": pbcheck.Fields(""),
}

// Detect filter defaults and limits (see detect.proto).
const (
	DefaultTimeout  = 10 * time.Second
	DefaultMaxBytes = 16384
	MinMaxBytes     = 64
)

// Config is the validated configuration of a detect Filter.
type Config struct {
	// Timeout bounds how long the filter waits for the client's bytes,
	// counted from the start of OnAccept. Positive.
	Timeout time.Duration
	// MaxBytes is the most bytes the filter peeks (the Peeker's own cap may
	// be lower). At least MinMaxBytes.
	MaxBytes int
	// Sniffers are asked in order; the first to match wins. Built-ins come
	// first (see Builtins); plugin sniffers are appended after them.
	Sniffers []Sniffer
}

// ParseConfig validates a Detect typed config and applies its defaults:
// timeout 10s (must be positive), max_bytes 16384 (at least 64), sniffers all
// built-ins. Named sniffers run in the built-in order (tls, h2, http1)
// whatever order they are listed in. Errors name the offending field.
func ParseConfig(pb *detectv1.Detect) (Config, error) {
	if err := policy.Check(pb); err != nil {
		return Config{}, fmt.Errorf("detect: %w", err)
	}
	c := Config{MaxBytes: DefaultMaxBytes}
	var err error
	if c.Timeout, err = pbcheck.Duration(pb.GetTimeout(), "timeout", DefaultTimeout, pbcheck.Positive); err != nil {
		return Config{}, fmt.Errorf("detect: %w", err)
	}
	if m := pb.GetMaxBytes(); m != nil {
		if m.GetValue() < MinMaxBytes {
			return Config{}, fmt.Errorf("detect: max_bytes: must be at least %d, got %d", MinMaxBytes, m.GetValue())
		}
		c.MaxBytes = int(m.GetValue())
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

// Filter is Sift's protocol-detection listener filter (typed config
// sift.filters.listener.detect.v1.Detect). It is immutable and safe for
// concurrent use.
type Filter struct {
	timeout  time.Duration
	maxBytes int
	sniffers []Sniffer
}

var _ filters.ListenerFilter = (*Filter)(nil)

// New returns a detect filter for c, which it validates (a Config from
// ParseConfig always passes). c.Sniffers is copied.
func New(c Config) (*Filter, error) {
	switch {
	case c.Timeout <= 0:
		return nil, fmt.Errorf("detect: timeout: %v: must be positive", c.Timeout)
	case c.MaxBytes < MinMaxBytes:
		return nil, fmt.Errorf("detect: max_bytes: must be at least %d, got %d", MinMaxBytes, c.MaxBytes)
	case len(c.Sniffers) == 0:
		return nil, fmt.Errorf("detect: sniffers: none")
	}
	for i, s := range c.Sniffers {
		if s == nil {
			return nil, fmt.Errorf("detect: sniffers[%d]: nil", i)
		}
	}
	return &Filter{timeout: c.Timeout, maxBytes: c.MaxBytes, sniffers: slices.Clone(c.Sniffers)}, nil
}

// Provides implements filters.ListenerFilter: server name, transport
// protocol and application protocols.
func (f *Filter) Provides() filters.Field { return filters.FieldsDetected }

// OnAccept implements filters.ListenerFilter. It runs every sniffer in one
// peek loop (see Run) with its own deadline, the connection's accept time
// (info.AcceptedAt; OnAccept's start without one) plus the configured
// timeout (the listener filters' deadline may end it sooner), and
// sets info:
//
//   - TLS: TransportProtocol "tls", ServerName (SNI, lower-case),
//     ApplicationProtocols = the ALPN list (nil without ALPN);
//   - HTTP/1.0, HTTP/1.1, h2c, or a plugin's protocol: TransportProtocol
//     "raw_buffer", ApplicationProtocols = that one protocol;
//   - otherwise — no sniffer matched, the client stayed silent until the
//     deadline, closed or half-closed first, or the byte cap was reached —
//     it fails open to opaque: TransportProtocol "raw_buffer", no application
//     protocols (ServerName is left alone).
//
// info.Detection is always filled: Ran, Protocol ("opaque" when failing open),
// Reason, Bytes and Duration (from the same start). The only error, which
// closes the connection, is a read error other than end of stream, timeout
// or cap; Detection then has Reason "error" and no Protocol.
func (f *Filter) OnAccept(p filters.Peeker, info *filters.ConnInfo) error {
	start := info.AcceptedAt
	if start.IsZero() {
		start = time.Now()
	}
	o, err := Run(p, f.sniffers, f.maxBytes, start.Add(f.timeout))
	info.Detection = filters.Detection{Ran: true, Bytes: o.Bytes, Duration: time.Since(start)}
	if err != nil {
		info.Detection.Reason = filters.ReasonError
		return err
	}
	info.Detection.Protocol, info.Detection.Reason = o.Protocol(), o.Reason
	switch {
	case o.Reason != filters.ReasonMatch:
		info.TransportProtocol = filters.TransportRawBuffer
		info.ApplicationProtocols = nil
	case o.Result.Protocol == ProtocolTLS:
		info.TransportProtocol = filters.TransportTLS
		info.ServerName = o.Result.ServerName
		info.ApplicationProtocols = slices.Clone(o.Result.ALPN)
	default:
		info.TransportProtocol = filters.TransportRawBuffer
		info.ApplicationProtocols = []string{o.Result.Protocol}
	}
	return nil
}

func buildDetect(cfg proto.Message, _ filters.BuildContext) (filters.ListenerFilter, error) {
	pb, ok := cfg.(*detectv1.Detect)
	if !ok {
		return nil, fmt.Errorf("detect: config is %T, want *detectv1.Detect", cfg)
	}
	c, err := ParseConfig(pb)
	if err != nil {
		return nil, err
	}
	return New(c)
}
