// Package route decodes Envoy's RouteConfiguration into an immutable Table
// and selects the route for a request: virtual host by domain, then the
// first route whose match accepts the request. It is a pure core: no I/O,
// safe for concurrent use once built.
//
// Implemented (see policy for the accepted fields; anything else set is an
// error naming it):
//   - RouteConfiguration: name, virtual_hosts, request/response headers to
//     add/remove, ignore_port_in_host_matching, internal_only_headers.
//   - VirtualHost: name, domains (exact, "*.suffix", "prefix.*", "*", with or
//     without a port), routes, header edits, retry_policy (the default for
//     its routes), per_request_buffer_limit_bytes.
//   - Route: name, match, route or direct_response, header edits,
//     per_request_buffer_limit_bytes.
//   - RouteMatch: prefix, path, safe_regex, path_separated_prefix,
//     connect_matcher, case_sensitive, headers, grpc.
//   - RouteAction: cluster, weighted_clusters, cluster_header,
//     cluster_not_found_response_code, prefix_rewrite, regex_rewrite,
//     host_rewrite_literal, auto_host_rewrite, timeout, idle_timeout,
//     retry_policy, upgrade_configs, max_stream_duration.
package route

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/siftmesh/sift/internal/pbcheck"
)

// Envoy's defaults.
const (
	// DefaultTimeout is RouteAction.timeout's default.
	DefaultTimeout = 15 * time.Second
	// DefaultBufferLimit bounds the request body kept for retries: Envoy's
	// default per_connection_buffer_limit_bytes (1 MiB), which its retry
	// buffer inherits.
	DefaultBufferLimit = 1 << 20
	defaultRetryBase   = 25 * time.Millisecond
)

var policy = pbcheck.Policy{
	"envoy.config.route.v3.RouteConfiguration": pbcheck.Fields("name, virtual_hosts, response_headers_to_add, "+
		"response_headers_to_remove, request_headers_to_add, request_headers_to_remove, "+
		"ignore_port_in_host_matching, internal_only_headers").
		Ignore("validate_clusters", "clusters are resolved per request, as Envoy does for clusters from CDS"),
	"envoy.config.route.v3.VirtualHost": pbcheck.Fields("name, domains, routes, request_headers_to_add, " +
		"request_headers_to_remove, response_headers_to_add, response_headers_to_remove, retry_policy, " +
		"per_request_buffer_limit_bytes"),
	"envoy.config.route.v3.Route": pbcheck.Fields("name, match, route, direct_response, request_headers_to_add, "+
		"request_headers_to_remove, response_headers_to_add, response_headers_to_remove, per_request_buffer_limit_bytes").
		Ignore("metadata", "descriptive: read by filters and tools, not by the router").
		Ignore("decorator", "names the route's tracing span: Sift does not trace yet").
		Ignore("stat_prefix", "statistics only"),
	"envoy.config.route.v3.RouteMatch": pbcheck.Fields("prefix, path, safe_regex, connect_matcher, " +
		"path_separated_prefix, case_sensitive, headers, grpc"),
	"envoy.config.route.v3.HeaderMatcher": pbcheck.Fields("name, exact_match, safe_regex_match, present_match, " +
		"prefix_match, suffix_match, contains_match, string_match, invert_match, treat_missing_header_as_empty"),
	"envoy.type.matcher.v3.StringMatcher": pbcheck.Fields("exact, prefix, suffix, safe_regex, contains, ignore_case"),
	"envoy.type.matcher.v3.RegexMatcher":  pbcheck.Fields("google_re2, regex"),
	"envoy.config.route.v3.RouteAction": pbcheck.Fields("cluster, cluster_header, weighted_clusters, " +
		"cluster_not_found_response_code, prefix_rewrite, regex_rewrite, host_rewrite_literal, auto_host_rewrite, " +
		"timeout, idle_timeout, retry_policy, upgrade_configs, max_stream_duration"),
	"envoy.config.route.v3.WeightedCluster":               pbcheck.Fields("clusters, total_weight"),
	"envoy.config.route.v3.WeightedCluster.ClusterWeight": pbcheck.Fields("name, weight"),
	"envoy.config.route.v3.RetryPolicy": pbcheck.Fields("retry_on, num_retries, per_try_timeout, " +
		"retriable_status_codes, retry_back_off"),
	"envoy.config.route.v3.RetryPolicy.RetryBackOff":                pbcheck.Fields("base_interval, max_interval"),
	"envoy.config.route.v3.RouteAction.UpgradeConfig":               pbcheck.Fields("upgrade_type, enabled, connect_config"),
	"envoy.config.route.v3.RouteAction.UpgradeConfig.ConnectConfig": pbcheck.Fields(""),
	"envoy.config.route.v3.RouteAction.MaxStreamDuration": pbcheck.Fields("max_stream_duration, " +
		"grpc_timeout_header_max, grpc_timeout_header_offset"),
	"envoy.type.matcher.v3.RegexMatchAndSubstitute": pbcheck.Fields("pattern, substitution"),
	"envoy.config.route.v3.DirectResponseAction":    pbcheck.Fields("status, body"),
	"envoy.config.core.v3.DataSource":               pbcheck.Fields("inline_string, inline_bytes"),
	"envoy.config.core.v3.HeaderValueOption":        pbcheck.Fields("header, append, append_action, keep_empty_value"),
	"envoy.config.core.v3.HeaderValue":              pbcheck.Fields("key, value, raw_value"),
}

// Table is a decoded RouteConfiguration. Immutable and safe for concurrent use.
type Table struct {
	Name string

	exact      map[string]*VirtualHost
	suffixes   []wildcard // "*.example.com": longest first
	prefixes   []wildcard // "example.*": longest first
	any        *VirtualHost
	ignorePort bool

	// RequestHeaders and ResponseHeaders are the RouteConfiguration's edits.
	RequestHeaders, ResponseHeaders Edits
	// InternalOnly are internal_only_headers: removed from requests from
	// external clients (canonical names).
	InternalOnly []string
}

type wildcard struct {
	affix string // lower-case, without the '*'
	vh    *VirtualHost
}

// VirtualHost is a decoded VirtualHost.
type VirtualHost struct {
	Name   string
	Routes []*Route
	// RequestHeaders and ResponseHeaders are the virtual host's edits.
	RequestHeaders, ResponseHeaders Edits
}

// ActionKind says what a route does.
type ActionKind uint8

const (
	// ActionCluster forwards to a cluster (RouteAction).
	ActionCluster ActionKind = iota
	// ActionDirect answers from the route (DirectResponseAction).
	ActionDirect
)

// Route is a decoded Route. Immutable.
type Route struct {
	Name        string
	VirtualHost *VirtualHost
	Kind        ActionKind
	m           matcher

	// Forwarding (ActionCluster).
	clusters            []WeightedCluster
	totalWeight         uint64
	ClusterHeader       string // cluster_header: the cluster is named by this request header
	ClusterNotFoundCode int    // 503 (Envoy's default) or 404
	prefixRewrite       *string
	regexRewrite        *regexp.Regexp
	regexSubstitution   string
	// HostRewrite replaces the Host header (host_rewrite_literal) when set.
	HostRewrite string
	// AutoHostRewrite sets the Host header to the endpoint's address
	// (auto_host_rewrite: Envoy uses the endpoint's hostname when it has one).
	AutoHostRewrite bool
	// Timeout bounds the whole upstream exchange; 0 means none.
	Timeout time.Duration
	// IdleTimeout overrides the HCM's stream_idle_timeout when HasIdleTimeout.
	IdleTimeout    time.Duration
	HasIdleTimeout bool
	// Retry is the route's retry policy (or its virtual host's); nil: none.
	Retry *RetryPolicy
	// BufferLimit bounds the request body kept for retries.
	BufferLimit int
	// Upgrades are the route's upgrade_configs: lower-case upgrade type →
	// enabled. A type absent here takes the HCM's setting.
	Upgrades map[string]bool
	// ConnectTerminate: CONNECT requests are terminated here and their
	// payload proxied to the cluster as TCP (upgrade_configs CONNECT with
	// connect_config).
	ConnectTerminate bool
	// MaxStreamDuration caps the stream (0: none); GRPCTimeoutHeaderMax,
	// when HasGRPCTimeoutHeaderMax, makes the grpc-timeout header the
	// timeout, capped by it (0: uncapped), less GRPCTimeoutHeaderOffset.
	MaxStreamDuration       time.Duration
	HasGRPCTimeoutHeaderMax bool
	GRPCTimeoutHeaderMax    time.Duration
	GRPCTimeoutHeaderOffset time.Duration

	// Direct response (ActionDirect).
	DirectStatus int
	DirectBody   []byte

	// RequestHeaders and ResponseHeaders are the route's edits.
	RequestHeaders, ResponseHeaders Edits
}

// WeightedCluster is one of a route's clusters.
type WeightedCluster struct {
	Name   string
	Weight uint32
}

// Retry conditions (RetryPolicy.retry_on), as a bit set.
type RetryOn uint16

const (
	Retry5xx RetryOn = 1 << iota
	RetryGatewayError
	RetryReset
	RetryConnectFailure
	RetryRetriableStatusCodes
	RetryRefusedStream
	Retry4xx // retriable-4xx: 409
	RetryGRPCCancelled
	RetryGRPCDeadlineExceeded
	RetryGRPCResourceExhausted
	RetryGRPCUnavailable
	RetryGRPCInternal
)

var retryOnNames = map[string]RetryOn{
	"5xx": Retry5xx, "gateway-error": RetryGatewayError, "reset": RetryReset,
	"connect-failure": RetryConnectFailure, "retriable-status-codes": RetryRetriableStatusCodes,
	"refused-stream": RetryRefusedStream, "retriable-4xx": Retry4xx,
	"cancelled": RetryGRPCCancelled, "deadline-exceeded": RetryGRPCDeadlineExceeded,
	"resource-exhausted": RetryGRPCResourceExhausted, "unavailable": RetryGRPCUnavailable,
	"internal": RetryGRPCInternal,
}

// RetryPolicy is a decoded RetryPolicy.
type RetryPolicy struct {
	On            RetryOn
	NumRetries    int           // Envoy's default 1
	PerTryTimeout time.Duration // 0: the route timeout only
	StatusCodes   []int         // retriable_status_codes
	BackoffBase   time.Duration // Envoy's default 25 ms
	BackoffMax    time.Duration // Envoy's default 10 × base
}

// Backoff returns the wait before retry n (1-based): Envoy's fully jittered
// exponential back-off, a random duration in [0, min(base·2^(n-1), max)].
func (p *RetryPolicy) Backoff(n int) time.Duration {
	d := p.BackoffBase << min(n-1, 20)
	if d > p.BackoffMax || d <= 0 {
		d = p.BackoffMax
	}
	return rand.N(d + 1)
}

// RetriableStatus reports whether status (with gRPC status grpcStatus, -1
// when absent) is a retriable response under the policy.
func (p *RetryPolicy) RetriableStatus(status, grpcStatus int) bool {
	switch {
	case p.On&Retry5xx != 0 && status >= 500 && status <= 599:
		return true
	case p.On&RetryGatewayError != 0 && (status == 502 || status == 503 || status == 504):
		return true
	case p.On&Retry4xx != 0 && status == 409:
		return true
	case p.On&RetryRetriableStatusCodes != 0 && slices.Contains(p.StatusCodes, status):
		return true
	}
	switch grpcStatus {
	case 1:
		return p.On&RetryGRPCCancelled != 0
	case 4:
		return p.On&RetryGRPCDeadlineExceeded != 0
	case 8:
		return p.On&RetryGRPCResourceExhausted != 0
	case 13:
		return p.On&RetryGRPCInternal != 0
	case 14:
		return p.On&RetryGRPCUnavailable != 0
	}
	return false
}

// RetriableConnectFailure reports whether a failure to connect is retried.
func (p *RetryPolicy) RetriableConnectFailure() bool {
	return p.On&(Retry5xx|RetryGatewayError|RetryConnectFailure|RetryReset) != 0
}

// RetriableReset reports whether a reset (no response) is retried.
func (p *RetryPolicy) RetriableReset() bool {
	return p.On&(Retry5xx|RetryGatewayError|RetryReset) != 0
}

// RetriableTimeout reports whether a per-try timeout is retried (Envoy: 5xx
// and gateway-error cover per-try timeouts).
func (p *RetryPolicy) RetriableTimeout() bool {
	return p.On&(Retry5xx|RetryGatewayError) != 0
}

// Decode validates rc and builds its Table. Errors name the offending field
// by its path from the RouteConfiguration.
func Decode(rc *routev3.RouteConfiguration) (*Table, error) {
	if err := policy.Check(rc); err != nil {
		return nil, err
	}
	t := &Table{Name: rc.GetName(), exact: map[string]*VirtualHost{}, ignorePort: rc.GetIgnorePortInHostMatching()}
	var err error
	if t.RequestHeaders, err = decodeEdits(rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), "request_headers"); err != nil {
		return nil, err
	}
	if t.ResponseHeaders, err = decodeEdits(rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove(), "response_headers"); err != nil {
		return nil, err
	}
	for _, h := range rc.GetInternalOnlyHeaders() {
		t.InternalOnly = append(t.InternalOnly, http.CanonicalHeaderKey(h))
	}
	seen := map[string]string{}
	for i, pv := range rc.GetVirtualHosts() {
		path := fmt.Sprintf("virtual_hosts[%d]", i)
		vh, err := decodeVirtualHost(pv)
		if err != nil {
			return nil, fmt.Errorf("%s.%w", path, err)
		}
		if len(pv.GetDomains()) == 0 {
			return nil, fmt.Errorf("%s.domains: at least one domain is required", path)
		}
		for j, d := range pv.GetDomains() {
			d = strings.ToLower(d)
			if prev, dup := seen[d]; dup {
				return nil, fmt.Errorf("%s.domains[%d]: %q is also a domain of virtual host %q", path, j, d, prev)
			}
			seen[d] = vh.Name
			switch {
			case d == "*":
				t.any = vh
			case strings.HasPrefix(d, "*"):
				t.suffixes = append(t.suffixes, wildcard{affix: d[1:], vh: vh})
			case strings.HasSuffix(d, "*"):
				t.prefixes = append(t.prefixes, wildcard{affix: d[:len(d)-1], vh: vh})
			case strings.Contains(d, "*"):
				return nil, fmt.Errorf("%s.domains[%d]: %q: a wildcard must be the first or last character", path, j, d)
			case d == "":
				return nil, fmt.Errorf("%s.domains[%d]: must not be empty", path, j)
			default:
				t.exact[d] = vh
			}
		}
	}
	longestFirst := func(a, b wildcard) int { return len(b.affix) - len(a.affix) }
	slices.SortStableFunc(t.suffixes, longestFirst)
	slices.SortStableFunc(t.prefixes, longestFirst)
	return t, nil
}

func decodeVirtualHost(pv *routev3.VirtualHost) (*VirtualHost, error) {
	vh := &VirtualHost{Name: pv.GetName()}
	if vh.Name == "" {
		return nil, errors.New("name: must be set")
	}
	var err error
	if vh.RequestHeaders, err = decodeEdits(pv.GetRequestHeadersToAdd(), pv.GetRequestHeadersToRemove(), "request_headers"); err != nil {
		return nil, err
	}
	if vh.ResponseHeaders, err = decodeEdits(pv.GetResponseHeadersToAdd(), pv.GetResponseHeadersToRemove(), "response_headers"); err != nil {
		return nil, err
	}
	var vhRetry *RetryPolicy
	if rp := pv.GetRetryPolicy(); rp != nil {
		if vhRetry, err = decodeRetry(rp); err != nil {
			return nil, fmt.Errorf("retry_policy: %w", err)
		}
	}
	limit := DefaultBufferLimit
	if l := pv.GetPerRequestBufferLimitBytes(); l != nil {
		limit = int(l.GetValue())
	}
	for i, pr := range pv.GetRoutes() {
		r, err := decodeRoute(pr, vh, vhRetry, limit)
		if err != nil {
			return nil, fmt.Errorf("routes[%d].%w", i, err)
		}
		vh.Routes = append(vh.Routes, r)
	}
	return vh, nil
}

func decodeRoute(pr *routev3.Route, vh *VirtualHost, vhRetry *RetryPolicy, limit int) (*Route, error) {
	r := &Route{Name: pr.GetName(), VirtualHost: vh, BufferLimit: limit}
	if pr.GetMatch() == nil {
		return nil, errors.New("match: must be set")
	}
	var err error
	if r.m, err = newMatcher(pr.GetMatch()); err != nil {
		return nil, fmt.Errorf("match.%w", err)
	}
	if l := pr.GetPerRequestBufferLimitBytes(); l != nil {
		r.BufferLimit = int(l.GetValue())
	}
	if r.RequestHeaders, err = decodeEdits(pr.GetRequestHeadersToAdd(), pr.GetRequestHeadersToRemove(), "request_headers"); err != nil {
		return nil, err
	}
	if r.ResponseHeaders, err = decodeEdits(pr.GetResponseHeadersToAdd(), pr.GetResponseHeadersToRemove(), "response_headers"); err != nil {
		return nil, err
	}
	switch a := pr.GetAction().(type) {
	case *routev3.Route_Route:
		if err := r.decodeAction(a.Route, vhRetry); err != nil {
			return nil, fmt.Errorf("route.%w", err)
		}
	case *routev3.Route_DirectResponse:
		r.Kind = ActionDirect
		r.DirectStatus = int(a.DirectResponse.GetStatus())
		if r.DirectStatus < 200 || r.DirectStatus > 599 {
			return nil, fmt.Errorf("direct_response.status: %d: must be in 200-599", r.DirectStatus)
		}
		if b := a.DirectResponse.GetBody(); b != nil {
			if s := b.GetInlineString(); s != "" {
				r.DirectBody = []byte(s)
			} else {
				r.DirectBody = b.GetInlineBytes()
			}
		}
	default:
		return nil, errors.New("action: route or direct_response must be set")
	}
	if r.m.kind == pathConnect && r.Kind == ActionCluster && !r.ConnectTerminate && r.Upgrades["connect"] {
		return nil, errors.New("route.upgrade_configs: CONNECT is only supported terminated (with connect_config)")
	}
	return r, nil
}

func (r *Route) decodeAction(a *routev3.RouteAction, vhRetry *RetryPolicy) error {
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		if cs.Cluster == "" {
			return errors.New("cluster: must not be empty")
		}
		r.clusters = []WeightedCluster{{Name: cs.Cluster, Weight: 1}}
		r.totalWeight = 1
	case *routev3.RouteAction_ClusterHeader:
		if cs.ClusterHeader == "" {
			return errors.New("cluster_header: must not be empty")
		}
		r.ClusterHeader = http.CanonicalHeaderKey(cs.ClusterHeader)
	case *routev3.RouteAction_WeightedClusters:
		for i, c := range cs.WeightedClusters.GetClusters() {
			if c.GetName() == "" {
				return fmt.Errorf("weighted_clusters.clusters[%d].name: must be set", i)
			}
			w := c.GetWeight().GetValue()
			if w == 0 {
				continue // Envoy: a zero-weight cluster is never picked
			}
			r.clusters = append(r.clusters, WeightedCluster{Name: c.GetName(), Weight: w})
			r.totalWeight += uint64(w)
		}
		if r.totalWeight == 0 {
			return errors.New("weighted_clusters.clusters: the sum of weights must be positive")
		}
	default:
		return errors.New("cluster_specifier: one of cluster, cluster_header, weighted_clusters must be set")
	}
	switch c := a.GetClusterNotFoundResponseCode(); c {
	case routev3.RouteAction_SERVICE_UNAVAILABLE:
		r.ClusterNotFoundCode = http.StatusServiceUnavailable
	case routev3.RouteAction_NOT_FOUND:
		r.ClusterNotFoundCode = http.StatusNotFound
	case routev3.RouteAction_INTERNAL_SERVER_ERROR:
		r.ClusterNotFoundCode = http.StatusInternalServerError
	default:
		return fmt.Errorf("cluster_not_found_response_code: unknown value %d", c)
	}
	if a.GetPrefixRewrite() != "" {
		if r.m.kind != pathPrefix && r.m.kind != pathSeparatedPrefix && r.m.kind != pathExact {
			return errors.New("prefix_rewrite: only with a prefix, path or path_separated_prefix match")
		}
		p := a.GetPrefixRewrite()
		r.prefixRewrite = &p
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		if r.prefixRewrite != nil {
			return errors.New("regex_rewrite: prefix_rewrite is set too")
		}
		re, err := regexp.Compile(rr.GetPattern().GetRegex())
		if err != nil {
			return fmt.Errorf("regex_rewrite.pattern.regex: %w", err)
		}
		r.regexRewrite, r.regexSubstitution = re, envoySubstitution(rr.GetSubstitution())
	}
	switch h := a.GetHostRewriteSpecifier().(type) {
	case *routev3.RouteAction_HostRewriteLiteral:
		r.HostRewrite = h.HostRewriteLiteral
	case *routev3.RouteAction_AutoHostRewrite:
		r.AutoHostRewrite = h.AutoHostRewrite.GetValue()
	}
	var err error
	if r.Timeout, err = pbcheck.Duration(a.GetTimeout(), "timeout", DefaultTimeout, pbcheck.NonNegative); err != nil {
		return err
	}
	if r.IdleTimeout, err = pbcheck.Duration(a.GetIdleTimeout(), "idle_timeout", 0, pbcheck.NonNegative); err != nil {
		return err
	}
	r.HasIdleTimeout = a.GetIdleTimeout() != nil
	r.Retry = vhRetry
	if rp := a.GetRetryPolicy(); rp != nil {
		if r.Retry, err = decodeRetry(rp); err != nil {
			return fmt.Errorf("retry_policy: %w", err)
		}
	}
	for i, u := range a.GetUpgradeConfigs() {
		t := strings.ToLower(u.GetUpgradeType())
		if t == "" {
			return fmt.Errorf("upgrade_configs[%d].upgrade_type: must be set", i)
		}
		if r.Upgrades == nil {
			r.Upgrades = map[string]bool{}
		}
		r.Upgrades[t] = u.GetEnabled() == nil || u.GetEnabled().GetValue()
		if u.GetConnectConfig() != nil {
			if t != "connect" {
				return fmt.Errorf("upgrade_configs[%d].connect_config: only for upgrade_type CONNECT", i)
			}
			r.ConnectTerminate = true
		}
	}
	if m := a.GetMaxStreamDuration(); m != nil {
		if r.MaxStreamDuration, err = pbcheck.Duration(m.GetMaxStreamDuration(), "max_stream_duration.max_stream_duration",
			0, pbcheck.NonNegative); err != nil {
			return err
		}
		if r.GRPCTimeoutHeaderMax, err = pbcheck.Duration(m.GetGrpcTimeoutHeaderMax(), "max_stream_duration.grpc_timeout_header_max",
			0, pbcheck.NonNegative); err != nil {
			return err
		}
		r.HasGRPCTimeoutHeaderMax = m.GetGrpcTimeoutHeaderMax() != nil
		if r.GRPCTimeoutHeaderOffset, err = pbcheck.Duration(m.GetGrpcTimeoutHeaderOffset(), "max_stream_duration.grpc_timeout_header_offset",
			0, pbcheck.NonNegative); err != nil {
			return err
		}
	}
	return nil
}

// envoySubstitution turns Envoy's "\1" back-references into Go's "${1}" and
// escapes Go's "$".
func envoySubstitution(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '$':
			b.WriteString("$$")
		case s[i] == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			b.WriteString("${" + string(s[i+1]) + "}")
			i++
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

func decodeRetry(rp *routev3.RetryPolicy) (*RetryPolicy, error) {
	p := &RetryPolicy{NumRetries: 1, BackoffBase: defaultRetryBase}
	for _, name := range strings.Split(rp.GetRetryOn(), ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		bit, ok := retryOnNames[name]
		if !ok {
			return nil, fmt.Errorf("retry_on: %q is not supported by Sift (supported: 5xx, gateway-error, reset, connect-failure, "+
				"retriable-status-codes, refused-stream, retriable-4xx, and gRPC's cancelled, deadline-exceeded, resource-exhausted, unavailable, internal)", name)
		}
		p.On |= bit
	}
	if n := rp.GetNumRetries(); n != nil {
		p.NumRetries = int(min(n.GetValue(), 100))
	}
	var err error
	if p.PerTryTimeout, err = pbcheck.Duration(rp.GetPerTryTimeout(), "per_try_timeout", 0, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	for i, c := range rp.GetRetriableStatusCodes() {
		if c < 100 || c > 599 {
			return nil, fmt.Errorf("retriable_status_codes[%d]: %d is not an HTTP status", i, c)
		}
		p.StatusCodes = append(p.StatusCodes, int(c))
	}
	if b := rp.GetRetryBackOff(); b != nil {
		if b.GetBaseInterval() == nil {
			return nil, errors.New("retry_back_off.base_interval: must be set")
		}
		if p.BackoffBase, err = pbcheck.Duration(b.GetBaseInterval(), "retry_back_off.base_interval", 0, pbcheck.Positive); err != nil {
			return nil, err
		}
		if p.BackoffMax, err = pbcheck.Duration(b.GetMaxInterval(), "retry_back_off.max_interval", 0, p.BackoffBase); err != nil {
			return nil, err
		}
	}
	if p.BackoffMax == 0 {
		p.BackoffMax = 10 * p.BackoffBase
	}
	return p, nil
}

// VirtualHost selects the virtual host for authority with Envoy's domain
// search order: exact names, then suffix wildcards ("*.example.com",
// longest first), then prefix wildcards ("example.*", longest first), then
// "*". The authority is compared lower-case and with its port, unless the
// table ignores ports (ignore_port_in_host_matching) or the caller stripped
// it. It returns nil when nothing matches.
func (t *Table) VirtualHost(authority string) *VirtualHost {
	host := strings.ToLower(authority)
	if t.ignorePort {
		host = StripPort(host)
	}
	if vh := t.exact[host]; vh != nil {
		return vh
	}
	for _, w := range t.suffixes {
		if len(host) > len(w.affix) && strings.HasSuffix(host, w.affix) {
			return w.vh
		}
	}
	for _, w := range t.prefixes {
		if len(host) > len(w.affix) && strings.HasPrefix(host, w.affix) {
			return w.vh
		}
	}
	return t.any
}

// StripPort removes a ":port" suffix from an authority (keeping an IPv6
// literal's brackets).
func StripPort(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		if strings.Contains(h, ":") {
			return "[" + h + "]"
		}
		return h
	}
	return host
}

// Select returns the first route of r's virtual host that matches r, or nil
// (Envoy's 404 "route_not_found").
func (t *Table) Select(r *Request) *Route {
	vh := t.VirtualHost(r.Authority)
	if vh == nil {
		return nil
	}
	for _, rt := range vh.Routes {
		if rt.m.match(r) {
			return rt
		}
	}
	return nil
}

// Clusters returns the route's clusters with their weights (one entry for
// cluster); empty for cluster_header and direct responses.
func (r *Route) Clusters() []WeightedCluster { return r.clusters }

// PickCluster returns the cluster for one request: the route's cluster, one
// of its weighted_clusters at random by weight (rnd returns a uniform value
// in [0, n)), or the value of the cluster_header request header ("" when
// absent).
func (r *Route) PickCluster(h http.Header, rnd func(n uint64) uint64) string {
	if r.ClusterHeader != "" {
		return h.Get(r.ClusterHeader)
	}
	if len(r.clusters) == 1 {
		return r.clusters[0].Name
	}
	n := rnd(r.totalWeight)
	for _, c := range r.clusters {
		if n < uint64(c.Weight) {
			return c.Name
		}
		n -= uint64(c.Weight)
	}
	return r.clusters[len(r.clusters)-1].Name
}

// RewritePath applies prefix_rewrite or regex_rewrite to path (with its
// query), returning it unchanged when the route rewrites nothing.
func (r *Route) RewritePath(path string) string {
	switch {
	case r.prefixRewrite != nil:
		n := len(r.m.value)
		if n > len(path) {
			return path
		}
		out := *r.prefixRewrite + path[n:]
		if out == "" || out[0] == '?' {
			out = "/" + out
		}
		return out
	case r.regexRewrite != nil:
		p, q := path, ""
		if i := strings.IndexByte(path, '?'); i >= 0 {
			p, q = path[:i], path[i:]
		}
		return r.regexRewrite.ReplaceAllString(p, r.regexSubstitution) + q
	}
	return path
}

// UpgradeAllowed reports whether an upgrade of type typ (lower-case, e.g.
// "websocket", "connect") is allowed on this route, given the HCM's
// upgrade_configs (type → enabled).
func (r *Route) UpgradeAllowed(typ string, hcm map[string]bool) bool {
	if on, ok := r.Upgrades[typ]; ok {
		return on && (hcm[typ] || hcmHas(hcm, typ))
	}
	return hcm[typ]
}

// hcmHas: Envoy lets a route enable an upgrade the HCM lists as disabled,
// but not one the HCM does not list at all.
func hcmHas(hcm map[string]bool, typ string) bool {
	_, ok := hcm[typ]
	return ok
}

// Edits are header additions and removals at one level (route, virtual
// host, route configuration).
type Edits struct {
	Remove []string // canonical names
	Add    []HeaderAdd
}

// Empty reports whether e changes nothing.
func (e *Edits) Empty() bool { return len(e.Remove) == 0 && len(e.Add) == 0 }

// AppendAction is HeaderValueOption.append_action.
type AppendAction uint8

const (
	AppendIfExistsOrAdd AppendAction = iota
	AddIfAbsent
	OverwriteIfExistsOrAdd
	OverwriteIfExists
)

// HeaderAdd is a decoded HeaderValueOption.
type HeaderAdd struct {
	Name      string // canonical
	Value     string
	Action    AppendAction
	KeepEmpty bool
}

func decodeEdits(add []*corev3.HeaderValueOption, remove []string, field string) (Edits, error) {
	var e Edits
	for _, r := range remove {
		if r == "" || strings.HasPrefix(r, ":") || strings.EqualFold(r, "host") {
			return e, fmt.Errorf("%s_to_remove: %q may not be removed", field, r)
		}
		e.Remove = append(e.Remove, http.CanonicalHeaderKey(r))
	}
	for i, hv := range add {
		path := fmt.Sprintf("%s_to_add[%d]", field, i)
		name := hv.GetHeader().GetKey()
		if name == "" || strings.HasPrefix(name, ":") || strings.EqualFold(name, "host") {
			return e, fmt.Errorf("%s.header.key: %q may not be set", path, name)
		}
		v := hv.GetHeader().GetValue()
		if len(hv.GetHeader().GetRawValue()) > 0 {
			v = string(hv.GetHeader().GetRawValue())
		}
		lit, err := literal(v)
		if err != nil {
			return e, fmt.Errorf("%s.header.value: %w", path, err)
		}
		a := HeaderAdd{Name: http.CanonicalHeaderKey(name), Value: lit, KeepEmpty: hv.GetKeepEmptyValue()}
		switch hv.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			a.Action = AppendIfExistsOrAdd
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			a.Action = AddIfAbsent
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			a.Action = OverwriteIfExistsOrAdd
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			a.Action = OverwriteIfExists
		}
		if ap := hv.GetAppend(); ap != nil {
			if hv.GetAppendAction() != corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
				return e, fmt.Errorf("%s: append and append_action are both set", path)
			}
			if !ap.GetValue() {
				a.Action = OverwriteIfExistsOrAdd
			}
		}
		e.Add = append(e.Add, a)
	}
	return e, nil
}

// literal decodes a header value: Envoy's header values are format strings
// whose "%COMMAND%" operators Sift does not implement; "%%" is a literal '%'.
func literal(v string) (string, error) {
	if !strings.Contains(v, "%") {
		return v, nil
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+1 < len(v) && v[i+1] == '%' {
			b.WriteByte('%')
			i++
			continue
		}
		return "", fmt.Errorf("%q: format operators (%%...%%) are not supported by Sift; write %%%% for a literal %%", v)
	}
	return b.String(), nil
}

// Apply edits h: removals first, then additions.
func (e *Edits) Apply(h http.Header) {
	for _, name := range e.Remove {
		delete(h, name)
	}
	for _, a := range e.Add {
		if a.Value == "" && !a.KeepEmpty {
			continue
		}
		_, exists := h[a.Name]
		switch a.Action {
		case AppendIfExistsOrAdd:
			h[a.Name] = append(h[a.Name], a.Value)
		case AddIfAbsent:
			if !exists {
				h[a.Name] = []string{a.Value}
			}
		case OverwriteIfExistsOrAdd:
			h[a.Name] = []string{a.Value}
		case OverwriteIfExists:
			if exists {
				h[a.Name] = []string{a.Value}
			}
		}
	}
}

// ApplyRequest applies the request edits of the route, its virtual host and
// the table, in that order (Envoy's default: the most general level wins).
func (t *Table) ApplyRequest(r *Route, h http.Header) {
	r.RequestHeaders.Apply(h)
	r.VirtualHost.RequestHeaders.Apply(h)
	t.RequestHeaders.Apply(h)
}

// ApplyResponse applies the response edits of the route, its virtual host
// and the table, in that order.
func (t *Table) ApplyResponse(r *Route, h http.Header) {
	r.ResponseHeaders.Apply(h)
	r.VirtualHost.ResponseHeaders.Apply(h)
	t.ResponseHeaders.Apply(h)
}
