package chainmatch

import (
	"cmp"
	"net/netip"
	"slices"
)

// smallLPM is the number of prefixes up to which a longest-prefix lookup is a
// linear scan (longest first); above it, one map probe per distinct length.
var smallLPM = 8

// lpm maps IP prefixes to values and finds the value of the longest prefix
// containing an address (Envoy uses an LC trie for the same purpose). It is
// filled through the build map, then frozen; after freeze it is read-only.
type lpm[T any] struct {
	build  map[netip.Prefix]T
	linear bool
	small  []prefixValue[T] // linear: all prefixes, longest first
	v4, v6 []prefixLevel[T] // otherwise: one level per length, longest first
}

type prefixValue[T any] struct {
	p netip.Prefix
	v T
}

type prefixLevel[T any] struct {
	bits int
	m    map[netip.Prefix]T
}

// at returns the value for the masked prefix p, creating it with mk.
func (l *lpm[T]) at(p netip.Prefix, mk func() T) T {
	if l.build == nil {
		l.build = make(map[netip.Prefix]T)
	}
	v, ok := l.build[p]
	if !ok {
		v = mk()
		l.build[p] = v
	}
	return v
}

// each calls f for every value; valid before freeze only.
func (l *lpm[T]) each(f func(T)) {
	for _, v := range l.build {
		f(v)
	}
}

func (l *lpm[T]) freeze() {
	all := make([]prefixValue[T], 0, len(l.build))
	for p, v := range l.build {
		all = append(all, prefixValue[T]{p, v})
	}
	l.build = nil
	slices.SortFunc(all, func(a, b prefixValue[T]) int {
		if c := cmp.Compare(b.p.Bits(), a.p.Bits()); c != 0 {
			return c
		}
		return a.p.Addr().Compare(b.p.Addr())
	})
	if len(all) <= smallLPM {
		l.linear, l.small = true, all
		return
	}
	for _, e := range all {
		levels := &l.v6
		if e.p.Addr().Is4() {
			levels = &l.v4
		}
		if n := len(*levels); n == 0 || (*levels)[n-1].bits != e.p.Bits() {
			*levels = append(*levels, prefixLevel[T]{bits: e.p.Bits(), m: make(map[netip.Prefix]T)})
		}
		(*levels)[len(*levels)-1].m[e.p] = e.v
	}
}

// lookup returns the value of the longest prefix containing a, which must be
// unmapped and without a zone.
func (l *lpm[T]) lookup(a netip.Addr) (T, bool) {
	if l.linear {
		for i := range l.small {
			if l.small[i].p.Contains(a) {
				return l.small[i].v, true
			}
		}
		var zero T
		return zero, false
	}
	levels := l.v4
	if a.Is6() {
		levels = l.v6
	}
	for i := range levels {
		p, _ := a.Prefix(levels[i].bits)
		if v, ok := levels[i].m[p]; ok {
			return v, true
		}
	}
	var zero T
	return zero, false
}
