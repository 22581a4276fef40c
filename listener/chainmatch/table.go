package chainmatch

import (
	"net/netip"

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
