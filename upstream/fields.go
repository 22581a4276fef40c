package upstream

import "github.com/siftmesh/sift/internal/pbcheck"

// This file is the field-by-field contract between Envoy's Cluster resource
// and Sift, in internal/pbcheck's policy language: every field of every
// message Build reads is listed with what Sift does with it, and
// policy.Check rejects any set field that is not accepted, or a field this
// version does not know, so no configuration is silently dropped.
//
//   - use: Build reads it and Sift implements Envoy's semantics (see config.go
//     for the value checks and documented approximations). A message field
//     is entered, and checked against its own entry when it has one.
//   - ignore: accepted and has no effect. Only fields that Envoy itself treats
//     as optional tuning, statistics, or that are inert given what Sift rejects
//     elsewhere (e.g. health-check settings without health checks) are here;
//     the reason is given beside each.
//   - reject, or absent from the list: Build fails, naming the field.
//
// A test checks that every field of every listed message has an entry, so a
// new go-control-plane release forces a decision on its new fields.

// Shorthands, so that the table below reads as a table.
var (
	use    = pbcheck.Use
	ignore = pbcheck.Ignore
	reject = pbcheck.Reject
)

const (
	whyHTTP      = "this HTTP upstream setting is not supported"
	whyStats     = "statistics only"
	whyNoHC      = "inert: Sift has no active health checking"
	whyOneLevel  = "inert: Sift has one priority level and no locality weighting"
	whyLBNotImpl = "its lb_policy is not supported by Sift"
	whyNoRuntime = "Sift has no runtime layer: the default value applies, as in Envoy when the key is absent"
)

// policy maps a message's full name to the rule for each of its fields.
var policy = pbcheck.Policy{
	"envoy.config.cluster.v3.Cluster": {
		"name":                        use(),
		"type":                        use(),
		"cluster_type":                reject("custom cluster types are not supported"),
		"eds_cluster_config":          use(),
		"connect_timeout":             use(),
		"lb_policy":                   use(),
		"load_assignment":             use(),
		"dns_refresh_rate":            use(),
		"dns_jitter":                  use(),
		"dns_failure_refresh_rate":    use(),
		"dns_lookup_family":           use(),
		"least_request_lb_config":     use(),
		"round_robin_lb_config":       use(),
		"common_lb_config":            use(),
		"upstream_connection_options": use(),

		"alt_stat_name":                            ignore(whyStats),
		"stats_matcher":                            ignore(whyStats),
		"track_timeout_budgets":                    ignore(whyStats),
		"track_cluster_stats":                      ignore(whyStats),
		"per_connection_buffer_limit_bytes":        ignore("buffer tuning: Sift's proxies bound their own buffers"),
		"respect_dns_ttl":                          ignore("Go's resolver does not report TTLs: Sift refreshes every dns_refresh_rate"),
		"use_tcp_for_dns_lookups":                  ignore("deprecated; Go's resolver retries over TCP when an answer is truncated"),
		"wait_for_warm_on_init":                    ignore("Dial waits for the first resolution within its timeout; Cluster.Ready reports it"),
		"cleanup_interval":                         ignore("used by ORIGINAL_DST clusters only"),
		"metadata":                                 ignore("read by filters, not by the cluster"),
		"close_connections_on_host_health_failure": ignore(whyNoHC),
		"ignore_health_on_host_removal":            ignore(whyNoHC),
		"preconnect_policy":                        ignore("preconnecting is an optimisation"),

		"transport_socket_matches":                     use(), // tls.go
		"transport_socket_matcher":                     reject("the transport_socket_matcher matcher tree is not supported: use transport_socket_matches"),
		"transport_socket":                             use(), // tls.go
		"per_connection_buffer_high_watermark_timeout": reject("buffer watermark enforcement is not supported"),
		"health_checks":                                reject("active health checking is not supported"),
		"outlier_detection":                            use(), // http.go
		"circuit_breakers":                             use(), // http.go
		"max_requests_per_connection":                  reject(whyHTTP),
		"upstream_http_protocol_options":               reject(whyHTTP),
		"common_http_protocol_options":                 use(), // http.go
		"http_protocol_options":                        use(), // http.go
		"http2_protocol_options":                       use(), // http.go
		"typed_extension_protocol_options":             use(), // http.go
		"protocol_selection":                           use(), // http.go
		"connection_pool_per_downstream_connection":    reject(whyHTTP),
		"dns_resolvers":                                reject("custom DNS resolvers are not supported: Sift uses the system resolver"),
		"dns_resolution_config":                        reject("custom DNS resolvers are not supported: Sift uses the system resolver"),
		"typed_dns_resolver_config":                    reject("custom DNS resolvers are not supported: Sift uses the system resolver"),
		"upstream_bind_config":                         reject("binding upstream connections is not supported"),
		"lb_subset_config":                             reject("subset load balancing is not supported"),
		"ring_hash_lb_config":                          reject(whyLBNotImpl),
		"maglev_lb_config":                             reject(whyLBNotImpl),
		"original_dst_lb_config":                       reject(whyLBNotImpl),
		"load_balancing_policy":                        use(), // http.go
		"filters":                                      reject("upstream network filters are not supported"),
		"lrs_server":                                   reject("load reporting is not supported"),
		"lrs_report_endpoint_metrics":                  reject("load reporting is not supported"),
		"upstream_config":                              reject("custom upstream configurations are not supported"),
		"queuing_policies":                             reject("queuing policies are not supported"),
	},
	"envoy.config.cluster.v3.Cluster.RefreshRate": {
		"base_interval": use(),
		"max_interval":  use(),
	},
	"envoy.config.cluster.v3.Cluster.LeastRequestLbConfig": {
		"choice_count":        use(),
		"active_request_bias": use(),
		"slow_start_config":   reject("slow start is not supported"),
	},
	"envoy.config.core.v3.RuntimeDouble": {
		"default_value": use(),
		"runtime_key":   ignore(whyNoRuntime),
	},
	"envoy.config.cluster.v3.Cluster.RoundRobinLbConfig": {
		"slow_start_config": reject("slow start is not supported"),
	},
	"envoy.config.cluster.v3.Cluster.CommonLbConfig": {
		"healthy_panic_threshold":              use(),
		"update_merge_window":                  ignore("batching of host updates is tuning"),
		"ignore_new_hosts_until_first_hc":      ignore(whyNoHC),
		"consistent_hashing_lb_config":         ignore("used by hashing load balancers only, which are rejected"),
		"zone_aware_lb_config":                 reject("zone aware routing is not supported"),
		"locality_weighted_lb_config":          reject("locality weighted load balancing is not supported"),
		"close_connections_on_host_set_change": reject("closing connections on host set change is not supported"),
		"override_host_status":                 reject("host override is not supported"),
	},
	"envoy.config.cluster.v3.UpstreamConnectionOptions": {
		"tcp_keepalive": use(),
		"set_local_interface_name_on_upstream_connections": ignore("only fills connection info for logging"),
		"happy_eyeballs_config":                            reject("happy eyeballs is not supported"),
	},
	"envoy.config.endpoint.v3.ClusterLoadAssignment": {
		"cluster_name":    ignore("Envoy ignores it for STATIC and STRICT_DNS clusters"),
		"endpoints":       use(),
		"policy":          use(),
		"named_endpoints": reject("named endpoints are not supported"),
	},
	"envoy.config.endpoint.v3.ClusterLoadAssignment.Policy": {
		"overprovisioning_factor":  ignore(whyOneLevel),
		"weighted_priority_health": ignore(whyOneLevel),
		"endpoint_stale_after":     ignore("EDS only"),
		"drop_overloads":           reject("drop overloads are not supported"),
	},
	"envoy.config.endpoint.v3.LocalityLbEndpoints": {
		"lb_endpoints":                 use(),
		"priority":                     use(),
		"locality":                     ignore(whyOneLevel),
		"metadata":                     ignore("read by filters, not by the cluster"),
		"load_balancing_weight":        ignore("as in Envoy, locality weights only apply with common_lb_config.locality_weighted_lb_config (rejected)"),
		"proximity":                    ignore("Envoy does not use it yet"),
		"load_balancer_endpoints":      reject("LEDS is not supported: use lb_endpoints"),
		"leds_cluster_locality_config": reject("LEDS is not supported: use lb_endpoints"),
	},
	"envoy.config.endpoint.v3.LbEndpoint": {
		"endpoint":              use(),
		"health_status":         use(),
		"load_balancing_weight": use(),
		"metadata":              use(), // envoy.transport_socket_match (tls.go); other keys are read by filters
		"endpoint_name":         reject("named endpoints are not supported: use endpoint"),
	},
	"envoy.config.endpoint.v3.Endpoint": {
		"address":              use(),
		"hostname":             use(),
		"health_check_config":  ignore(whyNoHC),
		"observability_name":   ignore(whyStats),
		"additional_addresses": reject("additional addresses are not supported"),
	},
	"envoy.config.core.v3.Address": {
		"socket_address":         use(),
		"pipe":                   reject("unix socket endpoints are not supported"),
		"envoy_internal_address": reject("internal addresses are not supported"),
	},
	"envoy.config.core.v3.SocketAddress": {
		"protocol":                   use(),
		"address":                    use(),
		"port_value":                 use(),
		"ipv4_compat":                ignore("applies to binding listeners, not to upstream endpoints"),
		"named_port":                 reject("named ports are not supported: use port_value"),
		"resolver_name":              reject("custom resolvers are not supported"),
		"network_namespace_filepath": reject("network namespaces are not supported"),
	},
}
