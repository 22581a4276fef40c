package balancer

import "sync/atomic"

// newRoundRobin is Envoy's ROUND_ROBIN: equal weights rotate through eps from
// a random start; unequal weights use the exact EDF schedule.
func newRoundRobin(eps []*Endpoint, rnd func(int) int) Picker {
	if weighted(eps) {
		return newEDF(eps, nil)
	}
	p := &rrPicker{eps: eps}
	p.next.Store(uint64(rnd(len(eps))))
	return p
}

var _ Picker = (*rrPicker)(nil)

type rrPicker struct {
	eps  []*Endpoint
	next atomic.Uint64
}

func (p *rrPicker) Pick() *Endpoint {
	return p.eps[(p.next.Add(1)-1)%uint64(len(p.eps))]
}
