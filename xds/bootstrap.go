package xds

import (
	"errors"
	"fmt"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/internal/pbcheck"
)

// Policy lists the dynamic_resources fields Sift implements; the bootstrap
// checks it.
var Policy = pbcheck.Policy{
	"envoy.config.bootstrap.v3.Bootstrap.DynamicResources": pbcheck.Fields("lds_config, cds_config, ads_config"),
	"envoy.config.core.v3.ConfigSource":                    pbcheck.Fields("ads, api_config_source, initial_fetch_timeout, resource_api_version"),
	"envoy.config.core.v3.ApiConfigSource":                 pbcheck.Fields("api_type, transport_api_version, grpc_services, set_node_on_first_message_only"),
	"envoy.config.core.v3.GrpcService":                     pbcheck.Fields("envoy_grpc, google_grpc"),
	"envoy.config.core.v3.GrpcService.EnvoyGrpc":           pbcheck.Fields("cluster_name"),
	"envoy.config.core.v3.GrpcService.GoogleGrpc":          pbcheck.Fields("target_uri").Ignore("stat_prefix", "statistics only"),
}

// Dialer opens a connection to an xDS server named by a GrpcService: an
// envoy_grpc service names a static cluster, a google_grpc one a gRPC target.
type Dialer func(svc *corev3.GrpcService) (*grpc.ClientConn, error)

// defaultInitialFetchTimeout is Envoy's initial_fetch_timeout default.
const defaultInitialFetchTimeout = 15 * time.Second

// Sources turns dynamic_resources into the source of each type and each
// type's initial fetch timeout. Endpoints and routes come from the ADS server
// when there is one, else from the server that serves clusters (listeners
// for routes): eds_config/rds config sources must name one of those.
func Sources(dr *bootstrapv3.Bootstrap_DynamicResources, dial Dialer) (map[string]*Source, map[string]time.Duration, error) {
	sources := map[string]*Source{}
	timeouts := map[string]time.Duration{}
	if dr == nil {
		return sources, timeouts, nil
	}
	var ads *Source
	var made []*Source
	fail := func(err error) (map[string]*Source, map[string]time.Duration, error) {
		for _, s := range made {
			s.Conn.Close()
		}
		return nil, nil, err
	}
	if a := dr.GetAdsConfig(); a != nil {
		src, err := newSource("ads", a, true, dial)
		if err != nil {
			return fail(fmt.Errorf("dynamic_resources.ads_config: %w", err))
		}
		ads = src
		made = append(made, src)
	}
	perType := map[string]*corev3.ApiConfigSource{} // for sharing one connection
	resolve := func(field string, cs *corev3.ConfigSource) (*Source, error) {
		if v := cs.GetResourceApiVersion(); v != corev3.ApiVersion_V3 && v != corev3.ApiVersion_AUTO {
			return nil, fmt.Errorf("%s.resource_api_version: %s (Sift speaks V3)", field, v)
		}
		switch spec := cs.GetConfigSourceSpecifier().(type) {
		case *corev3.ConfigSource_Ads:
			if ads == nil {
				return nil, fmt.Errorf("%s.ads: set, but dynamic_resources.ads_config is not", field)
			}
			return ads, nil
		case *corev3.ConfigSource_ApiConfigSource:
			for name, api := range perType {
				if proto.Equal(api, spec.ApiConfigSource) {
					for _, s := range made {
						if s.Name == name {
							return s, nil
						}
					}
				}
			}
			src, err := newSource(field, spec.ApiConfigSource, false, dial)
			if err != nil {
				return nil, fmt.Errorf("%s.api_config_source: %w", field, err)
			}
			perType[field] = spec.ApiConfigSource
			made = append(made, src)
			return src, nil
		case nil:
			return nil, fmt.Errorf("%s: ads or api_config_source must be set", field)
		default:
			return nil, fmt.Errorf("%s: only ads and api_config_source are supported by Sift", field)
		}
	}
	for _, t := range []struct {
		field   string
		typeURL string
		cs      *corev3.ConfigSource
	}{
		{"dynamic_resources.cds_config", ClusterType, dr.GetCdsConfig()},
		{"dynamic_resources.lds_config", ListenerType, dr.GetLdsConfig()},
	} {
		if t.cs == nil {
			continue
		}
		src, err := resolve(t.field, t.cs)
		if err != nil {
			return fail(err)
		}
		sources[t.typeURL] = src
		if timeouts[t.typeURL], err = pbcheck.Duration(t.cs.GetInitialFetchTimeout(), t.field+".initial_fetch_timeout",
			defaultInitialFetchTimeout, pbcheck.NonNegative); err != nil {
			return fail(err)
		}
	}
	// Named types follow their parents' server; secrets (SDS) come from the
	// ADS server, else the listeners' server, else the clusters'.
	if ads != nil {
		sources[EndpointType], sources[RouteType], sources[SecretType] = ads, ads, ads
	} else {
		if s := sources[ListenerType]; s != nil {
			sources[SecretType] = s
		} else if s := sources[ClusterType]; s != nil {
			sources[SecretType] = s
		}
		if s := sources[ClusterType]; s != nil {
			sources[EndpointType] = s
		}
		if s := sources[ListenerType]; s != nil {
			sources[RouteType] = s
		}
	}
	if ads == nil && sources[ClusterType] == nil && sources[ListenerType] == nil {
		return fail(errors.New("dynamic_resources: set, but neither lds_config, cds_config nor ads_config is"))
	}
	return sources, timeouts, nil
}

func newSource(name string, api *corev3.ApiConfigSource, ads bool, dial Dialer) (*Source, error) {
	src := &Source{Name: name, ADS: ads, NodeOnFirstMessageOnly: api.GetSetNodeOnFirstMessageOnly()}
	switch api.GetApiType() {
	case corev3.ApiConfigSource_GRPC:
	case corev3.ApiConfigSource_DELTA_GRPC:
		src.Delta = true
	default:
		return nil, fmt.Errorf("api_type: %s is not supported by Sift (GRPC or DELTA_GRPC)", api.GetApiType())
	}
	if v := api.GetTransportApiVersion(); v != corev3.ApiVersion_V3 && v != corev3.ApiVersion_AUTO {
		return nil, fmt.Errorf("transport_api_version: %s (Sift speaks V3)", v)
	}
	if n := len(api.GetGrpcServices()); n != 1 {
		return nil, fmt.Errorf("grpc_services: exactly one is required, got %d", n)
	}
	conn, err := dial(api.GetGrpcServices()[0])
	if err != nil {
		return nil, fmt.Errorf("grpc_services[0]: %w", err)
	}
	src.Conn = conn
	return src, nil
}

// ConfigSourceServes reports whether a resource's config source (a cluster's
// eds_config, an HCM's rds.config_source) is one the client takes that type
// from: ADS when the client has it, or the same api_config_source.
func ConfigSourceServes(cs *corev3.ConfigSource, dr *bootstrapv3.Bootstrap_DynamicResources, parent *corev3.ConfigSource) error {
	switch spec := cs.GetConfigSourceSpecifier().(type) {
	case *corev3.ConfigSource_Ads:
		if dr.GetAdsConfig() == nil {
			return errors.New("ads: set, but the bootstrap has no dynamic_resources.ads_config")
		}
		return nil
	case *corev3.ConfigSource_ApiConfigSource:
		if dr.GetAdsConfig() == nil && proto.Equal(spec.ApiConfigSource, parent.GetApiConfigSource()) {
			return nil
		}
		return errors.New("api_config_source: Sift takes this type from the ADS server, or from the same api_config_source as its parent type")
	case *corev3.ConfigSource_Self:
		return nil // the server that sent the parent resource
	}
	return errors.New("only ads, self or api_config_source are supported by Sift")
}
