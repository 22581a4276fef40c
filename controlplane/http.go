package controlplane

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/mesh"
)

// httpChain builds a chain for HTTP traffic to cluster — the one place that
// decides how HTTP is served. Until the HTTP connection manager (filters/httplb,
// issue 4) is in sift-proxy, HTTP is proxied like any stream: tcp_proxy, with
// stat prefix "http" so HTTP connections are still counted apart. With
// Options.HTTPConnectionManager it is envoy.filters.network.http_connection_manager
// with its routes over RDS (ADS), one RouteConfiguration per chain sending
// every request to cluster; the route is added to the snapshot here, so
// switching the default is this function's choice alone.
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
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
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

// tcpProxy is envoy.filters.network.tcp_proxy to cluster.
func tcpProxy(statPrefix, cluster string) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name: wellknown.TCPProxy,
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
			StatPrefix:       statPrefix,
			ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		})},
	}
}
