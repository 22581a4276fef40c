package gen

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	_ "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// every kind and both policies, as the scenarios use them
var all = Topology{Listeners: []Listener{
	{Name: "opaque", Port: 25001, Kind: Opaque, Upstreams: []int{25100}},
	{Name: "detect", Port: 25002, Kind: Detect, Upstreams: []int{25101}, DetectTimeoutSeconds: 10},
	{Name: "mtls_out", Port: 25003, Kind: MTLSOrigin, Upstreams: []int{25004}},
	{Name: "mtls_in", Port: 25004, Kind: MTLSTerminate, Upstreams: []int{25100}},
	{Name: "http", Port: 25005, Kind: HTTP1, Upstreams: []int{25101}},
	{Name: "h2", Port: 25006, Kind: H2C, Upstreams: []int{25102}},
	{Name: "grpc", Port: 25007, Kind: GRPC, Upstreams: []int{25103}},
	{Name: "lb_rr", Port: 25008, Kind: HTTP1, Upstreams: []int{25110, 25111, 25112}, Policy: RoundRobin},
	{Name: "lb_least", Port: 25009, Kind: HTTP1, Upstreams: []int{25110, 25111, 25112}, Policy: LeastLoaded},
}}

func testEnv(t *testing.T) Env {
	t.Helper()
	dir := t.TempDir()
	certs, err := GenerateCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	env := Env{WorkDir: dir, MaxConns: 1000, FDLimit: 4096, Certs: certs}
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_stream_module.so"); err == nil {
		env.NginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"
	}
	return env
}

func TestValidateRejects(t *testing.T) {
	bad := []Topology{
		{Listeners: []Listener{{Name: "a", Port: 1, Kind: Opaque}}},                                                                               // no upstream
		{Listeners: []Listener{{Name: "a", Port: 1, Kind: "udp", Upstreams: []int{2}}}},                                                           // kind
		{Listeners: []Listener{{Name: "a-b", Port: 1, Kind: Opaque, Upstreams: []int{2}}}},                                                        // name
		{Listeners: []Listener{{Name: "a", Port: 1, Kind: Opaque, Upstreams: []int{2}}, {Name: "b", Port: 1, Kind: Opaque, Upstreams: []int{2}}}}, // port
		{Listeners: []Listener{{Name: "a", Port: 1, Kind: HTTP1, Upstreams: []int{2}, Policy: "random"}}},                                         // policy
	}
	for i, top := range bad {
		if top.Validate() == nil {
			t.Errorf("case %d accepted", i)
		}
		if _, err := HAProxy(top, Env{}); err == nil {
			t.Errorf("case %d: HAProxy accepted", i)
		}
	}
	if got := all.Ports(); len(got) != 9 || got[0] != 25001 || got[8] != 25009 {
		t.Fatalf("Ports = %v", got)
	}
}

func TestHAProxyConfig(t *testing.T) {
	env := testEnv(t)
	cfg, err := HAProxy(all, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"nbthread 1",
		"bind 127.0.0.1:25001\n",
		"tcp-request inspect-delay 10s\n    tcp-request content accept if HTTP",
		"bind 127.0.0.1:25004 ssl crt " + env.Certs.ServerPEM + " ca-file " + env.Certs.CA + " verify required",
		"server s0 127.0.0.1:25004 ssl crt " + env.Certs.ClientPEM,
		"bind 127.0.0.1:25006 proto h2",
		"server s0 127.0.0.1:25103 proto h2",
		"backend b_lb_least\n    mode http\n    balance leastconn",
		"server s2 127.0.0.1:25112",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("haproxy.cfg lacks %q", want)
		}
	}
	haproxy, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not installed: syntax not checked")
	}
	f := filepath.Join(env.WorkDir, "haproxy.cfg")
	os.WriteFile(f, []byte(cfg), 0o644)
	if out, err := exec.Command(haproxy, "-c", "-f", f).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s\n%s", err, out, cfg)
	}
}

func TestNginxConfig(t *testing.T) {
	env := testEnv(t)
	cfg, err := Nginx(all, env)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"worker_processes 1;",
		"daemon off;",
		"listen 127.0.0.1:25001;\n        proxy_pass u_opaque;",
		"listen 127.0.0.1:25004 ssl;",
		"ssl_verify_client on;",
		"proxy_ssl_certificate " + env.Certs.ClientCert + ";",
		"listen 127.0.0.1:25006 http2;",
		"grpc_pass grpc://u_grpc;",
		"upstream u_lb_least {\n        least_conn;",
		"keepalive 128;",
		"access_log off;",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		t.Skip("nginx not installed: syntax not checked")
	}
	os.MkdirAll(filepath.Join(env.WorkDir, "nginx-tmp"), 0o755)
	f := filepath.Join(env.WorkDir, "nginx.conf")
	os.WriteFile(f, []byte(cfg), 0o644)
	out, err := exec.Command(nginx, "-t", "-p", env.WorkDir, "-e", filepath.Join(env.WorkDir, "err.log"), "-c", f).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t: %v\n%s\n%s", err, out, cfg)
	}
}

// The Sift bootstrap must be a valid Envoy v3 bootstrap: every typed config
// resolves and every field exists (protojson rejects unknown fields).
func TestSiftBootstrapIsEnvoyV3(t *testing.T) {
	env := testEnv(t)
	cfg, err := Sift(all, env)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON([]byte(cfg))
	if err != nil {
		t.Fatalf("yaml: %v\n%s", err, cfg)
	}
	var bs bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &bs); err != nil {
		t.Fatalf("not an Envoy v3 bootstrap: %v\n%s", err, cfg)
	}
	if err := bs.Validate(); err != nil {
		t.Fatalf("bootstrap fails PGV validation: %v", err)
	}
	ls := bs.GetStaticResources().GetListeners()
	if len(ls) != len(all.Listeners) {
		t.Fatalf("%d listeners", len(ls))
	}
	if ls[1].GetListenerFilters()[0].GetTypedConfig().GetTypeUrl() != SiftDetectType {
		t.Error("detect listener filter missing")
	}
	// Detection as a user gets it without configuration: s3 (client
	// first, must never race) and s7 (server first, must race, then learn)
	// measure Sift's defaults, so nothing here may switch the race or the
	// learning off.
	var det detectv1.Detect
	if err := ls[1].GetListenerFilters()[0].GetTypedConfig().UnmarshalTo(&det); err != nil {
		t.Fatal(err)
	}
	if det.GetServerFirstGracePeriod() != nil || len(det.GetPortPolicies()) > 0 || det.GetLearnServerFirst() != nil ||
		det.GetMaxConcurrentRaces() != nil || det.GetOnTimeout() != detectv1.Detect_TIMEOUT_ACTION_UNSPECIFIED {
		t.Errorf("detect config overrides Sift's server-first defaults: %v", &det)
	}
	if got := ls[1].GetFilterChains(); len(got) != 2 || len(got[0].GetFilterChainMatch().GetApplicationProtocols()) != 3 {
		t.Error("detect listener needs an HTTP chain and a fallback chain, or Sift skips detection")
	}
	if ls[3].GetFilterChains()[0].GetTransportSocket() == nil {
		t.Error("mtls_in has no transport socket")
	}
	cs := bs.GetStaticResources().GetClusters()
	if got := len(cs[7].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()); got != 3 {
		t.Errorf("lb_rr has %d endpoints", got)
	}
	if cs[2].GetTransportSocket() == nil {
		t.Error("mtls_out cluster has no TLS")
	}
	if got := cs[8].GetLoadBalancingPolicy().GetPolicies()[0].GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl(); got != SiftPeakEWMAType {
		t.Errorf("lb_least policy %q", got)
	}
	// If a sift-proxy binary is at hand, let it judge the bootstrap too.
	bin := os.Getenv("SIFT_PROXY")
	if bin == "" {
		t.Skip("SIFT_PROXY not set: sift-proxy --mode validate not run")
	}
	// The whole topology, mTLS included.
	f := filepath.Join(env.WorkDir, "sift.yaml")
	os.WriteFile(f, []byte(cfg), 0o644)
	if out, err := exec.Command(bin, "--mode", "validate", "-c", f).CombinedOutput(); err != nil {
		t.Fatalf("sift-proxy --mode validate: %v\n%s\n%s", err, out, cfg)
	}
}

func TestGenerateCerts(t *testing.T) {
	env := testEnv(t)
	for _, f := range []string{env.Certs.CA, env.Certs.ServerPEM, env.Certs.ClientKey} {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), "-----BEGIN") {
			t.Fatalf("%s: %v", f, err)
		}
	}
	if b, _ := os.ReadFile(env.Certs.ServerPEM); !strings.Contains(string(b), "PRIVATE KEY") || !strings.Contains(string(b), "CERTIFICATE") {
		t.Fatal("server.pem must hold certificate and key")
	}
}
