package report

import (
	"math"
	"testing"
)

func m(s, c, t, metric string, rep int, v float64) Measurement {
	return Measurement{Scenario: s, Case: c, Target: t, Repeat: rep, Metric: metric, Unit: "u", Better: Higher, Value: v}
}

func TestSummarizeMediansAndRatios(t *testing.T) {
	ms := []Measurement{
		// interleaved: A B C A B C A B C
		m("s1", "1 stream", Direct, "gbps", 1, 40), m("s1", "1 stream", Sift, "gbps", 1, 18), m("s1", "1 stream", HAProxy, "gbps", 1, 20),
		m("s1", "1 stream", Direct, "gbps", 2, 50), m("s1", "1 stream", Sift, "gbps", 2, 30), m("s1", "1 stream", HAProxy, "gbps", 2, 25),
		m("s1", "1 stream", Direct, "gbps", 3, 45), m("s1", "1 stream", Sift, "gbps", 3, 24), m("s1", "1 stream", HAProxy, "gbps", 3, 5),
		m("s1", "8 streams", Sift, "gbps", 1, 10), // no HAProxy, no direct in this case
	}
	rows := Summarize(ms)
	if len(rows) != 4 {
		t.Fatalf("%d rows", len(rows))
	}
	want := []struct {
		tg          string
		med, vh, vd float64
	}{
		{Direct, 45, 45.0 / 20, 1},
		{Sift, 24, 24.0 / 20, 24.0 / 45},
		{HAProxy, 20, 1, 20.0 / 45},
	}
	for i, w := range want {
		r := rows[i]
		if r.Target != w.tg || r.Median != w.med || math.Abs(r.VsHAProxy-w.vh) > 1e-12 || math.Abs(r.VsDirect-w.vd) > 1e-12 || r.N != 3 {
			t.Errorf("row %d = %+v, want %+v", i, r, w)
		}
	}
	if rows[2].Min != 5 || rows[2].Max != 25 {
		t.Errorf("haproxy spread %v..%v", rows[2].Min, rows[2].Max)
	}
	last := rows[3]
	if last.Case != "8 streams" || !math.IsNaN(last.VsHAProxy) || !math.IsNaN(last.VsDirect) {
		t.Errorf("ratios without a reference must be NaN: %+v", last)
	}
}

func TestSortedTargets(t *testing.T) {
	got := sortedTargets(map[string]bool{"zz": true, Nginx: true, Direct: true, HAProxy: true, Sift: true})
	want := []string{Direct, Sift, HAProxy, Nginx, "zz"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%v", got)
		}
	}
}

func TestFormatting(t *testing.T) {
	cases := map[float64]string{12345.6: "12346", 123.456: "123", 12.345: "12.3", 1.2345: "1.23", 0.012345: "0.0123", 0: "0"}
	for v, want := range cases {
		if got := num(v); got != want {
			t.Errorf("num(%v) = %q, want %q", v, got, want)
		}
	}
	if num(math.NaN()) != "—" || ratio(math.NaN()) != "—" || ratio(1.234) != "1.23×" {
		t.Error("NaN / ratio formatting")
	}
}
