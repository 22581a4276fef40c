package pbcheck

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var testPolicy = Policy{
	"envoy.config.listener.v3.Listener": Fields("name, address, filter_chains, listener_filters_timeout, metadata").
		Ignore("stat_prefix, traffic_direction", "descriptive only").
		Reject("freebind", "binding options are not supported"),
	"envoy.config.listener.v3.FilterChain": Fields("filters, metadata").Ignore("name", "names only appear in logs"),
	"envoy.config.listener.v3.Filter":      Fields("name, typed_config"),
	"envoy.config.core.v3.Metadata":        Fields("filter_metadata"),
	"google.protobuf.Struct":               Fields(""),
}

func withUnknown(m proto.Message, num protowire.Number) proto.Message {
	m.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), 1))
	return m
}

func TestCheck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		msg     proto.Message
		wantErr string
	}{
		{name: "empty", msg: &listenerv3.Listener{}},
		{name: "used fields", msg: &listenerv3.Listener{
			Name:                   "l",
			ListenerFiltersTimeout: durationpb.New(1),
			FilterChains:           []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{Name: "x"}}}},
		}},
		{name: "ignored fields are accepted", msg: &listenerv3.Listener{StatPrefix: "s", TrafficDirection: corev3.TrafficDirection_INBOUND,
			FilterChains: []*listenerv3.FilterChain{{Name: "c"}}}},
		{name: "no rule", msg: &listenerv3.Listener{Name: "l", EnableReusePort: wrapperspb.Bool(true)},
			wantErr: "enable_reuse_port: not supported by Sift"},
		{name: "rejected with the reason", msg: &listenerv3.Listener{Freebind: wrapperspb.Bool(true)},
			wantErr: "freebind: not supported by Sift (binding options are not supported)"},
		{name: "nested in a list", msg: &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{
			{}, {TransportSocket: &corev3.TransportSocket{Name: "tls"}},
		}}, wantErr: "filter_chains[1].transport_socket: not supported by Sift"},
		{name: "first in declaration order", msg: &listenerv3.Listener{Freebind: wrapperspb.Bool(true), EnableReusePort: wrapperspb.Bool(true)},
			wantErr: "freebind: not supported by Sift (binding options are not supported)"},
		{name: "map entries in key order", msg: &listenerv3.Listener{Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			"b": {Fields: map[string]*structpb.Value{"x": structpb.NewNullValue()}},
			"a": {Fields: map[string]*structpb.Value{"x": structpb.NewNullValue()}},
		}}}, wantErr: "metadata.filter_metadata[a].fields: not supported by Sift"},
		{name: "unlisted messages accepted whole", msg: &listenerv3.Listener{Address: &corev3.Address{
			Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/p"}}}}},
		{name: "any not entered", msg: &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{
			{Filters: []*listenerv3.Filter{{ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: &anypb.Any{TypeUrl: "x"}}}}},
		}}},
		{name: "unknown field at the root", msg: withUnknown(&listenerv3.Listener{}, 999),
			wantErr: "Listener: unknown field number 999 (newer API?): not supported by Sift"},
		{name: "unknown field nested", msg: &listenerv3.Listener{FilterChains: []*listenerv3.FilterChain{
			withUnknown(&listenerv3.FilterChain{}, 998).(*listenerv3.FilterChain)}},
			wantErr: "filter_chains[0]: unknown field number 998 (newer API?): not supported by Sift"},
		{name: "unknown field in an unlisted message", msg: &listenerv3.Listener{Address: withUnknown(&corev3.Address{}, 997).(*corev3.Address)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := errString(testPolicy.Check(tt.msg)); got != tt.wantErr {
				t.Errorf("Check() = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestIgnored(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		msg  proto.Message
		want []IgnoredField
	}{
		{name: "none set", msg: &listenerv3.Listener{Name: "l"}},
		{name: "in order, nested", msg: &listenerv3.Listener{
			TrafficDirection: corev3.TrafficDirection_OUTBOUND,
			StatPrefix:       "s",
			FilterChains:     []*listenerv3.FilterChain{{}, {Name: "c"}},
		}, want: []IgnoredField{ // declaration order: stat_prefix is field 2 of Listener
			{Path: "stat_prefix", Why: "descriptive only"},
			{Path: "filter_chains[1].name", Why: "names only appear in logs"},
			{Path: "traffic_direction", Why: "descriptive only"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, testPolicy.Ignored(tt.msg)); diff != "" {
				t.Errorf("Ignored (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFields(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  Message
		want Message
	}{
		{name: "empty", got: Fields(""), want: Message{}},
		{name: "spaces and trailing comma", got: Fields(" a,b , c,"), want: Message{"a": Use(), "b": Use(), "c": Use()}},
		{name: "ignore and reject", got: Fields("a").Ignore("b, c", "why b").Reject("d", "why d"),
			want: Message{"a": Use(), "b": Ignore("why b"), "c": Ignore("why b"), "d": Reject("why d")}},
		{name: "a later rule replaces an earlier one", got: Fields("a").Ignore("a", "w"), want: Message{"a": Ignore("w")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, tt.got, cmp.AllowUnexported(Rule{})); diff != "" {
				t.Errorf("Message (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAudit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		policy  Policy
		wantErr string
	}{
		{name: "clean", policy: testPolicy},
		{name: "typo", policy: Policy{"envoy.config.listener.v3.Filter": Fields("name, typed_conifg")},
			wantErr: "pbcheck: policy: envoy.config.listener.v3.Filter has no field typed_conifg"},
		{name: "unknown message", policy: Policy{"envoy.nothing.Here": Fields("a")},
			wantErr: "pbcheck: policy: envoy.nothing.Here: no such registered type (misspelt, or its package not imported)"},
		{name: "not a message", policy: Policy{"envoy.config.core.v3.TrafficDirection": Fields("")},
			wantErr: "pbcheck: policy: envoy.config.core.v3.TrafficDirection is not a message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := errString(tt.policy.Audit()); got != tt.wantErr {
				t.Errorf("Audit() = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestUnruled(t *testing.T) {
	t.Parallel()
	p := Policy{"envoy.config.core.v3.Pipe": Fields("path"), "envoy.nothing.Here": Fields("")}
	if diff := cmp.Diff([]string{"envoy.config.core.v3.Pipe.mode"}, p.Unruled()); diff != "" {
		t.Errorf("Unruled (-want +got):\n%s", diff)
	}
	full := Policy{"envoy.config.core.v3.Pipe": Fields("path").Ignore("mode", "w")}
	if got := full.Unruled(); len(got) != 0 {
		t.Errorf("Unruled = %v, want none", got)
	}
}

func TestDuration(t *testing.T) {
	t.Parallel()
	const def = 7 * time.Second
	tests := []struct {
		name    string
		d       *durationpb.Duration
		minimum time.Duration
		want    time.Duration
		wantErr string
	}{
		{name: "unset takes the default", d: nil, minimum: Positive, want: def},
		{name: "zero, non-negative", d: durationpb.New(0), minimum: NonNegative, want: 0},
		{name: "positive", d: durationpb.New(1500 * time.Millisecond), minimum: Positive, want: 1500 * time.Millisecond},
		{name: "at the minimum", d: durationpb.New(time.Millisecond), minimum: time.Millisecond, want: time.Millisecond},
		{name: "negative, non-negative", d: durationpb.New(-time.Second), minimum: NonNegative,
			wantErr: "a.b: -1s: must not be negative"},
		{name: "zero, positive", d: durationpb.New(0), minimum: Positive, wantErr: "a.b: 0s: must be positive"},
		{name: "negative, positive", d: durationpb.New(-time.Second), minimum: Positive, wantErr: "a.b: -1s: must be positive"},
		{name: "below the minimum", d: durationpb.New(500 * time.Microsecond), minimum: time.Millisecond,
			wantErr: "a.b: 500µs: must be at least 1ms"},
		{name: "mixed signs", d: &durationpb.Duration{Seconds: 1, Nanos: -1}, minimum: NonNegative,
			wantErr: "a.b: invalid duration: "},
		{name: "nanos out of range", d: &durationpb.Duration{Nanos: 1e9}, minimum: NonNegative,
			wantErr: "a.b: invalid duration: "},
		{name: "seconds out of range", d: &durationpb.Duration{Seconds: 315576000001}, minimum: NonNegative,
			wantErr: "a.b: invalid duration: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := Duration(tt.d, "a.b", def, tt.minimum)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("Duration() error = %v, want prefix %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Duration() error = %v", err)
			}
			if got != tt.want {
				t.Errorf("Duration() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLogIgnored(t *testing.T) {
	t.Parallel()
	msg := &listenerv3.Listener{StatPrefix: "s"}
	tests := []struct {
		name  string
		level slog.Level
		want  string
	}{
		{name: "debug", level: slog.LevelDebug,
			want: "level=DEBUG msg=\"config field accepted and ignored\" field=stat_prefix reason=\"descriptive only\" listener=l\n"},
		{name: "info", level: slog.LevelInfo, want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var b strings.Builder
			log := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: tt.level,
				ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
					if a.Key == slog.TimeKey {
						return slog.Attr{}
					}
					return a
				}}))
			testPolicy.LogIgnored(log, msg, "listener", "l")
			if diff := cmp.Diff(tt.want, b.String()); diff != "" {
				t.Errorf("log (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	sec := func(f float64) *durationpb.Duration { return durationpb.New(time.Duration(f * float64(time.Second))) }
	tests := []struct {
		name      string
		base, max *durationpb.Duration
		minimum   time.Duration
		wantBase  time.Duration
		wantMax   time.Duration
		wantErr   string
	}{
		{name: "max defaults to 10 times base", base: sec(0.5), minimum: Positive, wantBase: 500 * time.Millisecond, wantMax: 5 * time.Second},
		{name: "both set", base: sec(1), max: sec(30), minimum: Positive, wantBase: time.Second, wantMax: 30 * time.Second},
		{name: "max equal to base", base: sec(2), max: sec(2), minimum: Positive, wantBase: 2 * time.Second, wantMax: 2 * time.Second},
		{name: "base unset", max: sec(1), minimum: Positive, wantErr: "r.base_interval: must be set"},
		{name: "base zero", base: sec(0), minimum: Positive, wantErr: "r.base_interval: 0s: must be positive"},
		{name: "base below minimum", base: sec(0.0005), minimum: time.Millisecond, wantErr: "r.base_interval: 500µs: must be at least 1ms"},
		{name: "max below base", base: sec(2), max: sec(1), minimum: Positive, wantErr: "r.max_interval: 1s: must not be less than base_interval 2s"},
		{name: "max invalid", base: sec(1), max: &durationpb.Duration{Nanos: -1, Seconds: 1}, minimum: Positive,
			wantErr: "r.max_interval: invalid duration: "}, // the rest is protobuf's wording
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, m, err := Backoff("r", tt.base, tt.max, tt.minimum)
			if got := errString(err); (tt.wantErr == "") != (err == nil) || !strings.HasPrefix(got, tt.wantErr) {
				t.Fatalf("Backoff() error = %q, want %q", got, tt.wantErr)
			}
			if err == nil && (b != tt.wantBase || m != tt.wantMax) {
				t.Errorf("Backoff() = %v, %v, want %v, %v", b, m, tt.wantBase, tt.wantMax)
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
