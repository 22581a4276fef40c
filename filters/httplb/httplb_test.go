package httplb

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/httplb/route"

	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/internal/reactor"
)

// The reactor (internal/reactor) that parks idle tcp_proxy connections
// runs for the life of the process once started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(reactor.LoopFunction)) }

const router = `"http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]`
const inline = `"route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]}`

func build(t *testing.T, js string) (*HCM, error) {
	t.Helper()
	cfg := &hcmv3.HttpConnectionManager{}
	if err := protojson.Unmarshal([]byte(js), cfg); err != nil {
		t.Fatal(err)
	}
	return New(cfg, filters.BuildContext{})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, js, wantErr string }{
		{"minimal", `{"stat_prefix": "s", ` + router + `, ` + inline + `}`, ""},
		{"everything accepted", `{"stat_prefix": "s", "codec_type": "HTTP1", "use_remote_address": true, "skip_xff_append": false, "via": "sift",
		  "generate_request_id": false, "max_request_headers_kb": 96, "stream_idle_timeout": "60s", "request_timeout": "5s", "request_headers_timeout": "1s",
		  "common_http_protocol_options": {"idle_timeout": "30s"}, "http_protocol_options": {"accept_http_10": true},
		  "http2_protocol_options": {"max_concurrent_streams": 100}, "upgrade_configs": [{"upgrade_type": "websocket"}],
		  "server_name": "edge", "server_header_transformation": "PASS_THROUGH", "strip_any_host_port": true, ` + router + `, ` + inline + `}`, ""},
		{"rds", `{"stat_prefix": "s", ` + router + `, "rds": {"route_config_name": "r", "config_source": {"ads": {}}}}`, ""},
		{"no stat_prefix", `{` + router + `, ` + inline + `}`, "httplb: stat_prefix: must be set"},
		{"no routes", `{"stat_prefix": "s", ` + router + `}`, "httplb: route_config or rds: one must be set"},
		{"HTTP3", `{"stat_prefix": "s", "codec_type": "HTTP3", ` + router + `, ` + inline + `}`, "httplb: codec_type: HTTP3 is not supported by Sift"},
		{"access_log without typed_config", `{"stat_prefix": "s", "access_log": [{"name": "x"}], ` + router + `, ` + inline + `}`, "httplb: access_log[0].typed_config: must be set"},
		{"access_log unknown operator", `{"stat_prefix": "s", "access_log": [{"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog", "log_format": {"text_format": "%NOPE%"}}}], ` + router + `, ` + inline + `}`, "httplb: access_log[0].typed_config.log_format.text_format: position 0: %NOPE%: unknown command operator"},
		{"scoped routes", `{"stat_prefix": "s", "scoped_routes": {"name": "x"}, ` + router + `}`, "httplb: scoped_routes: not supported by Sift"},
		{"no router", `{"stat_prefix": "s", "http_filters": [], ` + inline + `}`, "httplb: http_filters: exactly one filter"},
		{"other filter", `{"stat_prefix": "s", "http_filters": [{"name": "envoy.filters.http.cors"}], ` + inline + `}`, `httplb: http_filters[0]: "envoy.filters.http.cors" is not supported`},
		{"router option", `{"stat_prefix": "s", "http_filters": [{"name": "r", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "suppress_envoy_headers": true}}], ` + inline + `}`,
			"httplb: http_filters[0].typed_config.suppress_envoy_headers: not supported by Sift"},
		{"bad route", `{"stat_prefix": "s", ` + router + `, "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "redirect": {}}]}]}}`,
			"httplb: route_config.virtual_hosts[0].routes[0].redirect: not supported by Sift"},
		{"header limit", `{"stat_prefix": "s", "max_request_headers_kb": 9000, ` + router + `, ` + inline + `}`, "httplb: max_request_headers_kb: 9000: must be in 1-8192"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := build(t, tt.js)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.wantErr)) {
				t.Errorf("New: %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestSetRoutes(t *testing.T) {
	t.Parallel()
	h, err := build(t, `{"stat_prefix": "s", `+router+`, "rds": {"route_config_name": "r", "config_source": {"ads": {}}}}`)
	if err != nil {
		t.Fatal(err)
	}
	if h.RDSName() != "r" || h.Routes() != nil {
		t.Fatalf("RDSName %q, routes %v", h.RDSName(), h.Routes())
	}
	tbl := &route.Table{Name: "r"}
	h.SetRoutes(tbl)
	if h.Routes() != tbl {
		t.Error("SetRoutes did not swap the table")
	}
}

func TestReplay(t *testing.T) {
	t.Parallel()
	src := io.NopCloser(strings.NewReader("hello world"))
	r := &replay{src: src, limit: 100}
	a := r.attempt()
	buf := make([]byte, 5)
	if n, _ := a.Read(buf); string(buf[:n]) != "hello" {
		t.Fatalf("first read %q", buf[:n])
	}
	b := r.attempt() // a retry: a is detached
	if _, err := a.Read(buf); err != errDetached {
		t.Fatalf("detached attempt read: %v", err)
	}
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "hello world" || !r.replayable() {
		t.Fatalf("replayed %q, %v", got, err)
	}
	// Beyond the limit: not replayable any more.
	r = &replay{src: io.NopCloser(bytes.NewReader(make([]byte, 1000))), limit: 100}
	if n, _ := io.Copy(io.Discard, r.attempt()); n != 1000 || r.replayable() {
		t.Fatalf("read %d, replayable %v; want 1000, false", n, r.replayable())
	}
}

func TestUpgradeType(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		method string
		proto  int
		header http.Header
		want   string
	}{
		{"GET", 1, http.Header{"Connection": {"keep-alive, Upgrade"}, "Upgrade": {"WebSocket"}}, "websocket"},
		{"GET", 1, http.Header{"Upgrade": {"websocket"}}, ""},
		{"GET", 1, http.Header{"Connection": {"upgrade"}, "Upgrade": {"h2c, foo/1"}}, "h2c"},
		{"CONNECT", 1, http.Header{}, "connect"},
		{"GET", 2, http.Header{"Connection": {"upgrade"}, "Upgrade": {"websocket"}}, ""},
	} {
		r := &http.Request{Method: tt.method, ProtoMajor: tt.proto, Header: tt.header}
		if got := upgradeType(r); got != tt.want {
			t.Errorf("upgradeType(%s %v) = %q, want %q", tt.method, tt.header, got, tt.want)
		}
	}
}

func FuzzGRPCTimeout(f *testing.F) {
	for _, s := range []string{"1S", "100m", "99999999H", "5u", "1n", "", "S", "-1S", "1x", "123456789S"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := parseGRPCTimeout(v)
		if ok && (d < 0 || len(v) > 9) {
			t.Fatalf("parseGRPCTimeout(%q) = %v, true", v, d)
		}
		if !ok && d != 0 {
			t.Fatalf("parseGRPCTimeout(%q) = %v, false", v, d)
		}
	})
}

func TestGRPCTimeout(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]time.Duration{"1S": time.Second, "100m": 100 * time.Millisecond, "2M": 2 * time.Minute, "7n": 7} {
		if d, ok := parseGRPCTimeout(v); !ok || d != want {
			t.Errorf("parseGRPCTimeout(%q) = %v, %v; want %v", v, d, ok, want)
		}
	}
	for _, v := range []string{"", "1", "1x", "-1S", "123456789S"} {
		if _, ok := parseGRPCTimeout(v); ok {
			t.Errorf("parseGRPCTimeout(%q) accepted", v)
		}
	}
}

func TestNewUUID(t *testing.T) {
	t.Parallel()
	re := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	for range 100 {
		if id := newUUID(); !re.MatchString(id) {
			t.Fatalf("newUUID() = %q, not a version 4 UUID", id)
		}
	}
}

// Every rule of the policies names a real field of its message.
func TestPolicyAudit(t *testing.T) {
	t.Parallel()
	for _, p := range []pbcheck.Policy{hcmPolicy, routerPolicy} {
		if err := p.Audit(); err != nil {
			t.Error(err)
		}
	}
}
