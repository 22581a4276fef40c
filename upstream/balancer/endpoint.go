package balancer

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Endpoint is one endpoint's balancing state. Create it with
// Config.NewEndpoint; the zero value is not usable. Addr and Weight are
// immutable; the rest is safe for concurrent use.
type Endpoint struct {
	// Addr is "ip:port"; Weight is its load_balancing_weight (>= 1).
	Addr   string
	Weight uint32

	load atomic.Int64

	mu       sync.Mutex // guards the peak-EWMA estimate
	rttNanos float64
	stamp    time.Time

	// Outlier detection (outlier.go).
	consecutive5xx     atomic.Int32
	consecutiveGateway atomic.Int32
	ejectedUntil       atomic.Int64 // unix nanos; 0: never ejected
	ejections          atomic.Int32 // times ejected, for the back-off multiplier
}

func newEndpoint(addr string, weight uint32, rtt time.Duration, now time.Time) *Endpoint {
	if weight == 0 {
		weight = 1
	}
	return &Endpoint{Addr: addr, Weight: weight, rttNanos: float64(rtt), stamp: now}
}

// Start counts one unit of load on e: a connection being opened (tcp_proxy)
// or a request sent (HTTP). Call Done exactly once when it ends.
func (e *Endpoint) Start() { e.load.Add(1) }

// Done un-counts a unit of load counted by Start.
func (e *Endpoint) Done() { e.load.Add(-1) }

// Load returns the units of load started and not done.
func (e *Endpoint) Load() int64 { return e.load.Load() }

// observe folds one latency, ending at now, into the peak-EWMA estimate with
// time constant decay.
func (e *Endpoint) observe(rtt time.Duration, now time.Time, decay time.Duration) {
	e.mu.Lock()
	e.update(float64(rtt), now, decay)
	e.mu.Unlock()
}

// update is Tower's RttEstimate::update: a slower observation is taken at
// once (the peak); a faster one is blended in with weight 1-e^(-elapsed/decay).
// Under mu.
func (e *Endpoint) update(rtt float64, now time.Time, decay time.Duration) float64 {
	if e.rttNanos < rtt {
		e.rttNanos = rtt
	} else {
		elapsed := max(float64(now.Sub(e.stamp)), 0)
		w := math.Exp(-elapsed / float64(decay))
		e.rttNanos = e.rttNanos*w + rtt*(1-w)
	}
	if now.After(e.stamp) {
		e.stamp = now
	}
	return e.rttNanos
}

// RTTEstimate returns the latency estimate decayed to now (toward zero: an
// idle endpoint becomes cheap again, so a slow one is probed after a while).
func (e *Endpoint) RTTEstimate(now time.Time, decay time.Duration) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return time.Duration(e.update(0, now, decay))
}

// cost is Tower's PeakEwma cost: the estimate decayed to now, times the load
// plus one.
func (e *Endpoint) cost(now time.Time, decay time.Duration) float64 {
	e.mu.Lock()
	rtt := e.update(0, now, decay)
	e.mu.Unlock()
	return rtt * float64(e.load.Load()+1)
}

// WithWeight returns e itself when its weight is w, else a new Endpoint with
// weight w that starts from e's latency estimate and ejection state. Its load
// starts at zero: load started on e is done on e.
func (e *Endpoint) WithWeight(w uint32) *Endpoint {
	if w == 0 {
		w = 1
	}
	if e.Weight == w {
		return e
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	n := &Endpoint{Addr: e.Addr, Weight: w, rttNanos: e.rttNanos, stamp: e.stamp}
	n.ejectedUntil.Store(e.ejectedUntil.Load())
	n.ejections.Store(e.ejections.Load())
	return n
}
