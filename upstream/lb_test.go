package upstream

import (
	"math"
	"strings"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/google/go-cmp/cmp"
)

// hosts makes hosts named by addr with the given weights (health UNKNOWN).
func hosts(weights ...uint32) []*host {
	hs := make([]*host, len(weights))
	for i, w := range weights {
		hs[i] = &host{addr: string(rune('a' + i)), weight: w}
	}
	return hs
}

func picks(p picker, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(p.pick().addr)
	}
	return b.String()
}

func counts(p picker, n int) map[string]int {
	m := map[string]int{}
	for range n {
		m[p.pick().addr]++
	}
	return m
}

func TestPickerSequences(t *testing.T) {
	t.Parallel()
	zero := func(int) int { return 0 }
	one := func(int) int { return 1 }
	tests := []struct {
		name    string
		lb      lbPolicy
		weights []uint32
		rnd     func(int) int
		n       int
		want    string
	}{
		{"round robin", lbRoundRobin, []uint32{1, 1, 1}, zero, 7, "abcabca"},
		{"round robin random start", lbRoundRobin, []uint32{1, 1, 1}, one, 7, "bcabcab"},
		{"round robin equal weights above one", lbRoundRobin, []uint32{5, 5}, zero, 4, "abab"},
		// EDF: a is due every 1/3, b every 1; ties go to the host scheduled first.
		{"weighted round robin 3:1", lbRoundRobin, []uint32{3, 1}, zero, 12, "aabaaabaaaba"},
		{"weighted round robin 1:2:1", lbRoundRobin, []uint32{1, 2, 1}, zero, 8, "bacbbacb"},
		{"weighted least request, idle hosts", lbLeastRequest, []uint32{2, 1}, zero, 6, "abaaba"},
		{"single host", lbLeastRequest, []uint32{1}, zero, 3, "aaa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newPicker(tt.lb, 2, hosts(tt.weights...), tt.rnd)
			if diff := cmp.Diff(tt.want, picks(p, tt.n)); diff != "" {
				t.Errorf("picks (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWeightedRoundRobinExact(t *testing.T) {
	t.Parallel()
	p := newPicker(lbRoundRobin, 2, hosts(5, 3, 1, 1), seeded(1))
	// Every full cycle of 10 picks serves each host exactly its weight.
	for cycle := range 100 {
		got := counts(p, 10)
		if diff := cmp.Diff(map[string]int{"a": 5, "b": 3, "c": 1, "d": 1}, got); diff != "" {
			t.Fatalf("cycle %d (-want +got):\n%s", cycle, diff)
		}
	}
}

// Envoy's RANDOM load balancer ignores weights: hosts are equally likely.
func TestRandomUniform(t *testing.T) {
	t.Parallel()
	p := newPicker(lbRandom, 2, hosts(10, 1, 1), seeded(2))
	const n = 30000
	for addr, got := range counts(p, n) {
		if math.Abs(float64(got)-n/3) > n/3*0.05 {
			t.Errorf("host %s picked %d times of %d, want about %d", addr, got, n, n/3)
		}
	}
}

// Power of two choices: a host with more active connections than the others
// is picked only when every choice falls on it.
func TestLeastRequestChoices(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		choiceCount int
		wantBusy    float64 // probability that the busy host (1 of 3) is picked
	}{
		{"two choices", 2, 1.0 / 9},
		{"three choices", 3, 1.0 / 27},
		{"ten choices", 10, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			hs := hosts(1, 1, 1)
			hs[0].active.Store(100)
			p := newPicker(lbLeastRequest, tt.choiceCount, hs, seeded(3))
			const n = 9000
			got := counts(p, n)
			if busy := float64(got["a"]) / n; math.Abs(busy-tt.wantBusy) > 0.02 {
				t.Errorf("busy host picked %.3f of the time, want about %.3f (counts %v)", busy, tt.wantBusy, got)
			}
			if got["b"] < n/3 || got["c"] < n/3 {
				t.Errorf("idle hosts picked too rarely: %v", got)
			}
		})
	}
}

// With unequal weights LEAST_REQUEST uses weight / (active + 1).
func TestWeightedLeastRequest(t *testing.T) {
	t.Parallel()
	hs := hosts(2, 1)
	hs[0].active.Store(3) // effective weight 2/4 = 0.5, against 1 for b
	p := newPicker(lbLeastRequest, 2, hs, seeded(4))
	got := counts(p, 300)
	if diff := cmp.Diff(map[string]int{"a": 100, "b": 200}, got); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestPickerHealth(t *testing.T) {
	t.Parallel()
	h := func(addr string, s corev3.HealthStatus) *host { return &host{addr: addr, weight: 1, health: s} }
	tests := []struct {
		name  string
		hosts []*host
		want  map[string]int // picks out of 6 under ROUND_ROBIN; nil: no picker
	}{
		{"unhealthy, draining and timeout are never picked",
			[]*host{h("a", corev3.HealthStatus_UNHEALTHY), h("b", corev3.HealthStatus_HEALTHY), h("c", corev3.HealthStatus_DRAINING), h("d", corev3.HealthStatus_UNKNOWN), h("e", corev3.HealthStatus_TIMEOUT)},
			map[string]int{"b": 3, "d": 3}},
		{"degraded only without healthy hosts",
			[]*host{h("a", corev3.HealthStatus_DEGRADED), h("b", corev3.HealthStatus_HEALTHY)},
			map[string]int{"b": 6}},
		{"degraded when nothing else",
			[]*host{h("a", corev3.HealthStatus_DEGRADED), h("b", corev3.HealthStatus_UNHEALTHY)},
			map[string]int{"a": 6}},
		{"nothing healthy", []*host{h("a", corev3.HealthStatus_UNHEALTHY)}, nil},
		{"no hosts", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, lb := range []lbPolicy{lbRoundRobin, lbRandom, lbLeastRequest} {
				p := newPicker(lb, 2, tt.hosts, seeded(5))
				if tt.want == nil {
					if p != nil {
						t.Errorf("lb %d: got a picker, want none", lb)
					}
					continue
				}
				got := counts(p, 6)
				if lb == lbRoundRobin {
					if diff := cmp.Diff(tt.want, got); diff != "" {
						t.Errorf("counts (-want +got):\n%s", diff)
					}
					continue
				}
				for addr := range got {
					if _, ok := tt.want[addr]; !ok {
						t.Errorf("lb %d picked %s", lb, addr)
					}
				}
			}
		})
	}
}

// Pickers are used concurrently (run with -race).
func TestPickerConcurrent(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		lb      lbPolicy
		weights []uint32
	}{
		{lbRoundRobin, []uint32{1, 1}}, {lbRoundRobin, []uint32{1, 2}},
		{lbRandom, []uint32{1, 2}}, {lbLeastRequest, []uint32{1, 1}}, {lbLeastRequest, []uint32{1, 2}},
	} {
		p := newPicker(tt.lb, 2, hosts(tt.weights...), seeded(6))
		var wg sync.WaitGroup
		var mu sync.Mutex
		total := 0
		for range 4 {
			wg.Go(func() {
				n := 0
				for range 1000 {
					h := p.pick()
					h.active.Add(1)
					h.active.Add(-1)
					n++
				}
				mu.Lock()
				total += n
				mu.Unlock()
			})
		}
		wg.Wait()
		if total != 4000 {
			t.Errorf("lb %d: %d picks", tt.lb, total)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	var got []int
	for n := range 6 {
		got = append(got, int(backoff(100, 1000, n)))
	}
	if diff := cmp.Diff([]int{100, 200, 400, 800, 1000, 1000}, got); diff != "" {
		t.Errorf("backoff (-want +got):\n%s", diff)
	}
}
