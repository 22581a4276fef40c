package balancer

import (
	"math"
	"testing"
	"time"
)

func TestPeakEWMAEstimate(t *testing.T) {
	t.Parallel()
	cfg := Config{Policy: PeakEWMA, DefaultRTT: 30 * time.Millisecond}
	e := cfg.NewEndpoint("a", 1, t0)
	// A slower observation is taken at once (the peak).
	cfg.Observe(e, 100*time.Millisecond, t0.Add(time.Second))
	if got := e.RTTEstimate(t0.Add(time.Second), DefaultDecay); got != 100*time.Millisecond {
		t.Fatalf("after a peak: %v, want 100ms", got)
	}
	// A faster one 10 s later (one time constant) weighs 1-1/e.
	cfg.Observe(e, 10*time.Millisecond, t0.Add(11*time.Second))
	want := 100*math.Exp(-1) + 10*(1-math.Exp(-1))
	if got := float64(e.RTTEstimate(t0.Add(11*time.Second), DefaultDecay)) / 1e6; math.Abs(got-want) > 0.01 {
		t.Fatalf("after decay: %.3fms, want %.3fms", got, want)
	}
	// Idle, the estimate decays toward zero.
	if got := e.RTTEstimate(t0.Add(60*time.Second), DefaultDecay); got > 2*time.Millisecond {
		t.Errorf("after 49 s idle: %v, want under 2ms", got)
	}
}

// Observe feeds only peak EWMA; the other policies keep no estimate.
func TestObserveOnlyPeakEWMA(t *testing.T) {
	t.Parallel()
	for _, cfg := range allPolicies {
		e := cfg.NewEndpoint("a", 1, t0)
		cfg.Observe(e, time.Second, t0)
		want := DefaultRTT
		if cfg.Policy == PeakEWMA {
			want = time.Second
		}
		if got := e.RTTEstimate(t0, DefaultDecay); got != want {
			t.Errorf("%s: estimate %v after observing 1s, want %v", cfg.Policy, got, want)
		}
	}
}

func TestPeakEWMAPrefersCheapest(t *testing.T) {
	t.Parallel()
	es := endpoints(1, 1, 1)
	now := t0.Add(time.Second)
	peakEWMA.Observe(es[0], 500*time.Millisecond, now) // slow
	p := peakEWMA.Build(es, seeded(2), func() time.Time { return now })
	got := counts(p, 3000)
	// Two distinct choices: the slow one loses every comparison.
	if got["a"] != 0 || got["b"] < 1200 || got["c"] < 1200 {
		t.Errorf("picks %v: the slow endpoint a should get none", got)
	}
	// Load raises the cost: b with 100 in flight loses to c.
	for range 100 {
		es[1].Start()
	}
	got = counts(p, 1000)
	if got["b"] > got["c"]/4 {
		t.Errorf("picks %v: b is busy and should get far fewer than c", got)
	}
}
