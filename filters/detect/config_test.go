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
		Timeout  time.Duration
		MaxBytes int
		Sniffers []string
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
			want: summary{Timeout: 10 * time.Second, MaxBytes: 16384, Sniffers: []string{"tls", "h2", "http1"}},
		},
		{
			name: "everything set, sniffers in built-in order",
			cfg:  &detectv1.Detect{Timeout: durationpb.New(250 * time.Millisecond), MaxBytes: wrapperspb.UInt32(64), Sniffers: []string{"http1", "tls"}},
			want: summary{Timeout: 250 * time.Millisecond, MaxBytes: 64, Sniffers: []string{"tls", "http1"}},
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
			got := summary{Timeout: c.Timeout, MaxBytes: c.MaxBytes, Sniffers: names(c)}
			if diff := cmp.Diff(tt.want, got); diff != "" {
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
		{name: "ok with a plugin sniffer", cfg: detect.Config{Timeout: time.Second, MaxBytes: 64, Sniffers: append(detect.Builtins(), detect.H2())}},
		{name: "zero timeout", cfg: detect.Config{MaxBytes: 64, Sniffers: detect.Builtins()}, wantErr: "detect: timeout: 0s: must be positive"},
		{name: "small max bytes", cfg: detect.Config{Timeout: time.Second, MaxBytes: 1, Sniffers: detect.Builtins()}, wantErr: "detect: max_bytes: must be at least 64, got 1"},
		{name: "no sniffers", cfg: detect.Config{Timeout: time.Second, MaxBytes: 64}, wantErr: "detect: sniffers: none"},
		{name: "nil sniffer", cfg: detect.Config{Timeout: time.Second, MaxBytes: 64, Sniffers: []detect.Sniffer{detect.TLS(), nil}}, wantErr: "detect: sniffers[1]: nil"},
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
