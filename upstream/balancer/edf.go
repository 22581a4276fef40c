package balancer

import (
	"container/heap"
	"math/bits"
	"sync"
)

var _ Picker = (*edfPicker)(nil)

// edfPicker is an earliest-deadline-first schedule (Envoy's weighted round
// robin): each endpoint is due 1/weight after it was last picked; the
// earliest due is picked, ties going to the one scheduled first. With static
// weights (dynamic == nil) an endpoint picked n-1 times is due at n/weight,
// compared exactly in integers, so every cycle of sum(weights) picks serves
// each endpoint exactly its weight. With dynamic weights deadlines are
// floats, as in Envoy. The schedule is the picker's only mutable state,
// under mu.
type edfPicker struct {
	dynamic func(*Endpoint) float64

	mu  sync.Mutex
	q   edfQueue
	seq uint64
}

func newEDF(eps []*Endpoint, dynamic func(*Endpoint) float64) *edfPicker {
	p := &edfPicker{dynamic: dynamic, q: edfQueue{exact: dynamic == nil, entries: make([]edfEntry, len(eps))}}
	for i, e := range eps {
		en := edfEntry{e: e, seq: uint64(i), n: 1}
		if dynamic != nil {
			en.deadline = 1 / dynamic(e)
		}
		p.q.entries[i] = en
	}
	p.seq = uint64(len(eps))
	heap.Init(&p.q)
	return p
}

func (p *edfPicker) Pick() *Endpoint {
	p.mu.Lock()
	defer p.mu.Unlock()
	en := &p.q.entries[0]
	if p.dynamic != nil {
		en.deadline += 1 / p.dynamic(en.e)
	} else {
		en.n++
	}
	en.seq = p.seq
	p.seq++
	e := en.e
	heap.Fix(&p.q, 0)
	return e
}

type edfEntry struct {
	e   *Endpoint
	seq uint64
	// exact: due at n / e.Weight
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
		ahi, alo := bits.Mul64(a.n, uint64(b.e.Weight))
		bhi, blo := bits.Mul64(b.n, uint64(a.e.Weight))
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
