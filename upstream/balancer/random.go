package balancer

var _ Picker = randomPicker{}

// randomPicker is Envoy's RANDOM: uniform over the endpoints, ignoring
// weights, as Envoy's does.
type randomPicker struct {
	eps []*Endpoint
	rnd func(int) int
}

func (p randomPicker) Pick() *Endpoint { return p.eps[p.rnd(len(p.eps))] }
