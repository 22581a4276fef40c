package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/listener/chainmatch"
	"github.com/siftmesh/sift/telemetry/accesslog"
)

// Config is a validated, immutable listener: what Decode makes of an Envoy
// Listener resource. Filters in it are built and ready to serve.
type Config struct {
	Name string
	// Address is the "ip:port" to bind.
	Address string
	// BindToPort is false for listeners that only receive connections handed
	// off by another listener's use_original_dst.
	BindToPort bool
	// Direction is traffic_direction as metrics label it:
	// filters.DirectionInbound, filters.DirectionOutbound, or "" (UNSPECIFIED).
	Direction string
	// UseOriginalDst hands redirected connections to the listener bound to
	// their original destination, if there is one.
	UseOriginalDst bool

	ListenerFilters []ListenerFilter
	// FiltersTimeout bounds all listener filters together; 0 means none.
	FiltersTimeout time.Duration
	// ContinueOnFiltersTimeout picks a filter chain with what is known when
	// FiltersTimeout passes, instead of closing the connection.
	ContinueOnFiltersTimeout bool

	Chains       []*FilterChain
	DefaultChain *FilterChain // nil: none
	// AccessLogs log connections the listener closed itself: listener
	// filters closed them, or no filter chain matched (Listener.access_log).
	AccessLogs accesslog.Loggers
	table      *chainmatch.Table
	// guardsHTTP: some chain enforces HTTP-level policy (filters.HTTPPolicy).
	guardsHTTP bool
}

// ListenerFilter is one configured listener filter.
type ListenerFilter struct {
	Name   string
	Filter filters.ListenerFilter
	// Disabled reports whether the filter is skipped for a destination port
	// (Envoy's filter_disabled); nil means never.
	Disabled func(port uint16) bool
}

// FilterChain is a chosen connection's treatment: non-terminal filters in
// order, then the terminal one.
type FilterChain struct {
	Name       string
	Connection []filters.ConnectionFilter
	Network    filters.NetworkFilter
	// TLS is the chain's transport socket (DownstreamTlsContext), or nil for
	// plaintext; HandshakeTimeout bounds its handshake (tls.go).
	TLS              *mtls.Server
	HandshakeTimeout time.Duration
}

// Envoy's listener_filters_timeout default.
const defaultListenerFiltersTimeout = 15 * time.Second

var listenerPolicy = pbcheck.Policy{
	"envoy.config.listener.v3.Listener": pbcheck.Fields("name, address, filter_chains, default_filter_chain, "+
		"listener_filters, listener_filters_timeout, continue_on_listener_filters_timeout, use_original_dst, bind_to_port, "+
		"traffic_direction, access_log").
		Ignore("stat_prefix", "statistics only").
		Ignore("metadata", "descriptive: read by filters and tools, not by the listener").
		Ignore("per_connection_buffer_limit_bytes", "tunes Envoy's buffers: Sift's are fixed and smaller").
		Ignore("enable_reuse_port", "tunes Envoy's worker threads: Sift has one accept loop per listener"),
	"envoy.config.listener.v3.FilterChain": pbcheck.Fields("filter_chain_match, filters, name, transport_socket, transport_socket_connect_timeout").
		Ignore("metadata", "descriptive: read by filters and tools, not by the listener"),
	"envoy.config.core.v3.TransportSocket":    pbcheck.Fields("name, typed_config"),
	"envoy.config.listener.v3.Filter":         pbcheck.Fields("name, typed_config"),
	"envoy.config.listener.v3.ListenerFilter": pbcheck.Fields("name, typed_config, filter_disabled"),
	"envoy.config.core.v3.Address":            pbcheck.Fields("socket_address"),
	"envoy.config.core.v3.SocketAddress":      pbcheck.Fields("protocol, address, port_value"),
}

// Decode validates pb and builds its filters. Errors name the listener and
// the field: `listener "ingress": filter_chains[1].filters[0]: ...`.
func Decode(pb *listenerv3.Listener, bc filters.BuildContext) (*Config, error) {
	cfg, err := decode(pb, bc)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", pb.GetName(), err)
	}
	return cfg, nil
}

func decode(pb *listenerv3.Listener, bc filters.BuildContext) (*Config, error) {
	if err := listenerPolicy.Check(pb); err != nil {
		return nil, err
	}
	listenerPolicy.LogIgnored(bc.Logger, pb, "listener", pb.GetName())
	if pb.GetName() == "" {
		return nil, errors.New("name: must be set")
	}
	bc.ListenerName = pb.GetName()
	if bc.Logger != nil {
		bc.Logger = bc.Logger.With("listener", pb.GetName())
	}
	addr, err := SocketAddress(pb.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	cfg := &Config{
		Name:                     pb.GetName(),
		Address:                  addr.String(),
		BindToPort:               pb.GetBindToPort() == nil || pb.GetBindToPort().GetValue(),
		UseOriginalDst:           pb.GetUseOriginalDst().GetValue(),
		Direction:                direction(pb.GetTrafficDirection()),
		ContinueOnFiltersTimeout: pb.GetContinueOnListenerFiltersTimeout(),
	}
	// 0 disables, as in Envoy.
	if cfg.FiltersTimeout, err = pbcheck.Duration(pb.GetListenerFiltersTimeout(), "listener_filters_timeout",
		defaultListenerFiltersTimeout, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	if cfg.AccessLogs, err = accesslog.Decode(pb.GetAccessLog(), accesslog.Context{Clusters: bc.Clusters}); err != nil {
		return nil, err
	}
	for i, lf := range pb.GetListenerFilters() {
		f, err := filters.BuildListenerFilter(lf.GetTypedConfig(), bc)
		if err != nil {
			return nil, fmt.Errorf("listener_filters[%d] (%s): %w", i, lf.GetName(), err)
		}
		entry := ListenerFilter{Name: lf.GetName(), Filter: f}
		if pred := lf.GetFilterDisabled(); pred != nil {
			if entry.Disabled, err = portPredicate(pred); err != nil {
				return nil, fmt.Errorf("listener_filters[%d] (%s).filter_disabled: %w", i, lf.GetName(), err)
			}
		}
		cfg.ListenerFilters = append(cfg.ListenerFilters, entry)
	}
	if len(pb.GetFilterChains()) == 0 && pb.GetDefaultFilterChain() == nil {
		return nil, errors.New("filter_chains: at least one filter chain or a default_filter_chain is required")
	}
	criteria := make([]chainmatch.Criteria, 0, len(pb.GetFilterChains()))
	for i, fc := range pb.GetFilterChains() {
		c, err := chainmatch.FromProto(fc.GetFilterChainMatch())
		if err != nil {
			return nil, fmt.Errorf("filter_chains[%d].filter_chain_match: %w", i, err)
		}
		criteria = append(criteria, c)
		chain, err := decodeChain(fc, bc)
		if err != nil {
			return nil, fmt.Errorf("filter_chains[%d]%s: %w", i, chainLabel(fc), err)
		}
		cfg.Chains = append(cfg.Chains, chain)
	}
	if cfg.table, err = chainmatch.NewTable(criteria); err != nil {
		return nil, fmt.Errorf("filter_chains: %w", err)
	}
	if fc := pb.GetDefaultFilterChain(); fc != nil {
		if fc.GetFilterChainMatch() != nil {
			return nil, errors.New("default_filter_chain.filter_chain_match: must not be set")
		}
		if cfg.DefaultChain, err = decodeChain(fc, bc); err != nil {
			return nil, fmt.Errorf("default_filter_chain: %w", err)
		}
	}
	cfg.guardsHTTP = guardsHTTP(cfg)
	return cfg, nil
}

func chainLabel(fc *listenerv3.FilterChain) string {
	if fc.GetName() == "" {
		return ""
	}
	return " (" + fc.GetName() + ")"
}

func decodeChain(fc *listenerv3.FilterChain, bc filters.BuildContext) (*FilterChain, error) {
	fs := fc.GetFilters()
	if len(fs) == 0 {
		return nil, errors.New("filters: a terminal network filter (tcp_proxy) is required")
	}
	chain := &FilterChain{Name: fc.GetName()}
	if err := decodeTransportSocket(fc, chain, bc); err != nil {
		return nil, err
	}
	last := len(fs) - 1
	for i, f := range fs[:last] {
		cf, err := filters.BuildConnectionFilter(f.GetTypedConfig(), bc)
		if err != nil {
			return nil, fmt.Errorf("filters[%d] (%s): %w", i, f.GetName(), err)
		}
		chain.Connection = append(chain.Connection, cf)
	}
	nf, err := filters.BuildNetworkFilter(fs[last].GetTypedConfig(), bc)
	if err != nil {
		return nil, fmt.Errorf("filters[%d] (%s): %w", last, fs[last].GetName(), err)
	}
	chain.Network = nf
	return chain, nil
}

// SocketAddress decodes an Envoy Address holding a TCP socket address with an
// IP (Envoy's listeners take no host names).
func SocketAddress(a *corev3.Address) (netip.AddrPort, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, errors.New("socket_address: must be set")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("socket_address.protocol: %s is not supported (TCP only)", sa.GetProtocol())
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("socket_address.address: %q is not an IP address", sa.GetAddress())
	}
	if sa.GetPortValue() > 65535 {
		return netip.AddrPort{}, fmt.Errorf("socket_address.port_value: %d is out of range", sa.GetPortValue())
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue())), nil
}

// portPredicate compiles a ListenerFilterChainMatchPredicate into a function
// of the destination port (the only input Envoy defines for it).
func portPredicate(p *listenerv3.ListenerFilterChainMatchPredicate) (func(uint16) bool, error) {
	switch r := p.GetRule().(type) {
	case *listenerv3.ListenerFilterChainMatchPredicate_AnyMatch:
		if !r.AnyMatch {
			return nil, errors.New("any_match: must be true")
		}
		return func(uint16) bool { return true }, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_DestinationPortRange:
		start, end := r.DestinationPortRange.GetStart(), r.DestinationPortRange.GetEnd()
		if start < 0 || end > 65536 || start >= end {
			return nil, fmt.Errorf("destination_port_range: [%d, %d) is not a valid port range", start, end)
		}
		return func(port uint16) bool { return int32(port) >= start && int32(port) < end }, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_NotMatch:
		inner, err := portPredicate(r.NotMatch)
		if err != nil {
			return nil, fmt.Errorf("not_match: %w", err)
		}
		return func(port uint16) bool { return !inner(port) }, nil
	case *listenerv3.ListenerFilterChainMatchPredicate_OrMatch:
		return predicateSet("or_match", r.OrMatch.GetRules(), false)
	case *listenerv3.ListenerFilterChainMatchPredicate_AndMatch:
		return predicateSet("and_match", r.AndMatch.GetRules(), true)
	}
	return nil, errors.New("a rule must be set")
}

func predicateSet(field string, rules []*listenerv3.ListenerFilterChainMatchPredicate, all bool) (func(uint16) bool, error) {
	if len(rules) < 2 {
		return nil, fmt.Errorf("%s.rules: at least 2 rules are required", field)
	}
	preds := make([]func(uint16) bool, len(rules))
	for i, r := range rules {
		p, err := portPredicate(r)
		if err != nil {
			return nil, fmt.Errorf("%s.rules[%d]: %w", field, i, err)
		}
		preds[i] = p
	}
	return func(port uint16) bool {
		for _, p := range preds {
			if p(port) != all {
				return !all
			}
		}
		return all
	}, nil
}

// addrPort converts a net.Addr of a TCP connection.
func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// direction maps traffic_direction to the label metrics use.
func direction(d corev3.TrafficDirection) string {
	switch d {
	case corev3.TrafficDirection_INBOUND:
		return filters.DirectionInbound
	case corev3.TrafficDirection_OUTBOUND:
		return filters.DirectionOutbound
	}
	return ""
}
