package stats

import (
	"math"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	cases := []struct {
		in   []float64
		want float64
	}{
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
		{[]float64{5, math.NaN(), 1, 3}, 3},
		{[]float64{10, 10, 1000}, 10}, // one outlier repeat does not move it
	}
	for _, c := range cases {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if !math.IsNaN(Median(nil)) || !math.IsNaN(Median([]float64{math.NaN()})) {
		t.Error("Median of nothing must be NaN")
	}
}

func TestMedianDoesNotReorderInput(t *testing.T) {
	in := []float64{3, 1, 2}
	Median(in)
	if in[0] != 3 || in[1] != 1 || in[2] != 2 {
		t.Fatalf("input reordered: %v", in)
	}
}

func TestMinMax(t *testing.T) {
	lo, hi := MinMax([]float64{2, math.NaN(), -1, 7})
	if lo != -1 || hi != 7 {
		t.Fatalf("got %v %v", lo, hi)
	}
	lo, hi = MinMax(nil)
	if !math.IsNaN(lo) || !math.IsNaN(hi) {
		t.Fatal("want NaN for empty input")
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(30, 20); got != 1.5 {
		t.Fatalf("Ratio = %v", got)
	}
	for _, c := range [][2]float64{{1, 0}, {math.NaN(), 1}, {1, math.NaN()}, {1, math.Inf(1)}} {
		if !math.IsNaN(Ratio(c[0], c[1])) {
			t.Errorf("Ratio(%v,%v) should be NaN", c[0], c[1])
		}
	}
}

func TestPercentileNearestRank(t *testing.T) {
	v := make([]float64, 1000)
	for i := range v {
		v[i] = float64(i + 1)
	}
	for _, c := range []struct{ p, want float64 }{{50, 500}, {99, 990}, {99.9, 999}, {100, 1000}, {0, 1}, {0.01, 1}} {
		if got := Percentile(v, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("empty must be NaN")
	}
}

func TestSamplesCapAndSummary(t *testing.T) {
	s := Samples{Cap: 100}
	for i := 1; i <= 150; i++ {
		s.Add(time.Duration(i) * time.Millisecond)
	}
	if s.Count != 150 {
		t.Fatalf("count %d", s.Count)
	}
	sum := s.Summarize()
	if sum.N != 100 || sum.P50 != 50 || sum.Max != 100 || sum.Mean != 50.5 {
		t.Fatalf("summary %+v", sum)
	}
	if len(sum.Curve) != len(CurvePercentiles) || sum.Curve[len(sum.Curve)-1].Millis != 100 {
		t.Fatalf("curve %+v", sum.Curve)
	}
	var o Samples
	o.Add(time.Second)
	s.Merge(&o)
	if s.Count != 151 || s.Summarize().Max != 1000 {
		t.Fatal("merge")
	}
}
