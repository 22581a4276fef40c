package balancer

import "time"

var _ Picker = (*ewmaPicker)(nil)

// ewmaPicker is Linkerd's (Tower's) peak-EWMA balancer with power of two
// choices: two distinct endpoints at random, the lower cost wins, cost =
// latency estimate × (load + 1) (see Endpoint.cost). Weights are ignored.
type ewmaPicker struct {
	eps   []*Endpoint
	decay time.Duration
	now   func() time.Time
	rnd   func(int) int
}

func (p *ewmaPicker) Pick() *Endpoint {
	n := len(p.eps)
	if n == 1 {
		return p.eps[0]
	}
	i := p.rnd(n)
	j := p.rnd(n - 1)
	if j >= i {
		j++
	}
	now := p.now()
	a, b := p.eps[i], p.eps[j]
	if b.cost(now, p.decay) < a.cost(now, p.decay) {
		return b
	}
	return a
}
