// Package originaldst is Envoy's envoy.filters.listener.original_dst: for a
// connection redirected to the proxy by iptables (REDIRECT or DNAT), it
// restores the destination the client asked for from SO_ORIGINAL_DST, so that
// filter-chain matching and use_original_dst hand-off see the real target.
// A connection that was not redirected keeps its local address.
package originaldst

import (
	"fmt"
	"net"
	"net/netip"

	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/pbcheck"
)

func init() {
	filters.RegisterListenerFilter(&originaldstv3.OriginalDst{}, func(cfg proto.Message, _ filters.BuildContext) (filters.ListenerFilter, error) {
		if err := policy.Check(cfg); err != nil {
			return nil, fmt.Errorf("original_dst: %w", err)
		}
		return Filter{}, nil
	})
}

// traffic_type (inbound/outbound Windows WFP redirect records) does not apply on Linux.
var policy = pbcheck.Policy{"envoy.extensions.filters.listener.original_dst.v3.OriginalDst": {}}

// Filter restores the original destination. It peeks no bytes.
type Filter struct{}

var _ filters.ListenerFilter = Filter{}

// Provides implements filters.ListenerFilter.
func (Filter) Provides() filters.Field { return filters.FieldDestination }

// OnAccept implements filters.ListenerFilter. It reads the socket option of
// the connection the Peeker reads from; it needs the *net.TCPConn, which the
// listener passes as the Peeker's connection.
func (Filter) OnAccept(p filters.Peeker, info *filters.ConnInfo) error {
	sc, ok := p.(interface{ Conn() net.Conn })
	if !ok {
		return nil
	}
	tc, ok := sc.Conn().(*net.TCPConn)
	if !ok {
		return nil
	}
	dst, ok, err := originalDst(tc)
	if err != nil {
		return fmt.Errorf("original_dst: %w", err)
	}
	if ok && dst != info.LocalAddr {
		info.LocalAddr = dst
		info.LocalAddrRestored = true
	}
	return nil
}

// ipv4Addr decodes a struct sockaddr_in.
func ipv4Addr(b []byte) netip.AddrPort {
	port := uint16(b[2])<<8 | uint16(b[3])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port)
}

// ipv6Addr decodes a struct sockaddr_in6.
func ipv6Addr(b []byte) netip.AddrPort {
	port := uint16(b[2])<<8 | uint16(b[3])
	return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port)
}
