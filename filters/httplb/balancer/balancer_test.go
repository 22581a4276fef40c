package balancer

import (
	"math"
	"testing"
	"time"
)

var t0 = time.Unix(1_000_000, 0)

func eps(n int, weights ...uint32) []*Endpoint {
	out := make([]*Endpoint, n)
	for i := range out {
		w := uint32(1)
		if i < len(weights) {
			w = weights[i]
		}
		out[i] = NewEndpoint(string(rune('a'+i)), w, DefaultRTT, t0)
	}
	return out
}

func TestPeakEWMAEstimate(t *testing.T) {
	t.Parallel()
	e := NewEndpoint("a", 1, 30*time.Millisecond, t0)
	// A slower observation is taken at once (the peak).
	e.Observe(100*time.Millisecond, t0.Add(time.Second), DefaultDecay)
	if got := e.RTTEstimate(t0.Add(time.Second), DefaultDecay); got != 100*time.Millisecond {
		t.Fatalf("after a peak: %v, want 100ms", got)
	}
	// A faster one 10 s later (one time constant) weighs 1-1/e.
	e.Observe(10*time.Millisecond, t0.Add(11*time.Second), DefaultDecay)
	want := 100*math.Exp(-1) + 10*(1-math.Exp(-1))
	if got := float64(e.RTTEstimate(t0.Add(11*time.Second), DefaultDecay)) / 1e6; math.Abs(got-want) > 0.01 {
		t.Fatalf("after decay: %.3fms, want %.3fms", got, want)
	}
	// Idle, the estimate decays toward zero.
	if got := e.RTTEstimate(t0.Add(60*time.Second), DefaultDecay); got > 2*time.Millisecond {
		t.Errorf("after 49 s idle: %v, want under 2ms", got)
	}
}

func TestPeakEWMAPrefersCheapest(t *testing.T) {
	t.Parallel()
	es := eps(3)
	now := t0.Add(time.Second)
	es[0].Observe(500*time.Millisecond, now, DefaultDecay) // slow
	p := PeakEWMA{Now: func() time.Time { return now }}.Build(es)
	counts := map[string]int{}
	for range 3000 {
		counts[p.Pick().Addr]++
	}
	// Two distinct choices: the slow one loses every comparison.
	if counts["a"] != 0 || counts["b"] < 1200 || counts["c"] < 1200 {
		t.Errorf("picks %v: the slow endpoint a should get none", counts)
	}
	// Requests in flight raise the cost: b with 100 in flight loses to c.
	for range 100 {
		es[1].Begin()
	}
	counts = map[string]int{}
	for range 1000 {
		counts[p.Pick().Addr]++
	}
	if counts["b"] > counts["c"]/4 {
		t.Errorf("picks %v: b is busy and should get far fewer than c", counts)
	}
}

func TestRoundRobinAndWeights(t *testing.T) {
	t.Parallel()
	p := RoundRobin{}.Build(eps(3))
	counts := map[string]int{}
	for range 300 {
		counts[p.Pick().Addr]++
	}
	for _, a := range []string{"a", "b", "c"} {
		if counts[a] != 100 {
			t.Errorf("round robin %v, want 100 each", counts)
		}
	}
	p = RoundRobin{}.Build(eps(3, 1, 2, 3))
	counts = map[string]int{}
	for range 600 {
		counts[p.Pick().Addr]++
	}
	if counts["a"] != 100 || counts["b"] != 200 || counts["c"] != 300 {
		t.Errorf("weighted round robin %v, want 100/200/300", counts)
	}
}

func TestLeastRequest(t *testing.T) {
	t.Parallel()
	es := eps(2)
	es[0].Begin()
	p := LeastRequest{ChoiceCount: 10}.Build(es)
	counts := map[string]int{}
	for range 1000 {
		counts[p.Pick().Addr]++
	}
	if counts["a"] > 20 {
		t.Errorf("picks %v: the busy endpoint should almost never win", counts)
	}
}

func TestOutlier(t *testing.T) {
	t.Parallel()
	o := DefaultOutlier()
	e := NewEndpoint("a", 1, DefaultRTT, t0)
	always := func(int) int { return 0 }
	for i := range 4 {
		if o.Report(e, 503, always) {
			t.Fatalf("ejected after %d failures", i+1)
		}
	}
	if o.Report(e, 200, always) {
		t.Fatal("a success ejected")
	}
	for i := range 5 {
		if ej := o.Report(e, 0, always); ej != (i == 4) {
			t.Fatalf("failure %d: eject=%v", i+1, ej)
		}
	}
	until := o.Eject(e, t0)
	if until != t0.Add(30*time.Second) || !e.Ejected(t0.Add(29*time.Second)) || e.Ejected(t0.Add(30*time.Second)) {
		t.Errorf("first ejection until %v", until)
	}
	if until := o.Eject(e, t0); until != t0.Add(60*time.Second) {
		t.Errorf("second ejection until %v, want base × 2", until)
	}
	for _, tt := range []struct {
		ejected, n int
		want       bool
	}{{0, 1, true}, {0, 3, true}, {1, 3, false}, {1, 20, true}, {2, 20, false}} {
		if got := o.MayEject(tt.ejected, tt.n); got != tt.want {
			t.Errorf("MayEject(%d, %d) = %v, want %v", tt.ejected, tt.n, got, tt.want)
		}
	}
	// Gateway errors are not enforced by default (enforcing 0%), 5xx are.
	g := NewEndpoint("g", 1, DefaultRTT, t0)
	o.Consecutive5xx = 0
	for range 10 {
		if o.Report(g, 502, func(int) int { return 50 }) {
			t.Fatal("gateway failures ejected with enforcing_consecutive_gateway_failure 0")
		}
	}
}
