package bootstrap

import (
	_ "github.com/siftmesh/sift/filters/httplb"   // registers the HCM's cluster references
	_ "github.com/siftmesh/sift/filters/tcpproxy" // and tcp_proxy's
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	// Typed configs in the test bootstraps must resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
)

const minimal = `
node: {id: n1, cluster: c1}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}
static_resources:
  listeners:
  - name: l1
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}
  clusters:
  - name: c
    type: STATIC
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}}]}]}
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file, content, yaml string
		wantErr                   string // substring; "" means success
	}{
		{name: "yaml file", file: "b.yaml", content: minimal},
		{name: "json file", file: "b.json", content: `{"node": {"id": "n"}, "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}`},
		{name: "only --config-yaml", yaml: minimal},
		{name: "nothing", wantErr: "no configuration"},
		{name: "missing file", file: "", content: "", yaml: "", wantErr: "no configuration"},
		{name: "unknown field", file: "b.yaml", content: "node: {id: n}\nstatic_resources: {listenrs: []}\n",
			wantErr: `/b.yaml:2:20: static_resources.listenrs: unknown field "listenrs"`},
		{name: "unknown top-level field", file: "b.yaml", content: "nodes: {}\n", wantErr: `/b.yaml:1:1: nodes: unknown field "nodes"`},
		{name: "unsupported field", file: "b.yaml", content: "node: {id: n}\nstats_flush_interval: 5s\n",
			wantErr: "/b.yaml:2:1: stats_flush_interval: not supported by Sift"},
		{name: "unsupported nested field", file: "b.yaml", content: "admin: {profile_path: /tmp/p}\n",
			wantErr: "/b.yaml:1:9: admin.profile_path: not supported by Sift"},
		{name: "tracing (checked by the server)", file: "b.yaml", content: "tracing: {http: {name: envoy.tracers.opentelemetry}}\n"},
		{name: "dynamic resources", file: "b.yaml", content: "dynamic_resources: {ads_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}}\n"},
		{name: "unsupported xds field", file: "b.yaml", content: "dynamic_resources: {ads_config: {api_type: GRPC, rate_limit_settings: {}}}\n",
			wantErr: "/b.yaml:1:50: dynamic_resources.ads_config.rate_limit_settings: not supported by Sift"},
		{name: "admin access log to a file", file: "b.yaml", content: "admin: {access_log_path: /tmp/x, address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n",
			wantErr: "/b.yaml:1:9: admin.access_log_path: \"/tmp/x\": admin access logs are not supported"},
		{name: "admin access log to /dev/null", file: "b.yaml", content: "admin: {access_log_path: /dev/null, address: {socket_address: {address: 127.0.0.1, port_value: 1}}}\n"},
		{name: "bad yaml", file: "b.yaml", content: "node: [unclosed\n", wantErr: "/b.yaml:1: did not find expected ',' or ']'"},
		{name: "unknown typed config", file: "b.yaml",
			content: "static_resources: {listeners: [{name: l, filter_chains: [{filters: [{name: x, typed_config: {\"@type\": type.googleapis.com/no.such.Type}}]}]}]}\n",
			wantErr: "/b.yaml:1:103: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.@type: unable to resolve \"type.googleapis.com/no.such.Type\""},
		{name: "duplicate listener", file: "b.yaml", content: "static_resources: {listeners: [{name: a}, {name: a}]}\n",
			wantErr: `/b.yaml:1:44: static_resources.listeners[1].name: "a" already used by listeners[0]`},
		{name: "unnamed cluster", file: "b.yaml", content: "static_resources: {clusters: [{type: STATIC}]}\n",
			wantErr: "/b.yaml:1:31: static_resources.clusters[0].name: must be set"},
		{name: "misspelt nested field", file: "b.yaml", content: "static_resources:\n  listeners:\n  - name: a\n    adress: {socket_address: {address: 127.0.0.1, port_value: 1}}\n",
			wantErr: `/b.yaml:4:5: static_resources.listeners[0].adress: unknown field "adress"`},
		{name: "wrong enum", file: "b.yaml", content: "static_resources:\n  clusters:\n  - name: a\n    type: STATK\n",
			wantErr: `/b.yaml:4:11: static_resources.clusters[0].type: invalid value for enum field type: "STATK"`},
		{name: "bad duration", file: "b.yaml", content: "static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 3x\n",
			wantErr: `/b.yaml:4:22: static_resources.clusters[0].connect_timeout: invalid google.protobuf.Duration value "3x"`},
		{name: "tab indentation", file: "b.yaml", content: "node:\n\tid: n\n", wantErr: "/b.yaml:2: found character that cannot start any token"},
		{name: "duplicate key", file: "b.yaml", content: "node: {id: a}\nnode: {id: b}\n", wantErr: `/b.yaml:2: node: key "node" already defined at line 1`},
		{name: "json file, wrong type", file: "b.json", content: "{\n  \"admin\": {\"address\": {\"socket_address\": {\"port_value\": \"x\"}}}\n}\n",
			wantErr: `/b.json:2:58: admin.address.socket_address.port_value: invalid value for uint32 field portValue: "x"`},
		{name: "--config-yaml", yaml: "node: {idd: n}\n", wantErr: `bootstrap: --config-yaml:1:8: node.idd: unknown field "idd"`},
		{name: "wrong type", file: "b.yaml", content: "node: {id: [1, 2]}\n", wantErr: "/b.yaml:1:12: node.id: invalid value for string field id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := ""
			if tt.file != "" {
				path = writeFile(t, tt.file, tt.content)
			}
			b, err := Load(path, tt.yaml)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Load() error = %v", err)
				}
				if b == nil {
					t.Fatal("Load() = nil")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Load() error = %v, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "(line ") {
				t.Errorf("error %q points into converted JSON, not the user's file", err)
			}
		})
	}
}

func TestLoadMergesConfigYAML(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "b.yaml", minimal)
	b, err := Load(path, `
node: {id: override}
static_resources:
  clusters:
  - name: extra
    type: STATIC
    load_assignment: {cluster_name: extra}
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.GetNode().GetId(); got != "override" {
		t.Errorf("node.id = %q, want override (singular fields replace)", got)
	}
	if got := b.GetNode().GetCluster(); got != "c1" {
		t.Errorf("node.cluster = %q, want c1 (kept from the file)", got)
	}
	if got := len(b.GetStaticResources().GetClusters()); got != 2 {
		t.Errorf("clusters = %d, want 2 (repeated fields append)", got)
	}
}

func TestOverrideNode(t *testing.T) {
	t.Parallel()
	b, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := proto.Clone(b.GetNode())
	OverrideNode(b, "", "")
	if !proto.Equal(b.GetNode(), want) {
		t.Errorf("empty overrides changed the node: %v", b.GetNode())
	}
	OverrideNode(b, "id2", "cluster2")
	if b.GetNode().GetId() != "id2" || b.GetNode().GetCluster() != "cluster2" {
		t.Errorf("node = %v, want id2/cluster2", b.GetNode())
	}
}

// FuzzParse: a bootstrap is untrusted input at startup; parsing and
// validation must return an error, never panic.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(`{"node": {"id": "n"}}`))
	f.Add([]byte("static_resources: {listeners: [{name: a}, {name: a}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Parse(data)
		if err != nil {
			return
		}
		_ = Validate(b)
	})
}

// Every rule of the policy (with xds.Policy) names a real field of its message.
func TestPolicyAudit(t *testing.T) {
	t.Parallel()
	if err := policy.Audit(); err != nil {
		t.Error(err)
	}
}

func TestUnresolvableClusters(t *testing.T) {
	t.Parallel()
	const tcp = `{"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, `
	const hcm = `{"@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: h, ` +
		`route_config: {virtual_hosts: [{name: v, domains: ["*"], routes: [{match: {prefix: /}, route: {cluster: web}}, ` +
		`{match: {prefix: /w}, route: {weighted_clusters: {clusters: [{name: c, weight: 1}, {name: gone, weight: 1}]}}}]}]}}`
	listener := func(filters string) string {
		return "static_resources:\n  listeners:\n  - name: l\n    filter_chains: [{filters: [" + filters + "]}]\n" +
			"  clusters: [{name: c}]\n"
	}
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{name: "static cluster", yaml: listener(`{name: t, typed_config: ` + tcp + `cluster: c}}`)},
		{name: "missing tcp_proxy cluster", yaml: listener(`{name: t, typed_config: ` + tcp + `cluster: nope}}`),
			want: []string{`static_resources.listeners[0].filter_chains[0].filters[0].typed_config.cluster: cluster "nope"`}},
		{name: "weighted", yaml: listener(`{name: t, typed_config: ` + tcp + `weighted_clusters: {clusters: [{name: c, weight: 1}, {name: x, weight: 1}]}}}`),
			want: []string{`static_resources.listeners[0].filter_chains[0].filters[0].typed_config.weighted_clusters.clusters[1].name: cluster "x"`}},
		{name: "inline routes", yaml: listener(`{name: h, typed_config: ` + hcm + `}`),
			want: []string{
				`static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: cluster "web"`,
				`static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[1].route.weighted_clusters.clusters[1].name: cluster "gone"`,
			}},
		{name: "CDS can supply it", yaml: listener(`{name: t, typed_config: `+tcp+`cluster: nope}}`) +
			"dynamic_resources: {cds_config: {ads: {}}, ads_config: {api_type: GRPC, grpc_services: [{envoy_grpc: {cluster_name: c}}]}}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := Parse([]byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			got := UnresolvableClusters(b)
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %d warnings: %q", got, len(tt.want), tt.want)
			}
			for i, w := range got {
				if !strings.HasPrefix(w.String(), tt.want[i]) {
					t.Errorf("warning %d = %q, want it to start with %q", i, w, tt.want[i])
				}
			}
		})
	}
}
