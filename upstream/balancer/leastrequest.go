package balancer

import "math"

// newLeastRequest is Envoy's LEAST_REQUEST over the endpoints' load. Equal
// weights: choiceCount draws (at least 2) with replacement, the least loaded
// wins. Unequal weights: the EDF schedule with the dynamic weight
// weight / (load+1)^bias, the load read when an endpoint is rescheduled.
func newLeastRequest(eps []*Endpoint, choiceCount int, bias float64, rnd func(int) int) Picker {
	if weighted(eps) {
		return newEDF(eps, func(e *Endpoint) float64 {
			a := float64(e.load.Load() + 1)
			if bias == 1 {
				return float64(e.Weight) / a
			}
			return float64(e.Weight) / math.Pow(a, bias)
		})
	}
	// choice_count is unbounded in Envoy; past 16 draws per endpoint the odds
	// of never drawing a given one (e^-16) are nil, so a huge value cannot
	// turn each pick into a long loop.
	n := max(choiceCount, DefaultChoiceCount)
	return &leastPicker{eps: eps, choices: min(n, 16*len(eps)), rnd: rnd}
}

var _ Picker = (*leastPicker)(nil)

type leastPicker struct {
	eps     []*Endpoint
	choices int
	rnd     func(int) int
}

func (p *leastPicker) Pick() *Endpoint {
	if len(p.eps) == 1 {
		return p.eps[0]
	}
	var best *Endpoint
	var bestLoad int64
	for range p.choices {
		e := p.eps[p.rnd(len(p.eps))]
		if l := e.load.Load(); best == nil || l < bestLoad {
			best, bestLoad = e, l
		}
	}
	return best
}
