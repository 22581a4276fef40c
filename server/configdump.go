package server

import (
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/xds"
)

// ConfigDump implements admin.Source: Envoy's /config_dump — the bootstrap,
// then listeners, clusters and endpoints, static and dynamic, with the
// versions that were accepted — as JSON with the proto field names, as
// Envoy prints it.
func (s *Server) ConfigDump() ([]byte, error) {
	dump := &adminv3.ConfigDump{}
	add := func(m proto.Message) error {
		a, err := anypb.New(m)
		if err != nil {
			return err
		}
		dump.Configs = append(dump.Configs, a)
		return nil
	}
	built := timestamppb.New(s.started)

	// Private keys and ticket keys are "[redacted]", as Envoy prints them.
	boot := mtls.Redact(s.bootstrap).(*bootstrapv3.Bootstrap)
	if err := add(&adminv3.BootstrapConfigDump{Bootstrap: boot, LastUpdated: built}); err != nil {
		return nil, err
	}

	clusters := &adminv3.ClustersConfigDump{}
	for _, pb := range s.bootstrap.GetStaticResources().GetClusters() {
		a, err := anypb.New(mtls.Redact(pb))
		if err != nil {
			return nil, err
		}
		clusters.StaticClusters = append(clusters.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: a, LastUpdated: built})
	}
	listeners := &adminv3.ListenersConfigDump{}
	for _, pb := range s.bootstrap.GetStaticResources().GetListeners() {
		a, err := anypb.New(mtls.Redact(pb))
		if err != nil {
			return nil, err
		}
		listeners.StaticListeners = append(listeners.StaticListeners, &adminv3.ListenersConfigDump_StaticListener{Listener: a, LastUpdated: built})
	}
	endpoints := &adminv3.EndpointsConfigDump{}

	if s.xds != nil {
		version, res := s.xds.Accepted(xds.ClusterType)
		clusters.VersionInfo = version
		for _, name := range sortedNames(res) {
			r := res[name]
			a, err := anypb.New(mtls.Redact(r.Msg))
			if err != nil {
				return nil, err
			}
			clusters.DynamicActiveClusters = append(clusters.DynamicActiveClusters, &adminv3.ClustersConfigDump_DynamicCluster{
				VersionInfo: r.Version, Cluster: a, LastUpdated: stamp(r.LastUpdated)})
		}
		version, res = s.xds.Accepted(xds.ListenerType)
		listeners.VersionInfo = version
		for _, name := range sortedNames(res) {
			r := res[name]
			a, err := anypb.New(mtls.Redact(r.Msg))
			if err != nil {
				return nil, err
			}
			listeners.DynamicListeners = append(listeners.DynamicListeners, &adminv3.ListenersConfigDump_DynamicListener{
				Name: name,
				ActiveState: &adminv3.ListenersConfigDump_DynamicListenerState{
					VersionInfo: r.Version, Listener: a, LastUpdated: stamp(r.LastUpdated)},
			})
		}
		_, res = s.xds.Accepted(xds.EndpointType)
		for _, name := range sortedNames(res) {
			r := res[name]
			a, err := anypb.New(mtls.Redact(r.Msg))
			if err != nil {
				return nil, err
			}
			endpoints.DynamicEndpointConfigs = append(endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: r.Version, EndpointConfig: a, LastUpdated: stamp(r.LastUpdated)})
		}
	}
	secrets := &adminv3.SecretsConfigDump{}
	for _, pb := range s.bootstrap.GetStaticResources().GetSecrets() {
		a, err := anypb.New(mtls.Redact(pb))
		if err != nil {
			return nil, err
		}
		secrets.StaticSecrets = append(secrets.StaticSecrets, &adminv3.SecretsConfigDump_StaticSecret{
			Name: pb.GetName(), Secret: a, LastUpdated: built})
	}
	if s.xds != nil {
		_, res := s.xds.Accepted(xds.SecretType)
		for _, name := range sortedNames(res) {
			r := res[name]
			a, err := anypb.New(mtls.Redact(r.Msg))
			if err != nil {
				return nil, err
			}
			secrets.DynamicActiveSecrets = append(secrets.DynamicActiveSecrets, &adminv3.SecretsConfigDump_DynamicSecret{
				Name: name, VersionInfo: r.Version, Secret: a, LastUpdated: stamp(r.LastUpdated)})
		}
	}
	for _, m := range []proto.Message{clusters, listeners, endpoints, secrets} {
		if err := add(m); err != nil {
			return nil, err
		}
	}
	return protojson.MarshalOptions{UseProtoNames: true, Multiline: true, Indent: "  "}.Marshal(dump)
}

func stamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
