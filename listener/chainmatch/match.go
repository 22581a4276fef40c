package chainmatch

import (
	"net/netip"
	"strings"

	"github.com/siftmesh/sift/filters"
)

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
