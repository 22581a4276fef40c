package upstream

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"

	_ "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	"github.com/siftmesh/sift/upstream/balancer"
)

func buildJSON(t *testing.T, js string) *Cluster {
	t.Helper()
	pb := &clusterv3.Cluster{}
	if err := protojson.Unmarshal([]byte(js), pb); err != nil {
		t.Fatal(err)
	}
	c, err := Build(pb, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestHTTPOptions(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name, js string
		want     HTTPOptions
	}{
		{"defaults", `{"name": "c"}`, HTTPOptions{Protocol: HTTP1, IdleTimeout: time.Hour}},
		{"typed explicit http2", `{"name": "c", "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
		   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "commonHttpProtocolOptions": {"idleTimeout": "30s"},
		   "explicitHttpConfig": {"http2ProtocolOptions": {"initialStreamWindowSize": 65536, "connectionKeepalive": {"interval": "10s", "timeout": "2s"}}}}}}`,
			HTTPOptions{Protocol: HTTP2, IdleTimeout: 30 * time.Second, H2StreamWindow: 65536, H2PingInterval: 10 * time.Second, H2PingTimeout: 2 * time.Second}},
		{"typed downstream", `{"name": "c", "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
		   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "useDownstreamProtocolConfig": {}}}}`,
			HTTPOptions{Protocol: HTTPDownstream, IdleTimeout: time.Hour}},
		{"typed downstream with the mesh upgrade", `{"name": "c", "typedExtensionProtocolOptions": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
		   "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "useDownstreamProtocolConfig": {}},
		   "sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade": {"@type": "type.googleapis.com/sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade"}}}`,
			HTTPOptions{Protocol: HTTPDownstream, IdleTimeout: time.Hour, UpgradeHTTP1: true}},
		{"deprecated http2 with the mesh upgrade", `{"name": "c", "http2ProtocolOptions": {}, "typedExtensionProtocolOptions": {
		   "sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade": {"@type": "type.googleapis.com/sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade"}}}`,
			HTTPOptions{Protocol: HTTP2, IdleTimeout: time.Hour, UpgradeHTTP1: true}},
		{"deprecated http2", `{"name": "c", "http2ProtocolOptions": {}, "circuitBreakers": {"thresholds": [{"maxConnections": 8, "maxRequests": 100}]}}`,
			HTTPOptions{Protocol: HTTP2, IdleTimeout: time.Hour, MaxConnections: 8, MaxRequests: 100}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, buildJSON(t, tt.js).HTTPOptions()); d != "" {
				t.Errorf("HTTPOptions (-want +got):\n%s", d)
			}
		})
	}
}

func TestBalancing(t *testing.T) {
	t.Parallel()
	policy := func(typed string) string {
		return `{"name": "c", "loadBalancingPolicy": {"policies": [{"typedExtensionConfig": {"name": "unknown", "typedConfig": {"@type": "type.googleapis.com/google.protobuf.Empty"}}},
		  {"typedExtensionConfig": {"name": "p", "typedConfig": ` + typed + `}}]}}`
	}
	for _, tt := range []struct {
		name, js string
		want     balancer.Config
	}{
		{"lb_policy default", `{"name": "c"}`, balancer.Config{Policy: balancer.RoundRobin, ChoiceCount: 2, ActiveRequestBias: 1}},
		{"lb_policy LEAST_REQUEST", `{"name": "c", "lbPolicy": "LEAST_REQUEST", "leastRequestLbConfig": {"choiceCount": 3}}`,
			balancer.Config{Policy: balancer.LeastRequest, ChoiceCount: 3, ActiveRequestBias: 1}},
		{"lb_policy RANDOM", `{"name": "c", "lbPolicy": "RANDOM"}`, balancer.Config{Policy: balancer.Random, ChoiceCount: 2, ActiveRequestBias: 1}},
		{"peak EWMA defaults, first supported policy wins", policy(`{"@type": "type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma"}`),
			balancer.Config{Policy: balancer.PeakEWMA, ChoiceCount: 2, ActiveRequestBias: 1, DefaultRTT: 30 * time.Millisecond, Decay: 10 * time.Second}},
		{"peak EWMA set", policy(`{"@type": "type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma", "defaultRtt": "0.1s", "decay": "5s"}`),
			balancer.Config{Policy: balancer.PeakEWMA, ChoiceCount: 2, ActiveRequestBias: 1, DefaultRTT: 100 * time.Millisecond, Decay: 5 * time.Second}},
		{"envoy least_request", policy(`{"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest", "choiceCount": 4, "activeRequestBias": {"defaultValue": 0.5}}`),
			balancer.Config{Policy: balancer.LeastRequest, ChoiceCount: 4, ActiveRequestBias: 0.5}},
		{"envoy random", policy(`{"@type": "type.googleapis.com/envoy.extensions.load_balancing_policies.random.v3.Random"}`),
			balancer.Config{Policy: balancer.Random, ChoiceCount: 2, ActiveRequestBias: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := cmp.Diff(tt.want, buildJSON(t, tt.js).Balancing()); d != "" {
				t.Errorf("Balancing (-want +got):\n%s", d)
			}
		})
	}
}

func TestOutlierDetectionConfig(t *testing.T) {
	t.Parallel()
	c := buildJSON(t, `{"name": "c", "outlierDetection": {"consecutive5xx": 3, "baseEjectionTime": "1s", "enforcingSuccessRate": 0}}`)
	want := &balancer.Outlier{Consecutive5xx: 3, EnforcingConsecutive5xx: 100, ConsecutiveGateway: 5, BaseEjection: time.Second,
		MaxEjection: 300 * time.Second, MaxEjectionPercent: 10}
	if d := cmp.Diff(want, c.OutlierDetection()); d != "" {
		t.Errorf("OutlierDetection (-want +got):\n%s", d)
	}
}
