package upstream

import (
	"container/heap"
	"math/bits"
	"sync"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// host is one endpoint of a cluster. Everything but active is immutable; a
// host keeps its identity (and so its active count) across endpoint updates
// for as long as its address stays in the set.
type host struct {
	addr     string // "ip:port"
	weight   uint32 // >= 1
	health   corev3.HealthStatus
	hostname string
	ts       uint8 // transport socket (tls.go)
	// active counts this host's open connections from Dial (including ones
	// still connecting): Envoy's "active requests" for a connection-level
	// balancer.
	active atomic.Int64
}

// picker chooses a host for a new connection. A picker is built for one
// endpoint set and never changes; it is called concurrently.
type picker interface {
	pick() *host
}

// newPicker builds the picker for one endpoint set, or returns nil when no
// host may be picked. rnd(n) returns a random int in [0, n).
//
// Hosts whose health_status is UNKNOWN or HEALTHY are picked; DEGRADED hosts
// only when there is none of those (Envoy spills to degraded hosts gradually,
// by its overprovisioning factor); UNHEALTHY, DRAINING and TIMEOUT hosts are
// never picked. Sift has no panic mode: Envoy's default
// healthy_panic_threshold of 50% would balance over all hosts once fewer than
// half are healthy; Sift behaves as with a threshold of 0.
//
// The policies follow Envoy's load balancers (arch_overview/upstream/load_balancing):
//   - ROUND_ROBIN: equal weights rotate through the hosts from a random
//     start; unequal weights use an earliest-deadline-first schedule (as
//     Envoy does), deterministic for a given endpoint set.
//   - RANDOM: a uniformly random host. Like Envoy's, it ignores weights.
//   - LEAST_REQUEST: equal weights pick choice_count hosts at random (with
//     replacement) and take the one with the fewest active connections
//     (power of two choices by default); unequal weights use the EDF schedule
//     with Envoy's dynamic weight load_balancing_weight / (active + 1), the
//     active count being read when a host is rescheduled.
func newPicker(lb lbPolicy, choiceCount int, hosts []*host, rnd func(int) int) picker {
	eligible := eligibleHosts(hosts)
	if len(eligible) == 0 {
		return nil
	}
	weighted := false
	for _, h := range eligible {
		if h.weight != eligible[0].weight {
			weighted = true
			break
		}
	}
	switch lb {
	case lbLeastRequest:
		if weighted {
			return newEDF(eligible, func(h *host) float64 {
				return float64(h.weight) / float64(h.active.Load()+1)
			})
		}
		// choice_count is unbounded in Envoy; past 16 draws per host the odds
		// of never drawing a given host (e^-16) are nil, so a huge value
		// cannot turn each pick into a long loop.
		return &p2cPicker{hosts: eligible, choices: min(choiceCount, 16*len(eligible)), rnd: rnd}
	case lbRandom:
		return &randomPicker{hosts: eligible, rnd: rnd}
	default:
		if weighted {
			return newEDF(eligible, nil)
		}
		p := &rrPicker{hosts: eligible}
		p.next.Store(uint64(rnd(len(eligible))))
		return p
	}
}

func eligibleHosts(hosts []*host) []*host {
	var healthy, degraded []*host
	for _, h := range hosts {
		switch h.health {
		case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
			healthy = append(healthy, h)
		case corev3.HealthStatus_DEGRADED:
			degraded = append(degraded, h)
		}
	}
	if len(healthy) > 0 {
		return healthy
	}
	return degraded
}

type rrPicker struct {
	hosts []*host
	next  atomic.Uint64
}

func (p *rrPicker) pick() *host {
	n := p.next.Add(1) - 1
	return p.hosts[n%uint64(len(p.hosts))]
}

type randomPicker struct {
	hosts []*host
	rnd   func(int) int
}

func (p *randomPicker) pick() *host { return p.hosts[p.rnd(len(p.hosts))] }

type p2cPicker struct {
	hosts   []*host
	choices int
	rnd     func(int) int
}

func (p *p2cPicker) pick() *host {
	if len(p.hosts) == 1 {
		return p.hosts[0]
	}
	var best *host
	var bestActive int64
	for range p.choices {
		h := p.hosts[p.rnd(len(p.hosts))]
		if a := h.active.Load(); best == nil || a < bestActive {
			best, bestActive = h, a
		}
	}
	return best
}

// edfPicker is an earliest-deadline-first schedule: each host is due 1/weight
// after it was last picked; the earliest due host is picked, ties going to the
// one scheduled first. With static weights (dynamic == nil) a host picked n-1
// times is due at n/weight, compared exactly in integers, so every cycle of
// sum(weights) picks serves each host exactly its weight. With dynamic weights
// deadlines are floats, as in Envoy. The schedule is the picker's only mutable
// state, under mu.
type edfPicker struct {
	dynamic func(*host) float64

	mu  sync.Mutex
	q   edfQueue
	seq uint64
}

func newEDF(hosts []*host, dynamic func(*host) float64) *edfPicker {
	p := &edfPicker{dynamic: dynamic, q: edfQueue{exact: dynamic == nil, entries: make([]edfEntry, len(hosts))}}
	for i, h := range hosts {
		e := edfEntry{h: h, seq: uint64(i), n: 1}
		if dynamic != nil {
			e.deadline = 1 / dynamic(h)
		}
		p.q.entries[i] = e
	}
	p.seq = uint64(len(hosts))
	heap.Init(&p.q)
	return p
}

func (p *edfPicker) pick() *host {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := &p.q.entries[0]
	if p.dynamic != nil {
		e.deadline += 1 / p.dynamic(e.h)
	} else {
		e.n++
	}
	e.seq = p.seq
	p.seq++
	h := e.h
	heap.Fix(&p.q, 0)
	return h
}

type edfEntry struct {
	h   *host
	seq uint64
	// exact: due at n / h.weight
	n uint64
	// dynamic weights
	deadline float64
}

type edfQueue struct {
	exact   bool
	entries []edfEntry
}

func (q *edfQueue) Len() int { return len(q.entries) }
func (q *edfQueue) Less(i, j int) bool {
	a, b := &q.entries[i], &q.entries[j]
	if q.exact {
		// a.n/a.w < b.n/b.w  <=>  a.n*b.w < b.n*a.w, in 128 bits.
		ahi, alo := bits.Mul64(a.n, uint64(b.h.weight))
		bhi, blo := bits.Mul64(b.n, uint64(a.h.weight))
		if ahi != bhi {
			return ahi < bhi
		}
		if alo != blo {
			return alo < blo
		}
	} else if a.deadline != b.deadline {
		return a.deadline < b.deadline
	}
	return a.seq < b.seq
}
func (q *edfQueue) Swap(i, j int) { q.entries[i], q.entries[j] = q.entries[j], q.entries[i] }
func (q *edfQueue) Push(x any)    { q.entries = append(q.entries, x.(edfEntry)) }
func (q *edfQueue) Pop() any {
	x := q.entries[len(q.entries)-1]
	q.entries = q.entries[:len(q.entries)-1]
	return x
}
