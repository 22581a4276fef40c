package pbcheck

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestValidateNamesFieldPaths(t *testing.T) {
	t.Parallel()
	port := func(p uint32) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: p}}}}}}}
	}
	tests := []struct {
		name string
		c    *clusterv3.Cluster
		want string
	}{
		{name: "valid", c: &clusterv3.Cluster{Name: "c"}},
		{name: "top-level field", c: &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(-time.Second)},
			want: "invalid Cluster: connect_timeout: value must be greater than 0s"},
		{name: "nested, repeated", c: &clusterv3.Cluster{Name: "c", LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: "c",
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{port(1), port(70000)}}}}},
			want: "invalid Cluster: load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value: value must be less than or equal to 65535"},
		{name: "two violations", c: &clusterv3.Cluster{Name: "c", ConnectTimeout: durationpb.New(-time.Second),
			LoadAssignment: &endpointv3.ClusterLoadAssignment{}},
			want: "invalid Cluster: connect_timeout: value must be greater than 0s; load_assignment.cluster_name: value length must be at least 1 runes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := Validate(tt.c)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate() = %q\nwant         %q", got, tt.want)
			}
		})
	}
}
