package test

import (
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/types/known/anypb"
)

// httpListenerOverRDS is an HTTP listener as Envoy users write them with
// go-control-plane (its own test resources, less the gRPC access log Sift
// does not implement): an HCM taking route configuration `routeName` from
// ADS.
func httpListenerOverRDS(name, routeName string) *listenerv3.Listener {
	router, _ := anypb.New(&routerv3.Router{})
	hcm, _ := anypb.New(&hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: "http",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: routeName,
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	l := tcpListener(name, "unused")
	l.FilterChains[0].Filters[0] = &listenerv3.Filter{Name: wellknown.HTTPConnectionManager, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm}}
	return l
}

func routeTo(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name: name, Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
			}},
		}},
	}
}

func TestXDSEnvoyStyleHTTPOverRDS(t *testing.T) {
	t.Parallel()
	blue, green := httpBackend(t, "blue"), httpBackend(t, "green")
	cp := startControlPlane(t, true)
	snapshot := func(routes ...types.Resource) map[resourcev3.Type][]types.Resource {
		return map[resourcev3.Type][]types.Resource{
			resourcev3.ListenerType: {httpListenerOverRDS("http", "local_route"), tcpListener("tcp", "blue")},
			resourcev3.ClusterType:  {edsCluster("blue"), edsCluster("green")},
			resourcev3.EndpointType: {loadAssignment("blue", blue), loadAssignment("green", green)},
			resourcev3.RouteType:    routes,
		}
	}
	// v1: the HTTP listener's routes do not exist yet: it warms, unbound,
	// while the TCP listener serves.
	cp.set("v1", snapshot())
	p := startProxy(t, xdsBootstrap(cp.addr, false, true), nil)
	eventually(t, "the TCP listener", func() bool { return strings.HasPrefix(bodyVia(p, "tcp"), "blue ") })
	eventually(t, "the listener ACK", func() bool { return cp.sawVersion(resourcev3.ListenerType, "v1") })
	if p.Listeners().Get("http") != nil {
		t.Fatal("the HTTP listener serves before its route configuration arrived")
	}

	// v2: the routes arrive; the listener is served, routed per RDS.
	cp.set("v2", snapshot(routeTo("local_route", "blue")))
	eventually(t, "the HTTP listener over RDS", func() bool { return bodyVia(p, "http") == "blue GET / HTTP/1.1" })

	// v3: an RDS update moves traffic without touching the listener.
	httpAddr := p.Listeners().Get("http").Addr()
	cp.set("v3", snapshot(routeTo("local_route", "green")))
	eventually(t, "the route update", func() bool { return bodyVia(p, "http") == "green GET / HTTP/1.1" })
	if got := p.Listeners().Get("http").Addr(); got != httpAddr {
		t.Errorf("listener address moved from %v to %v on a route update", httpAddr, got)
	}

	// v4: a bad route configuration is NACKed; the last good one serves.
	bad := routeTo("local_route", "green")
	bad.VirtualHosts[0].Routes[0].Match.PathSpecifier = &routev3.RouteMatch_SafeRegex{}
	cp.set("v4", snapshot(bad))
	for msg := ""; !strings.Contains(msg, "RouteConfiguration"); {
		select {
		case msg = <-cp.nacks:
		case <-time.After(time.Minute):
			t.Fatal("no NACK for the bad route configuration")
		}
		if strings.Contains(msg, "RouteConfiguration") && (!strings.Contains(msg, `"local_route"`) || !strings.Contains(msg, "virtual_hosts[0].routes[0].match.safe_regex.regex: value length must be at least 1 runes")) {
			t.Errorf("NACK %q does not name the route configuration and the field", msg)
		}
	}
	if got := bodyVia(p, "http"); got != "green GET / HTTP/1.1" {
		t.Errorf("after the NACK: %q", got)
	}
}
