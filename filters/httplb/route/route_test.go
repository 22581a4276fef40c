package route

import (
	"net/http"
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
)

func decodeJSON(t testing.TB, js string) (*Table, error) {
	t.Helper()
	rc := &routev3.RouteConfiguration{}
	if err := protojson.Unmarshal([]byte(js), rc); err != nil {
		t.Fatal(err)
	}
	return Decode(rc)
}

const tableJSON = `{"name": "rc", "virtual_hosts": [
  {"name": "exact", "domains": ["api.example.com", "api.example.com:8080"], "routes": [
    {"name": "prefix", "match": {"prefix": "/v1/"}, "route": {"cluster": "v1", "prefix_rewrite": "/"}},
    {"name": "path", "match": {"path": "/exact"}, "route": {"cluster": "exact"}},
    {"name": "regex", "match": {"safe_regex": {"regex": "/items/[0-9]+"}}, "route": {"cluster": "items", "regex_rewrite": {"pattern": {"regex": "^/items/([0-9]+)$"}, "substitution": "/item?id=\\1"}}},
    {"name": "sep", "match": {"path_separated_prefix": "/sep"}, "route": {"cluster": "sep"}},
    {"name": "nocase", "match": {"prefix": "/CaSe", "case_sensitive": false}, "route": {"cluster": "nocase"}},
    {"name": "hdr", "match": {"prefix": "/h", "headers": [
       {"name": "x-a", "string_match": {"prefix": "ab", "ignore_case": true}},
       {"name": "x-absent", "present_match": false},
       {"name": ":method", "exact_match": "POST"}]}, "route": {"cluster": "hdr"}},
    {"name": "inv", "match": {"prefix": "/h", "headers": [{"name": "x-b", "string_match": {"exact": "1"}, "invert_match": true}]}, "route": {"cluster": "inv"}},
    {"name": "grpc", "match": {"prefix": "/", "grpc": {}}, "route": {"cluster": "grpc"}},
    {"name": "connect", "match": {"connect_matcher": {}}, "route": {"cluster": "tunnel", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}]},
  {"name": "suffix-long", "domains": ["*.api.example.com"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]},
  {"name": "suffix", "domains": ["*.example.com"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]},
  {"name": "prefix", "domains": ["example.*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]},
  {"name": "any", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}]}]}`

func TestVirtualHostSelection(t *testing.T) {
	t.Parallel()
	tbl, err := decodeJSON(t, tableJSON)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ host, want string }{
		{"api.example.com", "exact"},
		{"API.Example.COM", "exact"},
		{"api.example.com:8080", "exact"},
		{"api.example.com:9090", "any"}, // the port is part of the name
		{"x.api.example.com", "suffix-long"},
		{"www.example.com", "suffix"},
		{"example.com", "prefix"}, // "*.example.com" needs a label; "example.*" matches
		{"example.org", "prefix"},
		{"other", "any"},
	} {
		if got := tbl.VirtualHost(tt.host); got == nil || got.Name != tt.want {
			t.Errorf("VirtualHost(%q) = %v, want %s", tt.host, got, tt.want)
		}
	}
}

func TestSelect(t *testing.T) {
	t.Parallel()
	tbl, err := decodeJSON(t, tableJSON)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		req     Request
		want    string // route name, "" for none
		rewrite string
	}{
		{"prefix", Request{Method: "GET", Path: "/v1/a?b=c"}, "prefix", "/a?b=c"},
		{"exact ignores query", Request{Method: "GET", Path: "/exact?x"}, "path", "/exact?x"},
		{"exact is exact", Request{Method: "GET", Path: "/exactly"}, "", ""},
		{"regex with rewrite", Request{Method: "GET", Path: "/items/12?z=1"}, "regex", "/item?id=12?z=1"},
		{"regex anchored", Request{Method: "GET", Path: "/items/12/x"}, "", ""},
		{"separated prefix alone", Request{Method: "GET", Path: "/sep"}, "sep", "/sep"},
		{"separated prefix with slash", Request{Method: "GET", Path: "/sep/x"}, "sep", "/sep/x"},
		{"separated prefix with query", Request{Method: "GET", Path: "/sep?x"}, "sep", "/sep?x"},
		{"separated prefix needs separator", Request{Method: "GET", Path: "/sepx"}, "", ""},
		{"case insensitive", Request{Method: "GET", Path: "/case/z"}, "nocase", "/case/z"},
		{"headers all match", Request{Method: "POST", Path: "/h", Header: http.Header{"X-A": {"ABc"}}}, "hdr", "/h"},
		{"absent header present", Request{Method: "POST", Path: "/h", Header: http.Header{"X-A": {"ab"}, "X-Absent": {""}}}, "", ""},
		{"method mismatch, inverted matcher missing header", Request{Method: "GET", Path: "/h", Header: http.Header{"X-A": {"ab"}}}, "", ""},
		{"inverted matcher", Request{Method: "GET", Path: "/h", Header: http.Header{"X-B": {"2"}}}, "inv", "/h"},
		{"inverted matcher matches value", Request{Method: "GET", Path: "/h", Header: http.Header{"X-B": {"1"}}}, "", ""},
		{"grpc only for grpc", Request{Method: "POST", Path: "/svc/M", GRPC: true}, "grpc", "/svc/M"},
		{"not grpc", Request{Method: "POST", Path: "/svc/M"}, "", ""},
		{"connect", Request{Method: "CONNECT", Path: ""}, "connect", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Authority = "api.example.com"
			if tt.req.Header == nil {
				tt.req.Header = http.Header{}
			}
			rt := tbl.Select(&tt.req)
			got := ""
			if rt != nil {
				got = rt.Name
			}
			if got != tt.want {
				t.Fatalf("Select = %q, want %q", got, tt.want)
			}
			if rt != nil && rt.Kind == ActionCluster && tt.rewrite != "" {
				if p := rt.RewritePath(tt.req.Path); p != tt.rewrite {
					t.Errorf("RewritePath(%q) = %q, want %q", tt.req.Path, p, tt.rewrite)
				}
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	vh := func(route string) string {
		return `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [` + route + `]}]}`
	}
	for _, tt := range []struct{ name, js, wantErr string }{
		{"unsupported field", vh(`{"match": {"prefix": "/"}, "route": {"cluster": "c", "hash_policy": [{"header": {"header_name": "x"}}]}}`),
			"virtual_hosts[0].routes[0].route.hash_policy: not supported by Sift"},
		{"redirect", vh(`{"match": {"prefix": "/"}, "redirect": {"path_redirect": "/x"}}`), "virtual_hosts[0].routes[0].redirect: not supported by Sift"},
		{"bad regex", vh(`{"match": {"safe_regex": {"regex": "("}}, "route": {"cluster": "c"}}`), "virtual_hosts[0].routes[0].match.safe_regex.regex: error parsing regexp"},
		{"bad retry_on", vh(`{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx,bogus"}}}`), `retry_policy: retry_on: "bogus" is not supported`},
		{"unsupported retry host predicate", vh(`{"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_host_predicate": [{"name": "locality", "typed_config": {"@type": "type.googleapis.com/envoy.config.core.v3.Locality"}}]}}}`),
			`retry_policy: retry_host_predicate[0] (locality): "type.googleapis.com/envoy.config.core.v3.Locality" is not supported by Sift`},
		{"duplicate domain", `{"virtual_hosts": [{"name": "a", "domains": ["x"]}, {"name": "b", "domains": ["X"]}]}`, `virtual_hosts[1].domains[0]: "x" is also a domain of virtual host "a"`},
		{"middle wildcard", `{"virtual_hosts": [{"name": "a", "domains": ["a.*.b"]}]}`, "a wildcard must be the first or last character"},
		{"format operator", vh(`{"match": {"prefix": "/"}, "route": {"cluster": "c"}, "request_headers_to_add": [{"header": {"key": "x", "value": "%START_TIME%"}}]}`),
			"format operators"},
		{"weights sum to zero", vh(`{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 0}]}}}`), "the sum of weights must be positive"},
		{"direct status", vh(`{"match": {"prefix": "/"}, "direct_response": {"status": 99}}`), "direct_response.status: 99"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeJSON(t, tt.js)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Decode: %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestRetryPreviousHosts(t *testing.T) {
	t.Parallel()
	tb, err := decodeJSON(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c",
		"retry_policy": {"retry_on": "connect-failure", "host_selection_retry_max_attempts": 5,
		"retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]}}}]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	rp := tb.VirtualHost("x").Routes[0].Retry
	if !rp.AvoidPreviousHosts || rp.HostSelectionAttempts != 5 {
		t.Errorf("retry policy %+v, want previous_hosts with 5 host selection attempts", rp)
	}
}

func TestEditsApply(t *testing.T) {
	t.Parallel()
	e := Edits{
		Remove: []string{"X-Gone"},
		Add: []HeaderAdd{
			{Name: "X-Append", Value: "2", Action: AppendIfExistsOrAdd},
			{Name: "X-Absent", Value: "new", Action: AddIfAbsent},
			{Name: "X-Present", Value: "kept", Action: AddIfAbsent},
			{Name: "X-Over", Value: "o", Action: OverwriteIfExistsOrAdd},
			{Name: "X-Only", Value: "o", Action: OverwriteIfExists},
			{Name: "X-Empty", Value: "", Action: OverwriteIfExistsOrAdd},
		},
	}
	h := http.Header{"X-Gone": {"1"}, "X-Append": {"1"}, "X-Present": {"old"}, "X-Over": {"a", "b"}}
	e.Apply(h)
	want := http.Header{"X-Append": {"1", "2"}, "X-Absent": {"new"}, "X-Present": {"old"}, "X-Over": {"o"}}
	if d := cmp.Diff(want, h); d != "" {
		t.Errorf("headers (-want +got):\n%s", d)
	}
}

func TestWeightedPick(t *testing.T) {
	t.Parallel()
	tbl, err := decodeJSON(t, `{"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [{"match": {"prefix": "/"},
	  "route": {"weighted_clusters": {"clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 3}, {"name": "z", "weight": 0}]}}}]}]}`)
	if err != nil {
		t.Fatal(err)
	}
	rt := tbl.Select(&Request{Method: "GET", Authority: "x", Path: "/"})
	got := map[string]int{}
	for n := range uint64(4) {
		got[rt.PickCluster(nil, func(uint64) uint64 { return n })]++
	}
	if d := cmp.Diff(map[string]int{"a": 1, "b": 3}, got); d != "" {
		t.Errorf("picks over every random value (-want +got):\n%s", d)
	}
}

// FuzzSelect matches untrusted request data against a table: it must not
// panic, and a selected route must belong to the request's virtual host.
func FuzzSelect(f *testing.F) {
	tbl, err := decodeJSON(f, tableJSON)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][4]string{
		{"GET", "api.example.com", "/v1/x", "ab"}, {"CONNECT", "h:1", "", ""}, {"POST", "[::1]:80", "/items/1?x", "\x00"},
		{"GET", "*.example.com", "/sep", ""}, {"GET", "", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3])
	}
	f.Fuzz(func(t *testing.T, method, authority, path, hv string) {
		rt := tbl.Select(&Request{Method: method, Authority: authority, Path: path, Header: http.Header{"X-A": {hv}}})
		if rt != nil && rt.VirtualHost != tbl.VirtualHost(authority) {
			t.Fatalf("route %q of %q for authority %q", rt.Name, rt.VirtualHost.Name, authority)
		}
		if rt != nil {
			rt.RewritePath(path)
		}
		StripPort(authority)
	})
}

// Every rule of the policy names a real field of its message.
func TestPolicyAudit(t *testing.T) {
	t.Parallel()
	if err := policy.Audit(); err != nil {
		t.Error(err)
	}
}
