// Package controlplane turns a mesh (package mesh) into per-node xDS
// snapshots for go-control-plane's snapshot cache and serves them: the
// outbound and inbound listeners of each workload's proxy, a cluster and a
// ClusterLoadAssignment per service port, the inbound clusters, and — with
// the HTTP connection manager on — route configurations.
//
// Resources are standard Envoy v3; the only Sift-specific typed config is
// the detect listener filter (sift.filters.listener.detect.v1.Detect).
package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	netrbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	httpupgradev1 "github.com/siftmesh/sift/api/sift/extensions/upstreams/http_upgrade/v1"
	opaqueupstreamv1 "github.com/siftmesh/sift/api/sift/extensions/upstreams/opaque_transport/v1"
	detectv1 "github.com/siftmesh/sift/api/sift/filters/listener/detect/v1"
	opaqueinboundv1 "github.com/siftmesh/sift/api/sift/filters/network/opaque_transport/v1"
	"github.com/siftmesh/sift/internal/envoynames"
	"github.com/siftmesh/sift/mesh"
)

// Resource names.
const (
	OutboundListenerName = "outbound"
	InboundListenerName  = "inbound"
	// detectFilterName names the detect listener filter in listener_filters.
	detectFilterName = "sift.filters.listener.detect"
)

// Options shape the generated resources. DefaultOptions gives the mesh
// topology of DESIGN.md.
type Options struct {
	// OutboundAddress is where the outbound listener binds (127.0.0.1:4140).
	OutboundAddress netip.AddrPort
	// InboundAddress is where the inbound listener binds (0.0.0.0:4143).
	InboundAddress netip.AddrPort
	// ConnectTimeout of every cluster (Envoy's connect_timeout).
	ConnectTimeout time.Duration
	// HTTPConnectionManager serves HTTP chains with
	// envoy.filters.network.http_connection_manager and RDS instead of
	// tcp_proxy (see httpFilter).
	HTTPConnectionManager bool
	// Security, when set, supplies mutual TLS; nil means plaintext.
	Security Security
	// WithheldEndpoints are the workloads (keys) left out of every
	// service's endpoints. The Controller fills it with the meshed
	// workloads whose proxy has not acknowledged its inbound listener yet
	// (endpointgate.go); nil: none.
	WithheldEndpoints map[string]bool
}

// Security is the seam for mutual TLS between proxies (its own issue: the
// CA, SPIFFE identities, SDS; ca.Security implements it). Its secrets are
// served over SDS in every snapshot; its sockets are attached to the
// generated chains and clusters when the mesh turns mTLS on
// (mesh.Mesh.MTLS). Implementations must be deterministic (same mesh, same
// output): snapshot versions are content hashes.
type Security interface {
	// ClusterTransportSocket secures connections from a proxy to the
	// endpoints of s, offering the ALPN protocols alpn (empty: none
	// configured, so that each HTTP connection pool offers its own protocol
	// and the client's protocol is kept between proxies); nil: plaintext.
	ClusterTransportSocket(s *mesh.Service, alpn ...string) *corev3.TransportSocket
	// InboundTransportSocket secures the connections w's proxy accepts
	// from other proxies, selecting among the ALPN protocols alpn (empty:
	// h2 and http/1.1); nil: plaintext.
	InboundTransportSocket(w *mesh.Workload, alpn ...string) *corev3.TransportSocket
	// Secrets returns the SDS secrets the sockets above name for w.
	Secrets(w *mesh.Workload) []*tlsv3.Secret
}

// DefaultOptions returns the defaults: outbound 127.0.0.1:4140, inbound
// 0.0.0.0:4143, 1s connect timeout, tcp_proxy for HTTP, plaintext.
func DefaultOptions() Options {
	return Options{
		OutboundAddress: netip.MustParseAddrPort("127.0.0.1:4140"),
		InboundAddress:  netip.MustParseAddrPort("0.0.0.0:4143"),
		ConnectTimeout:  time.Second,
		// DESIGN.md: detected HTTP gets the connection manager (routes over
		// RDS, request-level balancing).
		HTTPConnectionManager: true,
	}
}

// Resources is one proxy's configuration. All slices are sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	Endpoints []*endpointv3.ClusterLoadAssignment
	Routes    []*routev3.RouteConfiguration
	Secrets   []*tlsv3.Secret
}

// OutboundClusterName names the cluster of port of the service with host
// name host, in Istio's form so that operators recognise it:
// "outbound|80||web.shop.svc.cluster.local".
func OutboundClusterName(host string, port uint16) string {
	return "outbound|" + strconv.Itoa(int(port)) + "||" + host
}

// InboundClusterName names the cluster of a workload's local port:
// "inbound|8080||".
func InboundClusterName(port uint16) string {
	return "inbound|" + strconv.Itoa(int(port)) + "||"
}

// Generate builds the resources of w's proxy from m (complete). It does not
// modify m and is safe to call concurrently.
func Generate(m *mesh.Mesh, w *mesh.Workload, opts Options) *Resources {
	g := &generator{m: m, w: w, opts: opts, r: &Resources{}}
	g.outboundClusters()
	g.outboundListener()
	g.inbound()
	if opts.Security != nil {
		g.r.Secrets = opts.Security.Secrets(w)
	}
	byName := func(a, b interface{ GetName() string }) int { return strings.Compare(a.GetName(), b.GetName()) }
	slices.SortFunc(g.r.Listeners, func(a, b *listenerv3.Listener) int { return byName(a, b) })
	slices.SortFunc(g.r.Clusters, func(a, b *clusterv3.Cluster) int { return byName(a, b) })
	slices.SortFunc(g.r.Routes, func(a, b *routev3.RouteConfiguration) int { return byName(a, b) })
	slices.SortFunc(g.r.Secrets, func(a, b *tlsv3.Secret) int { return byName(a, b) })
	slices.SortFunc(g.r.Endpoints, func(a, b *endpointv3.ClusterLoadAssignment) int {
		return strings.Compare(a.GetClusterName(), b.GetClusterName())
	})
	return g.r
}

type generator struct {
	m    *mesh.Mesh
	w    *mesh.Workload
	opts Options
	r    *Resources
}

// outboundClusters: one EDS cluster and one ClusterLoadAssignment per service
// port, for every service (the proxy may be asked for any of them).
func (g *generator) outboundClusters() {
	for _, s := range g.m.Services() {
		g.serviceClusters(s, g.published(g.m.Endpoints(s)))
	}
}

// serviceClusters adds the outbound clusters and load assignments of s,
// whose published endpoints are eps (Mesh.Endpoints less the withheld). They depend on s, eps, the
// mesh's treatment of s's ports and mTLS, never on the workload.
func (g *generator) serviceClusters(s *mesh.Service, eps []*mesh.Workload) {
	for _, p := range s.Ports {
		name := OutboundClusterName(s.Hostname, p.Port)
		c := &clusterv3.Cluster{
			Name:                 name,
			AltStatName:          name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
				EdsConfig:   adsConfigSource(),
				ServiceName: name,
			},
			ConnectTimeout: durationpb.New(g.opts.ConnectTimeout),
			// Least-request with two choices for opaque traffic: the
			// standard policy closest to Linkerd's.
			LbPolicy: clusterv3.Cluster_LEAST_REQUEST,
		}
		if g.opts.HTTPConnectionManager && g.m.ServicePortTreatment(s, p) != mesh.Opaque && g.m.ServicePortTreatment(s, p) != mesh.TLS {
			c.TypedExtensionProtocolOptions = upstreamHTTPOptions()
			// The mesh default for HTTP: peak-EWMA with two choices.
			c.LbPolicy, c.LoadBalancingPolicy = clusterv3.Cluster_ROUND_ROBIN, peakEWMAPolicy()
		}
		if g.mtls() {
			c.TransportSocket = g.opts.Security.ClusterTransportSocket(s)
			if c.TypedExtensionProtocolOptions != nil {
				// Between proxies HTTP/1 rides HTTP/2: the endpoints
				// are peer proxies' inbound ports, which restore it.
				c.TypedExtensionProtocolOptions[httpUpgradeOptionsName] = mustAny(&httpupgradev1.HttpUpgrade{})
			}
		}
		g.r.Clusters = append(g.r.Clusters, c)
		g.r.Endpoints = append(g.r.Endpoints, loadAssignment(name, targets(eps, p)))
		if g.mtls() {
			g.opaqueCluster(s, p, eps)
		}
	}
}

// mtls reports whether proxies talk mutual TLS (the mesh turns it on and a
// Security supplies it).
func (g *generator) mtls() bool { return g.opts.Security != nil && g.m.MTLS }

// loadAssignment lists the addresses of each endpoint at its port.
func loadAssignment(cluster string, eps []endpoint) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: cluster}
	var lbs []*endpointv3.LbEndpoint
	for _, e := range eps {
		w := e.w
		for _, a := range w.Addresses {
			lbs = append(lbs, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address:  socketAddress(a, e.port),
					Hostname: w.Name + "." + w.Namespace,
				}},
			})
		}
	}
	if len(lbs) > 0 {
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{LbEndpoints: lbs}}
	}
	return cla
}

// OpaqueClusterName names the cluster that carries opaque connections to
// port of the service with host name host over the opaque transport:
// "outbound|5432|opaque|pg.shop.svc.cluster.local".
func OpaqueClusterName(host string, port uint16) string {
	return "outbound|" + strconv.Itoa(int(port)) + "|opaque|" + host
}

// opaqueCluster: with mTLS, opaque (and application TLS, and undetected)
// connections to a service port go to the endpoints' inbound port over mTLS
// with ALPN sift.opaque/1, starting with the opaque-transport header that
// names the target port (docs/mesh-transport.md). Balanced by peak-EWMA over
// connect times, as Linkerd balances opaque connections.
func (g *generator) opaqueCluster(s *mesh.Service, p mesh.ServicePort, eps []*mesh.Workload) {
	name := OpaqueClusterName(s.Hostname, p.Port)
	target, eps := opaqueTargets(eps, p)
	g.r.Clusters = append(g.r.Clusters, &clusterv3.Cluster{
		Name:                 name,
		AltStatName:          name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource(), ServiceName: name},
		ConnectTimeout:       durationpb.New(g.opts.ConnectTimeout),
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		LoadBalancingPolicy:  peakEWMAPolicy(),
		TransportSocket:      g.opts.Security.ClusterTransportSocket(s, OpaqueTransportALPN),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			opaqueTransportOptionsName: mustAny(&opaqueupstreamv1.OpaqueTransport{Port: uint32(target)}),
		},
	})
	g.r.Endpoints = append(g.r.Endpoints, loadAssignment(name, atPort(eps, g.opts.InboundAddress.Port())))
}

// OpaqueTransportALPN announces the opaque transport on mTLS between proxies
// (filters/opaquetransport/header.ALPN).
const OpaqueTransportALPN = "sift.opaque/1"

// httpUpgradeOptionsName is the typed_extension_protocol_options key that
// makes an outbound HTTP cluster upgrade HTTP/1 to HTTP/2 between proxies
// (l5d-orig-proto; docs/mesh-transport.md).
var httpUpgradeOptionsName = string(proto.MessageName(&httpupgradev1.HttpUpgrade{}))

// opaqueTransportOptionsName is the cluster's typed_extension_protocol_options key.
var opaqueTransportOptionsName = string(proto.MessageName(&opaqueupstreamv1.OpaqueTransport{}))

// chainMatch is the filter_chain_match of one chain, built from what the
// chain depends on.
func chainMatch(ip netip.Addr, port uint16, transport string, appProtocols ...string) *listenerv3.FilterChainMatch {
	fcm := &listenerv3.FilterChainMatch{
		DestinationPort:      wrapperspb.UInt32(uint32(port)),
		TransportProtocol:    transport,
		ApplicationProtocols: appProtocols,
	}
	if ip.IsValid() {
		fcm.PrefixRanges = []*corev3.CidrRange{{AddressPrefix: ip.String(), PrefixLen: wrapperspb.UInt32(uint32(ip.BitLen()))}}
	}
	return fcm
}

// httpProtocols are what detection reports for plaintext HTTP.
var httpProtocols = []string{envoynames.ProtocolHTTP11, envoynames.ProtocolHTTP10, envoynames.ProtocolH2C}

// outboundListener: the listener the application's connections are
// redirected to. Each (service cluster IP, port) gets chains by treatment:
//
//   - opaque and TLS: one chain on the destination IP and port, so no chain
//     at that destination depends on a detected value and the listener skips
//     detection (DESIGN.md: "an opaque port is simply a chain matched on
//     destination_port");
//   - declared HTTP: one chain serving HTTP (httpFilter), no detection;
//   - unknown: a chain for detected HTTP (http/1.1, http/1.0, h2c) serving
//     HTTP, one for TLS, and one for everything else (raw_buffer that no
//     sniffer recognised, or a silent client after the timeout), the last
//     two tcp_proxy.
//
// Outbound skip ports of the workload get no chain: their traffic is not
// redirected to the proxy at all.
func (g *generator) outboundListener() {
	skip := g.m.SkipOutbound(g.w)
	var chains []*listenerv3.FilterChain
	for _, s := range g.m.Services() {
		for _, p := range s.Ports {
			if skip.Contains(p.Port) {
				continue
			}
			chains = append(chains, g.portChains(s, p)...)
		}
	}
	if len(chains) == 0 {
		return // a listener needs a chain; no service is reachable through the proxy
	}
	g.r.Listeners = append(g.r.Listeners, g.outboundListenerOf(chains))
}

// outboundListenerOf is the outbound listener with chains.
func (g *generator) outboundListenerOf(chains []*listenerv3.FilterChain) *listenerv3.Listener {
	return g.listener(OutboundListenerName, g.opts.OutboundAddress, corev3.TrafficDirection_OUTBOUND, chains)
}

// portChains returns the outbound chains of port p of s (adding their
// routes to g.r): they depend on s, p, the mesh's treatment of the port
// and mTLS, never on the workload.
func (g *generator) portChains(s *mesh.Service, p mesh.ServicePort) []*listenerv3.FilterChain {
	var chains []*listenerv3.FilterChain
	cluster := OutboundClusterName(s.Hostname, p.Port)
	opaque := cluster // where opaque bytes go: the same endpoints, or their inbound port over mTLS
	if g.mtls() {
		opaque = OpaqueClusterName(s.Hostname, p.Port)
	}
	t := g.m.ServicePortTreatment(s, p)
	for _, ip := range s.ClusterIPs {
		base := fmt.Sprintf("%s:%d|%s", s.Hostname, p.Port, ip)
		switch t {
		case mesh.Opaque, mesh.TLS:
			chains = append(chains, chain(t.String()+"|"+base, chainMatch(ip, p.Port, ""), tcpProxy(t.String(), opaque)))
		case mesh.HTTP:
			chains = append(chains, g.httpChain("http|"+base, chainMatch(ip, p.Port, ""), cluster, p.Protocol))
		default:
			chains = append(chains,
				g.httpChain("http|"+base, chainMatch(ip, p.Port, "", httpProtocols...), cluster, mesh.ProtocolUnknown),
				chain("tls|"+base, chainMatch(ip, p.Port, envoynames.TransportTLS), tcpProxy("tls", opaque)),
				chain("opaque|"+base, chainMatch(ip, p.Port, ""), tcpProxy("opaque", opaque)))
		}
	}
	return chains
}

// inbound: the listener for connections from other proxies (redirected to
// it, original destination restored) and a STATIC cluster per local port.
func (g *generator) inbound() {
	var chains []*listenerv3.FilterChain
	var ports []uint32 // the local ports the opaque transport may reach
	var authz []*opaqueinboundv1.Inbound_PortAuthorization
	for _, p := range g.m.InboundPorts(g.w) {
		cluster := InboundClusterName(p.Port)
		g.r.Clusters = append(g.r.Clusters, &clusterv3.Cluster{
			// The application's HTTP protocol: the declared one, or — on a
			// port of unknown protocol — the one the request arrived in
			// (outbound proxies keep the client's protocol between proxies).
			TypedExtensionProtocolOptions: g.inboundHTTPOptions(p),
			Name:                          cluster,
			ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout:                durationpb.New(g.opts.ConnectTimeout),
			LoadAssignment: &endpointv3.ClusterLoadAssignment{
				ClusterName: cluster,
				Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: socketAddress(netip.MustParseAddr("127.0.0.1"), p.Port),
					}},
				}}}},
			},
		})
		ports = append(ports, uint32(p.Port))
		base := fmt.Sprintf("inbound:%d", p.Port)
		if g.mtls() {
			// Meshed clients send HTTP here over mTLS (HTTP/2 when ALPN
			// agrees); everything else arrives through the opaque transport
			// below. Plaintext finds no chain — refused — unless the port
			// declares it accepts plaintext from unmeshed clients.
			exact, prefixes := g.principals(p.AuthorizedClients)
			if p.Treatment == mesh.HTTP || p.Treatment == mesh.Detect {
				c := g.httpChain("http|"+base, chainMatch(netip.Addr{}, p.Port, envoynames.TransportTLS), cluster, p.Protocol)
				c.TransportSocket = g.opts.Security.InboundTransportSocket(g.w)
				if len(p.AuthorizedClients) > 0 {
					c.Filters = append([]*listenerv3.Filter{rbacFilter(base, exact, prefixes)}, c.Filters...)
				}
				chains = append(chains, c)
			}
			if len(p.AuthorizedClients) > 0 {
				authz = append(authz, &opaqueinboundv1.Inbound_PortAuthorization{Port: uint32(p.Port), Principals: exact, PrincipalPrefixes: prefixes})
			}
			if !p.Plaintext {
				continue
			}
			base = "plaintext|" + base
		}
		switch p.Treatment {
		case mesh.Opaque, mesh.TLS:
			chains = append(chains, chain(p.Treatment.String()+"|"+base, chainMatch(netip.Addr{}, p.Port, ""), tcpProxy(p.Treatment.String(), cluster)))
		case mesh.HTTP:
			chains = append(chains, g.httpChain("http|"+base, chainMatch(netip.Addr{}, p.Port, ""), cluster, p.Protocol))
		default:
			chains = append(chains,
				g.httpChain("http|"+base, chainMatch(netip.Addr{}, p.Port, "", httpProtocols...), cluster, mesh.ProtocolUnknown),
				chain("opaque|"+base, chainMatch(netip.Addr{}, p.Port, ""), tcpProxy("opaque", cluster)))
		}
	}
	if len(chains) == 0 && len(ports) == 0 {
		return
	}
	if g.mtls() {
		// The opaque transport: connections addressed to the inbound port
		// itself, mTLS with ALPN sift.opaque/1, header first.
		in := g.opts.InboundAddress.Port()
		c := chain(fmt.Sprintf("opaque-transport|inbound:%d", in), chainMatch(netip.Addr{}, in, envoynames.TransportTLS, OpaqueTransportALPN),
			&listenerv3.Filter{Name: "sift.filters.network.opaque_transport", ConfigType: &listenerv3.Filter_TypedConfig{
				TypedConfig: mustAny(&opaqueinboundv1.Inbound{StatPrefix: "inbound", AllowedPorts: ports,
					ConnectTimeout: durationpb.New(g.opts.ConnectTimeout), PortAuthorizations: authz})}})
		c.TransportSocket = g.opts.Security.InboundTransportSocket(g.w, OpaqueTransportALPN)
		chains = append(chains, c)
	}
	g.r.Listeners = append(g.r.Listeners, g.listener(InboundListenerName, g.opts.InboundAddress, corev3.TrafficDirection_INBOUND, chains))
}

// principals renders a port's authorized clients as exact SPIFFE IDs and
// ID prefixes of the mesh's trust domain.
func (g *generator) principals(clients []mesh.ClientMatch) (exact, prefixes []string) {
	for _, c := range clients {
		e, p := c.Principals(g.m.TrustDomain)
		if e != "" {
			exact = append(exact, e)
		}
		if p != "" {
			prefixes = append(prefixes, p)
		}
	}
	return exact, prefixes
}

// rbacFilter is Envoy's network RBAC allowing only the given client
// identities (authenticated.principal_name), for an inbound mTLS chain.
func rbacFilter(statPrefix string, exact, prefixes []string) *listenerv3.Filter {
	var ids []*rbacv3.Principal
	principal := func(m *matcherv3.StringMatcher) *rbacv3.Principal {
		return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
	}
	for _, e := range exact {
		ids = append(ids, principal(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: e}}))
	}
	for _, p := range prefixes {
		ids = append(ids, principal(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: p}}))
	}
	cfg := &netrbacv3.RBAC{StatPrefix: statPrefix, Rules: &rbacv3.RBAC{
		Action: rbacv3.RBAC_ALLOW,
		Policies: map[string]*rbacv3.Policy{"authorized-clients": {
			Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
			Principals:  ids,
		}},
	}}
	return &listenerv3.Filter{Name: "envoy.filters.network.rbac", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(cfg)}}
}

// inboundHTTPOptions are the protocol options of the inbound cluster of
// port p when HTTP chains reach it through the connection manager: HTTP/2 to
// a port declared HTTP/2 or gRPC, the downstream's protocol to a port of
// unknown protocol (so that an h2c or gRPC client reaches an HTTP/2-only
// application in HTTP/2), and none (HTTP/1.1) otherwise.
func (g *generator) inboundHTTPOptions(p mesh.InboundPort) map[string]*anypb.Any {
	if !g.opts.HTTPConnectionManager {
		return nil
	}
	switch {
	case p.Treatment == mesh.Detect:
		return upstreamHTTPOptions()
	case p.Treatment == mesh.HTTP && (p.Protocol == mesh.ProtocolHTTP2 || p.Protocol == mesh.ProtocolGRPC):
		return upstreamH2Options()
	}
	return nil
}

// listener assembles a listener with use_original_dst semantics: the
// original_dst listener filter restores the redirected destination, then
// detect sifts the connection (skipped by the listener wherever no chain
// depends on what it finds). Listener filters may take the detection timeout
// plus a second before the connection proceeds with what is known.
func (g *generator) listener(name string, addr netip.AddrPort, dir corev3.TrafficDirection, chains []*listenerv3.FilterChain) *listenerv3.Listener {
	timeout := g.m.Detection()
	return &listenerv3.Listener{
		Name:             name,
		Address:          socketAddress(addr.Addr(), addr.Port()),
		StatPrefix:       name,
		TrafficDirection: dir,
		UseOriginalDst:   wrapperspb.Bool(true),
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: wellknown.OriginalDestination, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldstv3.OriginalDst{})}},
			{Name: detectFilterName, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(g.detectConfig(timeout))}},
		},
		ListenerFiltersTimeout:           durationpb.New(timeout + time.Second),
		ContinueOnListenerFiltersTimeout: true,
		FilterChains:                     chains,
	}
}

// detectConfig is the detect filter's config: the mesh's timeout, and its
// server-first grace period when it sets one.
func (g *generator) detectConfig(timeout time.Duration) *detectv1.Detect {
	d := &detectv1.Detect{Timeout: durationpb.New(timeout)}
	if gp := g.m.DetectGracePeriod; gp != nil {
		d.ServerFirstGracePeriod = durationpb.New(*gp)
	}
	return d
}

func chain(name string, m *listenerv3.FilterChainMatch, f *listenerv3.Filter) *listenerv3.FilterChain {
	return &listenerv3.FilterChain{Name: name, FilterChainMatch: m, Filters: []*listenerv3.Filter{f}}
}

func socketAddress(ip netip.Addr, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip.String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func adsConfigSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages linked into the binary: cannot fail
	}
	return a
}

// Snapshot returns r as a go-control-plane snapshot whose version is a hash
// of its contents: an unchanged configuration has an unchanged version, and
// the cache pushes nothing.
func (r *Resources) Snapshot() (*cache.Snapshot, error) {
	res := map[resource.Type][]types.Resource{
		resource.ListenerType: toResources(r.Listeners),
		resource.ClusterType:  toResources(r.Clusters),
		resource.EndpointType: toResources(r.Endpoints),
		resource.RouteType:    toResources(r.Routes),
		resource.SecretType:   toResources(r.Secrets),
	}
	return cache.NewSnapshot(r.Version(), res)
}

// Version is the first 16 hex digits of a SHA-256 over the resources'
// deterministic encodings, in type then name order.
func (r *Resources) Version() string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	add := func(typ string, msgs []proto.Message) {
		for _, m := range msgs {
			b, err := opts.Marshal(m)
			if err != nil {
				panic(err) // generated messages always marshal
			}
			fmt.Fprintf(h, "%s %d\n", typ, len(b))
			h.Write(b)
		}
	}
	add(resource.ListenerType, toMessages(r.Listeners))
	add(resource.ClusterType, toMessages(r.Clusters))
	add(resource.EndpointType, toMessages(r.Endpoints))
	add(resource.RouteType, toMessages(r.Routes))
	add(resource.SecretType, toMessages(r.Secrets))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

func toResources[T types.Resource](in []T) []types.Resource {
	out := make([]types.Resource, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}

func toMessages[T proto.Message](in []T) []proto.Message {
	out := make([]proto.Message, len(in))
	for i, r := range in {
		out[i] = r
	}
	return out
}
