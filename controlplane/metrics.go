package controlplane

import (
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the control plane's Prometheus metrics, all prefixed
// sift_control_.
type metrics struct {
	meshUpdates     prometheus.Counter
	reloads         *prometheus.CounterVec // result: ok|error
	snapshotsSet    prometheus.Counter
	snapshotVersion *prometheus.GaugeVec   // node, workload, version: 1
	streams         *prometheus.GaugeVec   // flavor: sotw_ads|sotw|delta_ads|delta
	proxies         prometheus.Gauge       // distinct connected node ids
	unmatched       prometheus.Gauge       // connected node ids matching no workload
	requests        *prometheus.CounterVec // flavor, type, result: request|ack|nack
	responses       *prometheus.CounterVec // flavor, type
	securityUpdates prometheus.Counter
	authFailures    *prometheus.CounterVec // reason
	serverFirst     *prometheus.GaugeVec   // service, port: proxies reporting it server-first
	// The endpoint gate (endpointgate.go).
	endpointsWaiting   *prometheus.GaugeVec   // state: waiting|nacked
	endpointsPublished *prometheus.CounterVec // reason: ack|timeout
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		meshUpdates: prometheus.NewCounter(prometheus.CounterOpts{Name: "sift_control_mesh_updates_total",
			Help: "Meshes applied (the initial one and each accepted edit)."}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_control_mesh_reloads_total",
			Help: "Attempts to load a changed mesh, by result (ok, error: the previous mesh stays)."}, []string{"result"}),
		snapshotsSet: prometheus.NewCounter(prometheus.CounterOpts{Name: "sift_control_snapshots_set_total",
			Help: "Per-node snapshots set in the cache because their content changed."}),
		snapshotVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sift_control_snapshot_version",
			Help: "The current snapshot version of each node (value 1)."}, []string{"node", "workload", "version"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sift_control_xds_streams",
			Help: "Open xDS streams, by flavor (sotw_ads, sotw, delta_ads, delta)."}, []string{"flavor"}),
		proxies: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sift_control_connected_proxies",
			Help: "Distinct node ids with at least one open xDS stream."}),
		unmatched: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sift_control_unmatched_proxies",
			Help: "Connected node ids that match no workload."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_control_xds_requests_total",
			Help: "Discovery requests by flavor, type and result (request: a subscription, ack, nack)."}, []string{"flavor", "type", "result"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_control_xds_pushes_total",
			Help: "Discovery responses sent to proxies, by flavor and type."}, []string{"flavor", "type"}),
		securityUpdates: prometheus.NewCounter(prometheus.CounterOpts{Name: "sift_control_security_updates_total",
			Help: "Regenerations of the snapshots because certificates renewed or the trust bundle rotated."}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_control_node_auth_failures_total",
			Help: "xDS streams refused because their node failed authentication, by reason (no_node_id, no_token, invalid_token, other)."}, []string{"reason"}),
		serverFirst: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sift_control_server_first_ports",
			Help: "Service ports not marked opaque that proxies learned to be server-speaks-first, by how many proxies report each (mark them opaque)."}, []string{"service", "port"}),
		endpointsWaiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sift_control_endpoints_waiting_for_ack",
			Help: "Meshed workloads whose endpoints are withheld until their proxy acknowledges its inbound listener, by state (waiting; nacked: the proxy rejected it)."}, []string{"state"}),
		endpointsPublished: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sift_control_endpoints_published_total",
			Help: "Withheld workloads whose endpoints were published, by reason (ack: their proxy acknowledged its inbound listener; timeout: published without it)."}, []string{"reason"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.meshUpdates, m.reloads, m.snapshotsSet, m.snapshotVersion,
			m.streams, m.proxies, m.unmatched, m.requests, m.responses, m.securityUpdates, m.authFailures, m.serverFirst,
			m.endpointsWaiting, m.endpointsPublished} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *metrics) setUnmatched(nodes map[string]*nodeState) {
	n := 0
	for _, st := range nodes {
		if st.workload == "" {
			n++
		}
	}
	m.unmatched.Set(float64(n))
}

// setServerFirst replaces the server-first gauges with sugg.
func (m *metrics) setServerFirst(sugg []ServerFirstSuggestion) {
	m.serverFirst.Reset()
	for _, s := range sugg {
		m.serverFirst.WithLabelValues(s.Service, strconv.Itoa(int(s.Port))).Set(float64(len(s.Nodes)))
	}
}

// shortType: "type.googleapis.com/envoy.config.listener.v3.Listener" -> "Listener".
func shortType(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}
