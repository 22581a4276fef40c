package metrics

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/siftmesh/sift/filters/httplb"
	"github.com/siftmesh/sift/upstream"
	"github.com/siftmesh/sift/upstream/balancer"
)

// Stat is one counter or gauge with an Envoy name: Scope ("listener" or
// "cluster"), the object's name, and the stat's name, printed by /stats as
// "scope.object.name: value".
type Stat struct {
	Scope, Object, Name string
	Value               float64
	Gauge               bool
}

// FullName is Envoy's dotted stat name.
func (s Stat) FullName() string { return s.Scope + "." + s.Object + "." + s.Name }

// EnvoyStats returns the counters and gauges that have Envoy names, sorted by
// full name: per listener downstream_cx_total, downstream_cx_active,
// no_filter_chain_match, downstream_pre_cx_timeout,
// downstream_listener_filter_error, ssl.handshake, ssl.connection_error
// and Sift's detection and handshake-timeout counters (under "sift."); per cluster upstream_cx_total, upstream_cx_active,
// upstream_cx_connect_fail, upstream_rq_total, upstream_rq_active,
// upstream_rq_1xx..5xx, membership_total and membership_healthy. It reads
// the listeners' and clusters' state now.
func (r *Registry) EnvoyStats() []Stat {
	var out []Stat
	if r.opts.Listeners != nil {
		for name, l := range r.opts.Listeners() {
			s := l.Stats()
			add := func(stat string, v float64, gauge bool) {
				out = append(out, Stat{Scope: "listener", Object: name, Name: stat, Value: v, Gauge: gauge})
			}
			add("downstream_cx_total", float64(s.Accepted.Load()), false)
			add("downstream_cx_active", float64(s.Active.Load()), true)
			add("no_filter_chain_match", float64(s.NoChain.Load()), false)
			add("downstream_pre_cx_timeout", float64(s.FiltersTimeout.Load()), false)
			add("downstream_listener_filter_error", float64(s.FiltersError.Load()), false)
			add("sift.detection_ran", float64(s.DetectionRan.Load()), false)
			add("sift.detection_skipped", float64(s.DetectionSkipped.Load()), false)
			add("sift.detection_server_first", float64(s.DetectionServerFirst.Load()), false)
			add("sift.detection_raced", float64(s.DetectionRaced.Load()), false)
			add("sift.detection_timeout", float64(s.DetectionTimeout.Load()), false)
			add("sift.detection_closed", float64(s.DetectionClosed.Load()), false)
			add("ssl.handshake", float64(s.TLSHandshakes.Load()), false)
			add("ssl.connection_error", float64(s.TLSHandshakeFail.Load()), false)
			add("sift.ssl.handshake_timeout", float64(s.TLSHandshakeTimeout.Load()), false)
		}
	}
	if r.opts.Clusters != nil {
		for _, c := range r.opts.Clusters.Clusters() {
			name := c.Name()
			add := func(stat string, v float64, gauge bool) {
				out = append(out, Stat{Scope: "cluster", Object: name, Name: stat, Value: v, Gauge: gauge})
			}
			cc := r.cluster(name)
			var cxActive, rqActive, healthy int64
			eps := c.Endpoints()
			for _, e := range eps {
				cxActive += e.Active
				if e.LBHealth() == balancer.Healthy {
					healthy++
				}
			}
			for _, st := range httplb.RequestStates(c) {
				rqActive += st.Load
			}
			add("upstream_cx_total", float64(cc.cxTotal.Load()), false)
			add("upstream_cx_active", float64(cxActive), true)
			add("upstream_cx_connect_fail", float64(cc.cxConnectFail.Load()), false)
			add("upstream_rq_total", float64(cc.rqTotal.Load()), false)
			add("upstream_rq_active", float64(rqActive), true)
			for i, n := range []string{"upstream_rq_1xx", "upstream_rq_2xx", "upstream_rq_3xx", "upstream_rq_4xx", "upstream_rq_5xx"} {
				add(n, float64(cc.rqClass[i+1].Load()), false)
			}
			add("membership_total", float64(len(eps)), true)
			add("membership_healthy", float64(healthy), true)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].FullName() < out[j].FullName() })
	return out
}

// stateCollector exports, at scrape time, what is read from the running
// configuration rather than counted from records.
type stateCollector struct{ r *Registry }

var (
	descEndpointConns = prometheus.NewDesc("sift_endpoint_active_connections",
		"Connections open to the endpoint from tcp_proxy (the cluster's connection-level load).", []string{"cluster", "endpoint"}, nil)
	descEndpointRequests = prometheus.NewDesc("sift_endpoint_active_requests",
		"HTTP requests in flight to the endpoint.", []string{"cluster", "endpoint"}, nil)
	descEndpointRTT = prometheus.NewDesc("sift_endpoint_ewma_rtt_ms",
		"Peak-EWMA latency estimate of the endpoint, decayed to now (level: request for HTTP, connection for tcp_proxy connects); peak_ewma clusters only.",
		[]string{"cluster", "endpoint", "level"}, nil)
	descEndpointCost = prometheus.NewDesc("sift_endpoint_ewma_cost",
		"Peak-EWMA cost the balancer compares: the latency estimate (ns) times load+1; peak_ewma clusters only.",
		[]string{"cluster", "endpoint", "level"}, nil)
	descLearnedEntries = prometheus.NewDesc("sift_learned_destinations",
		"Destinations in the server-first table (state: tracked, learned).", []string{"state"}, nil)
	descLearnedCapacity = prometheus.NewDesc("sift_learned_destinations_capacity",
		"Capacity of the server-first table.", nil, nil)
	descLearnedEvictions = prometheus.NewDesc("sift_learned_destinations_evictions_total",
		"Entries evicted from the server-first table to make room.", nil, nil)
	descLearnedForgotten = prometheus.NewDesc("sift_learned_destinations_forgotten_total",
		"Learned server-first destinations forgotten because a client spoke first.", nil, nil)
)

// Describe sends nothing: the collector is unchecked (its envoy_* metrics
// depend on the configuration).
func (c *stateCollector) Describe(chan<- *prometheus.Desc) {}

// Collect implements prometheus.Collector.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.r
	if cm := r.opts.Clusters; cm != nil {
		for _, cl := range cm.Clusters() {
			collectCluster(ch, cl)
		}
	}
	if r.opts.Learned != nil {
		_, st := r.opts.Learned.Snapshot()
		ch <- prometheus.MustNewConstMetric(descLearnedEntries, prometheus.GaugeValue, float64(st.Entries), "tracked")
		ch <- prometheus.MustNewConstMetric(descLearnedEntries, prometheus.GaugeValue, float64(st.Learned), "learned")
		ch <- prometheus.MustNewConstMetric(descLearnedCapacity, prometheus.GaugeValue, float64(st.Capacity))
		ch <- prometheus.MustNewConstMetric(descLearnedEvictions, prometheus.CounterValue, float64(st.Evictions))
		ch <- prometheus.MustNewConstMetric(descLearnedForgotten, prometheus.CounterValue, float64(st.Forgotten))
	}
	// Envoy's names, as Envoy's /stats/prometheus spells them:
	// envoy_cluster_upstream_rq_total{envoy_cluster_name="x"}.
	descs := map[string]*prometheus.Desc{}
	for _, s := range r.EnvoyStats() {
		name := "envoy_" + s.Scope + "_" + promName(s.Name)
		d := descs[name]
		if d == nil {
			d = prometheus.NewDesc(name, "Envoy's "+s.Scope+"."+s.Name+" (see /stats).", []string{"envoy_" + s.Scope + "_name"}, nil)
			descs[name] = d
		}
		vt := prometheus.CounterValue
		if s.Gauge {
			vt = prometheus.GaugeValue
		}
		ch <- prometheus.MustNewConstMetric(d, vt, s.Value, s.Object)
	}
}

func collectCluster(ch chan<- prometheus.Metric, cl *upstream.Cluster) {
	name := cl.Name()
	ewma := cl.Balancing().Policy == balancer.PeakEWMA
	for _, e := range cl.EndpointStates() {
		ch <- prometheus.MustNewConstMetric(descEndpointConns, prometheus.GaugeValue, float64(e.Active), name, e.Addr)
		if ewma {
			ch <- prometheus.MustNewConstMetric(descEndpointRTT, prometheus.GaugeValue, ms(e.RTT), name, e.Addr, "connection")
			ch <- prometheus.MustNewConstMetric(descEndpointCost, prometheus.GaugeValue, e.Cost, name, e.Addr, "connection")
		}
	}
	for addr, st := range httplb.RequestStates(cl) {
		ch <- prometheus.MustNewConstMetric(descEndpointRequests, prometheus.GaugeValue, float64(st.Load), name, addr)
		if ewma {
			ch <- prometheus.MustNewConstMetric(descEndpointRTT, prometheus.GaugeValue, ms(st.RTT), name, addr, "request")
			ch <- prometheus.MustNewConstMetric(descEndpointCost, prometheus.GaugeValue, st.Cost, name, addr, "request")
		}
	}
}

// promName makes a stat name a Prometheus name ("sift.detection_ran" →
// "sift_detection_ran").
func promName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c == '.' {
			b[i] = '_'
		}
	}
	return string(b)
}
