package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/upstream"
	"github.com/siftmesh/sift/xds"
)

// dynamic holds what arrived over xDS and applies updates: each resource
// type is built and validated completely, then swapped in; an error rejects
// the whole update and changes nothing. Apply calls are serialised by the
// xDS client.
type dynamic struct {
	s  *Server
	dr *bootstrapv3.Bootstrap_DynamicResources

	clusters    map[string]*upstream.Cluster
	clusterPBs  map[string]*clusterv3.Cluster
	listeners   map[string]*listener.Config
	listenerPBs map[string]*listenerv3.Listener
	// assignments are the accepted ClusterLoadAssignments by service name,
	// for EDS clusters that arrive after their endpoints.
	assignments map[string]*endpointv3.ClusterLoadAssignment
}

var _ xds.Handler = (*dynamic)(nil)

func newDynamic(s *Server, dr *bootstrapv3.Bootstrap_DynamicResources) *dynamic {
	return &dynamic{
		s: s, dr: dr,
		clusters: map[string]*upstream.Cluster{}, clusterPBs: map[string]*clusterv3.Cluster{},
		listeners: map[string]*listener.Config{}, listenerPBs: map[string]*listenerv3.Listener{},
		assignments: map[string]*endpointv3.ClusterLoadAssignment{},
	}
}

// Apply implements xds.Handler.
func (d *dynamic) Apply(typeURL string, resources map[string]proto.Message) error {
	switch typeURL {
	case xds.ClusterType:
		return d.applyClusters(resources)
	case xds.EndpointType:
		return d.applyEndpoints(resources)
	case xds.ListenerType:
		return d.applyListeners(resources)
	}
	return fmt.Errorf("resource type %s is not consumed by Sift yet", typeURL)
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (d *dynamic) isStaticCluster(name string) bool {
	return slices.ContainsFunc(d.s.owned, func(c *upstream.Cluster) bool { return c.Name() == name })
}

func (d *dynamic) applyClusters(resources map[string]proto.Message) error {
	next := map[string]*upstream.Cluster{}
	nextPBs := map[string]*clusterv3.Cluster{}
	var built []*upstream.Cluster
	fail := func(err error) error {
		for _, c := range built {
			c.Close()
		}
		return err
	}
	for _, name := range sortedNames(resources) {
		pb := resources[name].(*clusterv3.Cluster)
		if d.isStaticCluster(name) {
			return fail(fmt.Errorf("cluster %q: already defined in static_resources", name))
		}
		nextPBs[name] = pb
		if old := d.clusters[name]; old != nil && proto.Equal(d.clusterPBs[name], pb) {
			next[name] = old // unchanged: keep its endpoints and balancer state
			continue
		}
		if eds := pb.GetEdsClusterConfig(); eds != nil {
			if err := xds.ConfigSourceServes(eds.GetEdsConfig(), d.dr, d.dr.GetCdsConfig()); err != nil {
				return fail(fmt.Errorf("cluster %q: eds_cluster_config.eds_config.%w", name, err))
			}
		}
		c, err := upstream.Build(pb, upstream.Options{Logger: d.s.log})
		if err != nil {
			return fail(err)
		}
		built = append(built, c)
		next[name] = c
		if cla := d.assignments[c.EDSServiceName()]; cla != nil {
			if err := c.UpdateLoadAssignment(cla); err != nil {
				return fail(err)
			}
		}
	}
	all := slices.Clone(d.s.owned)
	for _, name := range sortedNames(next) {
		all = append(all, next[name])
	}
	removed, err := d.s.clusters.Replace(all)
	if err != nil {
		return fail(err)
	}
	// Connections already made to a removed cluster go on; Close stops its
	// background work only.
	for _, c := range removed {
		c.Close()
	}
	d.clusters, d.clusterPBs = next, nextPBs
	return d.subscribeEndpoints()
}

// subscribeEndpoints makes the EDS subscription exactly the service names of
// the EDS clusters, static and dynamic.
func (d *dynamic) subscribeEndpoints() error {
	var names []string
	for _, c := range d.s.clusters.Clusters() {
		if n := c.EDSServiceName(); n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 && !d.s.xds.CanSubscribe(xds.EndpointType) {
		return nil
	}
	return d.s.xds.Subscribe(xds.EndpointType, names)
}

func (d *dynamic) applyEndpoints(resources map[string]proto.Message) error {
	next := map[string]*endpointv3.ClusterLoadAssignment{}
	for _, name := range sortedNames(resources) {
		cla := resources[name].(*endpointv3.ClusterLoadAssignment)
		if err := upstream.CheckLoadAssignment(cla); err != nil {
			return err
		}
		next[name] = cla
	}
	for _, c := range d.s.clusters.Clusters() {
		cla := next[c.EDSServiceName()]
		if cla == nil || d.assignments[c.EDSServiceName()] == cla {
			continue
		}
		if err := c.UpdateLoadAssignment(cla); err != nil {
			return err // checked above: not expected
		}
	}
	d.assignments = next
	return nil
}

func (d *dynamic) applyListeners(resources map[string]proto.Message) error {
	next := map[string]*listener.Config{}
	nextPBs := map[string]*listenerv3.Listener{}
	for _, name := range sortedNames(resources) {
		pb := resources[name].(*listenerv3.Listener)
		if slices.ContainsFunc(d.s.configs, func(c *listener.Config) bool { return c.Name == name }) {
			return fmt.Errorf("listener %q: already defined in static_resources", name)
		}
		nextPBs[name] = pb
		if old := d.listeners[name]; old != nil && proto.Equal(d.listenerPBs[name], pb) {
			next[name] = old // unchanged: its connections stay on their generation
			continue
		}
		cfg, err := d.s.DecodeListener(pb)
		if err != nil {
			return err
		}
		next[name] = cfg
	}
	all := slices.Clone(d.s.configs)
	for _, name := range sortedNames(next) {
		all = append(all, next[name])
	}
	if err := d.s.listeners.Apply(all); err != nil {
		return err
	}
	d.listeners, d.listenerPBs = next, nextPBs
	return nil
}

// dialXDS connects to an xDS server: an envoy_grpc service names a static
// cluster (Envoy requires the xDS cluster to be static), a google_grpc one a
// gRPC target. Connections are plaintext: TLS to the control plane comes with
// the mTLS work.
func (s *Server) dialXDS(svc *corev3.GrpcService) (*grpc.ClientConn, error) {
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	switch t := svc.GetTargetSpecifier().(type) {
	case *corev3.GrpcService_EnvoyGrpc_:
		name := t.EnvoyGrpc.GetClusterName()
		var cluster *upstream.Cluster
		for _, c := range s.owned {
			if c.Name() == name {
				cluster = c
			}
		}
		if cluster == nil {
			return nil, fmt.Errorf("envoy_grpc.cluster_name: %q is not a cluster in static_resources", name)
		}
		return grpc.NewClient("passthrough:///"+name, creds,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				c, err := cluster.Dial(ctx)
				if err != nil {
					return nil, err
				}
				return c, nil
			}))
	case *corev3.GrpcService_GoogleGrpc_:
		if t.GoogleGrpc.GetTargetUri() == "" {
			return nil, errors.New("google_grpc.target_uri: must be set")
		}
		return grpc.NewClient(t.GoogleGrpc.GetTargetUri(), creds)
	}
	return nil, errors.New("envoy_grpc or google_grpc must be set")
}
