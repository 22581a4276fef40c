// Package chainmatch selects a listener's filter chain the way Envoy does for
// envoy.config.listener.v3.FilterChainMatch: pure, table-tested logic with no
// I/O.
//
// A Table is built once per listener generation from the chains' Criteria
// (NewTable, which rejects overlapping chains) and is then immutable and safe
// for concurrent use. Match picks a chain for a connection; Needs tells the
// listener, before any listener filter has run, whether protocol detection
// could change that choice at all (an "opaque port" is a destination whose
// chain is settled by its addresses alone).
//
// Matching follows FilterChainMatch's documented order — destination port,
// destination IP, server name, transport protocol, application protocols,
// directly connected source IP, source type, source IP, source port — and at
// each step keeps only the chains with the most specific value that matches
// the connection; chains that leave the criterion empty are kept only when no
// chain has a specific value that matches. There is no backtracking: once a
// step has chosen, a later step that finds nothing ends the match with no
// chain (the listener then uses default_filter_chain, if any), even when a
// less specific branch of an earlier step would have matched. This is Envoy's
// FilterChainManagerImpl::findFilterChain (source/common/listener_manager/
// filter_chain_manager_impl.cc), reproduced case by case.
package chainmatch

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// SourceType is FilterChainMatch.source_type.
type SourceType uint8

// Source types, numbered as FilterChainMatch.ConnectionSourceType.
const (
	// SourceAny matches any connection (ANY).
	SourceAny SourceType = iota
	// SourceLocal matches a connection whose source IP is the loopback
	// address (exactly 127.0.0.1 or ::1, as Envoy's isLoopbackAddress) or
	// equals its destination IP (SAME_IP_OR_LOOPBACK).
	SourceLocal
	// SourceExternal matches every connection that is not SourceLocal
	// (EXTERNAL).
	SourceExternal
)

// String returns the proto enum name.
func (s SourceType) String() string {
	switch s {
	case SourceAny:
		return "ANY"
	case SourceLocal:
		return "SAME_IP_OR_LOOPBACK"
	case SourceExternal:
		return "EXTERNAL"
	}
	return fmt.Sprintf("SourceType(%d)", uint8(s))
}

// Criteria is one filter chain's validated FilterChainMatch. The zero value
// matches every connection. Empty fields impose no requirement.
type Criteria struct {
	// DestinationPort is destination_port; 0 means any.
	DestinationPort uint32
	// PrefixRanges is prefix_ranges: the destination IP must be in one.
	PrefixRanges []netip.Prefix
	// ServerNames is server_names, lower-case: exact names, or "*.suffix"
	// wildcards matching any name that ends in ".suffix" after one or more
	// labels. An empty name counts as no requirement, as in Envoy.
	ServerNames []string
	// TransportProtocol is transport_protocol, e.g. "raw_buffer" or "tls".
	TransportProtocol string
	// ApplicationProtocols is application_protocols; the connection matches
	// when one of its protocols is listed. An empty protocol counts as no
	// requirement, as in Envoy.
	ApplicationProtocols []string
	// DirectSourcePrefixRanges is direct_source_prefix_ranges.
	DirectSourcePrefixRanges []netip.Prefix
	// SourceType is source_type.
	SourceType SourceType
	// SourcePrefixRanges is source_prefix_ranges.
	SourcePrefixRanges []netip.Prefix
	// SourcePorts is source_ports.
	SourcePorts []uint32
}

// errorf returns an error prefixed with the package's name.
func errorf(format string, args ...any) error {
	return fmt.Errorf("chainmatch: "+format, args...)
}

// knownFields are the FilterChainMatch fields FromProto understands; any
// other populated field (one added to the proto later) is rejected by name.
var knownFields = map[protoreflect.Name]bool{
	"destination_port":            true,
	"prefix_ranges":               true,
	"address_suffix":              true,
	"suffix_len":                  true,
	"direct_source_prefix_ranges": true,
	"source_type":                 true,
	"source_prefix_ranges":        true,
	"source_ports":                true,
	"server_names":                true,
	"transport_protocol":          true,
	"application_protocols":       true,
}

// FromProto validates m and converts it to Criteria. A nil m matches every
// connection. It applies the proto's validation rules (ports in [1, 65535],
// prefix_len at most 128, a defined source_type) and Envoy's own checks:
// address_suffix and suffix_len are rejected as unimplemented, CIDR addresses
// must be IP addresses, wildcards in server_names must be a whole first label
// ("*.example.com"), and no list may repeat a value (Envoy reports that as
// overlapping matching rules). Server names are lower-cased and prefixes
// masked to their length; an IPv4 prefix_len above 32 is truncated to 32, as
// Envoy's CidrRange does.
func FromProto(m *listenerv3.FilterChainMatch) (Criteria, error) {
	if m == nil {
		return Criteria{}, nil
	}
	var unknown error
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !knownFields[fd.Name()] {
			unknown = errorf("%s: not supported", fd.Name())
			return false
		}
		return true
	})
	if unknown != nil {
		return Criteria{}, unknown
	}
	// Envoy: "filter chain ... contains unimplemented fields".
	if m.GetAddressSuffix() != "" {
		return Criteria{}, errorf("address_suffix: not implemented (Envoy rejects it too)")
	}
	if m.GetSuffixLen() != nil {
		return Criteria{}, errorf("suffix_len: not implemented (Envoy rejects it too)")
	}

	var c Criteria
	if p := m.GetDestinationPort(); p != nil {
		if v := p.GetValue(); v < 1 || v > 65535 {
			return Criteria{}, errorf("destination_port: %d is outside [1, 65535]", v)
		}
		c.DestinationPort = p.GetValue()
	}
	var err error
	if c.PrefixRanges, err = cidrs("prefix_ranges", m.GetPrefixRanges()); err != nil {
		return Criteria{}, err
	}
	if c.DirectSourcePrefixRanges, err = cidrs("direct_source_prefix_ranges", m.GetDirectSourcePrefixRanges()); err != nil {
		return Criteria{}, err
	}
	if c.SourcePrefixRanges, err = cidrs("source_prefix_ranges", m.GetSourcePrefixRanges()); err != nil {
		return Criteria{}, err
	}
	c.ServerNames = slices.Clone(m.GetServerNames())
	c.TransportProtocol = m.GetTransportProtocol()
	c.ApplicationProtocols = slices.Clone(m.GetApplicationProtocols())
	switch st := m.GetSourceType(); st {
	case listenerv3.FilterChainMatch_ANY:
		c.SourceType = SourceAny
	case listenerv3.FilterChainMatch_SAME_IP_OR_LOOPBACK:
		c.SourceType = SourceLocal
	case listenerv3.FilterChainMatch_EXTERNAL:
		c.SourceType = SourceExternal
	default:
		return Criteria{}, errorf("source_type: undefined value %d", int32(st))
	}
	c.SourcePorts = slices.Clone(m.GetSourcePorts())

	n, err := c.normalize()
	if err != nil {
		return Criteria{}, fmt.Errorf("chainmatch: %w", err)
	}
	return n, nil
}

// cidrs converts a repeated CidrRange as Envoy's CidrRange::create does.
func cidrs(field string, rs []*corev3.CidrRange) ([]netip.Prefix, error) {
	if len(rs) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, 0, len(rs))
	for i, r := range rs {
		if r == nil {
			return nil, errorf("%s[%d]: missing", field, i)
		}
		s := r.GetAddressPrefix()
		addr, err := netip.ParseAddr(s)
		if err != nil || addr.Zone() != "" {
			return nil, errorf("%s[%d]: address_prefix %q is not an IP address", field, i, s)
		}
		bits := r.GetPrefixLen().GetValue() // unset means 0, as documented
		if bits > 128 {
			return nil, errorf("%s[%d]: prefix_len %d is above 128", field, i, bits)
		}
		if int(bits) > addr.BitLen() {
			bits = uint32(addr.BitLen()) // Envoy's truncateIpAddressAndLength
		}
		out = append(out, netip.PrefixFrom(addr, int(bits)).Masked())
	}
	return out, nil
}

// normalize validates c and returns a copy with server names lower-cased and
// prefixes masked. Errors name the field, without the package prefix.
func (c Criteria) normalize() (Criteria, error) {
	n := c
	if c.DestinationPort > 65535 {
		return Criteria{}, fmt.Errorf("destination_port: %d is outside [1, 65535]", c.DestinationPort)
	}
	var err error
	if n.PrefixRanges, err = normPrefixes("prefix_ranges", c.PrefixRanges); err != nil {
		return Criteria{}, err
	}
	if n.DirectSourcePrefixRanges, err = normPrefixes("direct_source_prefix_ranges", c.DirectSourcePrefixRanges); err != nil {
		return Criteria{}, err
	}
	if n.SourcePrefixRanges, err = normPrefixes("source_prefix_ranges", c.SourcePrefixRanges); err != nil {
		return Criteria{}, err
	}
	if len(c.ServerNames) > 0 {
		n.ServerNames = make([]string, len(c.ServerNames))
		for i, name := range c.ServerNames {
			name = strings.ToLower(name)
			if err := checkServerName(name); err != nil {
				return Criteria{}, fmt.Errorf("server_names[%d]: %q: %w", i, c.ServerNames[i], err)
			}
			if j := slices.Index(n.ServerNames[:i], name); j >= 0 {
				return Criteria{}, fmt.Errorf("server_names[%d]: %q repeats server_names[%d]", i, c.ServerNames[i], j)
			}
			n.ServerNames[i] = name
		}
	}
	n.ApplicationProtocols = slices.Clone(c.ApplicationProtocols)
	for i, p := range c.ApplicationProtocols {
		if j := slices.Index(c.ApplicationProtocols[:i], p); j >= 0 {
			return Criteria{}, fmt.Errorf("application_protocols[%d]: %q repeats application_protocols[%d]", i, p, j)
		}
	}
	if c.SourceType > SourceExternal {
		return Criteria{}, fmt.Errorf("source_type: undefined value %d", c.SourceType)
	}
	n.SourcePorts = slices.Clone(c.SourcePorts)
	for i, p := range c.SourcePorts {
		if p < 1 || p > 65535 {
			return Criteria{}, fmt.Errorf("source_ports[%d]: %d is outside [1, 65535]", i, p)
		}
		if j := slices.Index(c.SourcePorts[:i], p); j >= 0 {
			return Criteria{}, fmt.Errorf("source_ports[%d]: %d repeats source_ports[%d]", i, p, j)
		}
	}
	return n, nil
}

func normPrefixes(field string, ps []netip.Prefix) ([]netip.Prefix, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		if !p.IsValid() {
			return nil, fmt.Errorf("%s[%d]: invalid prefix", field, i)
		}
		out[i] = p.Masked()
		if j := slices.Index(out[:i], out[i]); j >= 0 {
			return nil, fmt.Errorf("%s[%d]: %s repeats %s[%d]", field, i, out[i], field, j)
		}
	}
	return out, nil
}

// checkServerName applies Envoy's rule (FilterChainManagerImpl::
// setupFilterChainMatcher: "partial wildcards are not supported") and the
// proto's documentation ("*" is not supported, omit server_names instead),
// plus one stricter rule: "*." must be followed by a domain, since Envoy
// accepts "*." but can never match it.
func checkServerName(name string) error {
	if !strings.Contains(name, "*") {
		return nil
	}
	switch {
	case name == "*":
		return errors.New(`"*" is not supported: omit server_names to match any name`)
	case strings.HasPrefix(name, "*."):
		switch rest := name[2:]; {
		case rest == "":
			return errors.New(`wildcard needs a domain after "*."`)
		case strings.Contains(rest, "*"):
			return errors.New("wildcard only allowed as the first label")
		}
		return nil
	case !strings.Contains(name[:strings.IndexByte(name+".", '.')], "*"):
		return errors.New("wildcard only allowed as the first label")
	default:
		return errors.New(`partial wildcards are not supported: the first label must be exactly "*"`)
	}
}
