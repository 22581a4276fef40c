package server

import (
	"time"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/siftmesh/sift/admin"
	"github.com/siftmesh/sift/xds"
)

// ConfigDump implements admin.Source: Envoy's /config_dump — the bootstrap,
// then listeners, clusters and endpoints, static and dynamic, with the
// versions that were accepted — as JSON with the proto field names, as
// Envoy prints it, with sensitive fields (private keys and the like)
// redacted.
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

	if err := add(&adminv3.BootstrapConfigDump{Bootstrap: s.bootstrap, LastUpdated: built}); err != nil {
		return nil, err
	}

	clusters := &adminv3.ClustersConfigDump{}
	for _, pb := range s.bootstrap.GetStaticResources().GetClusters() {
		a, err := anypb.New(pb)
		if err != nil {
			return nil, err
		}
		clusters.StaticClusters = append(clusters.StaticClusters, &adminv3.ClustersConfigDump_StaticCluster{Cluster: a, LastUpdated: built})
	}
	listeners := &adminv3.ListenersConfigDump{}
	for _, pb := range s.bootstrap.GetStaticResources().GetListeners() {
		a, err := anypb.New(pb)
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
			a, err := anypb.New(r.Msg)
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
			a, err := anypb.New(r.Msg)
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
			a, err := anypb.New(r.Msg)
			if err != nil {
				return nil, err
			}
			endpoints.DynamicEndpointConfigs = append(endpoints.DynamicEndpointConfigs, &adminv3.EndpointsConfigDump_DynamicEndpointConfig{
				VersionInfo: r.Version, EndpointConfig: a, LastUpdated: stamp(r.LastUpdated)})
		}
	}
	for _, m := range []proto.Message{clusters, listeners, endpoints} {
		if err := add(m); err != nil {
			return nil, err
		}
	}
	// The dump holds copies (Anys): redacting them leaves the configuration alone.
	if err := admin.Redact(dump); err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{UseProtoNames: true, Multiline: true, Indent: "  "}.Marshal(dump)
}

func stamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
