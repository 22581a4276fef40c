package controlplane

import (
	"context"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryservice "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
)

// NewServer returns the xDS server of c's cache with c as its callbacks
// (behind node authentication when Config.Authenticator is set). Its
// streams end when ctx ends.
func (c *Controller) NewServer(ctx context.Context) serverv3.Server {
	return serverv3.NewServer(ctx, c.cache, c.callbacks())
}

// Register registers srv on g as every discovery service a proxy may use:
// ADS and the per-type LDS, CDS, EDS, RDS and SDS, each serving both
// state-of-the-world (Stream*) and incremental (Delta*) streams.
func Register(g *grpc.Server, srv serverv3.Server) {
	discoveryservice.RegisterAggregatedDiscoveryServiceServer(g, srv)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, srv)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, srv)
	endpointservice.RegisterEndpointDiscoveryServiceServer(g, srv)
	routeservice.RegisterRouteDiscoveryServiceServer(g, srv)
	secretservice.RegisterSecretDiscoveryServiceServer(g, srv)
}
