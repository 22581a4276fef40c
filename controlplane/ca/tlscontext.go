package ca

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"slices"
)

// SDS secret names, as Istio names them so that operators recognise them.
// Every proxy gets its own secrets under the same names: the snapshot is per
// node, so a name never reaches another node.
const (
	// CertificateSecretName is the workload's tls_certificate.
	CertificateSecretName = "default"
	// TrustBundleSecretName is the mesh trust bundle, a validation_context
	// with trusted_ca only; SAN matchers live in the TLS contexts.
	TrustBundleSecretName = "ROOTCA"
)

// MeshALPN are the ALPN protocols an inbound proxy accepts for HTTP from
// other proxies, preferred first; the outbound side offers one of them, the
// client's own protocol (UpstreamTLSContext).
var MeshALPN = []string{"h2", "http/1.1"}

// WorkloadSecrets returns the SDS secrets of workload holder
// ("namespace/name") with SPIFFE ID id: its certificate and key
// (CertificateSecretName) and the trust bundle (TrustBundleSecretName). The
// certificate is Leaf(holder, id): unchanged between renewals, so the
// secrets are too.
func (c *CA) WorkloadSecrets(holder, id string) ([]*tlsv3.Secret, error) {
	l, err := c.Leaf(holder, id)
	if err != nil {
		return nil, err
	}
	return []*tlsv3.Secret{
		{Name: CertificateSecretName, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: l.ChainPEM}},
			PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: l.KeyPEM}},
		}}},
		{Name: TrustBundleSecretName, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: c.BundlePEM()}},
		}}},
	}, nil
}

// SDSSecret refers to secret name over ADS (the proxy's xDS stream).
func SDSSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}}
}

// meshCommon is the common_tls_context between proxies: the workload's
// certificate and the trust bundle by SDS, TLS 1.3 only (both ends are
// Sift; nothing older to support), ALPN alpn (none when empty), and the
// SAN matchers.
func meshCommon(sans []*tlsv3.SubjectAltNameMatcher, alpn []string) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{SDSSecret(CertificateSecretName)},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
				ValidationContextSdsSecretConfig: SDSSecret(TrustBundleSecretName),
			},
		},
		AlpnProtocols: slices.Clone(alpn),
	}
}

// DownstreamTLSContext is the inbound side of mesh mTLS: a client
// certificate is required and must carry a SPIFFE ID of trustDomain (which
// identities may connect to which port is authorization's job, not the
// handshake's). alpn: MeshALPN when empty.
func DownstreamTLSContext(trustDomain string, alpn ...string) *tlsv3.DownstreamTlsContext {
	if len(alpn) == 0 {
		alpn = MeshALPN
	}
	return &tlsv3.DownstreamTlsContext{
		CommonTlsContext: meshCommon([]*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://" + trustDomain + "/"}},
		}}, alpn),
		RequireClientCertificate: wrapperspb.Bool(true),
	}
}

// UpstreamTLSContext is the outbound side of mesh mTLS towards a
// destination whose endpoints may present any of peerIDs (exact URI SAN
// matches; mesh.Service.Identities); sni is sent as the server name (the
// service's host name, for the server's logs: mesh certificates have no DNS
// SAN and are not matched on it). With no peerIDs no server is accepted.
// alpn: none configured when empty, so that an HTTP cluster's connection pool
// offers its own protocol alone (Envoy's per-pool ALPN override: "h2" for an
// HTTP/2 pool, "http/1.1" for HTTP/1) and the client's protocol is kept
// between proxies — the inbound proxy then speaks it to the application
// (docs/mesh-transport.md). Offering MeshALPN here would make every request
// HTTP/2 between proxies, and the inbound side could no longer know which
// protocol the application speaks.
func UpstreamTLSContext(sni string, peerIDs []string, alpn ...string) *tlsv3.UpstreamTlsContext {
	sans := make([]*tlsv3.SubjectAltNameMatcher, 0, len(peerIDs))
	for _, id := range peerIDs {
		sans = append(sans, &tlsv3.SubjectAltNameMatcher{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}},
		})
	}
	if len(sans) == 0 {
		// An empty list would accept any certificate of the mesh.
		sans = []*tlsv3.SubjectAltNameMatcher{{
			SanType: tlsv3.SubjectAltNameMatcher_URI,
			Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://invalid/no-identity"}},
		}}
	}
	return &tlsv3.UpstreamTlsContext{CommonTlsContext: meshCommon(sans, alpn), Sni: sni}
}

// TransportSocket wraps a TLS context as envoy.transport_sockets.tls.
func TransportSocket(ctx proto.Message) *corev3.TransportSocket {
	a, err := anypb.New(ctx)
	if err != nil {
		panic(err) // TLS contexts are linked in: cannot fail
	}
	return &corev3.TransportSocket{Name: wellknown.TransportSocketTLS, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: a}}
}
