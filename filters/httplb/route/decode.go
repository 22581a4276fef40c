package route

import (
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/siftmesh/sift/internal/pbcheck"
)

// policy lists the fields of RouteConfiguration and the messages it holds
// that Sift implements or accepts without effect; anything else set is an
// error naming it.
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
		Ignore("decorator", "names the route's tracing span: Sift rejects HttpConnectionManager.tracing").
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
		"retriable_status_codes, retry_back_off, retry_host_predicate, host_selection_retry_max_attempts"),
	"envoy.config.route.v3.RetryPolicy.RetryHostPredicate":          pbcheck.Fields("name, typed_config"),
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

// ClusterRef is a cluster a RouteConfiguration names, with the field's path
// ("virtual_hosts[0].routes[1].route.cluster").
type ClusterRef struct {
	Field, Cluster string
}

// ClusterRefs lists the clusters rc's routes name (cluster and
// weighted_clusters; cluster_header names none in advance). It reads rc
// only: Decode validates it.
func ClusterRefs(rc *routev3.RouteConfiguration) []ClusterRef {
	var refs []ClusterRef
	for v, vh := range rc.GetVirtualHosts() {
		for r, rt := range vh.GetRoutes() {
			path := fmt.Sprintf("virtual_hosts[%d].routes[%d].route", v, r)
			if c := rt.GetRoute().GetCluster(); c != "" {
				refs = append(refs, ClusterRef{Field: path + ".cluster", Cluster: c})
			}
			for n, wc := range rt.GetRoute().GetWeightedClusters().GetClusters() {
				refs = append(refs, ClusterRef{Field: fmt.Sprintf("%s.weighted_clusters.clusters[%d].name", path, n), Cluster: wc.GetName()})
			}
		}
	}
	return refs
}
