package admin

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/siftmesh/sift/filters/httplb"
	"github.com/siftmesh/sift/upstream"
	"github.com/siftmesh/sift/upstream/balancer"
)

// ClusterSource is implemented by Sources that have upstream clusters: it
// feeds /clusters.
type ClusterSource interface {
	// Clusters returns the clusters in service, sorted by name.
	Clusters() []*upstream.Cluster
}

// clusters serves Envoy's /clusters text form, "cluster::host::stat::value"
// lines: per host cx_active (connections from tcp_proxy), rq_active (HTTP
// requests in flight), weight, hostname and health_flags (Envoy's: healthy,
// /failed_eds_health, /degraded_eds_health, /eds_status_draining,
// /failed_outlier_check); and Sift's ewma_rtt_ms and ewma_cost for
// peak_ewma clusters (request-level when HTTP has used the cluster, else
// connection-level). Per cluster: observability_name and lb_policy.
func (s *Server) clusters(w http.ResponseWriter, _ *http.Request) {
	cs, ok := s.src.(ClusterSource)
	if !ok {
		http.Error(w, "clusters: no clusters in this server", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, c := range cs.Clusters() {
		name := c.Name()
		lb := c.Balancing()
		fmt.Fprintf(w, "%s::observability_name::%s\n", name, name)
		fmt.Fprintf(w, "%s::lb_policy::%s\n", name, lb.Policy)
		reqs := httplb.RequestStates(c)
		for _, e := range c.EndpointStates() {
			p := name + "::" + e.Addr + "::"
			rq, used := reqs[e.Addr]
			fmt.Fprintf(w, "%scx_active::%d\n", p, e.Active)
			fmt.Fprintf(w, "%srq_active::%d\n", p, rq.Load)
			fmt.Fprintf(w, "%sweight::%d\n", p, e.Weight)
			fmt.Fprintf(w, "%shostname::%s\n", p, e.Hostname)
			fmt.Fprintf(w, "%shealth_flags::%s\n", p, healthFlags(e.Health, rq.Ejected))
			if lb.Policy == balancer.PeakEWMA {
				rtt, cost := e.RTT, e.Cost
				if used {
					rtt, cost = rq.RTT, rq.Cost
				}
				fmt.Fprintf(w, "%sewma_rtt_ms::%s\n", p, strconv.FormatFloat(float64(rtt.Microseconds())/1000, 'f', -1, 64))
				fmt.Fprintf(w, "%sewma_cost::%s\n", p, strconv.FormatFloat(cost, 'f', 0, 64))
			}
		}
	}
}

// healthFlags is Envoy's host health_flags text for an EDS health status.
func healthFlags(health string, ejected bool) string {
	var f string
	switch health {
	case "UNHEALTHY", "TIMEOUT":
		f = "/failed_eds_health"
	case "DEGRADED":
		f = "/degraded_eds_health"
	case "DRAINING":
		f = "/eds_status_draining"
	}
	if ejected {
		f += "/failed_outlier_check"
	}
	if f == "" {
		return "healthy"
	}
	return f
}
