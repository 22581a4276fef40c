package ca

import (
	"crypto/tls"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func adsSecret(name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}}
}

// noALPN: an upstream context without alpn_protocols, so that each HTTP
// pool offers its own protocol (the client's protocol is kept between
// proxies).
func noALPN(c *tlsv3.CommonTlsContext) *tlsv3.CommonTlsContext { return withALPN(c) }

func withALPN(c *tlsv3.CommonTlsContext, alpn ...string) *tlsv3.CommonTlsContext {
	c.AlpnProtocols = alpn
	return c
}

func uriMatcher(m *matcherv3.StringMatcher) *tlsv3.SubjectAltNameMatcher {
	return &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: m}
}

func wantCommon(sans ...*tlsv3.SubjectAltNameMatcher) *tlsv3.CommonTlsContext {
	return &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{
			TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
			TlsMaximumProtocolVersion: tlsv3.TlsParameters_TLSv1_3,
		},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{adsSecret("default")},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
			ValidationContextSdsSecretConfig: adsSecret("ROOTCA"),
		}},
		AlpnProtocols: []string{"h2", "http/1.1"},
	}
}

func TestTLSContexts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  any
		want any
	}{
		{
			name: "downstream: client certificate of the trust domain required",
			got:  DownstreamTLSContext("cluster.local"),
			want: &tlsv3.DownstreamTlsContext{
				CommonTlsContext:         wantCommon(uriMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: "spiffe://cluster.local/"}})),
				RequireClientCertificate: wrapperspb.Bool(true),
			},
		},
		{
			name: "upstream: the destination's identities, exactly",
			got:  UpstreamTLSContext("web.shop.svc.cluster.local", []string{"spiffe://cluster.local/ns/shop/sa/canary", "spiffe://cluster.local/ns/shop/sa/web"}),
			want: &tlsv3.UpstreamTlsContext{
				Sni: "web.shop.svc.cluster.local",
				CommonTlsContext: noALPN(wantCommon(
					uriMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://cluster.local/ns/shop/sa/canary"}}),
					uriMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://cluster.local/ns/shop/sa/web"}}))),
			},
		},
		{
			name: "upstream without identities accepts no server",
			got:  UpstreamTLSContext("x", nil),
			want: &tlsv3.UpstreamTlsContext{
				Sni:              "x",
				CommonTlsContext: noALPN(wantCommon(uriMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://invalid/no-identity"}}))),
			},
		},
		{
			name: "upstream with ALPN: offered as given",
			got:  UpstreamTLSContext("pg", []string{"spiffe://cluster.local/ns/shop/sa/pg"}, "sift.opaque/1"),
			want: &tlsv3.UpstreamTlsContext{
				Sni: "pg",
				CommonTlsContext: withALPN(wantCommon(uriMatcher(&matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "spiffe://cluster.local/ns/shop/sa/pg"}})),
					"sift.opaque/1"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, tt.got, protocmp.Transform()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	ts := TransportSocket(DownstreamTLSContext("cluster.local"))
	var back tlsv3.DownstreamTlsContext
	if ts.GetName() != "envoy.transport_sockets.tls" || ts.GetTypedConfig().UnmarshalTo(&back) != nil {
		t.Errorf("TransportSocket = %v", ts)
	}
}

func TestWorkloadSecrets(t *testing.T) {
	t.Parallel()
	c := openCA(t, t.TempDir(), NewManualClock(t0))
	secrets, err := c.WorkloadSecrets("shop/web-0", webID)
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets) != 2 || secrets[0].GetName() != CertificateSecretName || secrets[1].GetName() != TrustBundleSecretName {
		t.Fatalf("secrets = %v, want [default ROOTCA]", secrets)
	}
	tc := secrets[0].GetTlsCertificate()
	pair, err := tls.X509KeyPair(tc.GetCertificateChain().GetInlineBytes(), tc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatalf("the certificate secret is not a usable key pair: %v", err)
	}
	if got := pair.Leaf.URIs[0].String(); got != webID {
		t.Errorf("certificate SAN = %q, want %q", got, webID)
	}
	if diff := cmp.Diff(string(c.BundlePEM()), string(secrets[1].GetValidationContext().GetTrustedCa().GetInlineBytes())); diff != "" {
		t.Errorf("ROOTCA trusted_ca (-want +got):\n%s", diff)
	}
	again, _ := c.WorkloadSecrets("shop/web-0", webID)
	if diff := cmp.Diff(secrets, again, protocmp.Transform()); diff != "" {
		t.Errorf("secrets change between renewals (-first +second):\n%s", diff)
	}
	// Another workload with the same service account: the same identity,
	// its own key.
	sibling, err := c.WorkloadSecrets("shop/web-1", webID)
	if err != nil {
		t.Fatal(err)
	}
	stc := sibling[0].GetTlsCertificate()
	pair2, err := tls.X509KeyPair(stc.GetCertificateChain().GetInlineBytes(), stc.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if pair2.Leaf.URIs[0].String() != webID {
		t.Errorf("sibling identity = %v", pair2.Leaf.URIs)
	}
	if string(stc.GetPrivateKey().GetInlineBytes()) == string(tc.GetPrivateKey().GetInlineBytes()) {
		t.Error("two workloads share a private key")
	}
}

func TestServerTLSConfig(t *testing.T) {
	t.Parallel()
	c := openCA(t, t.TempDir(), NewManualClock(t0))
	cfg, err := c.ServerTLSConfig([]string{"sift-control", "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	leaf := cert.Leaf
	if diff := cmp.Diff([]string{"sift-control"}, leaf.DNSNames); diff != "" || len(leaf.URIs) != 0 || len(leaf.IPAddresses) != 1 {
		t.Errorf("server SANs: DNS %v, IPs %v, URIs %v", leaf.DNSNames, leaf.IPAddresses, leaf.URIs)
	}
	if err := leaf.VerifyHostname("sift-control"); err != nil {
		t.Error(err)
	}
	if _, err := c.ServerLeaf(nil); err == nil {
		t.Error("a server certificate without names was issued")
	}
}
