package upstream

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/siftmesh/sift/internal/pbcheck"
)

const lbe = `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":80}}}}`

// withEndpoint returns a STATIC cluster "c" whose one lb_endpoint is ep
// (JSON), after a healthy first one, plus extra top-level fields.
func withEndpoint(extra, ep string) string {
	return `{"name":"c",` + extra + `"loadAssignment":{"endpoints":[{"lbEndpoints":[` + lbe + `,` + ep + `]}]}}`
}

func TestBuildValid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		cluster     string
		wantTimeout time.Duration
		want        []Endpoint
	}{
		{
			name:        "minimal static",
			cluster:     staticCluster("c", "", "127.0.0.1:80"),
			wantTimeout: 5 * time.Second,
			want:        []Endpoint{{Addr: "127.0.0.1:80", Weight: 1, Health: "UNKNOWN"}},
		},
		{
			name:        "connect_timeout, ipv6, weights, health, hostname",
			cluster:     `{"name":"c","type":"STATIC","connectTimeout":"0.25s","loadAssignment":{"clusterName":"x","endpoints":[{"lbEndpoints":[` + `{"endpoint":{"address":{"socketAddress":{"address":"::1","portValue":8080}},"hostname":"a.example"},"loadBalancingWeight":3,"healthStatus":"HEALTHY"},` + `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.2","portValue":81}}},"healthStatus":"DRAINING"}` + `]}]}}`,
			wantTimeout: 250 * time.Millisecond,
			want: []Endpoint{
				{Addr: "[::1]:8080", Weight: 3, Health: "HEALTHY", Hostname: "a.example"},
				{Addr: "127.0.0.2:81", Weight: 1, Health: "DRAINING"},
			},
		},
		{
			name:        "no load_assignment",
			cluster:     `{"name":"c"}`,
			wantTimeout: 5 * time.Second,
			want:        []Endpoint{},
		},
		{
			name: "accepted and ignored tuning",
			cluster: staticCluster("c", `"altStatName":"x","perConnectionBufferLimitBytes":32768,"metadata":{"filterMetadata":{"istio":{"a":"b"}}},`+
				`"respectDnsTtl":true,"waitForWarmOnInit":false,"cleanupInterval":"10s","trackClusterStats":{"timeoutBudgets":true},`+
				`"preconnectPolicy":{"perUpstreamPreconnectRatio":1.5},"commonLbConfig":{"healthyPanicThreshold":{"value":0},"updateMergeWindow":"1s"},`+
				`"dnsRefreshRate":"10s","dnsLookupFamily":"V4_ONLY",`, "127.0.0.1:80"),
			wantTimeout: 5 * time.Second,
			want:        []Endpoint{{Addr: "127.0.0.1:80", Weight: 1, Health: "UNKNOWN"}},
		},
		{
			name:        "least request config",
			cluster:     staticCluster("c", `"lbPolicy":"LEAST_REQUEST","leastRequestLbConfig":{"choiceCount":3,"activeRequestBias":{"defaultValue":1,"runtimeKey":"k"}},`, "127.0.0.1:80"),
			wantTimeout: 5 * time.Second,
			want:        []Endpoint{{Addr: "127.0.0.1:80", Weight: 1, Health: "UNKNOWN"}},
		},
		{
			name: "locality fields ignored",
			cluster: `{"name":"c","loadAssignment":{"endpoints":[{"locality":{"zone":"z"},"loadBalancingWeight":5,"priority":0,"lbEndpoints":[` + lbe + `]}],` +
				`"policy":{"overprovisioningFactor":140}}}`,
			wantTimeout: 5 * time.Second,
			want:        []Endpoint{{Addr: "127.0.0.1:80", Weight: 1, Health: "UNKNOWN"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := build(t, clusterJSON(t, tt.cluster), Options{})
			if c.Name() != "c" {
				t.Errorf("Name() = %q, want c", c.Name())
			}
			if got := c.ConnectTimeout(); got != tt.wantTimeout {
				t.Errorf("ConnectTimeout() = %v, want %v", got, tt.wantTimeout)
			}
			if diff := cmp.Diff(tt.want, c.Endpoints()); diff != "" {
				t.Errorf("Endpoints() (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildInvalid(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cluster string
		wantErr string
	}{
		{"no name", `{"connectTimeout":"1s"}`,
			`upstream: cluster "": name: must be set`},
		{"EDS without eds_config", `{"name":"x","type":"EDS","edsClusterConfig":{"serviceName":"s"}}`,
			`upstream: cluster "x": eds_cluster_config.eds_config: must be set for type EDS`},
		{"EDS with load_assignment", `{"name":"x","type":"EDS","edsClusterConfig":{"edsConfig":{"ads":{}}},"loadAssignment":{"clusterName":"x"}}`,
			`upstream: cluster "x": load_assignment: not used by an EDS cluster (its endpoints come from eds_cluster_config)`},
		{"LOGICAL_DNS", `{"name":"c","type":"LOGICAL_DNS"}`,
			`upstream: cluster "c": type: LOGICAL_DNS is not supported by Sift (supported: STATIC, STRICT_DNS, EDS)`},
		{"ORIGINAL_DST", `{"name":"c","type":"ORIGINAL_DST","lbPolicy":"CLUSTER_PROVIDED"}`,
			`upstream: cluster "c": type: ORIGINAL_DST is not supported by Sift (supported: STATIC, STRICT_DNS, EDS)`},
		{"custom cluster type", `{"name":"c","clusterType":{"name":"envoy.clusters.aggregate"}}`,
			`upstream: cluster "c": cluster_type: custom cluster type "envoy.clusters.aggregate" is not supported by Sift`},
		{"RING_HASH", `{"name":"c","lbPolicy":"RING_HASH","ringHashLbConfig":{}}`,
			`upstream: cluster "c": lb_policy: RING_HASH is not supported by Sift (supported: ROUND_ROBIN, LEAST_REQUEST, RANDOM)`},
		{"MAGLEV", `{"name":"c","lbPolicy":"MAGLEV"}`,
			`upstream: cluster "c": lb_policy: MAGLEV is not supported by Sift (supported: ROUND_ROBIN, LEAST_REQUEST, RANDOM)`},
		{"CLUSTER_PROVIDED", `{"name":"c","lbPolicy":"CLUSTER_PROVIDED"}`,
			`upstream: cluster "c": lb_policy: CLUSTER_PROVIDED is not supported by Sift (supported: ROUND_ROBIN, LEAST_REQUEST, RANDOM)`},
		{"load_balancing_policy", `{"name":"c","loadBalancingPolicy":{"policies":[{"typedExtensionConfig":{"name":"x","typedConfig":{"@type":"type.googleapis.com/google.protobuf.Empty"}}}]}}`,
			`upstream: cluster "c": load_balancing_policy.policies: none is supported by Sift (got [type.googleapis.com/google.protobuf.Empty]; supported: envoy.extensions.load_balancing_policies round_robin, least_request, random, and sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma)`},
		{"health checks", `{"name":"c","healthChecks":[{"timeout":"1s","interval":"1s","tcpHealthCheck":{}}]}`,
			`upstream: cluster "c": health_checks: not supported by Sift (active health checking is not supported)`},
		{"circuit breakers", `{"name":"c","circuitBreakers":{"thresholds":[{"priority":"HIGH","maxConnections":10}]}}`,
			`upstream: cluster "c": circuit_breakers.thresholds[0].priority: only DEFAULT is supported by Sift`},
		{"transport socket", `{"name":"c","transportSocket":{"name":"envoy.transport_sockets.tls"}}`,
			`upstream: cluster "c": transport_socket: no secret store (a TLS transport socket needs a server)`},
		{"protocol options map", `{"name":"c","typedExtensionProtocolOptions":{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":{"@type":"type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions","autoConfig":{}}}}`,
			`upstream: cluster "c": typed_extension_protocol_options[envoy.extensions.upstreams.http.v3.HttpProtocolOptions].auto_config: not supported by Sift`},
		{"mesh upgrade on an HTTP/1.1 cluster", `{"name":"c","typedExtensionProtocolOptions":{"sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade":{"@type":"type.googleapis.com/sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade"}}}`,
			`upstream: cluster "c": typed_extension_protocol_options[sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade]: the cluster speaks HTTP/1.1 only; the upgrade needs envoy.extensions.upstreams.http.v3.HttpProtocolOptions with explicit_http_config.http2_protocol_options or use_downstream_protocol_config`},
		{"dns resolvers", `{"name":"c","type":"STRICT_DNS","dnsResolvers":[{"socketAddress":{"address":"127.0.0.1","portValue":53}}]}`,
			`upstream: cluster "c": dns_resolvers: not supported by Sift (custom DNS resolvers are not supported: Sift uses the system resolver)`},
		{"STATIC name", withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"address":"backend","portValue":80}}}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address: "backend" is not an IP address (a STATIC cluster needs IPs; use STRICT_DNS for names)`},
		{"port 0", withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1"}}}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.port_value: 0: must be in 1-65535`},
		{"UDP", withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"protocol":"UDP","address":"127.0.0.1","portValue":53}}}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.protocol: UDP is not supported by Sift (only TCP)`},
		{"named port", withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","namedPort":"http"}}}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.named_port: not supported by Sift (named ports are not supported: use port_value)`},
		{"pipe", withEndpoint("", `{"endpoint":{"address":{"pipe":{"path":"/tmp/s"}}}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.pipe: not supported by Sift (unix socket endpoints are not supported)`},
		{"no address", withEndpoint("", `{"endpoint":{}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.address: socket_address must be set`},
		{"no endpoint", withEndpoint("", `{"healthStatus":"HEALTHY"}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint: must be set`},
		{"endpoint name", withEndpoint("", `{"endpointName":"n"}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint_name: not supported by Sift (named endpoints are not supported: use endpoint)`},
		{"additional addresses", withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":80}},"additionalAddresses":[{"address":{"socketAddress":{"address":"::1","portValue":80}}}]}}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].endpoint.additional_addresses: not supported by Sift (additional addresses are not supported)`},
		{"weight 0", withEndpoint("", `{"endpoint":{"address":{"socketAddress":{"address":"127.0.0.1","portValue":80}}},"loadBalancingWeight":0}`),
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[1].load_balancing_weight: must be at least 1`},
		{"priority", `{"name":"c","loadAssignment":{"endpoints":[{"lbEndpoints":[` + lbe + `]},{"priority":1,"lbEndpoints":[` + lbe + `]}]}}`,
			`upstream: cluster "c": load_assignment.endpoints[1].priority: 1: priority levels are not supported by Sift (only 0)`},
		{"drop overloads", `{"name":"c","loadAssignment":{"policy":{"dropOverloads":[{"category":"x"}]}}}`,
			`upstream: cluster "c": load_assignment.policy.drop_overloads: not supported by Sift (drop overloads are not supported)`},
		{"choice_count 1", `{"name":"c","lbPolicy":"LEAST_REQUEST","leastRequestLbConfig":{"choiceCount":1}}`,
			`upstream: cluster "c": least_request_lb_config.choice_count: 1: must be at least 2`},
		{"active_request_bias", `{"name":"c","lbPolicy":"LEAST_REQUEST","leastRequestLbConfig":{"activeRequestBias":{"defaultValue":0.5}}}`,
			`upstream: cluster "c": least_request_lb_config.active_request_bias.default_value: 0.5: only 1.0 (Envoy's default) is supported`},
		{"slow start", `{"name":"c","roundRobinLbConfig":{"slowStartConfig":{"slowStartWindow":"10s"}}}`,
			`upstream: cluster "c": round_robin_lb_config.slow_start_config: not supported by Sift (slow start is not supported)`},
		{"least request config with round robin", `{"name":"c","leastRequestLbConfig":{"choiceCount":3}}`,
			`upstream: cluster "c": least_request_lb_config: set, but lb_policy is ROUND_ROBIN`},
		{"panic threshold", `{"name":"c","commonLbConfig":{"healthyPanicThreshold":{"value":50}}}`,
			`upstream: cluster "c": common_lb_config.healthy_panic_threshold: 50: Sift has no panic mode, only 0 (disabled) is supported`},
		{"zero connect_timeout", `{"name":"c","connectTimeout":"0s"}`,
			`upstream: cluster "c": connect_timeout: 0s: must be positive`},
		{"negative connect_timeout", `{"name":"c","connectTimeout":"-1s"}`,
			`upstream: cluster "c": connect_timeout: -1s: must be positive`},
		{"dns_refresh_rate", `{"name":"c","type":"STRICT_DNS","dnsRefreshRate":"0.0005s"}`,
			`upstream: cluster "c": dns_refresh_rate: 500µs: must be at least 1ms`},
		{"dns failure refresh rate", `{"name":"c","type":"STRICT_DNS","dnsFailureRefreshRate":{"baseInterval":"2s","maxInterval":"1s"}}`,
			`upstream: cluster "c": dns_failure_refresh_rate.max_interval: 1s: must not be less than base_interval 2s`},
		{"STRICT_DNS blank name", `{"name":"c","type":"STRICT_DNS","loadAssignment":{"endpoints":[{"lbEndpoints":[{"endpoint":{"address":{"socketAddress":{"address":"a b","portValue":80}}}}]}]}}`,
			`upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "a b" is not a DNS name`},
		{"outlier detection", `{"name":"c","outlierDetection":{"successRateMinimumHosts":3}}`,
			`upstream: cluster "c": outlier_detection.success_rate_minimum_hosts: not supported by Sift`},
		{"happy eyeballs", `{"name":"c","upstreamConnectionOptions":{"happyEyeballsConfig":{}}}`,
			`upstream: cluster "c": upstream_connection_options.happy_eyeballs_config: not supported by Sift (happy eyeballs is not supported)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Build(clusterJSON(t, tt.cluster), Options{Resolver: noDNS})
			if err == nil {
				c.Close()
				t.Fatalf("Build succeeded, want error %q", tt.wantErr)
			}
			if diff := cmp.Diff(tt.wantErr, err.Error()); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBuildNil(t *testing.T) {
	t.Parallel()
	if _, err := Build(nil, Options{}); err == nil {
		t.Fatal("Build(nil) succeeded")
	}
}

// A field this version of Sift does not know (e.g. from a newer control
// plane) is rejected, not dropped.
func TestBuildUnknownField(t *testing.T) {
	t.Parallel()
	pb := clusterJSON(t, staticCluster("c", "", "127.0.0.1:80"))
	ep := pb.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint()
	ep.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1))
	_, err := Build(pb, Options{})
	want := `upstream: cluster "c": load_assignment.endpoints[0].lb_endpoints[0].endpoint: unknown field number 99 (newer API?): not supported by Sift`
	if err == nil || err.Error() != want {
		t.Fatalf("Build: %v, want %s", err, want)
	}
}

func TestBuildKeepalive(t *testing.T) {
	t.Parallel()
	c := build(t, clusterJSON(t, staticCluster("c", `"upstreamConnectionOptions":{"tcpKeepalive":{"keepaliveTime":30,"keepaliveProbes":3}},`, "127.0.0.1:80")), Options{})
	want := net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: -1, Count: 3}
	if diff := cmp.Diff(want, c.dialer.KeepAliveConfig); diff != "" {
		t.Errorf("KeepAliveConfig (-want +got):\n%s", diff)
	}
}

// Every field of every message in policy has a rule, and every rule names a
// real field: the list in fields.go is complete and has no typo.
func TestPolicyComplete(t *testing.T) {
	t.Parallel()
	for _, p := range []pbcheck.Policy{policy, httpPolicy} {
		if err := p.Audit(); err != nil {
			t.Error(err)
		}
	}
	for _, f := range policy.Unruled() {
		t.Errorf("policy: %s has no rule", f)
	}
	if _, ok := policy[(&clusterv3.Cluster{}).ProtoReflect().Descriptor().FullName()]; !ok {
		t.Error("policy has no entry for Cluster")
	}
}

func TestParseDNS(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		extra string
		want  dnsConfig
	}{
		{"defaults", ``, dnsConfig{refresh: 5 * time.Second, failureBase: 5 * time.Second, failureMax: 5 * time.Second}},
		{"refresh rate", `"dnsRefreshRate":"2s","dnsLookupFamily":"ALL",`,
			dnsConfig{refresh: 2 * time.Second, failureBase: 2 * time.Second, failureMax: 2 * time.Second, family: clusterv3.Cluster_ALL}},
		{"failure base only: max is 10 times base", `"dnsFailureRefreshRate":{"baseInterval":"0.5s"},"dnsJitter":"1s",`,
			dnsConfig{refresh: 5 * time.Second, failureBase: 500 * time.Millisecond, failureMax: 5 * time.Second, jitter: time.Second}},
		{"failure base and max", `"dnsFailureRefreshRate":{"baseInterval":"1s","maxInterval":"30s"},`,
			dnsConfig{refresh: 5 * time.Second, failureBase: time.Second, failureMax: 30 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := parse(clusterJSON(t, `{"name":"c","type":"STRICT_DNS",`+tt.extra+`"connectTimeout":"1s"}`))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, cfg.dns, cmp.AllowUnexported(dnsConfig{})); diff != "" {
				t.Errorf("dns config (-want +got):\n%s", diff)
			}
		})
	}
}

// Build logs each field it accepts and ignores, with the reason, at debug.
func TestBuildLogsIgnoredFields(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	log := slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug}))
	build(t, clusterJSON(t, staticCluster("c", `"altStatName":"x","respectDnsTtl":true,`, "127.0.0.1:80")), Options{Logger: log})
	for _, want := range []string{
		`field=alt_stat_name reason="statistics only" cluster=c`,
		`field=respect_dns_ttl reason="Go's resolver does not report TTLs: Sift refreshes every dns_refresh_rate" cluster=c`,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, b.String())
		}
	}
}
