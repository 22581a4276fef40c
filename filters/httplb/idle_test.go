package httplb

import (
	"testing"
	"time"
)

// TestQuietWatchBound drives quietWatch as its timers do, on a simulated
// clock, with activity at random times: the timeout must never fire before
// a whole timeout without activity, nor later than 1.25 timeouts after the
// last activity (the bound docs/performance.md states), for samples taken
// exactly when asked and for samples up to 2 ms late.
func TestQuietWatchBound(t *testing.T) {
	const timeout = 400 * time.Millisecond
	start := time.Unix(1000, 0)
	for _, late := range []time.Duration{0, 2 * time.Millisecond} {
		for seed := uint64(1); seed <= 200; seed++ {
			rng := seed
			next := func(n int64) time.Duration { // a small xorshift: reproducible
				rng ^= rng << 13
				rng ^= rng >> 7
				rng ^= rng << 17
				return time.Duration(rng % uint64(n))
			}
			// Activity: a few events in the first 2 timeouts.
			var events []time.Duration
			for at := next(int64(timeout)); at < 2*timeout; at += next(int64(timeout)) + time.Millisecond {
				events = append(events, at)
			}
			last := time.Duration(0) // the watch's start counts as activity
			if len(events) > 0 {
				last = events[len(events)-1]
			}
			w := quietWatch{timeout: timeout, since: start}
			now, count, ev := time.Duration(0), uint64(0), 0
			wait := w.tick()
			for {
				now += wait + late
				for ev < len(events) && events[ev] <= now {
					count++
					ev++
				}
				expired, next := w.sample(start.Add(now), count)
				if expired {
					break
				}
				if next <= 0 || next > w.tick() {
					t.Fatalf("seed %d: next sample in %v, want (0, %v]", seed, next, w.tick())
				}
				wait = next
			}
			if quiet := now - last; quiet < timeout || quiet > timeout+timeout/4+2*late {
				t.Errorf("seed %d, late %v: fired %v after the last activity, want [%v, %v]", seed, late, quiet, timeout, timeout+timeout/4+2*late)
			}
		}
	}
}
