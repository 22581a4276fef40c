package rbac

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// Counts are the authorization decisions taken under one stat prefix, by
// every filter generation that carries it, for the life of the process.
type Counts struct {
	Allowed, Denied atomic.Uint64
}

var counts sync.Map // stat prefix → *Counts

// CountsFor returns the process-wide counts of statPrefix. Other filters
// that authorize connections (the opaque transport's per-port rules) count
// here too, so that every denial is in one metric.
func CountsFor(statPrefix string) *Counts {
	if c, ok := counts.Load(statPrefix); ok {
		return c.(*Counts)
	}
	c, _ := counts.LoadOrStore(statPrefix, &Counts{})
	return c.(*Counts)
}

var descDecisions = prometheus.NewDesc("sift_rbac_decisions_total",
	"Connections allowed or denied by authorization (network RBAC and the opaque transport's per-port identities), by the filter's stat_prefix.",
	[]string{"stat_prefix", "decision"}, nil)

// Collector exports the counts when scraped.
func Collector() prometheus.Collector { return collector{} }

type collector struct{}

func (collector) Describe(ch chan<- *prometheus.Desc) { ch <- descDecisions }

func (collector) Collect(ch chan<- prometheus.Metric) {
	var prefixes []string
	counts.Range(func(k, _ any) bool { prefixes = append(prefixes, k.(string)); return true })
	sort.Strings(prefixes)
	for _, p := range prefixes {
		c := CountsFor(p)
		ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(c.Allowed.Load()), p, "allowed")
		ch <- prometheus.MustNewConstMetric(descDecisions, prometheus.CounterValue, float64(c.Denied.Load()), p, "denied")
	}
}
