// Package stats holds the small amount of arithmetic the benchmark report
// needs: medians over interleaved repeats, ratios to a reference target, and
// exact percentiles over latency samples.
package stats

import (
	"math"
	"sort"
	"time"
)

// Median returns the median of xs (the mean of the two middle values for an
// even count). NaN values are ignored; an empty input gives NaN.
func Median(xs []float64) float64 {
	v := make([]float64, 0, len(xs))
	for _, x := range xs {
		if !math.IsNaN(x) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return math.NaN()
	}
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

// MinMax returns the smallest and largest non-NaN value (NaN, NaN if none).
func MinMax(xs []float64) (float64, float64) {
	lo, hi := math.NaN(), math.NaN()
	for _, x := range xs {
		if math.IsNaN(x) {
			continue
		}
		if math.IsNaN(lo) || x < lo {
			lo = x
		}
		if math.IsNaN(hi) || x > hi {
			hi = x
		}
	}
	return lo, hi
}

// Ratio returns value/ref, or NaN when either is missing or ref is zero.
func Ratio(value, ref float64) float64 {
	if math.IsNaN(value) || math.IsNaN(ref) || ref == 0 || math.IsInf(ref, 0) {
		return math.NaN()
	}
	return value / ref
}

// Percentile returns the p-th percentile (0..100) of sorted samples using the
// nearest-rank method, which is what wrk and HdrHistogram report.
func Percentile(sorted []float64, p float64) float64 {
	n := len(sorted)
	if n == 0 {
		return math.NaN()
	}
	if p <= 0 {
		return sorted[0]
	}
	if p >= 100 {
		return sorted[n-1]
	}
	rank := int(math.Ceil(p/100*float64(n) - 1e-9)) // epsilon: 99.9/100*1000 is 999.0000000000001
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

// CurvePercentiles are the points of a latency percentile curve, in the
// HdrHistogram style (dense towards the tail).
var CurvePercentiles = []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 100}

// Point is one point of a latency percentile curve.
type Point struct {
	Percentile float64 `json:"p"`
	Millis     float64 `json:"ms"`
}

// Samples collects latency samples up to a cap (later samples are dropped,
// but still counted).
type Samples struct {
	Cap   int
	Count int
	ms    []float64
}

// Add records one latency.
func (s *Samples) Add(d time.Duration) {
	s.Count++
	if s.Cap > 0 && len(s.ms) >= s.Cap {
		return
	}
	s.ms = append(s.ms, float64(d)/float64(time.Millisecond))
}

// Merge appends another collector's samples.
func (s *Samples) Merge(o *Samples) {
	s.Count += o.Count
	s.ms = append(s.ms, o.ms...)
}

// Summary is what load clients print: percentiles and a curve, in ms.
type Summary struct {
	N     int     `json:"n"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
	Curve []Point `json:"curve"`
}

// Summarize sorts the samples and computes the summary.
func (s *Samples) Summarize() Summary {
	v := append([]float64(nil), s.ms...)
	sort.Float64s(v)
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	out := Summary{N: len(v), Mean: math.NaN()}
	if len(v) > 0 {
		out.Mean = sum / float64(len(v))
	}
	out.P50 = Percentile(v, 50)
	out.P90 = Percentile(v, 90)
	out.P99 = Percentile(v, 99)
	out.P999 = Percentile(v, 99.9)
	out.Max = Percentile(v, 100)
	if len(v) > 0 {
		for _, p := range CurvePercentiles {
			out.Curve = append(out.Curve, Point{p, Percentile(v, p)})
		}
	}
	return out
}
