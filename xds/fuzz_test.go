package xds

import (
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzDecodeResource feeds arbitrary bytes, as the value of a resource of
// each type Sift subscribes to (bare or in a discovery Resource wrapper,
// as a control plane may send them), to decode: a named resource or an
// error, never a panic.
func FuzzDecodeResource(f *testing.F) {
	types := []string{ListenerType, ClusterType, EndpointType, RouteType, SecretType}
	for i, m := range []proto.Message{
		&listenerv3.Listener{Name: "l"},
		&clusterv3.Cluster{Name: "c", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}},
		&endpointv3.ClusterLoadAssignment{ClusterName: "c", Endpoints: []*endpointv3.LocalityLbEndpoints{{}}},
		&routev3.RouteConfiguration{Name: "r", VirtualHosts: []*routev3.VirtualHost{{Name: "v", Domains: []string{"*"}}}},
		&tlsv3.Secret{Name: "default"},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), false, b)
		a, _ := anypb.New(m)
		w, err := proto.Marshal(&discoveryv3.Resource{Name: "x", Resource: a})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), true, w)
	}
	f.Fuzz(func(t *testing.T, typeIndex uint8, wrapped bool, data []byte) {
		typeURL := types[int(typeIndex)%len(types)]
		a := &anypb.Any{TypeUrl: typeURL, Value: data}
		if wrapped {
			a.TypeUrl = "type.googleapis.com/envoy.service.discovery.v3.Resource"
		}
		m, name, err := decode(typeURL, a)
		if err == nil && (m == nil || name == "") {
			t.Fatalf("decode accepted a resource without a message or a name: %v %q", m, name)
		}
	})
}
