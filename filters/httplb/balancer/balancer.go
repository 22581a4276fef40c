// Package balancer holds Sift's request-level load balancers: per-endpoint
// state kept in atomics (requests in flight, a peak-EWMA latency estimate,
// outlier-detection counters) and immutable pickers built over one endpoint
// set, in the shape of grpc-go's balancers. When the endpoint set changes the
// owner builds a new Picker over the same *Endpoint values for addresses that
// stayed, so their state survives.
//
// Policies:
//   - RoundRobin: equal weights rotate from a random start; unequal weights
//     use an earliest-deadline-first schedule (Envoy's weighted round robin).
//   - Random: uniform, ignoring weights (as Envoy).
//   - LeastRequest: equal weights pick ChoiceCount endpoints at random and
//     take the one with the fewest requests in flight (P2C by default);
//     unequal weights use EDF with Envoy's dynamic weight
//     weight / (active+1)^active_request_bias.
//   - PeakEWMA: Linkerd's (Tower's) balancer: two distinct endpoints at
//     random, the lower cost wins, cost = rtt_estimate × (in_flight + 1),
//     where rtt_estimate jumps to any slower observation (the peak) and
//     otherwise decays exponentially toward recent observations — and toward
//     zero while the endpoint is idle, so a slow endpoint is probed again
//     after a while. Weights are ignored, as in Linkerd.
//
// Everything here is safe for concurrent use.
package balancer

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Linkerd's peak-EWMA defaults.
const (
	DefaultRTT   = 30 * time.Millisecond
	DefaultDecay = 10 * time.Second
)

// Endpoint is one upstream endpoint's request-level state. Create it with
// NewEndpoint; the zero value is not usable.
type Endpoint struct {
	// Addr is "ip:port"; Weight is its load_balancing_weight (>= 1). Both are
	// immutable.
	Addr   string
	Weight uint32

	active atomic.Int64

	mu       sync.Mutex // guards the EWMA estimate
	rttNanos float64
	stamp    time.Time

	// Outlier detection (see Outlier).
	consecutive5xx     atomic.Int32
	consecutiveGateway atomic.Int32
	ejectedUntil       atomic.Int64 // unix nanos; 0: not ejected
	ejections          atomic.Int32 // times ejected, for the back-off multiplier
}

// NewEndpoint returns an endpoint whose latency estimate starts at
// defaultRTT (as Tower's), stamped at now.
func NewEndpoint(addr string, weight uint32, defaultRTT time.Duration, now time.Time) *Endpoint {
	if weight == 0 {
		weight = 1
	}
	return &Endpoint{Addr: addr, Weight: weight, rttNanos: float64(defaultRTT), stamp: now}
}

// Active returns the number of requests in flight.
func (e *Endpoint) Active() int64 { return e.active.Load() }

// Begin counts a request in flight; call End exactly once when it completes
// (its response body is done, or it failed).
func (e *Endpoint) Begin() { e.active.Add(1) }

// End un-counts a request begun with Begin.
func (e *Endpoint) End() { e.active.Add(-1) }

// Observe folds one round-trip time, measured to response headers and ending
// at now, into the peak-EWMA estimate with time constant decay.
func (e *Endpoint) Observe(rtt time.Duration, now time.Time, decay time.Duration) {
	e.mu.Lock()
	e.update(float64(rtt), now, decay)
	e.mu.Unlock()
}

// update is Tower's RttEstimate::update. Under mu.
func (e *Endpoint) update(rtt float64, now time.Time, decay time.Duration) float64 {
	if e.rttNanos < rtt {
		e.rttNanos = rtt // the peak
	} else {
		elapsed := float64(now.Sub(e.stamp))
		if elapsed < 0 {
			elapsed = 0
		}
		w := math.Exp(-elapsed / float64(decay))
		e.rttNanos = e.rttNanos*w + rtt*(1-w)
	}
	if now.After(e.stamp) {
		e.stamp = now
	}
	return e.rttNanos
}

// RTTEstimate returns the latency estimate decayed to now.
func (e *Endpoint) RTTEstimate(now time.Time, decay time.Duration) time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return time.Duration(e.update(0, now, decay))
}

// cost is Tower's PeakEwma cost: the estimate decayed to now, times the
// requests in flight plus one.
func (e *Endpoint) cost(now time.Time, decay time.Duration) float64 {
	e.mu.Lock()
	rtt := e.update(0, now, decay)
	e.mu.Unlock()
	return rtt * float64(e.active.Load()+1)
}

// Picker picks the endpoint for one request. A Picker is built for one
// endpoint set and never changes; Pick is called concurrently and returns
// nil only when the set is empty.
type Picker interface {
	Pick() *Endpoint
}

// Policy builds pickers. Implementations are immutable.
type Policy interface {
	// Build returns a picker over eps (non-empty, not modified afterwards).
	Build(eps []*Endpoint) Picker
	// Name is the policy's name for logs and records.
	Name() string
}

// RoundRobin is Envoy's ROUND_ROBIN.
type RoundRobin struct{}

func (RoundRobin) Name() string { return "round_robin" }

func (RoundRobin) Build(eps []*Endpoint) Picker {
	if weighted(eps) {
		return newEDF(eps, func(e *Endpoint) float64 { return float64(e.Weight) })
	}
	p := &rrPicker{eps: eps}
	p.next.Store(uint64(rand.IntN(len(eps))))
	return p
}

type rrPicker struct {
	eps  []*Endpoint
	next atomic.Uint64
}

func (p *rrPicker) Pick() *Endpoint { return p.eps[(p.next.Add(1)-1)%uint64(len(p.eps))] }

// Random is Envoy's RANDOM.
type Random struct{}

func (Random) Name() string { return "random" }

func (Random) Build(eps []*Endpoint) Picker { return randomPicker(eps) }

type randomPicker []*Endpoint

func (p randomPicker) Pick() *Endpoint { return p[rand.IntN(len(p))] }

// LeastRequest is Envoy's LEAST_REQUEST. ChoiceCount < 2 means 2; Bias is
// active_request_bias (Envoy's default 1.0).
type LeastRequest struct {
	ChoiceCount int
	Bias        float64
}

func (LeastRequest) Name() string { return "least_request" }

func (l LeastRequest) Build(eps []*Endpoint) Picker {
	if weighted(eps) {
		bias := l.Bias
		return newEDF(eps, func(e *Endpoint) float64 {
			a := float64(e.active.Load() + 1)
			if bias == 1 {
				return float64(e.Weight) / a
			}
			return float64(e.Weight) / math.Pow(a, bias)
		})
	}
	n := max(l.ChoiceCount, 2)
	return &leastPicker{eps: eps, choices: min(n, 16*len(eps))}
}

type leastPicker struct {
	eps     []*Endpoint
	choices int
}

func (p *leastPicker) Pick() *Endpoint {
	if len(p.eps) == 1 {
		return p.eps[0]
	}
	var best *Endpoint
	var bestActive int64
	for range p.choices {
		e := p.eps[rand.IntN(len(p.eps))]
		if a := e.active.Load(); best == nil || a < bestActive {
			best, bestActive = e, a
		}
	}
	return best
}

// PeakEWMA is Linkerd's default balancer. Zero fields take Linkerd's
// defaults (DefaultRTT, DefaultDecay); Now defaults to time.Now.
type PeakEWMA struct {
	DefaultRTT time.Duration
	Decay      time.Duration
	Now        func() time.Time
}

func (PeakEWMA) Name() string { return "peak_ewma" }

// WithDefaults returns p with zero fields set to the defaults.
func (p PeakEWMA) WithDefaults() PeakEWMA {
	if p.DefaultRTT <= 0 {
		p.DefaultRTT = DefaultRTT
	}
	if p.Decay <= 0 {
		p.Decay = DefaultDecay
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	return p
}

func (p PeakEWMA) Build(eps []*Endpoint) Picker {
	return &ewmaPicker{eps: eps, cfg: p.WithDefaults()}
}

type ewmaPicker struct {
	eps []*Endpoint
	cfg PeakEWMA
}

// Pick draws two distinct endpoints (Tower's p2c) and returns the cheaper.
func (p *ewmaPicker) Pick() *Endpoint {
	n := len(p.eps)
	if n == 1 {
		return p.eps[0]
	}
	i := rand.IntN(n)
	j := rand.IntN(n - 1)
	if j >= i {
		j++
	}
	now := p.cfg.Now()
	a, b := p.eps[i], p.eps[j]
	if b.cost(now, p.cfg.Decay) < a.cost(now, p.cfg.Decay) {
		return b
	}
	return a
}

func weighted(eps []*Endpoint) bool {
	for _, e := range eps {
		if e.Weight != eps[0].Weight {
			return true
		}
	}
	return false
}

// edfPicker is an earliest-deadline-first schedule: each pick advances the
// chosen endpoint's deadline by 1/weight (weight read at that moment, so it
// may be dynamic); ties go to the endpoint scheduled first. Under mu.
type edfPicker struct {
	weight func(*Endpoint) float64
	mu     sync.Mutex
	eps    []*Endpoint
	due    []float64
	seq    []uint64
	next   uint64
}

func newEDF(eps []*Endpoint, weight func(*Endpoint) float64) *edfPicker {
	p := &edfPicker{weight: weight, eps: eps, due: make([]float64, len(eps)), seq: make([]uint64, len(eps))}
	for i, e := range eps {
		p.due[i] = 1 / weight(e)
		p.seq[i] = uint64(i)
	}
	p.next = uint64(len(eps))
	return p
}

// Pick scans linearly: endpoint sets are small, and a scan keeps the
// schedule exact without a heap's bookkeeping.
func (p *edfPicker) Pick() *Endpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	best := 0
	for i := 1; i < len(p.eps); i++ {
		if p.due[i] < p.due[best] || (p.due[i] == p.due[best] && p.seq[i] < p.seq[best]) {
			best = i
		}
	}
	e := p.eps[best]
	p.due[best] += 1 / p.weight(e)
	p.seq[best] = p.next
	p.next++
	return e
}

// WithWeight returns e itself when its weight is w, else a new Endpoint
// with weight w that starts from e's latency estimate (its in-flight count
// starts at zero: requests begun on e end on e).
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
