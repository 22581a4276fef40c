// Package xds is sift-proxy's xDS client: it subscribes to Listener,
// Cluster, ClusterLoadAssignment, RouteConfiguration and Secret (SDS)
// resources over ADS or per-type streams, in
// the state-of-the-world or the delta (incremental) protocol, and hands each
// complete, decoded resource set to a Handler that validates it and swaps it
// in — or rejects it, which the client reports to the server as a NACK while
// the last good configuration keeps serving.
//
// The protocol rules follow Envoy's xDS docs and grpc-go's client: versions
// and nonces; ACK with the new version, NACK with the last good version and
// error_detail; node sent on the first request of each stream (or on every
// one); after a reconnect every subscription is sent again with the versions
// it knew, and nothing is dropped while the server is away.
package xds

import (
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/internal/pbcheck"
)

// Type URLs of the resources Sift consumes.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	SecretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

// wildcard reports whether typeURL is subscribed to as a whole (LDS, CDS)
// rather than by name.
func wildcard(typeURL string) bool { return typeURL == ListenerType || typeURL == ClusterType }

// newResource returns an empty message of a known resource type.
func newResource(typeURL string) (proto.Message, bool) {
	switch typeURL {
	case ListenerType:
		return &listenerv3.Listener{}, true
	case ClusterType:
		return &clusterv3.Cluster{}, true
	case EndpointType:
		return &endpointv3.ClusterLoadAssignment{}, true
	case RouteType:
		return &routev3.RouteConfiguration{}, true
	case SecretType:
		return &tlsv3.Secret{}, true
	}
	return nil, false
}

// resourceName returns the name a resource is known by.
func resourceName(m proto.Message) string {
	switch r := m.(type) {
	case *listenerv3.Listener:
		return r.GetName()
	case *clusterv3.Cluster:
		return r.GetName()
	case *endpointv3.ClusterLoadAssignment:
		return r.GetClusterName()
	case *routev3.RouteConfiguration:
		return r.GetName()
	case *tlsv3.Secret:
		return r.GetName()
	}
	return ""
}

// decode unpacks one resource of typeURL. A SotW response may wrap resources
// in envoy.service.discovery.v3.Resource, as the delta protocol does.
func decode(typeURL string, a *anypb.Any) (proto.Message, string, error) {
	if a.GetTypeUrl() == "type.googleapis.com/envoy.service.discovery.v3.Resource" {
		wrapped := &discoveryv3.Resource{}
		if err := a.UnmarshalTo(wrapped); err != nil {
			return nil, "", fmt.Errorf("decode Resource wrapper: %w", err)
		}
		a = wrapped.GetResource()
	}
	if a.GetTypeUrl() != typeURL {
		return nil, "", fmt.Errorf("resource of type %s in a %s response", a.GetTypeUrl(), typeURL)
	}
	m, ok := newResource(typeURL)
	if !ok {
		return nil, "", fmt.Errorf("unsupported resource type %s", typeURL)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return nil, "", fmt.Errorf("decode %s: %w", typeURL, err)
	}
	name := resourceName(m)
	if name == "" {
		return nil, "", fmt.Errorf("%s without a name", typeURL)
	}
	if err := pbcheck.Validate(m); err != nil {
		return nil, name, fmt.Errorf("%q: %w", name, err)
	}
	return m, name, nil
}

// Handler applies resources. The client calls Apply serially (never
// concurrently), from its stream goroutines.
type Handler interface {
	// Apply receives the complete current set of typeURL's resources, by name:
	// for LDS and CDS everything the server sent; for named types the
	// subscribed resources received so far. It must validate everything before
	// changing anything: an error rejects the update (the client NACKs it with
	// the error's text) and must leave the handler's state as it was.
	Apply(typeURL string, resources map[string]proto.Message) error
}
