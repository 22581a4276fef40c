package admin

import (
	"fmt"
	"net"
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

// hostView is one endpoint as /clusters shows it.
type hostView struct {
	addr, hostname, health string
	weight                 uint32
	cxActive, rqActive     int64
	ejected, ewma          bool
	rttMS, cost            float64
}

// clusterView is one cluster as /clusters shows it.
type clusterView struct {
	name, policy string
	hosts        []hostView
}

// clusterViews reads the clusters' state now.
func clusterViews(cs ClusterSource) []clusterView {
	var out []clusterView
	for _, c := range cs.Clusters() {
		lb := c.Balancing()
		cv := clusterView{name: c.Name(), policy: lb.Policy.String()}
		reqs := httplb.RequestStates(c)
		for _, e := range c.EndpointStates() {
			rq, used := reqs[e.Addr]
			h := hostView{addr: e.Addr, hostname: e.Hostname, health: e.Health, weight: e.Weight,
				cxActive: e.Active, rqActive: rq.Load, ejected: rq.Ejected, ewma: lb.Policy == balancer.PeakEWMA}
			if h.ewma {
				rtt, cost := e.RTT, e.Cost
				if used {
					rtt, cost = rq.RTT, rq.Cost
				}
				h.rttMS, h.cost = float64(rtt.Microseconds())/1000, cost
			}
			cv.hosts = append(cv.hosts, h)
		}
		out = append(out, cv)
	}
	return out
}

// clusters serves Envoy's /clusters text form, "cluster::host::stat::value"
// lines: per host cx_active (connections from tcp_proxy), rq_active (HTTP
// requests in flight), weight, hostname and health_flags (Envoy's: healthy,
// /failed_eds_health, /degraded_eds_health, /eds_status_draining,
// /failed_outlier_check); and Sift's ewma_rtt_ms and ewma_cost for
// peak_ewma clusters (request-level when HTTP has used the cluster, else
// connection-level). Per cluster: observability_name and lb_policy.
// ?format=json gives the same in the shape of Envoy's /clusters?format=json
// (see clustersJSON).
func (s *Server) clusters(w http.ResponseWriter, r *http.Request) {
	cs, ok := s.src.(ClusterSource)
	if !ok {
		http.Error(w, "clusters: no clusters in this server", http.StatusNotFound)
		return
	}
	switch f := r.URL.Query().Get("format"); f {
	case "", "text":
	case "json":
		writeJSON(w, toClustersJSON(clusterViews(cs)))
		return
	default:
		http.Error(w, fmt.Sprintf("clusters: format: want text or json, got %q", f), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, c := range clusterViews(cs) {
		fmt.Fprintf(w, "%s::observability_name::%s\n", c.name, c.name)
		fmt.Fprintf(w, "%s::lb_policy::%s\n", c.name, c.policy)
		for _, h := range c.hosts {
			p := c.name + "::" + h.addr + "::"
			fmt.Fprintf(w, "%scx_active::%d\n", p, h.cxActive)
			fmt.Fprintf(w, "%srq_active::%d\n", p, h.rqActive)
			fmt.Fprintf(w, "%sweight::%d\n", p, h.weight)
			fmt.Fprintf(w, "%shostname::%s\n", p, h.hostname)
			fmt.Fprintf(w, "%shealth_flags::%s\n", p, healthFlags(h.health, h.ejected))
			if h.ewma {
				fmt.Fprintf(w, "%sewma_rtt_ms::%s\n", p, strconv.FormatFloat(h.rttMS, 'f', -1, 64))
				fmt.Fprintf(w, "%sewma_cost::%s\n", p, strconv.FormatFloat(h.cost, 'f', 0, 64))
			}
		}
	}
}

// clustersJSON is /clusters?format=json: Envoy's admin.v3.Clusters shape
// for the fields Sift has (stat values are JSON numbers, not protojson's
// strings), plus Sift's lb_policy per cluster and ewma_rtt_ms and ewma_cost
// per host of a peak_ewma cluster.
type clustersJSON struct {
	Clusters []clusterJSON `json:"cluster_statuses"`
}

type clusterJSON struct {
	Name     string     `json:"name"`
	LBPolicy string     `json:"lb_policy"`
	Hosts    []hostJSON `json:"host_statuses"`
}

type hostJSON struct {
	Address  addressJSON    `json:"address"`
	Stats    []hostStatJSON `json:"stats"`
	Health   hostHealthJSON `json:"health_status"`
	Weight   uint32         `json:"weight"`
	Hostname string         `json:"hostname,omitempty"`
	RTTMS    *float64       `json:"ewma_rtt_ms,omitempty"`
	Cost     *float64       `json:"ewma_cost,omitempty"`
}

type addressJSON struct {
	Socket struct {
		Address string `json:"address"`
		Port    int    `json:"port_value"`
	} `json:"socket_address"`
}

type hostStatJSON struct {
	Name  string `json:"name"`
	Value int64  `json:"value"`
	Type  string `json:"type"`
}

type hostHealthJSON struct {
	EDS     string `json:"eds_health_status"`
	Outlier bool   `json:"failed_outlier_check,omitempty"`
}

func toClustersJSON(cvs []clusterView) clustersJSON {
	out := clustersJSON{Clusters: make([]clusterJSON, 0, len(cvs))}
	for _, c := range cvs {
		cj := clusterJSON{Name: c.name, LBPolicy: c.policy, Hosts: make([]hostJSON, 0, len(c.hosts))}
		for _, h := range c.hosts {
			hj := hostJSON{Weight: h.weight, Hostname: h.hostname,
				Stats:  []hostStatJSON{{"cx_active", h.cxActive, "GAUGE"}, {"rq_active", h.rqActive, "GAUGE"}},
				Health: hostHealthJSON{EDS: h.health, Outlier: h.ejected}}
			host, port, _ := net.SplitHostPort(h.addr)
			hj.Address.Socket.Address = host
			hj.Address.Socket.Port, _ = strconv.Atoi(port)
			if h.ewma {
				rtt, cost := h.rttMS, h.cost
				hj.RTTMS, hj.Cost = &rtt, &cost
			}
			cj.Hosts = append(cj.Hosts, hj)
		}
		out.Clusters = append(out.Clusters, cj)
	}
	return out
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
