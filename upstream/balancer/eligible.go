package balancer

import "time"

// Health is what balancing needs of an endpoint's health_status.
type Health uint8

const (
	// Healthy is UNKNOWN or HEALTHY: picked.
	Healthy Health = iota
	// Degraded is DEGRADED: picked only when no endpoint is Healthy.
	Degraded
	// Unavailable is UNHEALTHY, DRAINING or TIMEOUT: never picked.
	Unavailable
)

// Eligible returns the endpoints of eps that may be picked: the Healthy
// ones, or when there is none, the Degraded ones (Envoy spills over to
// degraded endpoints gradually, by its overprovisioning factor; Sift only
// when nothing healthy is left). There is no panic mode for health: Envoy's
// default healthy_panic_threshold of 50% would balance over all endpoints
// once fewer than half are healthy; Sift behaves as with a threshold of 0.
func Eligible[T any](eps []T, health func(T) Health) []T {
	var healthy, degraded []T
	for _, e := range eps {
		switch health(e) {
		case Healthy:
			healthy = append(healthy, e)
		case Degraded:
			degraded = append(degraded, e)
		}
	}
	if len(healthy) > 0 {
		return healthy
	}
	return degraded
}

// Pickable returns the endpoints of eligible that are not ejected at now
// (outlier detection), how many are ejected, and the earliest time one of
// those returns (zero when none is ejected): the owner rebuilds its picker
// then. When every eligible endpoint is ejected, all are returned: Sift
// balances over them, as Envoy's panic mode would, rather than fail
// everything.
func Pickable(eligible []*Endpoint, now time.Time) (pickable []*Endpoint, ejected int, returns time.Time) {
	for _, e := range eligible {
		if e.Ejected(now) {
			ejected++
			if u := e.EjectedUntil(); returns.IsZero() || u.Before(returns) {
				returns = u
			}
			continue
		}
		pickable = append(pickable, e)
	}
	if len(pickable) == 0 {
		pickable = eligible
	}
	return pickable, ejected, returns
}
