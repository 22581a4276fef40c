package chainmatch

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/siftmesh/sift/filters"
)

// Input is what Match knows of a connection.
type Input struct {
	// Destination is the local address the client connected to (after
	// original_dst); Source is the client's address.
	Destination, Source netip.AddrPort
	// DirectSource is the directly connected peer's address when a listener
	// filter (PROXY protocol) replaced Source; the zero value means Source.
	DirectSource netip.AddrPort
	// ServerName is the TLS SNI, lower-case, or "".
	ServerName string
	// TransportProtocol is what detection found; "" means raw_buffer, as
	// Envoy sets it when no listener filter did.
	TransportProtocol string
	// ApplicationProtocols are ALPN values or the detected plaintext
	// protocol, in the client's order of preference.
	ApplicationProtocols []string
}

// InputFrom returns the Input for a connection described by info.
func InputFrom(info *filters.ConnInfo) Input {
	return Input{
		Destination:          info.LocalAddr,
		Source:               info.RemoteAddr,
		ServerName:           info.ServerName,
		TransportProtocol:    info.TransportProtocol,
		ApplicationProtocols: info.ApplicationProtocols,
	}
}

// Table is an index of a listener's filter chains, a tree keyed by the match
// criteria in Envoy's order (Envoy's FilterChainManagerImpl builds the same
// tree: destination_ports_map_ → IP trie → server names → transport protocol
// → application protocols → direct source IP trie → source type → source IP
// trie → source ports). It is immutable and safe for concurrent use.
type Table struct {
	// ports is keyed by destination_port; 0 holds chains without one.
	ports map[uint32]*dstNode
}

type (
	// dstNode: destination IP prefixes; chains without prefix_ranges sit
	// under 0.0.0.0/0 and ::/0, as in Envoy.
	dstNode = lpm[*snNode]
	// dsNode: direct source IP prefixes.
	dsNode = lpm[*stNode]
	// srcNode: source IP prefixes.
	srcNode = lpm[*spNode]
)

// snNode branches on the server name. Keys of m are exact names and, for a
// wildcard "*.example.com", ".example.com" (one map, as in Envoy).
type snNode struct {
	m         map[string]*tpNode
	catchAll  *tpNode // chains without server_names
	wildcards bool    // some key of m starts with "."
	// static is true when needs below is Needs' answer whatever the
	// addresses: the server-name, transport and application levels hold
	// only catch-alls (needs is 0), or each of their leaves leads to one
	// chain for every source address.
	static bool
	needs  filters.Field
}

type tpNode struct {
	m        map[string]*apNode
	catchAll *apNode // chains without transport_protocol
}

type apNode struct {
	m        map[string]*dsNode
	catchAll *dsNode // chains without application_protocols
}

type stNode struct {
	types [3]*srcNode // by SourceType; nil when no chain has that type
}

type spNode struct {
	ports map[uint32]int32 // source port → chain index; nil when empty
	any   int32            // chain without source_ports, or -1
}

// catchAllPrefixes stand for an empty list of prefixes.
var catchAllPrefixes = []netip.Prefix{
	netip.PrefixFrom(netip.IPv4Unspecified(), 0),
	netip.PrefixFrom(netip.IPv6Unspecified(), 0),
}

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

// addrs are an Input's addresses, normalised for matching.
type addrs struct {
	dst, src, dsrc netip.Addr
	dport, sport   uint16
	srcIP, dstIP   bool // the address was an IP address
}

// nonIP stands for a missing address, as Envoy's fakeAddress() does for a
// pipe: only a catch-all prefix (or 255.255.255.255/32) contains it.
var nonIP = netip.AddrFrom4([4]byte{255, 255, 255, 255})

var loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})

func ipOf(a netip.Addr) netip.Addr {
	if !a.IsValid() {
		return nonIP
	}
	// IPv4-mapped addresses match IPv4 prefixes: Envoy sees an IPv4 peer on
	// a dual-stack socket as an IPv4 address.
	return a.Unmap().WithZone("")
}

func addrsOf(in *Input) addrs {
	direct := in.DirectSource
	if direct == (netip.AddrPort{}) {
		direct = in.Source
	}
	return addrs{
		dst:   ipOf(in.Destination.Addr()),
		src:   ipOf(in.Source.Addr()),
		dsrc:  ipOf(direct.Addr()),
		dport: in.Destination.Port(),
		sport: in.Source.Port(),
		srcIP: in.Source.Addr().IsValid(),
		dstIP: in.Destination.Addr().IsValid(),
	}
}

// sameIPOrLoopback is Envoy's Network::Utility::isSameIpOrLoopback: the
// source is not an IP address (a pipe), is exactly 127.0.0.1 or ::1, or
// equals the destination IP.
func (a *addrs) sameIPOrLoopback() bool {
	if !a.srcIP {
		return true
	}
	if a.src == loopback4 || a.src == netip.IPv6Loopback() {
		return true
	}
	return a.dstIP && a.src == a.dst
}

// Match returns the index of the chain that serves the connection, or
// ok=false when none does (the listener then uses default_filter_chain, or
// closes the connection). It does not allocate.
func (t *Table) Match(in Input) (index int, ok bool) {
	a := addrsOf(&in)
	sn := t.serverNames(&a)
	if sn == nil {
		return -1, false
	}
	i := matchSource(sn.lookup(in.ServerName).lookup(in.TransportProtocol).lookup(in.ApplicationProtocols), &a)
	return int(i), i >= 0
}

// serverNames runs steps 1 and 2: destination port, then destination IP.
func (t *Table) serverNames(a *addrs) *snNode {
	// A port with chains of its own never falls back to the chains without
	// destination_port, even when none of its chains matches.
	dn := t.ports[uint32(a.dport)]
	if dn == nil {
		if dn = t.ports[0]; dn == nil {
			return nil
		}
	}
	sn, _ := dn.lookup(a.dst)
	return sn
}

// lookup runs step 3: the exact name, then wildcards from the longest suffix
// (".b.example.com", then ".example.com", then ".com" for
// "a.b.example.com"), then chains without server_names. A nil n yields nil.
func (n *snNode) lookup(name string) *tpNode {
	if n == nil {
		return nil
	}
	if n.m != nil {
		if tp := n.m[name]; tp != nil {
			return tp
		}
		if n.wildcards {
			// Envoy: pos = find('.', 1); while pos < size-1: try name[pos:].
			for i := 1; i < len(name); {
				j := strings.IndexByte(name[i:], '.')
				if j < 0 || i+j >= len(name)-1 {
					break
				}
				if tp := n.m[name[i+j:]]; tp != nil {
					return tp
				}
				i += j + 1
			}
		}
	}
	return n.catchAll
}

// lookup runs step 4: the exact transport protocol, then chains without one.
func (n *tpNode) lookup(proto string) *apNode {
	if n == nil {
		return nil
	}
	if proto == "" {
		proto = filters.TransportRawBuffer
	}
	if n.m != nil {
		if ap := n.m[proto]; ap != nil {
			return ap
		}
	}
	return n.catchAll
}

// lookup runs step 5: the first of the connection's protocols that some
// chain lists, then chains without application_protocols.
func (n *apNode) lookup(protos []string) *dsNode {
	if n == nil {
		return nil
	}
	if n.m != nil {
		for _, p := range protos {
			if p == "" && n.catchAll != nil {
				return n.catchAll // Envoy finds "" as the catch-all's key
			}
			if ds := n.m[p]; ds != nil {
				return ds
			}
		}
	}
	return n.catchAll
}

// matchSource runs steps 6 to 9, which depend on addresses only. It returns
// the chain index or -1.
func matchSource(ds *dsNode, a *addrs) int32 {
	if ds == nil {
		return -1
	}
	st, ok := ds.lookup(a.dsrc)
	if !ok {
		return -1
	}
	var src *srcNode
	if local, external := st.types[SourceLocal], st.types[SourceExternal]; local != nil || external != nil {
		if a.sameIPOrLoopback() {
			src = local
		} else {
			src = external
		}
	}
	if src == nil {
		if src = st.types[SourceAny]; src == nil {
			return -1
		}
	}
	sp, ok := src.lookup(a.src)
	if !ok {
		return -1
	}
	if sp.ports != nil {
		if i, ok := sp.ports[uint32(a.sport)]; ok {
			return i
		}
	}
	return sp.any
}

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

func (n *snNode) summary(a *addrs) (_ summary, ok bool) {
	var o outcomes
	for _, tp := range n.m {
		s, ok := tp.summary(a)
		if !ok {
			return summary{}, false
		}
		o.add(s)
	}
	if n.catchAll != nil {
		s, ok := n.catchAll.summary(a)
		if !ok {
			return summary{}, false
		}
		o.add(s)
	} else {
		o.add(noChain) // a name that matches no key
	}
	return o.done(filters.FieldServerName), true
}

func (n *tpNode) summary(a *addrs) (_ summary, ok bool) {
	var o outcomes
	for _, ap := range n.m {
		s, ok := ap.summary(a)
		if !ok {
			return summary{}, false
		}
		o.add(s)
	}
	if n.catchAll != nil {
		s, ok := n.catchAll.summary(a)
		if !ok {
			return summary{}, false
		}
		o.add(s)
	} else {
		o.add(noChain)
	}
	return o.done(filters.FieldTransportProtocol), true
}

func (n *apNode) summary(a *addrs) (_ summary, ok bool) {
	var o outcomes
	for _, ds := range n.m {
		out, ok := leafOutcome(ds, a)
		if !ok {
			return summary{}, false
		}
		o.add(summary{out: out})
	}
	if n.catchAll != nil {
		out, ok := leafOutcome(n.catchAll, a)
		if !ok {
			return summary{}, false
		}
		o.add(summary{out: out})
	} else {
		o.add(noChain)
	}
	return o.done(filters.FieldApplicationProtocols), true
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
