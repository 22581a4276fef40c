package upstream

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/google/go-cmp/cmp"
)

// The policies themselves are tested in package balancer; these tests cover
// what the cluster adds: which hosts it offers them, and what Dial feeds back.

// lbPolicies are the cluster JSON fragments selecting each policy.
var lbPolicies = map[string]string{
	"round_robin":   ``,
	"random":        `"lbPolicy":"RANDOM",`,
	"least_request": `"lbPolicy":"LEAST_REQUEST",`,
	"peak_ewma":     peakEWMA(""),
}

// peakEWMA selects Sift's peak-EWMA policy with the given PeakEwma fields (a
// JSON fragment starting with a comma, or "").
func peakEWMA(fields string) string {
	return `"loadBalancingPolicy":{"policies":[{"typedExtensionConfig":{"name":"ewma","typedConfig":` +
		`{"@type":"type.googleapis.com/sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma"` + fields + `}}}]},`
}

func TestPickerHealth(t *testing.T) {
	t.Parallel()
	h := func(addr string, s corev3.HealthStatus) resolvedEndpoint {
		return resolvedEndpoint{addr: addr, weight: 1, health: s}
	}
	tests := []struct {
		name string
		eps  []resolvedEndpoint
		want map[string]bool // the hosts that may be picked; nil: none
	}{
		{"unhealthy, draining and timeout are never picked",
			[]resolvedEndpoint{h("a", corev3.HealthStatus_UNHEALTHY), h("b", corev3.HealthStatus_HEALTHY), h("c", corev3.HealthStatus_DRAINING),
				h("d", corev3.HealthStatus_UNKNOWN), h("e", corev3.HealthStatus_TIMEOUT)},
			map[string]bool{"b": true, "d": true}},
		{"degraded only without healthy hosts",
			[]resolvedEndpoint{h("a", corev3.HealthStatus_DEGRADED), h("b", corev3.HealthStatus_HEALTHY)},
			map[string]bool{"b": true}},
		{"degraded when nothing else",
			[]resolvedEndpoint{h("a", corev3.HealthStatus_DEGRADED), h("b", corev3.HealthStatus_UNHEALTHY)},
			map[string]bool{"a": true}},
		{"nothing healthy", []resolvedEndpoint{h("a", corev3.HealthStatus_UNHEALTHY)}, nil},
		{"no hosts", nil, nil},
	}
	for _, tt := range tests {
		for policy, js := range lbPolicies {
			t.Run(tt.name+"/"+policy, func(t *testing.T) {
				t.Parallel()
				c := build(t, clusterJSON(t, staticCluster("h", js)), Options{rand: seeded(5)})
				c.setEndpoints(tt.eps)
				p := c.snap.Load().picker
				if tt.want == nil {
					if p != nil {
						t.Fatal("got a picker, want none")
					}
					return
				}
				got := map[string]bool{}
				for range 60 {
					got[p.Pick().Addr] = true
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("hosts picked (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// Under peak EWMA open connections raise an endpoint's cost, connect-time
// estimate × (open + 1). (filters/tcpproxy's TestPeakEWMAPrefersFastEndpoint
// shows the connect times at work, through a real tcp_proxy.)
func TestDialPeakEWMACountsOpenConnections(t *testing.T) {
	t.Parallel()
	a, b := newBackend(t), newBackend(t)
	c := build(t, clusterJSON(t, staticCluster("ewma", peakEWMA(`,"defaultRtt":"1s"`), a.addr, b.addr)), Options{rand: seeded(9)})
	got := dialOpen(t, c, 20)
	// Both connect in far less than the 1 s default, which a faster
	// observation barely moves within the test: costs are about
	// 1 s × (open + 1), so open connections alternate.
	if diff := cmp.Diff(map[string]int{a.addr: 10, b.addr: 10}, got); diff != "" {
		t.Errorf("connections per endpoint (-want +got):\n%s", diff)
	}
}
