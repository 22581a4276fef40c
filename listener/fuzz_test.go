package listener_test

import (
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/upstream"
)

// FuzzDecode feeds arbitrary Listener protos — what an LDS response carries
// from the control plane — to Decode: a configuration or an error, never a
// panic. The seeds are valid and invalid listeners of TestDecode's kinds.
func FuzzDecode(f *testing.F) {
	for _, l := range []string{
		`filter_chains: [{filters: [` + tp + `]}]`,
		`default_filter_chain: {filters: [` + tp + `]}`,
		`listener_filters: [` + detect + `]
filter_chains: [{filter_chain_match: {destination_port: 80, application_protocols: [http/1.1]}, filters: [` + tp + `]}, {filters: [` + tp + `]}]`,
		`filter_chains: [{filter_chain_match: {server_names: ["*.example.com"], prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}, filters: [` + tp + `]}]`,
		`listener_filters: [{name: d, typed_config: {"@type": type.googleapis.com/sift.filters.listener.detect.v1.Detect}, filter_disabled: {destination_port_range: {start: 10, end: 5}}}]
filter_chains: [{filters: [` + tp + `]}]`,
	} {
		b, err := bootstrap.Parse([]byte("static_resources: {listeners: [{name: l, address: {socket_address: {address: 127.0.0.1, port_value: 0}}, " +
			strings.ReplaceAll(l, "\n", ", ") + "}]}"))
		if err != nil {
			f.Fatalf("seed YAML: %v", err)
		}
		data, err := proto.Marshal(b.GetStaticResources().GetListeners()[0])
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pb := &listenerv3.Listener{}
		if proto.Unmarshal(data, pb) != nil {
			return
		}
		cfg, err := listener.Decode(pb, filters.BuildContext{Clusters: upstream.NewManager()})
		if err == nil && cfg == nil {
			t.Fatal("Decode returned neither a configuration nor an error")
		}
	})
}
