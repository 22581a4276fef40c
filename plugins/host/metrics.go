package host

import "github.com/prometheus/client_golang/prometheus"

var (
	descCalls = prometheus.NewDesc("sift_plugin_calls_total",
		"Sniff calls to protocol-sniffer plugins by plugin and result (match, no_match, need_more, timeout, error; error includes calls while the plugin was down).",
		[]string{"plugin", "result"}, nil)
	descRestarts = prometheus.NewDesc("sift_plugin_restarts_total",
		"Restart attempts of protocol-sniffer plugins after they died or stopped answering.", []string{"plugin"}, nil)
	descUp = prometheus.NewDesc("sift_plugin_up",
		"Whether a protocol-sniffer plugin is running (1) or down (0).", []string{"plugin"}, nil)
)

// Collector exports every plugin's counters and call latency when scraped.
// It reads counters the data path keeps; nothing is updated for a scrape.
func Collector() prometheus.Collector { return collector{} }

type collector struct{}

// Describe sends nothing: the plugins are not known in advance (an
// unchecked collector).
func (collector) Describe(chan<- *prometheus.Desc) {}

func (collector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range All() {
		name := p.label
		for _, c := range []struct {
			result string
			n      uint64
		}{
			{"match", p.matches.Load()}, {"no_match", p.noMatches.Load()}, {"need_more", p.needMores.Load()},
			{"timeout", p.timeouts.Load()}, {"error", p.errs.Load()},
		} {
			ch <- prometheus.MustNewConstMetric(descCalls, prometheus.CounterValue, float64(c.n), name, c.result)
		}
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(p.restarts.Load()), name)
		up := 0.0
		if p.Up() {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, name)
		p.latency.Collect(ch)
	}
}
