// Package route decodes Envoy's RouteConfiguration into an immutable Table
// and selects the route for a request: virtual host by domain, then the
// first route whose match accepts the request. It is a pure core: no I/O,
// safe for concurrent use once built.
//
// Implemented (see policy in decode.go for the accepted fields, and those
// accepted without effect with the reason; anything else set is an error
// naming it):
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
//
// Files: route.go holds the types and selection, decode.go turns a
// RouteConfiguration into a Table, match.go the route matchers, retry.go the
// retry policy, headers.go the header edits.
package route

import (
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// Envoy's defaults.
const (
	// DefaultTimeout is RouteAction.timeout's default.
	DefaultTimeout = 15 * time.Second
	// DefaultBufferLimit bounds the request body kept for retries: Envoy's
	// default per_connection_buffer_limit_bytes (1 MiB), which its retry
	// buffer inherits.
	DefaultBufferLimit = 1 << 20
)

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
