package ca

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// ControlPlaneCluster names the bootstrap's cluster of sift-control.
const ControlPlaneCluster = "sift-control"

// DefaultServerName is the name sift-control's xDS server certificate
// carries and proxies check by default.
const DefaultServerName = "sift-control"

// BootstrapOptions shape a proxy bootstrap (Bootstrap).
type BootstrapOptions struct {
	// NodeID is the proxy's node id (a workload's node_id). Required.
	NodeID string
	// Cluster is node.cluster; "" means "sift".
	Cluster string
	// XDSAddress is sift-control's xDS address, host:port (an IP makes a
	// STATIC cluster, a name a STRICT_DNS one). Required.
	XDSAddress string
	// Plaintext connects without TLS (development only: the token and the
	// keys then travel in clear).
	Plaintext bool
	// ServerName is sent as SNI and must be a DNS SAN of sift-control's
	// certificate (its --xds-tls-names); "" means DefaultServerName.
	ServerName string
	// TrustedCAFile, when set, is where the proxy reads the trust bundle
	// (trusted_ca.filename; the caller writes BundlePEM there); "" embeds
	// the bundle (trusted_ca.inline_string).
	TrustedCAFile string
	// AdminAddress, when set, is the admin listener (host:port).
	AdminAddress string
}

// Bootstrap returns an Envoy v3 bootstrap for a proxy of the mesh: its node
// id and node token (node.metadata, NodeTokenMetadataKey), ADS to
// sift-control for listeners and clusters (secrets follow over the same
// stream), and the control plane's cluster over HTTP/2 with, unless
// Plaintext, an UpstreamTlsContext that trusts the CA's bundle and accepts
// only a certificate with the server name as DNS SAN — a workload's
// certificate (URI SAN only) cannot pass for sift-control.
//
// The result holds the node token: write it where only the proxy reads it.
func (c *CA) Bootstrap(o BootstrapOptions) (*bootstrapv3.Bootstrap, error) {
	if o.NodeID == "" {
		return nil, errors.New("ca: bootstrap: a node id is required")
	}
	host, portStr, err := net.SplitHostPort(o.XDSAddress)
	if err != nil {
		return nil, fmt.Errorf("ca: bootstrap: xds address %q: %w", o.XDSAddress, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 || host == "" {
		return nil, fmt.Errorf("ca: bootstrap: xds address %q: want host:port", o.XDSAddress)
	}
	if o.Cluster == "" {
		o.Cluster = "sift"
	}
	if o.ServerName == "" {
		o.ServerName = DefaultServerName
	}
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	h2, err := anypb.New(&upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			// Pings that notice a partition (sift-control permits them).
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{ConnectionKeepalive: &corev3.KeepaliveSettings{
				Interval: durationpb.New(10 * time.Second), Timeout: durationpb.New(5 * time.Second)}}}}}})
	if err != nil {
		return nil, err
	}
	discovery := clusterv3.Cluster_STRICT_DNS
	if _, err := netip.ParseAddr(host); err == nil {
		discovery = clusterv3.Cluster_STATIC
	}
	cp := &clusterv3.Cluster{
		Name:                          ControlPlaneCluster,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:                durationpb.New(time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: ControlPlaneCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
						Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}}},
			}}}},
		},
	}
	if !o.Plaintext {
		trusted := &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: string(c.BundlePEM())}}
		if o.TrustedCAFile != "" {
			trusted = &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: o.TrustedCAFile}}
		}
		cp.TransportSocket = TransportSocket(&tlsv3.UpstreamTlsContext{
			Sni: o.ServerName,
			CommonTlsContext: &tlsv3.CommonTlsContext{
				ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
					TrustedCa: trusted,
					MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
						SanType: tlsv3.SubjectAltNameMatcher_DNS,
						Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: o.ServerName}},
					}},
				}},
				AlpnProtocols: []string{"h2"},
			},
		})
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: o.NodeID, Cluster: o.Cluster, Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			NodeTokenMetadataKey: structpb.NewStringValue(c.NodeToken(o.NodeID)),
		}}},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             corev3.ApiConfigSource_GRPC,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: ControlPlaneCluster}}}},
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{cp}},
	}
	if o.AdminAddress != "" {
		ah, ap, err := net.SplitHostPort(o.AdminAddress)
		p, perr := strconv.ParseUint(ap, 10, 16)
		if err != nil || perr != nil {
			return nil, fmt.Errorf("ca: bootstrap: admin address %q: want host:port", o.AdminAddress)
		}
		b.Admin = &bootstrapv3.Admin{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ah, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)}}}}}
	}
	return b, nil
}
