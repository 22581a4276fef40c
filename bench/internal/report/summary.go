package report

import (
	"math"
	"sort"

	"github.com/siftmesh/sift/bench/internal/stats"
)

// Row is the median of one metric over the repeats of one (scenario, case,
// target), with its ratios to HAProxy and to direct.
type Row struct {
	Scenario, Case, Target, Metric, Unit string
	Better                               Better
	N                                    int
	Median, Min, Max                     float64
	VsHAProxy, VsDirect                  float64
}

// Summarize computes medians and ratios. Rows come out in the order their
// (scenario, case, target, metric) first appeared in the measurements, so
// tables follow the run.
func Summarize(ms []Measurement) []Row {
	type key struct{ s, c, t, m string }
	var order []key
	vals := map[key][]float64{}
	first := map[key]Measurement{}
	for _, m := range ms {
		k := key{m.Scenario, m.Case, m.Target, m.Metric}
		if _, ok := vals[k]; !ok {
			order = append(order, k)
			first[k] = m
		}
		vals[k] = append(vals[k], m.Value)
	}
	med := map[key]float64{}
	for k, v := range vals {
		med[k] = stats.Median(v)
	}
	rows := make([]Row, 0, len(order))
	for _, k := range order {
		lo, hi := stats.MinMax(vals[k])
		ref := func(t string) float64 {
			if v, ok := med[key{k.s, k.c, t, k.m}]; ok {
				return v
			}
			return math.NaN()
		}
		rows = append(rows, Row{
			Scenario: k.s, Case: k.c, Target: k.t, Metric: k.m,
			Unit: first[k].Unit, Better: first[k].Better, N: len(vals[k]),
			Median: med[k], Min: lo, Max: hi,
			VsHAProxy: stats.Ratio(med[k], ref(HAProxy)),
			VsDirect:  stats.Ratio(med[k], ref(Direct)),
		})
	}
	return rows
}

// targetRank orders targets in tables: direct, sift, haproxy, nginx, others.
func targetRank(t string) int {
	for i, x := range AllTargets {
		if x == t {
			return i
		}
	}
	return len(AllTargets)
}

func sortedTargets(ts map[string]bool) []string {
	var out []string
	for t := range ts {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool {
		if targetRank(out[i]) != targetRank(out[j]) {
			return targetRank(out[i]) < targetRank(out[j])
		}
		return out[i] < out[j]
	})
	return out
}
