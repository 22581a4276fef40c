package listener_test

import (
	"strings"
	"testing"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/upstream"

	_ "github.com/siftmesh/sift/filters/connlimit"
	_ "github.com/siftmesh/sift/filters/detect"
	_ "github.com/siftmesh/sift/filters/originaldst"
	_ "github.com/siftmesh/sift/filters/tcpproxy"
)

const tp = `{name: tcp, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c}}`
const detect = `{name: detect, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}}`

func TestDecode(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		listener string // YAML of one listener, address and name added
		wantErr  string // substring; "" = valid
	}{
		{name: "minimal", listener: `filter_chains: [{filters: [` + tp + `]}]`},
		{name: "default chain only", listener: `default_filter_chain: {filters: [` + tp + `]}`},
		{name: "no chains", listener: ``, wantErr: "filter_chains: at least one filter chain or a default_filter_chain is required"},
		{name: "no filters", listener: `filter_chains: [{}]`, wantErr: "filter_chains[0]: filters: a terminal network filter (tcp_proxy) is required"},
		{name: "terminal not last", listener: `filter_chains: [{filters: [` + tp + `, ` + tp + `]}]`,
			wantErr: "filters[0] (tcp): type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy is a terminal filter: it must be the chain's last"},
		{name: "unknown network filter", listener: `filter_chains: [{filters: [{name: x, typed_config: {"@type": type.googleapis.com/google.protobuf.Empty}}]}]`,
			wantErr: "unsupported network filter type type.googleapis.com/google.protobuf.Empty"},
		{name: "transport socket", listener: `filter_chains: [{filters: [` + tp + `], transport_socket: {name: tls}}]`,
			wantErr: "filter_chains[0]: transport_socket: no secret store"},
		{name: "listener field", listener: `freebind: true
filter_chains: [{filters: [` + tp + `]}]`, wantErr: "freebind: not supported by Sift"},
		{name: "duplicate matches", listener: `filter_chains: [{filters: [` + tp + `]}, {filters: [` + tp + `]}]`, wantErr: "filter_chains: "},
		{name: "bad server name", listener: `filter_chains: [{filter_chain_match: {server_names: ["www.*.com"]}, filters: [` + tp + `]}]`,
			wantErr: "filter_chains[0].filter_chain_match: "},
		{name: "default chain with a match", listener: `default_filter_chain: {filter_chain_match: {destination_port: 1}, filters: [` + tp + `]}`,
			wantErr: "default_filter_chain.filter_chain_match: must not be set"},
		{name: "listener filter config", listener: `listener_filters: [{name: d, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect, sniffers: [smtp]}}]
filter_chains: [{filters: [` + tp + `]}]`, wantErr: "listener_filters[0] (d): detect: sniffers"},
		{name: "filter_disabled range", listener: `listener_filters: [{name: d, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}, filter_disabled: {destination_port_range: {start: 10, end: 5}}}]
filter_chains: [{filters: [` + tp + `]}]`, wantErr: "filter_disabled: destination_port_range: [10, 5) is not a valid port range"},
		{name: "filter_disabled or needs two", listener: `listener_filters: [{name: d, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}, filter_disabled: {or_match: {rules: [{any_match: true}]}}}]
filter_chains: [{filters: [` + tp + `]}]`, wantErr: "or_match.rules: at least 2 rules are required"},
		{name: "negative timeout", listener: `listener_filters_timeout: -1s
filter_chains: [{filters: [` + tp + `]}]`, wantErr: "listener_filters_timeout: -1s: must not be negative"},
		{name: "tcp_proxy without cluster", listener: `filter_chains: [{filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s}}]}]`,
			wantErr: "tcp_proxy: cluster or weighted_clusters: one must be set"},
		{name: "tcp_proxy unsupported field", listener: `filter_chains: [{filters: [{name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: s, cluster: c, hash_policy: [{}]}}]}]`,
			wantErr: "tcp_proxy: hash_policy: not supported by Sift"},
		{name: "connection_limit zero", listener: `filter_chains: [{filters: [{name: l, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit, stat_prefix: l, max_connections: 0}}, ` + tp + `]}]`,
			wantErr: "connection_limit: max_connections: must be at least 1"},
		{name: "TypedStruct config", listener: `listener_filters: [{name: d, typed_config: {"@type": type.googleapis.com/xds.type.v3.TypedStruct, type_url: type.googleapis.com/sift.filters.listener.detect.v1.Detect, value: {timeout: 2s}}}]
filter_chains: [{filters: [` + tp + `]}]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := bootstrap.Parse([]byte("static_resources: {listeners: [{name: l, address: {socket_address: {address: 127.0.0.1, port_value: 0}}, " +
				strings.ReplaceAll(tt.listener, "\n", ", ") + "}]}"))
			if err != nil {
				t.Fatalf("test YAML: %v", err)
			}
			_, err = listener.Decode(b.GetStaticResources().GetListeners()[0], filters.BuildContext{Clusters: upstream.NewManager()})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Decode() = %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), `listener "l": `) {
				t.Fatalf("Decode() = %v, want an error naming the listener and %q", err, tt.wantErr)
			}
		})
	}
}
