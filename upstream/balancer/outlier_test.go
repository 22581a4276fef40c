package balancer

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestOutlier(t *testing.T) {
	t.Parallel()
	o := DefaultOutlier()
	e := endpoints(1)[0]
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
	// Gateway errors are not enforced by default (enforcing 0%), 5xx are.
	g := endpoints(1)[0]
	o.Consecutive5xx = 0
	for range 10 {
		if o.Report(g, 502, func(int) int { return 50 }) {
			t.Fatal("gateway failures ejected with enforcing_consecutive_gateway_failure 0")
		}
	}
}

func TestMayEject(t *testing.T) {
	t.Parallel()
	o := DefaultOutlier()
	for _, tt := range []struct {
		name       string
		ejected, n int
		want       bool
	}{
		{"one may always be ejected", 0, 1, true},
		{"none ejected of three", 0, 3, true},
		{"one of three is over 10%", 1, 3, false},
		{"one of twenty is under 10%", 1, 20, true},
		{"two of twenty is 10%", 2, 20, false},
	} {
		if got := o.MayEject(tt.ejected, tt.n); got != tt.want {
			t.Errorf("%s: MayEject(%d, %d) = %v, want %v", tt.name, tt.ejected, tt.n, got, tt.want)
		}
	}
}

func TestEligible(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		health []Health // of endpoints a, b, c…
		want   string
	}{
		{"healthy only", []Health{Healthy, Unavailable, Healthy}, "ac"},
		{"degraded only without healthy", []Health{Degraded, Healthy}, "b"},
		{"degraded when nothing else", []Health{Degraded, Unavailable, Degraded}, "ac"},
		{"nothing available", []Health{Unavailable}, ""},
		{"empty", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var names []byte
			for i := range tt.health {
				names = append(names, byte('a'+i))
			}
			got := Eligible(names, func(b byte) Health { return tt.health[b-'a'] })
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("eligible (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPickable(t *testing.T) {
	t.Parallel()
	o := DefaultOutlier()
	tests := []struct {
		name        string
		n           int
		ejected     map[int]time.Duration // index: ejection length from t0 (negative: ended that long ago)
		want        string
		wantEjected int
		wantReturns time.Time
	}{
		{name: "empty"},
		{name: "none ejected", n: 3, want: "abc"},
		{name: "one ejected", n: 3, ejected: map[int]time.Duration{1: 30 * time.Second}, want: "ac",
			wantEjected: 1, wantReturns: t0.Add(30 * time.Second)},
		{name: "earliest return", n: 3, ejected: map[int]time.Duration{0: 60 * time.Second, 2: 30 * time.Second}, want: "b",
			wantEjected: 2, wantReturns: t0.Add(30 * time.Second)},
		{name: "all ejected: panic", n: 2, ejected: map[int]time.Duration{0: 30 * time.Second, 1: 30 * time.Second}, want: "ab",
			wantEjected: 2, wantReturns: t0.Add(30 * time.Second)},
		{name: "ejection over", n: 2, ejected: map[int]time.Duration{0: -time.Second}, want: "ab"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			eps := endpoints(make([]uint32, tt.n)...)
			for i, d := range tt.ejected {
				o := o
				o.BaseEjection, o.MaxEjection = d, d
				at := t0
				if d < 0 {
					o.BaseEjection, o.MaxEjection = time.Minute, time.Minute
					at = t0.Add(-time.Minute + d)
				}
				o.Eject(eps[i], at)
			}
			got, ejected, returns := Pickable(eps, t0)
			var names string
			for _, e := range got {
				names += e.Addr
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Errorf("pickable (-want +got):\n%s", diff)
			}
			if ejected != tt.wantEjected || !returns.Equal(tt.wantReturns) {
				t.Errorf("ejected %d, returns %v; want %d, %v", ejected, returns, tt.wantEjected, tt.wantReturns)
			}
		})
	}
}
