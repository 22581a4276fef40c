package balancer

import "time"

// Outlier is Envoy's consecutive-failure outlier detection
// (envoy.config.cluster.v3.OutlierDetection): an endpoint that returns
// Consecutive5xx 5xx responses in a row (or ConsecutiveGateway 502/503/504s)
// is ejected from balancing for BaseEjection × the number of times it has
// been ejected, capped by MaxEjection; at most MaxEjectionPercent of the
// endpoints are ejected at once (but one may always be). Local failures —
// connect failures, resets, timeouts — count as 5xx and gateway errors, as
// in Envoy without split_external_local_origin_errors.
type Outlier struct {
	Consecutive5xx          int32 // Envoy's default 5
	EnforcingConsecutive5xx int32 // percent; Envoy's default 100
	ConsecutiveGateway      int32 // Envoy's default 5
	EnforcingGateway        int32 // percent; Envoy's default 0
	BaseEjection            time.Duration
	MaxEjection             time.Duration
	MaxEjectionPercent      int
}

// DefaultOutlier returns Envoy's defaults.
func DefaultOutlier() Outlier {
	return Outlier{
		Consecutive5xx: 5, EnforcingConsecutive5xx: 100,
		ConsecutiveGateway: 5, EnforcingGateway: 0,
		BaseEjection: 30 * time.Second, MaxEjection: 300 * time.Second, MaxEjectionPercent: 10,
	}
}

// Report records one request's outcome on e: status is the response status,
// or 0 for a local failure (no response). It returns true when e crossed a
// threshold that is enforced (the caller then calls Eject if the ejection
// percentage allows). roll(100) returns a uniform int in [0, 100) for the
// enforcement percentages.
func (o *Outlier) Report(e *Endpoint, status int, roll func(int) int) bool {
	fail5xx := status == 0 || status >= 500
	gateway := status == 0 || status == 502 || status == 503 || status == 504
	if !fail5xx {
		e.consecutive5xx.Store(0)
		e.consecutiveGateway.Store(0)
		return false
	}
	eject := false
	if n := e.consecutive5xx.Add(1); o.Consecutive5xx > 0 && n >= o.Consecutive5xx {
		e.consecutive5xx.Store(0)
		eject = eject || roll(100) < int(o.EnforcingConsecutive5xx)
	}
	if gateway {
		if n := e.consecutiveGateway.Add(1); o.ConsecutiveGateway > 0 && n >= o.ConsecutiveGateway {
			e.consecutiveGateway.Store(0)
			eject = eject || roll(100) < int(o.EnforcingGateway)
		}
	} else {
		e.consecutiveGateway.Store(0)
	}
	return eject
}

// Eject marks e ejected from now and returns when it returns to service.
func (o *Outlier) Eject(e *Endpoint, now time.Time) time.Time {
	n := e.ejections.Add(1)
	d := o.BaseEjection * time.Duration(n)
	if limit := max(o.MaxEjection, o.BaseEjection); d > limit || d <= 0 {
		d = limit
	}
	until := now.Add(d)
	e.ejectedUntil.Store(until.UnixNano())
	return until
}

// Ejected reports whether e is ejected at now.
func (e *Endpoint) Ejected(now time.Time) bool {
	u := e.ejectedUntil.Load()
	return u != 0 && now.UnixNano() < u
}

// MayEject reports whether one more of n endpoints may be ejected when
// ejected already are: Envoy ejects while the ejected share is below
// MaxEjectionPercent, and always allows one.
func (o *Outlier) MayEject(ejected, n int) bool {
	if ejected == 0 {
		return true
	}
	return ejected*100 < o.MaxEjectionPercent*n
}

// EjectedUntil returns when e's current or last ejection ends (the zero
// time if it was never ejected).
func (e *Endpoint) EjectedUntil() time.Time {
	u := e.ejectedUntil.Load()
	if u == 0 {
		return time.Time{}
	}
	return time.Unix(0, u)
}
