package route

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// Request is what route selection reads from a request. Path is the
// request-target's path with its query (Envoy's :path); Authority is the Host
// header (Envoy's :authority) as received.
type Request struct {
	Method    string
	Authority string
	Path      string
	Header    http.Header
	// GRPC is true for gRPC requests (content-type application/grpc*).
	GRPC bool
}

// pathKind is a RouteMatch path_specifier.
type pathKind uint8

const (
	pathPrefix pathKind = iota
	pathExact
	pathRegex
	pathSeparatedPrefix
	pathConnect // connect_matcher: CONNECT requests only
)

// matcher is a decoded RouteMatch. Immutable.
type matcher struct {
	kind          pathKind
	value         string // prefix or path; lower-cased when !caseSensitive
	re            *regexp.Regexp
	caseSensitive bool
	headers       []headerMatcher
	grpc          bool
}

func newMatcher(m *routev3.RouteMatch) (matcher, error) {
	mt := matcher{caseSensitive: true, grpc: m.GetGrpc() != nil}
	if cs := m.GetCaseSensitive(); cs != nil {
		mt.caseSensitive = cs.GetValue()
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		mt.kind, mt.value = pathPrefix, ps.Prefix
	case *routev3.RouteMatch_Path:
		mt.kind, mt.value = pathExact, ps.Path
	case *routev3.RouteMatch_PathSeparatedPrefix:
		p := ps.PathSeparatedPrefix
		if !strings.HasPrefix(p, "/") || (len(p) > 1 && strings.HasSuffix(p, "/")) || strings.ContainsAny(p, "?#") {
			return mt, fmt.Errorf("path_separated_prefix: %q must start with '/', not end with '/', and hold no '?' or '#'", p)
		}
		mt.kind, mt.value = pathSeparatedPrefix, p
	case *routev3.RouteMatch_SafeRegex:
		re, err := compileRegex(ps.SafeRegex, "safe_regex")
		if err != nil {
			return mt, err
		}
		if !mt.caseSensitive {
			// Envoy: case_sensitive does not apply to safe_regex.
			mt.caseSensitive = true
		}
		mt.kind, mt.re = pathRegex, re
	case *routev3.RouteMatch_ConnectMatcher_:
		mt.kind = pathConnect
	default:
		return mt, fmt.Errorf("path specifier: one of prefix, path, safe_regex, path_separated_prefix, connect_matcher must be set")
	}
	if !mt.caseSensitive {
		mt.value = strings.ToLower(mt.value)
	}
	for i, h := range m.GetHeaders() {
		hm, err := newHeaderMatcher(h)
		if err != nil {
			return mt, fmt.Errorf("headers[%d]: %w", i, err)
		}
		mt.headers = append(mt.headers, hm)
	}
	return mt, nil
}

// compileRegex compiles an Envoy RegexMatcher. Envoy's RE2 syntax is Go's;
// Envoy requires the whole value to match, so the pattern is anchored.
func compileRegex(r *matcherv3.RegexMatcher, field string) (*regexp.Regexp, error) {
	re, err := regexp.Compile(`^(?:` + r.GetRegex() + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%s.regex: %w", field, err)
	}
	return re, nil
}

// match reports whether r matches. Path matching follows Envoy's
// RouteMatch: prefix compares against the whole :path (query included);
// path, safe_regex and path_separated_prefix against the path without the
// query.
func (m *matcher) match(r *Request) bool {
	if (m.kind == pathConnect) != (r.Method == http.MethodConnect) {
		return false
	}
	if m.grpc && !r.GRPC {
		return false
	}
	path := r.Path
	if m.kind != pathPrefix {
		if i := strings.IndexAny(path, "?#"); i >= 0 {
			path = path[:i]
		}
	}
	switch m.kind {
	case pathPrefix:
		if !hasPrefix(path, m.value, m.caseSensitive) {
			return false
		}
	case pathExact:
		if !(len(path) == len(m.value) && hasPrefix(path, m.value, m.caseSensitive)) {
			return false
		}
	case pathSeparatedPrefix:
		if !hasPrefix(path, m.value, m.caseSensitive) || (len(path) > len(m.value) && path[len(m.value)] != '/') {
			return false
		}
	case pathRegex:
		if !m.re.MatchString(path) {
			return false
		}
	}
	for i := range m.headers {
		if !m.headers[i].match(r) {
			return false
		}
	}
	return true
}

func hasPrefix(s, prefix string, caseSensitive bool) bool {
	if caseSensitive {
		return strings.HasPrefix(s, prefix)
	}
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// headerMatcher is a decoded HeaderMatcher.
type headerMatcher struct {
	name    string // canonical header name, or a pseudo-header (":method", ":authority", ":path")
	present bool   // present_match (true or false)
	str     *stringMatcher
	invert  bool
	// treatMissingAsEmpty: a missing header is matched as "".
	treatMissingAsEmpty bool
}

func newHeaderMatcher(h *routev3.HeaderMatcher) (headerMatcher, error) {
	name := h.GetName()
	if name == "" {
		return headerMatcher{}, fmt.Errorf("name: must be set")
	}
	hm := headerMatcher{invert: h.GetInvertMatch(), treatMissingAsEmpty: h.GetTreatMissingHeaderAsEmpty()}
	if strings.HasPrefix(name, ":") {
		switch name {
		case ":method", ":authority", ":path", ":scheme":
			hm.name = name
		default:
			return hm, fmt.Errorf("name: pseudo-header %q is not supported", name)
		}
	} else {
		hm.name = http.CanonicalHeaderKey(name)
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case nil:
		// Envoy: no specifier matches when the header is present.
		hm.present = true
	case *routev3.HeaderMatcher_PresentMatch:
		hm.present = s.PresentMatch
		if !s.PresentMatch {
			// present_match false means "absent".
			hm.present, hm.invert = true, !hm.invert
		}
	case *routev3.HeaderMatcher_ExactMatch:
		hm.str = &stringMatcher{kind: strExact, value: s.ExactMatch}
	case *routev3.HeaderMatcher_PrefixMatch:
		hm.str = &stringMatcher{kind: strPrefix, value: s.PrefixMatch}
	case *routev3.HeaderMatcher_SuffixMatch:
		hm.str = &stringMatcher{kind: strSuffix, value: s.SuffixMatch}
	case *routev3.HeaderMatcher_ContainsMatch:
		hm.str = &stringMatcher{kind: strContains, value: s.ContainsMatch}
	case *routev3.HeaderMatcher_SafeRegexMatch:
		re, err := compileRegex(s.SafeRegexMatch, "safe_regex_match")
		if err != nil {
			return hm, err
		}
		hm.str = &stringMatcher{kind: strRegex, re: re}
	case *routev3.HeaderMatcher_StringMatch:
		if hm.str, err = newStringMatcher(s.StringMatch, "string_match"); err != nil {
			return hm, err
		}
	default:
		return hm, fmt.Errorf("header_match_specifier: %T is not supported by Sift", s)
	}
	return hm, nil
}

func (h *headerMatcher) value(r *Request) (string, bool) {
	switch h.name {
	case ":method":
		return r.Method, true
	case ":authority":
		return r.Authority, true
	case ":path":
		return r.Path, true
	case ":scheme":
		return "http", true
	}
	vs, ok := r.Header[h.name]
	if !ok {
		return "", false
	}
	// Envoy matches multiple values joined by ",".
	return strings.Join(vs, ","), true
}

func (h *headerMatcher) match(r *Request) bool {
	v, ok := h.value(r)
	if !ok && h.treatMissingAsEmpty {
		v, ok = "", true
	}
	var res bool
	switch {
	case h.str != nil:
		res = ok && h.str.match(v)
	default:
		res = ok == h.present
	}
	// Envoy: invert_match does not turn a missing header into a match unless
	// treat_missing_header_as_empty; present_match inverts plainly.
	if h.invert {
		if h.str != nil && !ok {
			return false
		}
		return !res
	}
	return res
}

type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strContains
	strRegex
)

// stringMatcher is a decoded envoy.type.matcher.v3.StringMatcher.
type stringMatcher struct {
	kind       strKind
	value      string // lower-cased when ignoreCase
	re         *regexp.Regexp
	ignoreCase bool
}

func newStringMatcher(s *matcherv3.StringMatcher, field string) (*stringMatcher, error) {
	sm := &stringMatcher{ignoreCase: s.GetIgnoreCase()}
	switch p := s.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		sm.kind, sm.value = strExact, p.Exact
	case *matcherv3.StringMatcher_Prefix:
		sm.kind, sm.value = strPrefix, p.Prefix
	case *matcherv3.StringMatcher_Suffix:
		sm.kind, sm.value = strSuffix, p.Suffix
	case *matcherv3.StringMatcher_Contains:
		sm.kind, sm.value = strContains, p.Contains
	case *matcherv3.StringMatcher_SafeRegex:
		re, err := compileRegex(p.SafeRegex, field+".safe_regex")
		if err != nil {
			return nil, err
		}
		sm.kind, sm.re = strRegex, re
	default:
		return nil, fmt.Errorf("%s: match_pattern %T is not supported by Sift", field, p)
	}
	if sm.ignoreCase {
		sm.value = strings.ToLower(sm.value)
	}
	return sm, nil
}

func (s *stringMatcher) match(v string) bool {
	if s.kind == strRegex {
		return s.re.MatchString(v) // Envoy: ignore_case has no effect on safe_regex
	}
	if s.ignoreCase {
		v = strings.ToLower(v)
	}
	switch s.kind {
	case strExact:
		return v == s.value
	case strPrefix:
		return strings.HasPrefix(v, s.value)
	case strSuffix:
		return strings.HasSuffix(v, s.value)
	default:
		return strings.Contains(v, s.value)
	}
}
