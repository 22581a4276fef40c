package controlplane

import (
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	peakewmav1 "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	"github.com/siftmesh/sift/mesh"
)

// httpChain builds a chain for HTTP traffic to cluster — the one place that
// decides how HTTP is served. With Options.HTTPConnectionManager (the
// default) it is envoy.filters.network.http_connection_manager with its
// routes over RDS (ADS), one RouteConfiguration per chain sending every
// request to cluster; the route is added to the snapshot here. Without it,
// HTTP is proxied like any stream: tcp_proxy with stat prefix "http".
//
// proto is the declared protocol; ProtocolUnknown means detected HTTP (the
// codec is then chosen per connection).
func (g *generator) httpChain(name string, m *listenerv3.FilterChainMatch, cluster string, proto mesh.Protocol) *listenerv3.FilterChain {
	if !g.opts.HTTPConnectionManager {
		return chain(name, m, tcpProxy("http", cluster))
	}
	g.r.Routes = append(g.r.Routes, &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    cluster,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
					// Retries that are always safe — the request never reached
					// an application — as Istio's default: an endpoint that has
					// just joined may not be listening yet.
					RetryPolicy: &routev3.RetryPolicy{RetryOn: "connect-failure,refused-stream", NumRetries: wrapperspb.UInt32(2)},
				}},
			}},
		}},
	})
	codec := hcmv3.HttpConnectionManager_AUTO
	switch proto {
	case mesh.ProtocolHTTP1:
		codec = hcmv3.HttpConnectionManager_HTTP1
	case mesh.ProtocolHTTP2, mesh.ProtocolGRPC:
		codec = hcmv3.HttpConnectionManager_HTTP2
	}
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "http",
		CodecType:  codec,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: name,
		}},
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       wellknown.Router,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	return chain(name, m, &listenerv3.Filter{
		Name:       wellknown.HTTPConnectionManager,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
	})
}

// upstreamHTTPOptions: with the HTTP connection manager, requests go upstream
// in the protocol they arrived in (HTTP/1.1 stays HTTP/1.1, h2c and gRPC stay
// HTTP/2), as Istio configures clusters of undeclared protocol.
func upstreamHTTPOptions() map[string]*anypb.Any {
	return map[string]*anypb.Any{
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
				UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
					HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
					Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
				},
			},
		}),
	}
}

// upstreamH2Options make a cluster speak HTTP/2 (h2c, or h2 over TLS).
func upstreamH2Options() map[string]*anypb.Any {
	return map[string]*anypb.Any{
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&upstreamhttpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
					},
				},
			},
		}),
	}
}

// connectAttempts is tcp_proxy's max_connect_attempts: a workload that has
// just joined a service may be pushed to clients before its own proxy is
// listening; another endpoint then takes the connection.
const connectAttempts = 3

// tcpProxy is envoy.filters.network.tcp_proxy to cluster.
func tcpProxy(statPrefix, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
			StatPrefix:         statPrefix,
			ClusterSpecifier:   &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
			MaxConnectAttempts: wrapperspb.UInt32(connectAttempts),
			BackoffOptions:     &corev3.BackoffStrategy{BaseInterval: durationpb.New(10 * time.Millisecond)},
		})},
	}
}

// peakEWMAPolicy is the mesh's HTTP load balancing: Sift's peak-EWMA (Linkerd's
// constants), then Envoy's least_request for a proxy that does not know it —
// Envoy takes the first policy it supports.
func peakEWMAPolicy() *clusterv3.LoadBalancingPolicy {
	return &clusterv3.LoadBalancingPolicy{Policies: []*clusterv3.LoadBalancingPolicy_Policy{
		{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "sift.peak_ewma", TypedConfig: mustAny(&peakewmav1.PeakEwma{})}},
		{TypedExtensionConfig: &corev3.TypedExtensionConfig{Name: "envoy.load_balancing_policies.least_request", TypedConfig: mustAny(&leastrequestv3.LeastRequest{})}},
	}}
}
