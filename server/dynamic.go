package server

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters/httplb/route"
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

	// mu guards everything below: Apply calls come serialised from the xDS
	// client, but warming timeouts fire on their own goroutines.
	mu sync.Mutex

	clusters   map[string]*upstream.Cluster
	clusterPBs map[string]*clusterv3.Cluster
	listeners  map[string]*listener.Config
	// pbOf is the resource each dynamic listener config was decoded from.
	pbOf map[*listener.Config]*listenerv3.Listener
	// assignments are the accepted ClusterLoadAssignments by service name,
	// for EDS clusters that arrive after their endpoints.
	assignments map[string]*endpointv3.ClusterLoadAssignment
	// routes are the accepted route tables by RouteConfiguration name.
	routes map[string]*route.Table
	// warming are listeners waiting for their route configurations (Envoy's
	// listener warming); while a listener warms, its previous version, if
	// any, keeps serving.
	warming map[string]*listener.Config
	// warmingTimeout bounds warming; then the listener serves anyway (its
	// HCMs answer 503 until their routes arrive), as Envoy's
	// initial_fetch_timeout ends warming.
	warmingTimeout time.Duration
}

// routeConsumer is a network filter that takes its routes from RDS
// (httplb's HCM).
type routeConsumer interface {
	RDSName() string
	SetRoutes(*route.Table)
}

// routeConsumers returns cfg's filters that take routes from RDS.
func routeConsumers(cfg *listener.Config) []routeConsumer {
	var out []routeConsumer
	chains := cfg.Chains
	if cfg.DefaultChain != nil {
		chains = append(slices.Clip(chains), cfg.DefaultChain)
	}
	for _, ch := range chains {
		if rc, ok := ch.Network.(routeConsumer); ok && rc.RDSName() != "" {
			out = append(out, rc)
		}
	}
	return out
}

var _ xds.Handler = (*dynamic)(nil)

func newDynamic(s *Server, dr *bootstrapv3.Bootstrap_DynamicResources) *dynamic {
	return &dynamic{
		s: s, dr: dr,
		clusters: map[string]*upstream.Cluster{}, clusterPBs: map[string]*clusterv3.Cluster{},
		listeners: map[string]*listener.Config{}, pbOf: map[*listener.Config]*listenerv3.Listener{},
		assignments: map[string]*endpointv3.ClusterLoadAssignment{},
		routes:      map[string]*route.Table{}, warming: map[string]*listener.Config{},
		warmingTimeout: 15 * time.Second,
	}
}

// Apply implements xds.Handler.
func (d *dynamic) Apply(typeURL string, resources map[string]proto.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch typeURL {
	case xds.RouteType:
		return d.applyRoutes(resources)
	case xds.ClusterType:
		return d.applyClusters(resources)
	case xds.EndpointType:
		return d.applyEndpoints(resources)
	case xds.ListenerType:
		return d.applyListeners(resources)
	case xds.SecretType:
		return d.applySecrets(resources)
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
		c, err := upstream.Build(pb, upstream.Options{Logger: d.s.log, Secrets: d.s.secrets})
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
	if err := d.subscribeSecrets(); err != nil {
		return err
	}
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
	pbOf := map[*listener.Config]*listenerv3.Listener{}
	for _, name := range sortedNames(resources) {
		pb := resources[name].(*listenerv3.Listener)
		if slices.ContainsFunc(d.s.configs, func(c *listener.Config) bool { return c.Name == name }) {
			return fmt.Errorf("listener %q: already defined in static_resources", name)
		}
		if old := d.unchanged(name, pb); old != nil {
			next[name], pbOf[old] = old, pb // its connections stay on their generation
			continue
		}
		cfg, err := d.s.DecodeListener(pb)
		if err != nil {
			return err
		}
		next[name], pbOf[cfg] = cfg, pb
	}
	// A listener whose routes have not arrived warms; its previous version,
	// if any, serves meanwhile.
	active := map[string]*listener.Config{}
	warming := map[string]*listener.Config{}
	for name, cfg := range next {
		if d.ready(cfg) || cfg == d.listeners[name] {
			active[name] = cfg
			continue
		}
		warming[name] = cfg
		if old := d.listeners[name]; old != nil {
			active[name] = old
		}
	}
	if err := d.applyActive(active); err != nil {
		return err
	}
	for cfg, pb := range d.pbOf { // the previous versions still serving while the new ones warm
		if active[cfg.Name] == cfg {
			pbOf[cfg] = pb
		}
	}
	d.pbOf = pbOf
	for name, cfg := range warming {
		if d.warming[name] != cfg {
			d.startWarming(name, cfg)
		}
	}
	d.warming = warming
	if err := d.subscribeSecrets(); err != nil {
		return err
	}
	return d.subscribeRoutes()
}

// unchanged returns the warming or active config of name decoded from a
// resource equal to pb, or nil.
func (d *dynamic) unchanged(name string, pb *listenerv3.Listener) *listener.Config {
	for _, cfg := range []*listener.Config{d.warming[name], d.listeners[name]} {
		if cfg != nil && proto.Equal(d.pbOf[cfg], pb) {
			return cfg
		}
	}
	return nil
}

// applyActive puts the static listeners and active in service.
func (d *dynamic) applyActive(active map[string]*listener.Config) error {
	all := slices.Clone(d.s.configs)
	for _, name := range sortedNames(active) {
		all = append(all, active[name])
	}
	if err := d.s.listeners.Apply(all); err != nil {
		return err
	}
	d.listeners = active
	return nil
}

// setRoutes gives cfg's RDS consumers the route tables known now and
// reports whether every one of them has its table.
func (d *dynamic) setRoutes(cfg *listener.Config) bool {
	ready := true
	for _, rc := range routeConsumers(cfg) {
		if t := d.routes[rc.RDSName()]; t != nil {
			rc.SetRoutes(t)
		} else {
			ready = false
		}
	}
	return ready
}

// startWarming ends a listener's warming after warmingTimeout even if its
// routes never come.
func (d *dynamic) startWarming(name string, cfg *listener.Config) {
	d.s.log.Info("listener warming: waiting for its route configurations and secrets", "listener", name, "timeout", d.warmingTimeout)
	time.AfterFunc(d.warmingTimeout, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.warming[name] != cfg {
			return // served, replaced or removed meanwhile
		}
		d.s.log.Warn("listener warming timed out; serving without its routes or secrets", "listener", name)
		active := maps.Clone(d.listeners)
		active[name] = cfg
		if err := d.applyActive(active); err != nil {
			d.s.log.Error("serving warmed listener failed", "listener", name, "err", err)
			return
		}
		delete(d.warming, name)
		if err := d.subscribeRoutes(); err != nil {
			d.s.log.Error("updating the RDS subscription failed", "err", err)
		}
	})
}

// subscribeRoutes makes the RDS subscription exactly the route names the
// static, active and warming listeners use.
func (d *dynamic) subscribeRoutes() error {
	var names []string
	add := func(cfg *listener.Config) {
		for _, rc := range routeConsumers(cfg) {
			if !slices.Contains(names, rc.RDSName()) {
				names = append(names, rc.RDSName())
			}
		}
	}
	for _, cfg := range d.s.configs {
		add(cfg)
	}
	for _, cfg := range d.listeners {
		add(cfg)
	}
	for _, cfg := range d.warming {
		add(cfg)
	}
	if len(names) == 0 && !d.s.xds.CanSubscribe(xds.RouteType) {
		return nil
	}
	return d.s.xds.Subscribe(xds.RouteType, names)
}

// applyRoutes decodes every RouteConfiguration, then swaps the tables into
// the listeners that use them and serves the listeners that were warming
// for them.
func (d *dynamic) applyRoutes(resources map[string]proto.Message) error {
	next := map[string]*route.Table{}
	for _, name := range sortedNames(resources) {
		t, err := route.Decode(resources[name].(*routev3.RouteConfiguration))
		if err != nil {
			return fmt.Errorf("route configuration %q: %w", name, err)
		}
		next[name] = t
	}
	d.routes = next
	for _, cfg := range d.s.configs {
		d.setRoutes(cfg)
	}
	for _, cfg := range d.listeners {
		d.setRoutes(cfg)
	}
	promoted, err := d.promoteReady()
	if err != nil || !promoted {
		return err
	}
	// The versions they replace may have used other route configurations.
	return d.subscribeRoutes()
}

// promoteReady puts in service the warming listeners whose routes and
// secrets have all arrived. It reports whether any was.
func (d *dynamic) promoteReady() (bool, error) {
	promoted := false
	active := maps.Clone(d.listeners)
	for name, cfg := range d.warming {
		if d.ready(cfg) {
			active[name] = cfg
			promoted = true
		}
	}
	if !promoted {
		return false, nil
	}
	if err := d.applyActive(active); err != nil {
		return false, err
	}
	for name, cfg := range d.warming {
		if active[name] == cfg {
			delete(d.warming, name)
		}
	}
	return true, nil
}

// defaultXDSPingTimeout bounds a keepalive ping's answer when the xDS
// cluster's connection_keepalive sets no timeout.
const defaultXDSPingTimeout = 20 * time.Second

// dialXDS connects to an xDS server: an envoy_grpc service names a static
// cluster (Envoy requires the xDS cluster to be static), a google_grpc one a
// gRPC target. When the cluster has a TLS transport_socket, the cluster's
// Dial makes the TLS connection (offering ALPN "h2", which gRPC servers
// require) and gRPC runs over it; keys travel on this connection.
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
		opts := []grpc.DialOption{creds, grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			c, err := cluster.Dial(ctx, "h2")
			if err != nil {
				return nil, err
			}
			return c, nil
		})}
		// The cluster's http2_protocol_options.connection_keepalive pings the
		// control plane, as Envoy does: a connection that a network partition
		// left silent is noticed and replaced instead of waiting for TCP to
		// give up (gRPC pings at most every 10 s; the server must permit it).
		if ho := cluster.HTTPOptions(); ho.H2PingInterval > 0 {
			timeout := ho.H2PingTimeout
			if timeout == 0 {
				timeout = defaultXDSPingTimeout
			}
			opts = append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: ho.H2PingInterval, Timeout: timeout, PermitWithoutStream: true}))
		}
		return grpc.NewClient("passthrough:///"+name, opts...)
	case *corev3.GrpcService_GoogleGrpc_:
		if t.GoogleGrpc.GetTargetUri() == "" {
			return nil, errors.New("google_grpc.target_uri: must be set")
		}
		return grpc.NewClient(t.GoogleGrpc.GetTargetUri(), creds)
	}
	return nil, errors.New("envoy_grpc or google_grpc must be set")
}
