package report

import "github.com/siftmesh/sift/bench/internal/stats"

// Targets, in the order every repeat visits them (A B C D A B C D ...).
const (
	Direct  = "direct"
	Sift    = "sift"
	HAProxy = "haproxy"
	Nginx   = "nginx"
)

// AllTargets is the default target list.
var AllTargets = []string{Direct, Sift, HAProxy, Nginx}

// Better says which direction of a metric is good.
type Better string

const (
	Higher Better = "higher"
	Lower  Better = "lower"
)

// Measurement is one number from one repeat.
type Measurement struct {
	Scenario, Case, Target string
	Repeat                 int
	Metric, Unit           string
	Better                 Better
	Value                  float64
}

// Curve is a latency percentile curve from one repeat.
type Curve struct {
	Scenario, Case, Target string
	Repeat                 int
	Points                 []stats.Point
}

// Unavailable says why a target does not run a scenario (or one case).
type Unavailable struct {
	Scenario, Case, Target, Reason string
}

// Failure is a measurement that was attempted and failed.
type Failure struct {
	Scenario, Case, Target string
	Repeat                 int
	Err                    string
}

// ScenarioInfo describes a scenario for the report.
type ScenarioInfo struct {
	ID, Title, Description string
	// Primary lists the metrics that get ratio columns.
	Primary []string
	Notes   []string
}

// Results is everything a run produced.
type Results struct {
	Meta         map[string]string
	MetaOrder    []string
	Scenarios    []ScenarioInfo
	Measurements []Measurement
	Curves       []Curve
	Unavailable  []Unavailable
	Failures     []Failure
	Extra        []Section // free-form report sections (splicecheck, profiles)
}

// Section is a titled block of preformatted text in the report.
type Section struct {
	Title, Body string
}

func (r *Results) SetMeta(k, v string) {
	if r.Meta == nil {
		r.Meta = map[string]string{}
	}
	if _, ok := r.Meta[k]; !ok {
		r.MetaOrder = append(r.MetaOrder, k)
	}
	r.Meta[k] = v
}
