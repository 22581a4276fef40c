package chainmatch

import "github.com/siftmesh/sift/filters"

// Needs reports which of the fields protocol detection establishes
// (filters.FieldServerName, FieldTransportProtocol, FieldApplicationProtocols)
// could change Match's result for a connection with in's addresses; in's
// ServerName, TransportProtocol and ApplicationProtocols are ignored. A field
// not reported never changes the result, whatever the other fields are, so
// the listener may skip the filters that only provide it; 0 means the
// addresses alone choose the chain (an opaque port) and detection can be
// skipped entirely. 0 is exact: when Needs is not 0, some detected values do
// lead to different chains. Each field is reported exactly too, with two
// harmless exceptions where it may be reported needlessly: when only values
// no detector produces would make it matter (a transport protocol other than
// the configured ones), and when chains list "" among server_names or
// application_protocols.
//
// Needs does not allocate. Where the destination's chains are told apart by
// detected values and addresses only through criteria that hold for every
// source (the usual case), its answer is computed by NewTable and costs a
// port and prefix lookup; otherwise it evaluates the source criteria once
// per configured server name, transport and application protocol of the
// destination.
func (t *Table) Needs(in Input) filters.Field {
	a := addrsOf(&in)
	sn := t.serverNames(&a)
	switch {
	case sn == nil:
		return 0
	case sn.static:
		return sn.needs
	}
	sum, _ := sn.summary(&a)
	return sum.needs
}

// summary describes the outcomes of a subtree over every value of the
// detected fields, for fixed addresses.
type summary struct {
	out   int32         // an outcome: a chain index or -1
	multi bool          // more than one outcome is possible
	needs filters.Field // fields whose value can change the outcome
}

// outcomes accumulates the summaries of a level's classes of values — one per
// branch, plus "no branch" when the level has no catch-all — each of which
// some value of the level's field reaches.
type outcomes struct {
	n int
	summary
}

func (o *outcomes) add(s summary) {
	o.needs |= s.needs
	if o.n == 0 {
		o.out = s.out
	} else if o.out != s.out {
		o.multi = true
	}
	o.multi = o.multi || s.multi
	o.n++
}

// done adds field to the needs when the level's value matters: there are
// several classes and they do not all lead to one same outcome. When a class
// has several outcomes, one of them is a chain that lists this class's value
// (or, for the catch-all, one no other class can reach), so switching to
// another class changes the result.
func (o *outcomes) done(field filters.Field) summary {
	if o.n > 1 && o.multi {
		o.needs |= field
	}
	return o.summary
}

var noChain = summary{out: -1}

// The summary methods summarise a subtree for addresses a or, when a is nil,
// for all addresses at once; then ok is false if the result would depend on
// them.

func (n *snNode) summary(a *addrs) (summary, bool) {
	return summarize(n.m, n.catchAll, a, filters.FieldServerName)
}

func (n *tpNode) summary(a *addrs) (summary, bool) {
	return summarize(n.m, n.catchAll, a, filters.FieldTransportProtocol)
}

func (n *apNode) summary(a *addrs) (summary, bool) {
	return summarize(n.m, n.catchAll, a, filters.FieldApplicationProtocols)
}

// summarize summarises one level of the tree from its children's summaries:
// the branches m, keyed by the values of field, and the catch-all — or, when
// there is none, "no chain" for a value that matches no key.
func summarize[V tpNode | apNode | dsNode](m map[string]*V, catchAll *V, a *addrs, field filters.Field) (_ summary, ok bool) {
	var o outcomes
	for _, v := range m {
		s, ok := childSummary(v, a)
		if !ok {
			return summary{}, false
		}
		o.add(s)
	}
	if catchAll != nil {
		s, ok := childSummary(catchAll, a)
		if !ok {
			return summary{}, false
		}
		o.add(s)
	} else {
		o.add(noChain)
	}
	return o.done(field), true
}

// childSummary summarises the node below a level. It dispatches on the
// node's type with direct calls, not through a function value, so that a
// does not escape: Needs does not allocate.
func childSummary[V tpNode | apNode | dsNode](v *V, a *addrs) (summary, bool) {
	switch v := any(v).(type) {
	case *tpNode:
		return v.summary(a)
	case *apNode:
		return v.summary(a)
	case *dsNode:
		out, ok := leafOutcome(v, a)
		return summary{out: out}, ok
	}
	panic("unreachable")
}

// leafOutcome returns the chain ds leads to for addresses a or, when a is
// nil, for every address, with ok=false if that depends on the address.
// With a nil a, ds must not be frozen yet.
func leafOutcome(ds *dsNode, a *addrs) (_ int32, ok bool) {
	if a != nil {
		return matchSource(ds, a), true
	}
	if !coversAll(ds) {
		return 0, false
	}
	out, n := int32(-1), 0
	ok = true
	ds.each(func(st *stNode) {
		src := st.types[SourceAny]
		if st.types[SourceLocal] != nil || st.types[SourceExternal] != nil || src == nil || !coversAll(src) {
			ok = false
			return
		}
		src.each(func(sp *spNode) {
			if sp.ports != nil || (n > 0 && sp.any != out) {
				ok = false
			}
			out = sp.any
			n++
		})
	})
	return out, ok
}

// coversAll reports whether an unfrozen l holds every address.
func coversAll[T any](l *lpm[T]) bool {
	_, v4 := l.build[catchAllPrefixes[0]]
	_, v6 := l.build[catchAllPrefixes[1]]
	return v4 && v6
}
