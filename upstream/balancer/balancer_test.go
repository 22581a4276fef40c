package balancer

import (
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var t0 = time.Unix(1_000_000, 0)

// fixed is a clock stopped at t0.
func fixed() time.Time { return t0 }

// seeded returns a reproducible rnd for Build, for one goroutine.
func seeded(seed uint64) func(int) int { return rand.New(rand.NewPCG(seed, seed)).IntN }

// endpoints makes endpoints named a, b, c… with the given weights.
func endpoints(weights ...uint32) []*Endpoint {
	out := make([]*Endpoint, len(weights))
	for i, w := range weights {
		out[i] = Config{}.NewEndpoint(string(rune('a'+i)), w, t0)
	}
	return out
}

func picks(p Picker, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(p.Pick().Addr)
	}
	return b.String()
}

func counts(p Picker, n int) map[string]int {
	m := map[string]int{}
	for range n {
		m[p.Pick().Addr]++
	}
	return m
}

var (
	roundRobin   = Config{Policy: RoundRobin}
	random       = Config{Policy: Random}
	leastRequest = Config{Policy: LeastRequest, ChoiceCount: 2, ActiveRequestBias: 1}
	peakEWMA     = Config{Policy: PeakEWMA}
	allPolicies  = []Config{roundRobin, random, leastRequest, peakEWMA}
)

// Every policy over every kind of endpoint set: the share of picks each
// endpoint gets. Round robin and least request honour weights (least request
// through weight/(load+1) while every endpoint is idle); random and peak EWMA
// ignore them, as in Envoy and Linkerd. Ejected endpoints are left out by
// Pickable, unless all are (panic).
func TestPolicies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		weights    []uint32
		ejected    []int              // indexes ejected at t0
		weighted   map[string]float64 // want, round robin and least request
		unweighted map[string]float64 // want, random and peak EWMA; nil: as weighted
	}{
		{name: "empty set"},
		{name: "one endpoint", weights: []uint32{7}, weighted: map[string]float64{"a": 1}},
		{name: "equal weights", weights: []uint32{1, 1, 1}, weighted: map[string]float64{"a": 1.0 / 3, "b": 1.0 / 3, "c": 1.0 / 3}},
		{name: "equal weights above one", weights: []uint32{5, 5}, weighted: map[string]float64{"a": 0.5, "b": 0.5}},
		{name: "weights 3:1", weights: []uint32{3, 1},
			weighted: map[string]float64{"a": 0.75, "b": 0.25}, unweighted: map[string]float64{"a": 0.5, "b": 0.5}},
		{name: "weights 5:3:1:1", weights: []uint32{5, 3, 1, 1},
			weighted:   map[string]float64{"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1},
			unweighted: map[string]float64{"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}},
		{name: "an ejected endpoint gets nothing", weights: []uint32{1, 1, 1}, ejected: []int{1},
			weighted: map[string]float64{"a": 0.5, "c": 0.5}},
		{name: "ejected among weights", weights: []uint32{2, 1, 1}, ejected: []int{0},
			weighted: map[string]float64{"b": 0.5, "c": 0.5}},
		{name: "all ejected: panic, balance over all", weights: []uint32{1, 1}, ejected: []int{0, 1},
			weighted: map[string]float64{"a": 0.5, "b": 0.5}},
	}
	o := DefaultOutlier()
	for _, tt := range tests {
		for _, cfg := range allPolicies {
			t.Run(tt.name+"/"+cfg.Policy.String(), func(t *testing.T) {
				t.Parallel()
				eps := endpoints(tt.weights...)
				for _, i := range tt.ejected {
					o.Eject(eps[i], t0)
				}
				pickable, _, _ := Pickable(eps, t0)
				p := cfg.Build(pickable, seeded(1), fixed)
				if tt.weighted == nil {
					if p != nil {
						t.Fatalf("Build over no endpoints: %T, want nil", p)
					}
					return
				}
				want := tt.weighted
				if tt.unweighted != nil && (cfg.Policy == Random || cfg.Policy == PeakEWMA) {
					want = tt.unweighted
				}
				const n = 6000
				got := map[string]float64{}
				for addr, c := range counts(p, n) {
					got[addr] = float64(c) / n
				}
				tolerance := 0.03
				if cfg.Policy == RoundRobin {
					tolerance = 1e-9 // exact: n is a multiple of every cycle
				}
				if d := cmp.Diff(want, got, cmpopts.EquateApprox(0, tolerance)); d != "" {
					t.Errorf("share of picks (-want +got):\n%s", d)
				}
			})
		}
	}
}

// The deterministic policies' exact sequences, given the random draws.
func TestPickSequences(t *testing.T) {
	t.Parallel()
	zero := func(int) int { return 0 }
	one := func(int) int { return 1 }
	tests := []struct {
		name    string
		cfg     Config
		weights []uint32
		rnd     func(int) int
		n       int
		want    string
	}{
		{"round robin", roundRobin, []uint32{1, 1, 1}, zero, 7, "abcabca"},
		{"round robin random start", roundRobin, []uint32{1, 1, 1}, one, 7, "bcabcab"},
		{"round robin equal weights above one", roundRobin, []uint32{5, 5}, zero, 4, "abab"},
		// EDF: a is due every 1/3, b every 1; ties go to the endpoint scheduled first.
		{"weighted round robin 3:1", roundRobin, []uint32{3, 1}, zero, 12, "aabaaabaaaba"},
		{"weighted round robin 1:2:1", roundRobin, []uint32{1, 2, 1}, zero, 8, "bacbbacb"},
		{"weighted least request, idle endpoints", leastRequest, []uint32{2, 1}, zero, 6, "abaaba"},
		{"least request, one endpoint", leastRequest, []uint32{1}, zero, 3, "aaa"},
		{"random", random, []uint32{1, 1, 1}, one, 3, "bbb"},
		// Peak EWMA draws two distinct endpoints (i, then j skipping i); with
		// equal costs the first drawn wins.
		{"peak EWMA ties go to the first draw", peakEWMA, []uint32{1, 1, 1}, one, 3, "bbb"},
		{"peak EWMA, one endpoint", peakEWMA, []uint32{1}, zero, 2, "aa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := tt.cfg.Build(endpoints(tt.weights...), tt.rnd, fixed)
			if diff := cmp.Diff(tt.want, picks(p, tt.n)); diff != "" {
				t.Errorf("picks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWeightedRoundRobinExact(t *testing.T) {
	t.Parallel()
	p := roundRobin.Build(endpoints(5, 3, 1, 1), seeded(1), nil)
	// Every full cycle of 10 picks serves each endpoint exactly its weight.
	for cycle := range 100 {
		if diff := cmp.Diff(map[string]int{"a": 5, "b": 3, "c": 1, "d": 1}, counts(p, 10)); diff != "" {
			t.Fatalf("cycle %d (-want +got):\n%s", cycle, diff)
		}
	}
}

// Power of two choices: an endpoint with more load than the others is picked
// only when every choice falls on it.
func TestLeastRequestChoices(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		choiceCount int
		wantBusy    float64 // probability that the busy endpoint (1 of 3) is picked
	}{
		{"choice count unset means two", 0, 1.0 / 9},
		{"two choices", 2, 1.0 / 9},
		{"three choices", 3, 1.0 / 27},
		{"ten choices", 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			eps := endpoints(1, 1, 1)
			for range 100 {
				eps[0].Start()
			}
			cfg := Config{Policy: LeastRequest, ChoiceCount: tt.choiceCount, ActiveRequestBias: 1}
			const n = 9000
			got := counts(cfg.Build(eps, seeded(3), nil), n)
			if busy := float64(got["a"]) / n; math.Abs(busy-tt.wantBusy) > 0.02 {
				t.Errorf("busy endpoint picked %.3f of the time, want about %.3f (counts %v)", busy, tt.wantBusy, got)
			}
			if got["b"] < n/3 || got["c"] < n/3 {
				t.Errorf("idle endpoints picked too rarely: %v", got)
			}
		})
	}
}

// With unequal weights LEAST_REQUEST uses weight / (load + 1)^bias.
func TestWeightedLeastRequest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		bias float64
		want map[string]int
	}{
		// a: 2/4 = 0.5 against b: 1.
		{"bias 1", 1, map[string]int{"a": 100, "b": 200}},
		// a: 2/16 = 0.125 against b: 1.
		{"bias 2", 2, map[string]int{"a": 300 / 9, "b": 300 - 300/9}},
		// Weights alone.
		{"bias 0", 0, map[string]int{"a": 200, "b": 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			eps := endpoints(2, 1)
			for range 3 {
				eps[0].Start()
			}
			p := Config{Policy: LeastRequest, ActiveRequestBias: tt.bias}.Build(eps, seeded(4), nil)
			if diff := cmp.Diff(tt.want, counts(p, 300), cmpopts.EquateApprox(0, 1)); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	t.Parallel()
	e := endpoints(1)[0]
	e.Start()
	e.Start()
	e.Done()
	if got := e.Load(); got != 1 {
		t.Errorf("Load after two starts and one done: %d, want 1", got)
	}
	if w := e.WithWeight(1); w != e {
		t.Error("WithWeight with the same weight made a new endpoint")
	}
	if w := e.WithWeight(3); w.Weight != 3 || w.Load() != 0 || w.Addr != e.Addr {
		t.Errorf("WithWeight(3): weight %d, load %d, addr %q; want 3, 0, %q", w.Weight, w.Load(), w.Addr, e.Addr)
	}
}

// Pickers are used concurrently (run with -race).
func TestPickerConcurrent(t *testing.T) {
	t.Parallel()
	for _, cfg := range allPolicies {
		for _, weights := range [][]uint32{{1, 1}, {1, 2}} {
			eps := endpoints(weights...)
			p := cfg.Build(eps, nil, nil)
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for range 1000 {
						e := p.Pick()
						e.Start()
						cfg.Observe(e, time.Millisecond, time.Now())
						e.Done()
					}
				})
			}
			wg.Wait()
			for _, e := range eps {
				if e.Load() != 0 {
					t.Errorf("%s %v: load %d after all done", cfg.Policy, weights, e.Load())
				}
			}
		}
	}
}
