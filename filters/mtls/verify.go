package mtls

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// validation is a built CertificateValidationContext: what a handshake
// checks of the peer's certificate. Immutable.
type validation struct {
	roots *x509.CertPool // nil: the chain is not verified (Envoy without trusted_ca)
	// acceptUntrusted: trust_chain_verification ACCEPT_UNTRUSTED.
	acceptUntrusted bool
	sans            []sanMatcher
	spki, hashes    [][]byte
}

type sanMatcher struct {
	typ tlsv3.SubjectAltNameMatcher_SanType // SAN_TYPE_UNSPECIFIED: any type (match_subject_alt_names)
	m   *stringMatcher
}

// buildValidation compiles a validation context whose trusted_ca, if any, is
// inline.
func buildValidation(pb *tlsv3.CertificateValidationContext, field string) (*validation, error) {
	v := &validation{acceptUntrusted: pb.GetTrustChainVerification() == tlsv3.CertificateValidationContext_ACCEPT_UNTRUSTED}
	if ds := pb.GetTrustedCa(); ds != nil {
		b, err := readDataSource(ds, field+".trusted_ca")
		if err != nil {
			return nil, err
		}
		v.roots = x509.NewCertPool()
		if !v.roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s.trusted_ca: no PEM certificate found", field)
		}
	}
	for i, m := range pb.GetMatchTypedSubjectAltNames() {
		f := fmt.Sprintf("%s.match_typed_subject_alt_names[%d]", field, i)
		if m.GetSanType() == tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED || m.GetSanType() == tlsv3.SubjectAltNameMatcher_OTHER_NAME {
			return nil, fmt.Errorf("%s.san_type: %s is not supported by Sift (EMAIL, DNS, URI, IP_ADDRESS)", f, m.GetSanType())
		}
		sm, err := newStringMatcher(m.GetMatcher(), f+".matcher")
		if err != nil {
			return nil, err
		}
		v.sans = append(v.sans, sanMatcher{typ: m.GetSanType(), m: sm})
	}
	for i, m := range pb.GetMatchSubjectAltNames() {
		sm, err := newStringMatcher(m, fmt.Sprintf("%s.match_subject_alt_names[%d]", field, i))
		if err != nil {
			return nil, err
		}
		v.sans = append(v.sans, sanMatcher{m: sm})
	}
	for i, s := range pb.GetVerifyCertificateSpki() {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%s.verify_certificate_spki[%d]: not a base64 SHA-256 hash", field, i)
		}
		v.spki = append(v.spki, b)
	}
	for i, s := range pb.GetVerifyCertificateHash() {
		b, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
		if err != nil || len(b) != sha256.Size {
			return nil, fmt.Errorf("%s.verify_certificate_hash[%d]: not a hex SHA-256 hash", field, i)
		}
		v.hashes = append(v.hashes, b)
	}
	return v, nil
}

// verify checks a peer's chain (leaf first) as Envoy's default certificate
// validator does: the chain against trusted_ca, then the leaf's hash or SPKI
// pin (either may match), then its SANs against the matchers (any may match).
func (v *validation) verify(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return errors.New("mtls: the peer sent no certificate")
	}
	leaf := chain[0]
	if v.roots != nil && !v.acceptUntrusted {
		inter := x509.NewCertPool()
		for _, c := range chain[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: v.roots, Intermediates: inter,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("mtls: peer certificate %s: %w", PeerIdentity(leaf), err)
		}
	}
	if len(v.spki)+len(v.hashes) > 0 {
		h := sha256.Sum256(leaf.Raw)
		s := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		ok := false
		for _, want := range v.hashes {
			ok = ok || bytes.Equal(want, h[:])
		}
		for _, want := range v.spki {
			ok = ok || bytes.Equal(want, s[:])
		}
		if !ok {
			return fmt.Errorf("mtls: peer certificate %s: hash and SPKI match no verify_certificate_hash/verify_certificate_spki", PeerIdentity(leaf))
		}
	}
	if len(v.sans) > 0 && !v.matchSAN(leaf) {
		return fmt.Errorf("mtls: peer certificate's subject alternative names [%s] match none of [%s]", describeSANs(leaf), v.describeMatchers())
	}
	return nil
}

func (v *validation) matchSAN(leaf *x509.Certificate) bool {
	for _, m := range v.sans {
		any := m.typ == tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED
		if any || m.typ == tlsv3.SubjectAltNameMatcher_URI {
			for _, u := range leaf.URIs {
				if m.m.match(u.String()) {
					return true
				}
			}
		}
		if any || m.typ == tlsv3.SubjectAltNameMatcher_DNS {
			for _, d := range leaf.DNSNames {
				if m.m.matchDNS(d) {
					return true
				}
			}
		}
		if any || m.typ == tlsv3.SubjectAltNameMatcher_EMAIL {
			for _, e := range leaf.EmailAddresses {
				if m.m.match(e) {
					return true
				}
			}
		}
		if any || m.typ == tlsv3.SubjectAltNameMatcher_IP_ADDRESS {
			for _, ip := range leaf.IPAddresses {
				if m.m.match(ip.String()) {
					return true
				}
			}
		}
	}
	return false
}

// describeSANs lists a certificate's subject alternative names, typed as
// Envoy's matchers type them, for error messages.
func describeSANs(c *x509.Certificate) string {
	var names []string
	for _, u := range c.URIs {
		names = append(names, "URI:"+u.String())
	}
	for _, d := range c.DNSNames {
		names = append(names, "DNS:"+d)
	}
	for _, ip := range c.IPAddresses {
		names = append(names, "IP:"+ip.String())
	}
	for _, e := range c.EmailAddresses {
		names = append(names, "EMAIL:"+e)
	}
	if len(names) == 0 {
		return "none; subject " + c.Subject.String()
	}
	return strings.Join(names, " ")
}

// describeMatchers lists what the SAN matchers accept, for error messages.
func (v *validation) describeMatchers() string {
	out := make([]string, len(v.sans))
	for i, m := range v.sans {
		typ := "any"
		if m.typ != tlsv3.SubjectAltNameMatcher_SAN_TYPE_UNSPECIFIED {
			typ = m.typ.String()
		}
		out[i] = typ + ":" + m.m.String()
	}
	return strings.Join(out, " ")
}

// String describes the matcher as Envoy's YAML would spell it.
func (m *stringMatcher) String() string {
	var s string
	switch {
	case m.re != nil:
		s = "safe_regex " + strings.TrimSuffix(strings.TrimPrefix(m.re.String(), "^(?:"), ")$")
	case m.exact != nil:
		s = "exact " + *m.exact
	case m.prefix != nil:
		s = "prefix " + *m.prefix
	case m.suffix != nil:
		s = "suffix " + *m.suffix
	default:
		s = "contains " + *m.contains
	}
	if m.ignoreCase {
		s += " (ignore_case)"
	}
	return s
}

// PeerIdentity names a certificate as Envoy's RBAC principal_name does: the
// first URI SAN (a SPIFFE ID in a mesh), else the first DNS SAN, else the
// subject.
func PeerIdentity(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

// stringMatcher is a decoded envoy.type.matcher.v3.StringMatcher.
type stringMatcher struct {
	exact, prefix, suffix, contains *string
	re                              *regexp.Regexp
	ignoreCase                      bool
}

func newStringMatcher(pb *matcherv3.StringMatcher, field string) (*stringMatcher, error) {
	if pb == nil {
		return nil, fmt.Errorf("%s: must be set", field)
	}
	m := &stringMatcher{ignoreCase: pb.GetIgnoreCase()}
	lower := func(s string) *string {
		if m.ignoreCase {
			s = strings.ToLower(s)
		}
		return &s
	}
	switch p := pb.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		m.exact = lower(p.Exact)
	case *matcherv3.StringMatcher_Prefix:
		m.prefix = lower(p.Prefix)
	case *matcherv3.StringMatcher_Suffix:
		m.suffix = lower(p.Suffix)
	case *matcherv3.StringMatcher_Contains:
		m.contains = lower(p.Contains)
	case *matcherv3.StringMatcher_SafeRegex:
		// RE2 semantics, matching the whole value, as Envoy's safe_regex.
		re, err := regexp.Compile(`^(?:` + p.SafeRegex.GetRegex() + `)$`)
		if err != nil {
			return nil, fmt.Errorf("%s.safe_regex.regex: %w", field, err)
		}
		m.re = re
	default:
		return nil, fmt.Errorf("%s: exact, prefix, suffix, contains or safe_regex must be set", field)
	}
	return m, nil
}

func (m *stringMatcher) match(v string) bool {
	if m.re != nil {
		return m.re.MatchString(v)
	}
	if m.ignoreCase {
		v = strings.ToLower(v)
	}
	switch {
	case m.exact != nil:
		return v == *m.exact
	case m.prefix != nil:
		return strings.HasPrefix(v, *m.prefix)
	case m.suffix != nil:
		return strings.HasSuffix(v, *m.suffix)
	default:
		return strings.Contains(v, *m.contains)
	}
}

// matchDNS matches a DNS SAN; as in Envoy, an exact matcher also accepts a
// wildcard SAN (*.example.com) covering the value.
func (m *stringMatcher) matchDNS(san string) bool {
	if m.match(san) {
		return true
	}
	if m.exact != nil && strings.HasPrefix(san, "*.") {
		v := *m.exact
		if i := strings.IndexByte(v, '.'); i > 0 && strings.EqualFold(v[i:], san[1:]) {
			return true
		}
	}
	return false
}

// Match reports whether v matches (for the RBAC filter).
func (m *stringMatcher) Match(v string) bool { return m.match(v) }

// StringMatcher is a compiled envoy.type.matcher.v3.StringMatcher (exact,
// prefix, suffix, contains, safe_regex; ignore_case), for other filters
// (RBAC's principal_name). Immutable.
type StringMatcher = stringMatcher

// NewStringMatcher compiles pb; errors name field.
func NewStringMatcher(pb *matcherv3.StringMatcher, field string) (*StringMatcher, error) {
	return newStringMatcher(pb, field)
}
