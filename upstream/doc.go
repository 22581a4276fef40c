// Package upstream holds clusters: their endpoints (static, resolved by
// STRICT_DNS, or delivered by EDS), the load balancing that picks one for a
// new connection (with the policies of package upstream/balancer, which the
// HTTP router uses for requests too), and the Manager that names them for
// the data path.
//
// Build turns an Envoy v3 Cluster into a running *Cluster after validating it
// completely. A Cluster keeps its endpoint set and load-balancing picker in an
// immutable snapshot that is swapped atomically when the endpoints change (a
// DNS refresh, or an EDS ClusterLoadAssignment through UpdateLoadAssignment);
// per-endpoint balancing state (open connections, the peak-EWMA connect-time
// estimate) lives in atomics on balancer.Endpoints that survive the swap.
//
// # Configuration
//
// fields.go gives the rule for every field of every message Build reads, in
// internal/pbcheck's policy language (http.go adds those of the HTTP
// options, load-balancing policies, outlier detection and circuit
// breakers); a set field that is not accepted there, or a field this version
// does not know, is an error naming it by its path from the cluster, e.g.
//
//	upstream: cluster "web": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.pipe: not supported by Sift (unix socket endpoints are not supported)
//
// Implemented, with Envoy's semantics:
//   - name; type STATIC, STRICT_DNS or EDS (eds_cluster_config.eds_config
//     and service_name; see eds.go). LOGICAL_DNS, ORIGINAL_DST and
//     cluster_type are rejected.
//   - connect_timeout (default 5 s).
//   - lb_policy ROUND_ROBIN, LEAST_REQUEST, RANDOM (package balancer);
//     least_request_lb_config.choice_count (default 2) and
//     active_request_bias 1.0 only; round_robin_lb_config without slow start;
//     common_lb_config.healthy_panic_threshold 0 only.
//   - load_assignment.endpoints[].lb_endpoints[]: endpoint.address.socket_address
//     (address, port_value, protocol TCP), endpoint.hostname,
//     load_balancing_weight, health_status; endpoints[].priority 0 only.
//   - dns_refresh_rate (default 5 s), dns_failure_refresh_rate, dns_jitter,
//     dns_lookup_family (all five values; see dnsResolver).
//   - upstream_connection_options.tcp_keepalive.
//   - For HTTP (http.go; used by filters/httplb): typed_extension_protocol_options
//     envoy.extensions.upstreams.http.v3.HttpProtocolOptions (explicit_http_config,
//     use_downstream_protocol_config, common_http_protocol_options idle_timeout and
//     max_response_headers_kb), the deprecated http2_protocol_options,
//     http_protocol_options, common_http_protocol_options and protocol_selection;
//     load_balancing_policy (Envoy's round_robin, least_request, random, and
//     Sift's peak_ewma), which Dial honours too (under peak_ewma a
//     connection's latency sample is its connect time); outlier_detection
//     (consecutive 5xx and gateway failures); circuit_breakers DEFAULT
//     max_connections and max_requests.
//
// Accepted and ignored, because Envoy treats them as tuning or statistics, or
// because they are inert given what Sift rejects (the reason for each is in
// the policy, fields.go or http.go, and Build logs each one a cluster sets at
// debug level): alt_stat_name, stats_matcher, track_timeout_budgets,
// track_cluster_stats, per_connection_buffer_limit_bytes, respect_dns_ttl,
// use_tcp_for_dns_lookups, wait_for_warm_on_init, cleanup_interval, metadata,
// preconnect_policy, close_connections_on_host_health_failure,
// ignore_health_on_host_removal; common_lb_config's update_merge_window,
// ignore_new_hosts_until_first_hc and consistent_hashing_lb_config;
// upstream_connection_options.set_local_interface_name_on_upstream_connections;
// least_request_lb_config.active_request_bias.runtime_key;
// load_assignment.cluster_name; load_assignment.policy's
// overprovisioning_factor, weighted_priority_health and endpoint_stale_after;
// endpoints[]'s locality, metadata, load_balancing_weight (locality weights:
// inert in Envoy too without locality_weighted_lb_config) and proximity;
// lb_endpoints[].metadata; endpoint.health_check_config and
// observability_name; socket_address.ipv4_compat; circuit_breakers'
// max_pending_requests, max_retries and track_remaining; enable_trailers.
//
// Everything else is rejected: health checks, transport sockets (TLS), custom DNS
// resolvers, subset and hashing load balancers, upstream filters, load
// reporting, and so on.
//
// # Differences from Envoy
//
//   - No panic mode: Envoy's default healthy_panic_threshold (50%) balances
//     over all hosts once fewer than half are healthy; Sift never picks an
//     UNHEALTHY, DRAINING or TIMEOUT host. DEGRADED hosts are used only when
//     no host is HEALTHY or UNKNOWN (Envoy spills over gradually).
//   - Circuit breakers apply only where a cluster sets them, and to HTTP
//     traffic: Envoy's implicit defaults (1024 connections and 1024 requests
//     per cluster) do not apply; max_connections caps each endpoint's pool
//     where Envoy caps the cluster; max_pending_requests and max_retries are
//     not enforced.
//   - respect_dns_ttl is ignored (Go's resolver does not report TTLs), and a
//     STRICT_DNS cluster has one refresh timer rather than one per name.
package upstream
