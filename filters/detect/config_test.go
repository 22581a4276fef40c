package detect_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/detect"
)

func TestRegistered(t *testing.T) {
	t.Parallel()
	types := filters.ListenerFilterTypes()
	for _, want := range []string{
		"type.googleapis.com/sift.filters.listener.detect.v1.Detect",
		"type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
		"type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
	} {
		if !slices.Contains(types, want) {
			t.Errorf("listener filter %s is not registered (have %v)", want, types)
		}
	}
}

func TestParseConfig(t *testing.T) {
	t.Parallel()
	names := func(c detect.Config) []string {
		var n []string
		for _, s := range c.Sniffers {
			n = append(n, s.Name())
		}
		return n
	}
	type summary struct {
		Policy     detect.Policy
		Ports      []detect.PortPolicy
		LearnAfter int
		LearnTTL   time.Duration
		MaxRaces   int
		Sniffers   []string
	}
	def := detect.Policy{Timeout: 10 * time.Second, MaxBytes: 16384, GracePeriod: 50 * time.Millisecond}
	defaults := func(s summary) summary {
		if s.Policy == (detect.Policy{}) {
			s.Policy = def
		}
		if s.LearnAfter == 0 {
			s.LearnAfter = 3
		}
		if s.LearnTTL == 0 {
			s.LearnTTL = 10 * time.Minute
		}
		if s.MaxRaces == 0 {
			s.MaxRaces = 1024
		}
		if s.Sniffers == nil {
			s.Sniffers = []string{"tls", "h2", "http1"}
		}
		return s
	}
	tests := []struct {
		name    string
		cfg     *detectv1.Detect
		want    summary
		wantErr string
	}{
		{
			name: "defaults",
			cfg:  &detectv1.Detect{},
			want: summary{},
		},
		{
			name: "everything set, sniffers in built-in order",
			cfg: &detectv1.Detect{Timeout: durationpb.New(250 * time.Millisecond), MaxBytes: wrapperspb.UInt32(64), Sniffers: []string{"http1", "tls"},
				ServerFirstGracePeriod: durationpb.New(0), OnTimeout: detectv1.Detect_FAIL_CLOSED,
				LearnServerFirst:   &detectv1.Detect_LearnServerFirst{After: wrapperspb.UInt32(0), Ttl: durationpb.New(time.Minute)},
				MaxConcurrentRaces: wrapperspb.UInt32(7)},
			want: summary{Policy: detect.Policy{Timeout: 250 * time.Millisecond, MaxBytes: 64, OnTimeout: detect.TimeoutFailClosed},
				LearnAfter: -1, LearnTTL: time.Minute, MaxRaces: 7, Sniffers: []string{"tls", "http1"}},
		},
		{
			name: "port policies inherit what they leave unset",
			cfg: &detectv1.Detect{Timeout: durationpb.New(5 * time.Second), PortPolicies: []*detectv1.Detect_PortPolicy{
				{Ports: []*detectv1.Detect_PortRange{{Start: 3306}, {Start: 8000, End: 8099}}, ServerFirstGracePeriod: durationpb.New(0)},
				{Ports: []*detectv1.Detect_PortRange{{Start: 80}}, OnTimeout: detectv1.Detect_FAIL_OPEN, Timeout: durationpb.New(time.Second), MaxBytes: wrapperspb.UInt32(128)},
			}},
			want: summary{Policy: detect.Policy{Timeout: 5 * time.Second, MaxBytes: 16384, GracePeriod: 50 * time.Millisecond},
				Ports: []detect.PortPolicy{
					{First: 3306, Last: 3306, Policy: detect.Policy{Timeout: 5 * time.Second, MaxBytes: 16384}},
					{First: 8000, Last: 8099, Policy: detect.Policy{Timeout: 5 * time.Second, MaxBytes: 16384}},
					{First: 80, Last: 80, Policy: detect.Policy{Timeout: time.Second, MaxBytes: 128, GracePeriod: 50 * time.Millisecond, OnTimeout: detect.TimeoutFailOpen}},
				}},
		},
		{
			name:    "port policy without ports",
			cfg:     &detectv1.Detect{PortPolicies: []*detectv1.Detect_PortPolicy{{Timeout: durationpb.New(time.Second)}}},
			wantErr: "detect: port_policies[0].ports: at least one port range is required",
		},
		{
			name:    "port range reversed",
			cfg:     &detectv1.Detect{PortPolicies: []*detectv1.Detect_PortPolicy{{Ports: []*detectv1.Detect_PortRange{{Start: 10}, {Start: 90, End: 80}}}}},
			wantErr: "detect: port_policies[0].ports[1]: invalid port range 90-80 (ports are 1-65535, start ≤ end)",
		},
		{
			name:    "port policy zero timeout",
			cfg:     &detectv1.Detect{PortPolicies: []*detectv1.Detect_PortPolicy{{Ports: []*detectv1.Detect_PortRange{{Start: 10}}, Timeout: durationpb.New(0)}}},
			wantErr: "detect: port_policies[0].timeout: 0s: must be positive",
		},
		{
			name:    "negative grace period",
			cfg:     &detectv1.Detect{ServerFirstGracePeriod: durationpb.New(-time.Millisecond)},
			wantErr: "detect: server_first_grace_period: -1ms: must not be negative",
		},
		{
			name:    "unknown timeout action",
			cfg:     &detectv1.Detect{OnTimeout: 9},
			wantErr: "detect: on_timeout: unknown action 9",
		},
		{
			name:    "zero learn ttl",
			cfg:     &detectv1.Detect{LearnServerFirst: &detectv1.Detect_LearnServerFirst{Ttl: durationpb.New(0)}},
			wantErr: "detect: learn_server_first.ttl: 0s: must be positive",
		},
		{
			name:    "zero races",
			cfg:     &detectv1.Detect{MaxConcurrentRaces: wrapperspb.UInt32(0)},
			wantErr: "detect: max_concurrent_races: must be at least 1, got 0",
		},
		{
			name:    "plugin without a path",
			cfg:     &detectv1.Detect{Plugins: []*detectv1.Detect_Plugin{{Args: []string{"-x"}}}},
			wantErr: "detect: plugins[0].path: must be set",
		},
		{
			name:    "plugin with a bad sha256",
			cfg:     &detectv1.Detect{Plugins: []*detectv1.Detect_Plugin{{Path: "/p", Sha256: "abc"}}},
			wantErr: `detect: plugins[0].sha256: "abc" is not a hex SHA-256 (64 hex digits)`,
		},
		{
			name:    "plugin with a zero budget",
			cfg:     &detectv1.Detect{Plugins: []*detectv1.Detect_Plugin{{Path: "/p"}, {Path: "/q", CallTimeout: durationpb.New(0)}}},
			wantErr: "detect: plugins[1].call_timeout: 0s: must be positive",
		},
		{
			name:    "plugin with max_bytes 0",
			cfg:     &detectv1.Detect{Plugins: []*detectv1.Detect_Plugin{{Path: "/p", MaxBytes: wrapperspb.UInt32(0)}}},
			wantErr: "detect: plugins[0].max_bytes: must be at least 1",
		},
		{
			name:    "zero timeout",
			cfg:     &detectv1.Detect{Timeout: durationpb.New(0)},
			wantErr: "detect: timeout: 0s: must be positive",
		},
		{
			name:    "negative timeout",
			cfg:     &detectv1.Detect{Timeout: durationpb.New(-time.Second)},
			wantErr: "detect: timeout: -1s: must be positive",
		},
		{
			name:    "invalid timeout",
			cfg:     &detectv1.Detect{Timeout: &durationpb.Duration{Seconds: 1, Nanos: -1}},
			wantErr: "detect: timeout: invalid duration: proto:", // the rest is protobuf's, deliberately unstable
		},
		{
			name:    "max_bytes too small",
			cfg:     &detectv1.Detect{MaxBytes: wrapperspb.UInt32(63)},
			wantErr: "detect: max_bytes: must be at least 64, got 63",
		},
		{
			name:    "unknown sniffer",
			cfg:     &detectv1.Detect{Sniffers: []string{"tls", "http1", "foo"}},
			wantErr: `detect: sniffers[2]: unknown sniffer "foo" (known: h2, http1, tls)`,
		},
		{
			name:    "duplicate sniffer",
			cfg:     &detectv1.Detect{Sniffers: []string{"h2", "tls", "h2"}},
			wantErr: `detect: sniffers[2]: duplicate sniffer "h2" (also sniffers[0])`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := detect.ParseConfig(tt.cfg)
			if gotErr := errString(err); gotErr != tt.wantErr && !(strings.HasSuffix(tt.wantErr, ":") && strings.HasPrefix(gotErr, tt.wantErr)) {
				t.Fatalf("ParseConfig() error = %q, want %q", gotErr, tt.wantErr)
			}
			if err != nil {
				return
			}
			got := summary{Policy: c.Policy, Ports: c.Ports, LearnAfter: c.LearnAfter, LearnTTL: c.LearnTTL, MaxRaces: c.MaxRaces, Sniffers: names(c)}
			want := defaults(tt.want)
			if want.LearnAfter < 0 {
				want.LearnAfter = 0
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("ParseConfig() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     detect.Config
		wantErr string
	}{
		{name: "ok with a plugin sniffer", cfg: detect.Config{Policy: detect.Policy{Timeout: time.Second, MaxBytes: 64}, Sniffers: append(detect.Builtins(), detect.H2())}},
		{name: "zero timeout", cfg: detect.Config{Policy: detect.Policy{MaxBytes: 64}, Sniffers: detect.Builtins()}, wantErr: "detect: timeout: 0s: must be positive"},
		{name: "small max bytes", cfg: detect.Config{Policy: detect.Policy{Timeout: time.Second, MaxBytes: 1}, Sniffers: detect.Builtins()}, wantErr: "detect: max_bytes: must be at least 64, got 1"},
		{name: "no sniffers", cfg: detect.Config{Policy: detect.Policy{Timeout: time.Second, MaxBytes: 64}}, wantErr: "detect: sniffers: none"},
		{name: "nil sniffer", cfg: detect.Config{Policy: detect.Policy{Timeout: time.Second, MaxBytes: 64}, Sniffers: []detect.Sniffer{detect.TLS(), nil}}, wantErr: "detect: sniffers[1]: nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := detect.New(tt.cfg)
			if got := errString(err); got != tt.wantErr {
				t.Errorf("New() error = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

// withUnknownField returns an Any holding msg plus a field its schema lacks,
// as a control plane with a newer API would send.
func withUnknownField(t *testing.T, msg proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	a.Value = protowire.AppendVarint(protowire.AppendTag(a.Value, 999, protowire.VarintType), 1)
	return a
}

func TestBuildErrors(t *testing.T) {
	t.Parallel()
	mustAny := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	tests := []struct {
		name    string
		cfg     *anypb.Any
		wantErr string
	}{
		{name: "detect ok", cfg: mustAny(&detectv1.Detect{})},
		{name: "detect bad sniffer", cfg: mustAny(&detectv1.Detect{Sniffers: []string{"smtp"}}), wantErr: `detect: sniffers[0]: unknown sniffer "smtp" (known: h2, http1, tls)`},
		{name: "detect unknown field", cfg: withUnknownField(t, &detectv1.Detect{}), wantErr: "detect: Detect: unknown field number 999 (newer API?): not supported by Sift"},
		{name: "tls_inspector defaults", cfg: mustAny(&tlsinspectorv3.TlsInspector{})},
		{name: "tls_inspector supported fields", cfg: mustAny(&tlsinspectorv3.TlsInspector{
			EnableJa3Fingerprinting:                   wrapperspb.Bool(false),
			EnableJa4Fingerprinting:                   wrapperspb.Bool(false),
			InitialReadBufferSize:                     wrapperspb.UInt32(4096),
			CloseConnectionOnClientHelloParsingErrors: true,
			MaxClientHelloSize:                        wrapperspb.UInt32(8192),
		})},
		{name: "tls_inspector ja3", cfg: mustAny(&tlsinspectorv3.TlsInspector{EnableJa3Fingerprinting: wrapperspb.Bool(true)}), wantErr: "detect: tls_inspector: enable_ja3_fingerprinting: not supported by sift"},
		{name: "tls_inspector ja4", cfg: mustAny(&tlsinspectorv3.TlsInspector{EnableJa4Fingerprinting: wrapperspb.Bool(true)}), wantErr: "detect: tls_inspector: enable_ja4_fingerprinting: not supported by sift"},
		{name: "tls_inspector initial_read_buffer_size too small", cfg: mustAny(&tlsinspectorv3.TlsInspector{InitialReadBufferSize: wrapperspb.UInt32(255)}), wantErr: "detect: tls_inspector: initial_read_buffer_size: must be in 256..65536, got 255"},
		{name: "tls_inspector max_client_hello_size too large", cfg: mustAny(&tlsinspectorv3.TlsInspector{MaxClientHelloSize: wrapperspb.UInt32(16385)}), wantErr: "detect: tls_inspector: max_client_hello_size: must be in 256..16384, got 16385"},
		{name: "tls_inspector unknown field", cfg: withUnknownField(t, &tlsinspectorv3.TlsInspector{}), wantErr: "detect: tls_inspector: TlsInspector: unknown field number 999 (newer API?): not supported by Sift"},
		{name: "http_inspector", cfg: mustAny(&httpinspectorv3.HttpInspector{})},
		{name: "http_inspector unknown field", cfg: withUnknownField(t, &httpinspectorv3.HttpInspector{}), wantErr: "detect: http_inspector: HttpInspector: unknown field number 999 (newer API?): not supported by Sift"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := filters.BuildListenerFilter(tt.cfg, filters.BuildContext{ListenerName: "test"})
			if got := errString(err); got != tt.wantErr {
				t.Fatalf("BuildListenerFilter() error = %q, want %q", got, tt.wantErr)
			}
			if err == nil && f == nil {
				t.Fatal("BuildListenerFilter() = nil, nil")
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
