package accesslog

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/telemetry/streaminfo"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Shutdown() // the shared writers' goroutines
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var start = time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.UTC)

func testRequest() *streaminfo.Request {
	return &streaminfo.Request{
		Start: start, Duration: 42 * time.Millisecond, UpstreamHeaders: 40 * time.Millisecond,
		Protocol: "HTTP/1.1", Method: "POST", Authority: "svc.local", Path: "/a?b=c", RequestID: "rid",
		Route: "r1", VirtualHost: "vh", Cluster: "backend", Endpoint: "10.0.0.2:8080", Attempts: 2,
		Status: 201, BytesReceived: 11, BytesSent: 22,
		Info: &filters.ConnInfo{
			RemoteAddr: netip.MustParseAddrPort("10.1.2.3:5555"), LocalAddr: netip.MustParseAddrPort("10.0.0.1:80"),
			Detection: filters.Detection{Ran: true, Protocol: "http/1.1", Reason: "match", Bytes: 17, Duration: 3 * time.Millisecond, Sniffer: "http1"},
		},
		Header:         http.Header{"User-Agent": {"curl/8"}, "X-Forwarded-For": {"1.1.1.1"}, "X-Request-Id": {"rid"}},
		ResponseHeader: http.Header{"Content-Type": {"text/plain"}},
	}
}

func testConn() *streaminfo.Conn {
	return &streaminfo.Conn{
		Start: start, Duration: 1500 * time.Millisecond, Filter: "tcp_proxy", StatPrefix: "db",
		Info: &filters.ConnInfo{
			RemoteAddr: netip.MustParseAddrPort("10.1.2.3:5555"), LocalAddr: netip.MustParseAddrPort("10.0.0.1:6379"),
			Detection: filters.Detection{Ran: true, Protocol: "opaque", Reason: "timeout"},
		},
		Cluster: "redis", Endpoint: "10.0.0.9:6379", BytesReceived: 100, BytesSent: 200,
	}
}

func TestFormatText(t *testing.T) {
	t.Parallel()
	failed := testConn()
	failed.ConnectFailed, failed.Err, failed.Endpoint = true, errors.New("dial tcp 10.0.0.9:6379: connection refused"), ""
	tests := []struct {
		name   string
		format string
		req    *streaminfo.Request
		conn   *streaminfo.Conn
		want   string
	}{
		{name: "default http", format: DefaultFormat, req: testRequest(),
			want: `[2026-03-04T05:06:07.891Z] "POST /a?b=c HTTP/1.1" 201 - 11 22 42 - "1.1.1.1" "curl/8" "rid" "svc.local" "10.0.0.2:8080"` + "\n"},
		{name: "default tcp", format: DefaultFormat, conn: testConn(),
			want: `[2026-03-04T05:06:07.891Z] "- - -" 0 - 100 200 1500 - "-" "-" "-" "-" "10.0.0.9:6379"` + "\n"},
		{name: "addresses", format: "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %DOWNSTREAM_LOCAL_PORT%",
			conn: testConn(), want: "10.1.2.3:5555 10.0.0.1:6379 10.1.2.3 6379"},
		{name: "sift detection", format: "%SIFT_DETECTED_PROTOCOL% %SIFT_DETECTION_REASON% %SIFT_DETECTION_BYTES% %SIFT_DETECTION_DURATION% %SIFT_DETECTION_SNIFFER%",
			req: testRequest(), want: "http/1.1 match 17 3 http1"},
		{name: "detection did not run", format: "%SIFT_DETECTED_PROTOCOL%", req: &streaminfo.Request{}, want: "-"},
		{name: "a plugin's attributes", format: "%SIFT_DETECTION_SNIFFER% %SIFT_DETECTION_ATTRIBUTE(server_version)% %SIFT_DETECTION_ATTRIBUTE(none)%",
			conn: func() *streaminfo.Conn {
				c := testConn()
				c.Info.Detection.Sniffer, c.Info.Detection.Attributes = "mysql", map[string]string{"server_version": "10.11.6-MariaDB"}
				return c
			}(), want: "mysql 10.11.6-MariaDB -"},
		{name: "headers and alternatives", format: "%REQ(X-MISSING?USER-AGENT)% %REQ(:PATH):2% %RESP(content-type)% %RESP(X-NONE)%",
			req: testRequest(), want: "curl/8 /a text/plain -"},
		{name: "route and cluster", format: "%ROUTE_NAME%|%VIRTUAL_HOST_NAME%|%UPSTREAM_CLUSTER%|%UPSTREAM_REQUEST_ATTEMPT_COUNT%|%RESPONSE_DURATION%|%RESPONSE_CODE_DETAILS%",
			req: testRequest(), want: "r1|vh|backend|2|40|via_upstream"},
		{name: "connect failure", format: "%RESPONSE_FLAGS% %UPSTREAM_HOST% %UPSTREAM_TRANSPORT_FAILURE_REASON%", conn: failed,
			want: "UF - dial tcp 10.0.0.9:6379: connection refused"},
		{name: "local reply flags", format: "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%",
			req: &streaminfo.Request{Status: 404, Error: "route_not_found"}, want: "404 NR route_not_found"},
		{name: "start time format", format: "%START_TIME(%s.%6f %Y/%m/%d %H:%M:%S %%)%", req: testRequest(),
			want: "1772600767.891234 2026/03/04 05:06:07 %"},
		{name: "literal only", format: "plain", conn: testConn(), want: "plain"},
		{name: "filter name", format: "%SIFT_FILTER%", conn: testConn(), want: "tcp_proxy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := parseFormat(tt.format)
			if err != nil {
				t.Fatal(err)
			}
			got := string(f.appendText(nil, &entry{req: tt.req, conn: tt.conn}))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseFormatErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, format, wantErr string
	}{
		{"unknown operator", "a %NOPE% b", "position 2: %NOPE%: unknown command operator"},
		{"attribute without a name", "%SIFT_DETECTION_ATTRIBUTE%", "%SIFT_DETECTION_ATTRIBUTE(name)%: an attribute name is required"},
		{"lone percent", "100% sure", "position 3: '%' does not begin a command operator"},
		{"unterminated", "%DURATION", "position 0: %DURATION: missing the closing '%'"},
		{"missing paren", "%REQ(X%", "%REQ(: missing ')'"},
		{"header required", "%REQ%", "%REQ(header)%: a header name is required"},
		{"two alternatives", "%REQ(A?B?C)%", "want HEADER or HEADER?ALTERNATIVE"},
		{"bad length", "%DURATION:0%", "the length after ':' must be a positive number"},
		{"arg on plain op", "%DURATION(x)%", "%DURATION%: takes no argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseFormat(tt.format)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("parseFormat(%q) = %v, want error containing %q", tt.format, err, tt.wantErr)
			}
		})
	}
}

func TestFormatJSON(t *testing.T) {
	t.Parallel()
	st, err := structpb.NewStruct(map[string]any{
		"code":     "%RESPONSE_CODE%",
		"dur":      "%DURATION%",
		"path":     "%REQ(:PATH)%",
		"missing":  "%RESP(X-NONE)%",
		"mixed":    "%REQ(:METHOD)% \"%REQ(:AUTHORITY)%\"\n",
		"nested":   map[string]any{"proto": "%SIFT_DETECTED_PROTOCOL%"},
		"constant": 7,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, typed := range []bool{false, true} {
		jf, err := parseJSONFormat(st, typed)
		if err != nil {
			t.Fatal(err)
		}
		line, _ := jf.appendJSON(nil, nil, &entry{req: testRequest()})
		if !strings.HasSuffix(string(line), "}\n") {
			t.Fatalf("line %q does not end with }\\n", line)
		}
		var got map[string]any
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		code, dur := any("201"), any("42")
		if typed {
			code, dur = 201.0, 42.0
		}
		want := map[string]any{"code": code, "dur": dur, "path": "/a?b=c", "missing": nil,
			"mixed": "POST \"svc.local\"\n", "nested": map[string]any{"proto": "http/1.1"}, "constant": 7.0}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("typed=%v (-want +got):\n%s", typed, diff)
		}
	}
}

func TestAppendJSONString(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain", "q\"b\\", "ctl\x00\x1f\t\n", "ünï", "bad\xff\xfeutf8"} {
		got := appendJSONString(nil, []byte(s))
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q -> %s: %v", s, got, err)
		}
		want := strings.ToValidUTF8(s, "\ufffd\ufffd")
		if s == "bad\xff\xfeutf8" {
			want = "bad\ufffd\ufffdutf8"
		}
		if back != want {
			t.Errorf("%q: round trip %q, want %q", s, back, want)
		}
	}
}

func TestFilters(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "log")
	ls, err := Decode(decodeYAML(t, `
- name: errors
  filter:
    or_filter:
      filters:
      - status_code_filter: {comparison: {op: GE, value: {default_value: 500, runtime_key: x}}}
      - and_filter:
          filters:
          - duration_filter: {comparison: {op: GE, value: {default_value: 1000}}}
          - not_health_check_filter: {}
      - response_flag_filter: {flags: [UF]}
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
    path: `+path+`
    log_format: {text_format_source: {inline_string: "%RESPONSE_CODE% %DURATION%\n"}}
`), Context{})
	if err != nil {
		t.Fatal(err)
	}
	slowTCP := testConn()
	failed := testConn()
	failed.Duration, failed.ConnectFailed = time.Millisecond, true
	fast := testRequest()
	e500 := testRequest()
	e500.Status = 503
	for _, e := range []entry{{req: fast}, {req: e500}, {conn: slowTCP}, {conn: failed}} {
		ls.log(&e)
	}
	ls[0].sink.(*lineSink).w.stop() // flushes
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff("503 42\n0 1500\n0 1\n", string(got)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
