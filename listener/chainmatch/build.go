package chainmatch

import (
	"fmt"
	"net/netip"
	"strings"
)

// NewTable validates chains (see FromProto for the rules) and indexes them;
// Match returns indexes into chains. Like Envoy, it rejects chains whose
// criteria overlap — some connection would fit both equally well — and the
// error names both chains' indexes and the values they share.
func NewTable(chains []Criteria) (*Table, error) {
	t := &Table{ports: make(map[uint32]*dstNode)}
	for i := range chains {
		c, err := chains[i].normalize()
		if err != nil {
			return nil, errorf("filter chain %d: %w", i, err)
		}
		if err := t.add(int32(i), &c); err != nil {
			return nil, err
		}
	}
	for _, dn := range t.ports {
		freezeDst(dn)
	}
	return t, nil
}

// leaf is one combination of single criteria values of a chain.
type leaf struct {
	dport      uint32
	dst        netip.Prefix
	sn, tp, ap string
	dsrc       netip.Prefix
	st         SourceType
	src        netip.Prefix
	sport      uint32
}

func (k *leaf) String() string {
	var parts []string
	add := func(format string, arg any) { parts = append(parts, fmt.Sprintf(format, arg)) }
	if k.dport != 0 {
		add("destination_port %d", k.dport)
	}
	if k.dst.Bits() != 0 {
		add("prefix_range %s", k.dst)
	}
	if k.sn != "" {
		add("server_name %q", k.sn)
	}
	if k.tp != "" {
		add("transport_protocol %q", k.tp)
	}
	if k.ap != "" {
		add("application_protocol %q", k.ap)
	}
	if k.dsrc.Bits() != 0 {
		add("direct_source_prefix_range %s", k.dsrc)
	}
	if k.st != SourceAny {
		add("source_type %s", k.st)
	}
	if k.src.Bits() != 0 {
		add("source_prefix_range %s", k.src)
	}
	if k.sport != 0 {
		add("source_port %d", k.sport)
	}
	if len(parts) == 0 {
		return "any connection"
	}
	return strings.Join(parts, ", ")
}

func orAll(ps []netip.Prefix) []netip.Prefix {
	if len(ps) == 0 {
		return catchAllPrefixes
	}
	return ps
}

func orEmpty[T any](vs []T) []T {
	if len(vs) == 0 {
		return make([]T, 1)
	}
	return vs
}

// add inserts every combination of c's values, as Envoy's
// addFilterChainFor* functions do.
func (t *Table) add(i int32, c *Criteria) error {
	k := leaf{dport: c.DestinationPort, tp: c.TransportProtocol, st: c.SourceType}
	for _, k.dst = range orAll(c.PrefixRanges) {
		for _, k.sn = range orEmpty(c.ServerNames) {
			for _, k.ap = range orEmpty(c.ApplicationProtocols) {
				for _, k.dsrc = range orAll(c.DirectSourcePrefixRanges) {
					for _, k.src = range orAll(c.SourcePrefixRanges) {
						for _, k.sport = range orEmpty(c.SourcePorts) {
							if err := t.insert(i, &k); err != nil {
								return err
							}
						}
					}
				}
			}
		}
	}
	return nil
}

// branch returns the child for key in m, or the catch-all for "", creating it.
func branch[V any](m *map[string]*V, catchAll **V, key string) *V {
	if key == "" {
		if *catchAll == nil {
			*catchAll = new(V)
		}
		return *catchAll
	}
	if *m == nil {
		*m = make(map[string]*V)
	}
	v := (*m)[key]
	if v == nil {
		v = new(V)
		(*m)[key] = v
	}
	return v
}

func (t *Table) insert(i int32, k *leaf) error {
	dn := t.ports[k.dport]
	if dn == nil {
		dn = new(dstNode)
		t.ports[k.dport] = dn
	}
	sn := dn.at(k.dst, func() *snNode { return new(snNode) })
	key := k.sn
	if strings.HasPrefix(key, "*.") {
		key = key[1:] // Envoy keys "*.example.com" as ".example.com"
		sn.wildcards = true
	}
	tp := branch(&sn.m, &sn.catchAll, key)
	ap := branch(&tp.m, &tp.catchAll, k.tp)
	ds := branch(&ap.m, &ap.catchAll, k.ap)
	st := ds.at(k.dsrc, func() *stNode { return new(stNode) })
	if st.types[k.st] == nil {
		st.types[k.st] = new(srcNode)
	}
	sp := st.types[k.st].at(k.src, func() *spNode { return &spNode{any: -1} })

	prev := sp.any
	if k.sport != 0 {
		var ok bool
		if prev, ok = sp.ports[k.sport]; !ok {
			prev = -1
		}
	}
	switch {
	case prev == i:
		return errorf("filter chain %d has overlapping matching rules within itself: %s", i, k)
	case prev >= 0:
		return errorf("filter chains %d and %d have overlapping matching rules: both match %s", prev, i, k)
	}
	if k.sport == 0 {
		sp.any = i
		return nil
	}
	if sp.ports == nil {
		sp.ports = make(map[uint32]int32)
	}
	sp.ports[k.sport] = i
	return nil
}

func freezeDst(dn *dstNode) {
	dn.each(func(sn *snNode) {
		free := sn.m == nil && sn.catchAll != nil &&
			sn.catchAll.m == nil && sn.catchAll.catchAll != nil &&
			sn.catchAll.catchAll.m == nil && sn.catchAll.catchAll.catchAll != nil
		if free {
			sn.static = true
		} else if s, ok := sn.summary(nil); ok {
			sn.static, sn.needs = true, s.needs
		}
		for _, tp := range sn.m {
			freezeTP(tp)
		}
		if sn.catchAll != nil {
			freezeTP(sn.catchAll)
		}
	})
	dn.freeze()
}

func freezeTP(tp *tpNode) {
	freezeAP := func(ap *apNode) {
		for _, ds := range ap.m {
			freezeDS(ds)
		}
		if ap.catchAll != nil {
			freezeDS(ap.catchAll)
		}
	}
	for _, ap := range tp.m {
		freezeAP(ap)
	}
	if tp.catchAll != nil {
		freezeAP(tp.catchAll)
	}
}

func freezeDS(ds *dsNode) {
	ds.each(func(st *stNode) {
		for _, src := range st.types {
			if src != nil {
				src.freeze()
			}
		}
	})
	ds.freeze()
}
