package mtls

import (
	"crypto/tls"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/internal/pbcheck"
)

// TransportSocketName is Envoy's name of the TLS transport socket.
const TransportSocketName = "envoy.transport_sockets.tls"

// Type URLs of the transport socket configs.
const (
	DownstreamTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	UpstreamTypeURL   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	rawBufferTypeURL  = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
)

// tlsPolicy lists the TLS fields Sift implements (docs/envoy-support.md).
var tlsPolicy = pbcheck.Policy{
	"envoy.extensions.transport_sockets.tls.v3.Secret": pbcheck.Fields("name, tls_certificate, session_ticket_keys, validation_context"),
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext": pbcheck.Fields("common_tls_context, " +
		"require_client_certificate, require_sni, session_ticket_keys, session_ticket_keys_sds_secret_config, " +
		"disable_stateless_session_resumption, disable_stateful_session_resumption, prefer_client_ciphers, " +
		"full_scan_certs_on_sni_mismatch, ocsp_staple_policy"),
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext": pbcheck.Fields("common_tls_context, sni, " +
		"allow_renegotiation, max_session_keys, enforce_rsa_key_usage"),
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext": pbcheck.Fields("tls_params, tls_certificates, " +
		"tls_certificate_sds_secret_configs, validation_context, validation_context_sds_secret_config, " +
		"combined_validation_context, alpn_protocols"),
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext": pbcheck.Fields(
		"default_validation_context, validation_context_sds_secret_config"),
	"envoy.extensions.transport_sockets.tls.v3.TlsParameters": pbcheck.Fields("tls_minimum_protocol_version, " +
		"tls_maximum_protocol_version, cipher_suites, ecdh_curves"),
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate": pbcheck.Fields("certificate_chain, private_key"),
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext": pbcheck.Fields("trusted_ca, " +
		"match_typed_subject_alt_names, match_subject_alt_names, verify_certificate_spki, verify_certificate_hash, " +
		"trust_chain_verification"),
	"envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher": pbcheck.Fields("san_type, matcher"),
	"envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig":       pbcheck.Fields("name, sds_config"),
	"envoy.extensions.transport_sockets.tls.v3.TlsSessionTicketKeys":  pbcheck.Fields("keys"),
	"envoy.config.core.v3.DataSource":                                 pbcheck.Fields("filename, inline_bytes, inline_string, environment_variable"),
	"envoy.type.matcher.v3.StringMatcher":                             pbcheck.Fields("exact, prefix, suffix, safe_regex, contains, ignore_case"),
	"envoy.type.matcher.v3.RegexMatcher":                              pbcheck.Fields("google_re2, regex"),
	"envoy.config.core.v3.ConfigSource":                               pbcheck.Fields("ads, api_config_source, initial_fetch_timeout, resource_api_version"),
}

// params are the decoded tls_params and ALPN of a CommonTlsContext.
type params struct {
	minVersion, maxVersion uint16
	ciphers                []uint16
	curves                 []tls.CurveID
	alpn                   []string
}

// common is a decoded CommonTlsContext: its parameters and the sources of
// its certificates and validation context.
type common struct {
	params
	certs      []*Source
	validation *Source // nil: the peer is not verified
	// defaultValidation is combined_validation_context's default, merged
	// over the SDS one when a configuration is built.
	defaultValidation *tlsv3.CertificateValidationContext
}

func (s *Store) decodeCommon(pb *tlsv3.CommonTlsContext, field string, server bool) (*common, error) {
	c := &common{}
	var err error
	if c.params, err = decodeParams(pb.GetTlsParams(), field+".tls_params", server); err != nil {
		return nil, err
	}
	for i, p := range pb.GetAlpnProtocols() {
		if p == "" || len(p) > 255 {
			return nil, fmt.Errorf("%s.alpn_protocols[%d]: %q is not a valid protocol name", field, i, p)
		}
	}
	c.alpn = pb.GetAlpnProtocols()
	for i, tc := range pb.GetTlsCertificates() {
		f := fmt.Sprintf("%s.tls_certificates[%d]", field, i)
		src, err := s.certSource(tc, f, f)
		if err != nil {
			return nil, err
		}
		c.certs = append(c.certs, src)
	}
	for i, ref := range pb.GetTlsCertificateSdsSecretConfigs() {
		src, err := s.ref(ref, fmt.Sprintf("%s.tls_certificate_sds_secret_configs[%d]", field, i))
		if err != nil {
			return nil, err
		}
		c.certs = append(c.certs, src)
	}
	switch v := pb.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContext:
		f := field + ".validation_context"
		if c.validation, err = s.validationSource(v.ValidationContext, f, f); err != nil {
			return nil, err
		}
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		if c.validation, err = s.ref(v.ValidationContextSdsSecretConfig, field+".validation_context_sds_secret_config"); err != nil {
			return nil, err
		}
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		f := field + ".combined_validation_context"
		cv := v.CombinedValidationContext
		if cv.GetValidationContextSdsSecretConfig() == nil {
			return nil, fmt.Errorf("%s.validation_context_sds_secret_config: must be set", f)
		}
		if c.validation, err = s.ref(cv.GetValidationContextSdsSecretConfig(), f+".validation_context_sds_secret_config"); err != nil {
			return nil, err
		}
		if d := cv.GetDefaultValidationContext(); d != nil {
			val, err := decodeValidation(d, f+".default_validation_context")
			if err != nil {
				return nil, err
			}
			c.defaultValidation = val.Validation
		}
	case nil:
	default:
		return nil, fmt.Errorf("%s: %T is not supported by Sift", field, v)
	}
	return c, nil
}

var tlsVersions = map[tlsv3.TlsParameters_TlsProtocol]uint16{
	tlsv3.TlsParameters_TLSv1_0: tls.VersionTLS10,
	tlsv3.TlsParameters_TLSv1_1: tls.VersionTLS11,
	tlsv3.TlsParameters_TLSv1_2: tls.VersionTLS12,
	tlsv3.TlsParameters_TLSv1_3: tls.VersionTLS13,
}

// cipherNames maps BoringSSL's cipher names (Envoy's cipher_suites) to
// crypto/tls's TLS 1.0–1.2 suites. TLS 1.3 suites are not configurable, in
// Envoy as in crypto/tls.
var cipherNames = map[string]uint16{
	"ECDHE-ECDSA-AES128-GCM-SHA256": tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	"ECDHE-RSA-AES128-GCM-SHA256":   tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	"ECDHE-ECDSA-AES256-GCM-SHA384": tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	"ECDHE-RSA-AES256-GCM-SHA384":   tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	"ECDHE-ECDSA-CHACHA20-POLY1305": tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	"ECDHE-RSA-CHACHA20-POLY1305":   tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
	"ECDHE-ECDSA-AES128-SHA":        tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
	"ECDHE-RSA-AES128-SHA":          tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA,
	"ECDHE-ECDSA-AES256-SHA":        tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA,
	"ECDHE-RSA-AES256-SHA":          tls.TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA,
	"AES128-GCM-SHA256":             tls.TLS_RSA_WITH_AES_128_GCM_SHA256,
	"AES256-GCM-SHA384":             tls.TLS_RSA_WITH_AES_256_GCM_SHA384,
	"AES128-SHA":                    tls.TLS_RSA_WITH_AES_128_CBC_SHA,
	"AES256-SHA":                    tls.TLS_RSA_WITH_AES_256_CBC_SHA,
}

var curveNames = map[string]tls.CurveID{
	"X25519": tls.X25519, "P-256": tls.CurveP256, "P-384": tls.CurveP384, "P-521": tls.CurveP521,
	"X25519MLKEM768": tls.X25519MLKEM768,
}

// decodeParams applies Envoy's defaults: TLS 1.2 minimum; maximum TLS 1.3
// for servers and TLS 1.2 for clients.
func decodeParams(pb *tlsv3.TlsParameters, field string, server bool) (params, error) {
	p := params{minVersion: tls.VersionTLS12, maxVersion: tls.VersionTLS12}
	if server {
		p.maxVersion = tls.VersionTLS13
	}
	if v := pb.GetTlsMinimumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		if p.minVersion = tlsVersions[v]; p.minVersion == 0 {
			return p, fmt.Errorf("%s.tls_minimum_protocol_version: unknown value %d", field, v)
		}
	}
	if v := pb.GetTlsMaximumProtocolVersion(); v != tlsv3.TlsParameters_TLS_AUTO {
		if p.maxVersion = tlsVersions[v]; p.maxVersion == 0 {
			return p, fmt.Errorf("%s.tls_maximum_protocol_version: unknown value %d", field, v)
		}
	}
	if p.minVersion > p.maxVersion {
		return p, fmt.Errorf("%s: tls_minimum_protocol_version is above tls_maximum_protocol_version", field)
	}
	for i, entry := range pb.GetCipherSuites() {
		// BoringSSL's equal-preference groups "[A|B]" are flattened in order.
		for _, name := range strings.Split(strings.Trim(entry, "[]"), "|") {
			id, ok := cipherNames[name]
			if !ok {
				return p, fmt.Errorf("%s.cipher_suites[%d]: %q is not a cipher suite Sift supports", field, i, name)
			}
			p.ciphers = append(p.ciphers, id)
		}
	}
	for i, name := range pb.GetEcdhCurves() {
		id, ok := curveNames[name]
		if !ok {
			return p, fmt.Errorf("%s.ecdh_curves[%d]: %q is not a curve Sift supports", field, i, name)
		}
		p.curves = append(p.curves, id)
	}
	return p, nil
}

func (p *params) apply(c *tls.Config) {
	c.MinVersion, c.MaxVersion = p.minVersion, p.maxVersion
	c.CipherSuites, c.CurvePreferences, c.NextProtos = p.ciphers, p.curves, p.alpn
}

// sources returns every source the context reads.
func (c *common) sources() []*Source {
	out := append([]*Source(nil), c.certs...)
	if c.validation != nil {
		out = append(out, c.validation)
	}
	return out
}

// current returns the values of srcs now, or ok=false while one is warming.
func current(srcs []*Source) (vals []*Value, ok bool) {
	vals = make([]*Value, len(srcs))
	for i, s := range srcs {
		if vals[i] = s.Load(); vals[i] == nil {
			return nil, false
		}
	}
	return vals, true
}

// buildFrom builds the certificates and the validation of one
// configuration from the current values of c's sources.
func (c *common) buildFrom(vals []*Value) ([]tls.Certificate, *validation, error) {
	certs := make([]tls.Certificate, 0, len(c.certs))
	for i := range c.certs {
		if vals[i].Cert == nil {
			return nil, nil, fmt.Errorf("mtls: secret %q is not a tls_certificate", c.certs[i].name)
		}
		certs = append(certs, *vals[i].Cert)
	}
	if c.validation == nil {
		return certs, nil, nil
	}
	cvc := vals[len(c.certs)].Validation
	if cvc == nil {
		return nil, nil, fmt.Errorf("mtls: secret %q is not a validation_context", c.validation.name)
	}
	if c.defaultValidation != nil {
		// Envoy merges the default into the dynamic context.
		merged := proto.Clone(cvc).(*tlsv3.CertificateValidationContext)
		proto.Merge(merged, c.defaultValidation)
		cvc = merged
	}
	v, err := buildValidation(cvc, c.validation.name)
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: %w", err)
	}
	return certs, v, nil
}

// unpackContext decodes a transport_socket's typed_config, which must be
// the TLS transport socket's typeURL (or raw_buffer, which means plaintext:
// nil, nil).
func unpackContext(ts *corev3.TransportSocket, typeURL string, msg proto.Message) (bool, error) {
	a := ts.GetTypedConfig()
	if a == nil {
		return false, errors.New("typed_config: must be set")
	}
	if a.GetTypeUrl() == rawBufferTypeURL {
		return false, nil
	}
	if a.GetTypeUrl() != typeURL {
		return false, fmt.Errorf("typed_config: %s is not supported by Sift (%s or raw_buffer)", a.GetTypeUrl(), typeURL)
	}
	if err := a.UnmarshalTo(msg); err != nil {
		return false, fmt.Errorf("typed_config: %w", err)
	}
	if err := tlsPolicy.Check(msg); err != nil {
		return false, fmt.Errorf("typed_config.%w", err)
	}
	if err := pbcheck.Validate(msg); err != nil {
		return false, fmt.Errorf("typed_config: %w", err)
	}
	return true, nil
}
