// Package balancer is Sift's one family of load balancers, used for new
// connections by tcp_proxy (through upstream.Cluster.Dial) and for requests
// by the HTTP router (filters/httplb). It follows grpc-go's balancers: a
// Picker is built over one endpoint set and never changes; per-endpoint state
// (the load, a peak-EWMA latency estimate, outlier-detection counters) lives
// in atomics on *Endpoint values that the owner carries over from one set to
// the next, so it survives rebuilding the picker.
//
// The load an Endpoint counts is what its owner starts and ends: open
// connections (including ones still connecting) for tcp_proxy, requests in
// flight for HTTP. The latency it observes is likewise the owner's: time to
// response headers for HTTP, connect time for tcp_proxy.
//
// Policies (Config.Policy), one file each:
//   - RoundRobin (Envoy's ROUND_ROBIN): equal weights rotate from a random
//     start; unequal weights use an earliest-deadline-first schedule (edf.go),
//     exact for static weights: every sum(weights) picks serve each endpoint
//     exactly its weight.
//   - Random (Envoy's RANDOM): uniform, ignoring weights, as Envoy.
//   - LeastRequest (Envoy's LEAST_REQUEST): equal weights draw ChoiceCount
//     endpoints at random (with replacement) and take the least loaded (power
//     of two choices by default); unequal weights use the EDF schedule with
//     Envoy's dynamic weight weight / (load+1)^ActiveRequestBias.
//   - PeakEWMA (Linkerd's, from Tower): two distinct endpoints at random, the
//     lower cost wins, cost = latency estimate × (load + 1). Weights are
//     ignored, as in Linkerd.
//
// Which endpoints are offered to a picker is decided here too, once for both
// users: Eligible (health status) and Pickable (outlier ejection, with
// Envoy's panic behaviour when every endpoint is ejected).
//
// Everything here is safe for concurrent use.
package balancer

import (
	"math/rand/v2"
	"time"
)

// Linkerd's peak-EWMA defaults
// (sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma).
const (
	DefaultRTT   = 30 * time.Millisecond
	DefaultDecay = 10 * time.Second
)

// DefaultChoiceCount is Envoy's least_request choice_count default.
const DefaultChoiceCount = 2

// Policy names a load-balancing policy.
type Policy uint8

// The policies: Envoy's Cluster.lb_policy values, and PeakEWMA (Linkerd's,
// selected by a load_balancing_policy with Sift's PeakEwma typed config).
const (
	RoundRobin Policy = iota
	LeastRequest
	Random
	PeakEWMA
)

func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "round_robin"
	case LeastRequest:
		return "least_request"
	case Random:
		return "random"
	case PeakEWMA:
		return "peak_ewma"
	}
	return "unknown"
}

// Config is a cluster's validated load-balancing policy: lb_policy, or the
// first supported entry of load_balancing_policy (upstream decodes it). It is
// a plain value.
type Config struct {
	Policy Policy
	// LeastRequest: choice_count (values below 2 mean 2) and
	// active_request_bias (Envoy's default is 1.0; the zero value here means
	// a bias of 0, weights alone, so decoders set it).
	ChoiceCount       int
	ActiveRequestBias float64
	// PeakEWMA: default_rtt and decay; zero means DefaultRTT, DefaultDecay.
	DefaultRTT time.Duration
	Decay      time.Duration
}

// Picker picks the endpoint for one connection or request. A Picker is built
// for one endpoint set and never changes; Pick is called concurrently and
// never returns nil.
type Picker interface {
	Pick() *Endpoint
}

// Build returns a picker over eps, or nil when eps is empty. eps must not be
// modified afterwards. rnd(n) returns a uniform int in [0, n) (nil:
// math/rand/v2.IntN); now is the clock of PeakEWMA (nil: time.Now).
func (c Config) Build(eps []*Endpoint, rnd func(int) int, now func() time.Time) Picker {
	if len(eps) == 0 {
		return nil
	}
	if rnd == nil {
		rnd = rand.IntN
	}
	switch c.Policy {
	case LeastRequest:
		return newLeastRequest(eps, c.ChoiceCount, c.ActiveRequestBias, rnd)
	case Random:
		return randomPicker{eps: eps, rnd: rnd}
	case PeakEWMA:
		if now == nil {
			now = time.Now
		}
		return &ewmaPicker{eps: eps, decay: c.decay(), now: now, rnd: rnd}
	default:
		return newRoundRobin(eps, rnd)
	}
}

// Observe feeds one latency, ending at now, to ep's estimate when the policy
// is PeakEWMA, and does nothing otherwise.
func (c Config) Observe(ep *Endpoint, latency time.Duration, now time.Time) {
	if c.Policy == PeakEWMA {
		ep.observe(latency, now, c.decay())
	}
}

// State is one endpoint's balancing state at one moment, for admin pages and
// metrics.
type State struct {
	// Load is the units of load in flight (Endpoint.Load).
	Load int64
	// RTT is the peak-EWMA latency estimate decayed to the moment, and Cost
	// the estimate times (Load+1), in nanoseconds: what the picker compares.
	// Both are zero unless the policy is PeakEWMA.
	RTT  time.Duration
	Cost float64
	// Ejected is true while outlier detection keeps the endpoint out.
	Ejected bool
}

// State returns ep's balancing state at now. It takes ep's estimate lock
// briefly; it is meant for scrapes, not the data path.
func (c Config) State(ep *Endpoint, now time.Time) State {
	if c.Policy != PeakEWMA {
		return State{Load: ep.Load(), Ejected: ep.Ejected(now)}
	}
	rtt := ep.RTTEstimate(now, c.decay())
	load := ep.Load()
	// As cost computes it, from one reading of the load.
	return State{Load: load, RTT: rtt, Cost: float64(rtt) * float64(load+1), Ejected: ep.Ejected(now)}
}

// NewEndpoint returns a new endpoint for this policy: its latency estimate
// starts at DefaultRTT (as Tower's), stamped at now.
func (c Config) NewEndpoint(addr string, weight uint32, now time.Time) *Endpoint {
	rtt := c.DefaultRTT
	if rtt <= 0 {
		rtt = DefaultRTT
	}
	return newEndpoint(addr, weight, rtt, now)
}

func (c Config) decay() time.Duration {
	if c.Decay <= 0 {
		return DefaultDecay
	}
	return c.Decay
}

// weighted reports whether the endpoints' weights differ.
func weighted(eps []*Endpoint) bool {
	for _, e := range eps {
		if e.Weight != eps[0].Weight {
			return true
		}
	}
	return false
}
