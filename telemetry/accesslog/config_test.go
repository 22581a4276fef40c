package accesslog

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/siftmesh/sift/internal/yamljson"
	"github.com/siftmesh/sift/upstream"
)

// decodeYAML reads an access_log list written in YAML.
func decodeYAML(t testing.TB, y string) []*accesslogv3.AccessLog {
	t.Helper()
	js, err := yamljson.Convert([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(js, &raw); err != nil {
		t.Fatal(err)
	}
	var out []*accesslogv3.AccessLog
	for _, r := range raw {
		al := &accesslogv3.AccessLog{}
		if err := protojson.Unmarshal(r, al); err != nil {
			t.Fatal(err)
		}
		out = append(out, al)
	}
	return out
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := func(rest string) string {
		return `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: ` +
			filepath.Join(dir, "x.log") + rest + `}}]`
	}
	als := func(common string) string {
		return `[{name: g, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig, common_config: ` + common + `}}]`
	}
	clusters := upstream.NewManager()
	tests := []struct {
		name, yaml, wantErr string
	}{
		{"unknown operator", file(`, log_format: {text_format: "%BOGUS_OP%"}`),
			"access_log[0].typed_config.log_format.text_format: position 0: %BOGUS_OP%: unknown command operator"},
		{"unknown operator in json", file(`, json_format: {a: {b: "%NOPE%"}}`),
			"access_log[0].typed_config.json_format.a.b: position 0: %NOPE%: unknown command operator"},
		{"unsupported filter", `[{name: f, filter: {runtime_filter: {runtime_key: k}}, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}}]`,
			"access_log[0].filter.runtime_filter: not supported by Sift"},
		{"unsupported filter nested", `[{name: f, filter: {and_filter: {filters: [{not_health_check_filter: {}}, {header_filter: {header: {name: x}}}]}}, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}}]`,
			"access_log[0].filter.and_filter.filters[1].header_filter: not supported by Sift"},
		{"bad response flag", `[{name: f, filter: {response_flag_filter: {flags: [XX]}}, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog}}]`,
			`access_log[0].filter.response_flag_filter.flags[0]: "XX" is not a response flag`},
		{"missing typed_config", `[{name: f}]`, "access_log[0].typed_config: must be set"},
		{"grpc without service", `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig, common_config: {log_name: x}}}]`,
			"access_log[0].typed_config.common_config.grpc_service.envoy_grpc.cluster_name: must be set"},
		{"unsupported logger", `[{name: f, typed_config: {"@type": type.googleapis.com/google.protobuf.Empty}}]`,
			"access_log[0].typed_config: type.googleapis.com/google.protobuf.Empty is not supported by Sift"},
		{"missing cluster", als(`{log_name: l, transport_api_version: V3, grpc_service: {envoy_grpc: {cluster_name: als}}}`),
			`access_log[0].typed_config.common_config.grpc_service.envoy_grpc.cluster_name: "als" is not a known cluster`},
		{"google grpc", als(`{log_name: l, grpc_service: {google_grpc: {target_uri: x, stat_prefix: s}}}`),
			"access_log[0].typed_config.common_config.grpc_service.google_grpc: not supported by Sift"},
		{"missing log_name", als(`{grpc_service: {envoy_grpc: {cluster_name: als}}}`),
			"access_log[0].typed_config.common_config.log_name: must be set"},
		{"bad flush interval", als(`{log_name: l, buffer_flush_interval: 0s, grpc_service: {envoy_grpc: {cluster_name: als}}}`),
			"buffer_flush_interval"},
		{"missing path", `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog}}]`,
			"access_log[0].typed_config.path: must be set"},
		{"unwritable path", `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: /nonexistent-dir/x.log}}]`,
			"access_log[0].typed_config.path: open /nonexistent-dir/x.log"},
		{"unsupported format field", file(`, log_format: {text_format: x, omit_empty_values: true}`),
			"access_log[0].typed_config.log_format.omit_empty_values: not supported by Sift"},
		{"unsupported json value", file(`, json_format: {a: [x]}`), "access_log[0].typed_config.json_format.a: only strings"},
		{"or with one filter", `[{name: f, filter: {or_filter: {filters: [{not_health_check_filter: {}}]}}, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog}}]`,
			"access_log[0].filter.or_filter.filters: at least two filters are required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Decode(decodeYAML(t, tt.yaml), Context{Clusters: clusters})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Decode = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestFileFormats(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	fmtFile := filepath.Join(dir, "fmt.txt")
	if err := os.WriteFile(fmtFile, []byte("from file %RESPONSE_CODE%\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, rest, want string
	}{
		{"default", ``, `[2026-03-04T05:06:07.891Z] "POST /a?b=c HTTP/1.1" 201 - 11 22 42 - "1.1.1.1" "curl/8" "rid" "svc.local" "10.0.0.2:8080"` + "\n"},
		{"deprecated format", `, format: "%PROTOCOL% %RESPONSE_CODE%\n"`, "HTTP/1.1 201\n"},
		{"deprecated json_format", `, json_format: {c: "%RESPONSE_CODE%"}`, `{"c":"201"}` + "\n"},
		{"typed_json_format", `, typed_json_format: {c: "%RESPONSE_CODE%"}`, `{"c":201}` + "\n"},
		{"log_format json", `, log_format: {json_format: {c: "%RESPONSE_CODE%", p: "%REQ(:PATH)%"}}`, `{"c":201,"p":"/a?b=c"}` + "\n"},
		{"log_format file", `, log_format: {text_format_source: {filename: ` + fmtFile + `}}`, "from file 201\n"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(dir, tt.name+".log")
			_ = i
			ls, err := Decode(decodeYAML(t, `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: `+
				path+tt.rest+`}}]`), Context{})
			if err != nil {
				t.Fatal(err)
			}
			ls.LogRequest(testRequest())
			w := ls[0].sink.(*lineSink).w
			w.stop() // flushes
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestSharedFileWriter(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "shared.log")
	y := `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: ` + path + `, format: "%RESPONSE_CODE%\n"}}]`
	a, err := Decode(decodeYAML(t, y), Context{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Decode(decodeYAML(t, y), Context{})
	if err != nil {
		t.Fatal(err)
	}
	if a[0].sink.(*lineSink).w != b[0].sink.(*lineSink).w {
		t.Fatal("two loggers of one path have two writers")
	}
	for range 100 {
		a.LogRequest(testRequest())
		b.LogRequest(testRequest())
	}
	a[0].sink.(*lineSink).w.stop()
	got, _ := os.ReadFile(path)
	if n := strings.Count(string(got), "201\n"); n != 200 {
		t.Errorf("%d lines, want 200", n)
	}
}

func TestPolicyAudit(t *testing.T) {
	t.Parallel()
	if err := policy.Audit(); err != nil {
		t.Fatal(err)
	}
}

func TestReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "rotate.log")
	ls, err := Decode(decodeYAML(t, `[{name: f, typed_config: {"@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog, path: `+
		path+`, format: "%ROUTE_NAME%\n"}}]`), Context{})
	if err != nil {
		t.Fatal(err)
	}
	first, second := testRequest(), testRequest()
	first.Route, second.Route = "first", "second"
	ls.LogRequest(first)
	if err := os.Rename(path, path+".1"); err != nil { // what logrotate does
		t.Fatal(err)
	}
	Reopen()
	ls.LogRequest(second)
	ls[0].sink.(*lineSink).w.stop()
	for file, want := range map[string]string{path + ".1": "first\n", path: "second\n"} {
		got, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, string(got)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", file, diff)
		}
	}
}
