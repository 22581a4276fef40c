package report

import (
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var targetColor = map[string]color.Color{
	Direct:  color.RGBA{120, 120, 120, 255},
	Sift:    color.RGBA{31, 119, 180, 255},
	HAProxy: color.RGBA{255, 127, 14, 255},
	Nginx:   color.RGBA{44, 160, 44, 255},
}

func colorOf(t string) color.Color {
	if c, ok := targetColor[t]; ok {
		return c
	}
	return color.RGBA{148, 103, 189, 255}
}

// writeCharts draws, per scenario, one bar chart of ratios to HAProxy per
// primary metric and one latency percentile chart per case with curves. It
// returns the file names per scenario.
func writeCharts(dir string, res *Results, rows []Row) (map[string][]string, error) {
	out := map[string][]string{}
	for _, s := range res.Scenarios {
		for _, metric := range s.Primary {
			name := fmt.Sprintf("%s_ratio_%s.png", s.ID, slug(metric))
			ok, err := ratioChart(filepath.Join(dir, name), s, metric, rows)
			if err != nil {
				return nil, err
			}
			if ok {
				out[s.ID] = append(out[s.ID], name)
			}
		}
		var cases []string
		seen := map[string]bool{}
		for _, c := range res.Curves {
			if c.Scenario == s.ID && !seen[c.Case] {
				seen[c.Case] = true
				cases = append(cases, c.Case)
			}
		}
		for _, cs := range cases {
			name := fmt.Sprintf("%s_latency_%s.png", s.ID, slug(cs))
			if err := curveChart(filepath.Join(dir, name), s, cs, res.Curves); err != nil {
				return nil, err
			}
			out[s.ID] = append(out[s.ID], name)
		}
	}
	return out, nil
}

// ratioChart: grouped bars, one group per case, one bar per target, height =
// median / HAProxy's median. false when nothing has a ratio.
func ratioChart(file string, s ScenarioInfo, metric string, rows []Row) (bool, error) {
	var cases []string
	seenC := map[string]bool{}
	vals := map[string]map[string]float64{}
	targets := map[string]bool{}
	better := Higher
	unit := ""
	for _, r := range rows {
		if r.Scenario != s.ID || r.Metric != metric || math.IsNaN(r.VsHAProxy) {
			continue
		}
		if !seenC[r.Case] {
			seenC[r.Case] = true
			cases = append(cases, r.Case)
		}
		if vals[r.Target] == nil {
			vals[r.Target] = map[string]float64{}
		}
		vals[r.Target][r.Case] = r.VsHAProxy
		targets[r.Target] = true
		better, unit = r.Better, r.Unit
	}
	if len(cases) == 0 {
		return false, nil
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s %s\n%s relative to HAProxy (%s is better)", s.ID, s.Title, metric, better)
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.Y.Label.Text = fmt.Sprintf("× HAProxy's median %s (%s)", metric, unit)
	ts := sortedTargets(targets)
	w := vg.Points(18)
	maxV := 1.0
	for i, t := range ts {
		v := make(plotter.Values, len(cases))
		for j, c := range cases {
			v[j] = vals[t][c]
			maxV = math.Max(maxV, v[j])
		}
		bars, err := plotter.NewBarChart(v, w)
		if err != nil {
			return false, err
		}
		bars.Color = colorOf(t)
		bars.LineStyle.Width = 0
		bars.Offset = w * vg.Length(float64(i)-float64(len(ts)-1)/2)
		p.Add(bars)
		p.Legend.Add(t, bars)
	}
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Color = color.Black
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(one)
	p.Y.Min, p.Y.Max = 0, maxV*1.4 // headroom for the legend
	p.NominalX(cases...)
	p.Legend.Top = true
	p.Legend.Left = false
	p.Add(plotter.NewGrid())
	width := vg.Points(math.Max(420, float64(len(cases)*len(ts))*22+160))
	return true, p.Save(width, vg.Points(300), file)
}

// curveX maps a percentile to the HdrHistogram-style axis: -log10(1-p).
func curveX(pct float64) float64 {
	q := 1 - pct/100
	if q < 1e-5 {
		q = 1e-5
	}
	return -math.Log10(q)
}

func curveChart(file string, s ScenarioInfo, cs string, curves []Curve) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s %s\n%s: latency by percentile", s.ID, s.Title, cs)
	p.Title.TextStyle.Font.Size = vg.Points(11)
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.X.Tick.Marker = plot.ConstantTicks([]plot.Tick{
		{Value: 0, Label: "0"}, {Value: 1, Label: "90"}, {Value: 2, Label: "99"},
		{Value: 3, Label: "99.9"}, {Value: 4, Label: "99.99"}, {Value: 5, Label: "max"},
	})
	p.X.Min, p.X.Max = 0, 5
	// One curve per target: its last repeat (the report's CSV has them all).
	last := map[string]Curve{}
	for _, c := range curves {
		if c.Scenario == s.ID && c.Case == cs {
			if prev, ok := last[c.Target]; !ok || c.Repeat >= prev.Repeat {
				last[c.Target] = c
			}
		}
	}
	ts := map[string]bool{}
	for t := range last {
		ts[t] = true
	}
	for i, t := range sortedTargets(ts) {
		var xys plotter.XYs
		for _, pt := range last[t].Points {
			y := math.Max(pt.Millis, 0.001)
			xys = append(xys, plotter.XY{X: curveX(pt.Percentile), Y: y})
		}
		l, sc, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color = colorOf(t)
		l.Width = vg.Points(1.5)
		sc.Color = colorOf(t)
		sc.Shape = draw.CircleGlyph{}
		sc.Radius = vg.Points(1.8)
		_ = i
		p.Add(l, sc)
		p.Legend.Add(t, l)
	}
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	return p.Save(vg.Points(560), vg.Points(320), file)
}

func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimSuffix(b.String(), "-")
}
