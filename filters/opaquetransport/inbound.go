// Package opaquetransport is the inbound side of the opaque transport between
// two Sift proxies (docs/mesh-transport.md): the network filter that reads the
// header (package header) another proxy wrote first in the stream and
// forwards the connection to 127.0.0.1:<port> without detecting again.
package opaquetransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	opaquetransportv1 "github.com/siftmesh/sift/api/sift/filters/network/opaque_transport/v1"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/opaquetransport/header"
	"github.com/siftmesh/sift/filters/rbac"
	"github.com/siftmesh/sift/filters/tcpproxy"
	"github.com/siftmesh/sift/internal/pbcheck"
)

func init() {
	filters.RegisterNetworkFilter(&opaquetransportv1.Inbound{}, func(cfg proto.Message, bc filters.BuildContext) (filters.NetworkFilter, error) {
		in, err := NewInbound(cfg.(*opaquetransportv1.Inbound), bc.Logger)
		if err != nil {
			return nil, fmt.Errorf("opaque transport: %w", err)
		}
		return in, nil
	})
}

var policy = pbcheck.Policy{
	"sift.filters.network.opaque_transport.v1.Inbound": pbcheck.Fields("stat_prefix, address, allowed_ports, " +
		"header_timeout, connect_timeout, idle_timeout, port_authorizations"),
	"sift.filters.network.opaque_transport.v1.Inbound.PortAuthorization": pbcheck.Fields("port, principals, principal_prefixes"),
}

// Inbound defaults (see opaque_transport.proto).
const (
	defaultHeaderTimeout  = 10 * time.Second
	defaultConnectTimeout = time.Second
	defaultIdleTimeout    = time.Hour
)

// Inbound is the inbound opaque-transport network filter. It is immutable
// and safe for concurrent use.
type Inbound struct {
	statPrefix     string
	address        netip.Addr
	allowed        []uint16 // sorted; empty: any
	headerTimeout  time.Duration
	connectTimeout time.Duration
	idleTimeout    time.Duration
	log            *slog.Logger
	// authz are the per-port identity rules; counts their decisions.
	authz  map[uint16]portAuthorization
	counts *rbac.Counts
}

// portAuthorization is who may reach one port.
type portAuthorization struct {
	exact, prefixes []string
}

func (a portAuthorization) allows(id string) bool {
	if id == "" {
		return false
	}
	if slices.Contains(a.exact, id) {
		return true
	}
	return slices.ContainsFunc(a.prefixes, func(p string) bool { return strings.HasPrefix(id, p) })
}

var _ filters.NetworkFilter = (*Inbound)(nil)

// NewInbound validates cfg; errors name the field.
func NewInbound(cfg *opaquetransportv1.Inbound, log *slog.Logger) (*Inbound, error) {
	if err := policy.Check(cfg); err != nil {
		return nil, err
	}
	if cfg.GetStatPrefix() == "" {
		return nil, errors.New("stat_prefix: must be set")
	}
	in := &Inbound{statPrefix: cfg.GetStatPrefix(), address: netip.MustParseAddr("127.0.0.1"),
		headerTimeout: defaultHeaderTimeout, connectTimeout: defaultConnectTimeout, idleTimeout: defaultIdleTimeout, log: log}
	if in.log == nil {
		in.log = slog.Default()
	}
	if a := cfg.GetAddress(); a != "" {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			return nil, fmt.Errorf("address: %q is not an IP address", a)
		}
		in.address = ip
	}
	for i, p := range cfg.GetAllowedPorts() {
		if p == 0 || p > 65535 {
			return nil, fmt.Errorf("allowed_ports[%d]: %d is not a port (1-65535)", i, p)
		}
		in.allowed = append(in.allowed, uint16(p))
	}
	slices.Sort(in.allowed)
	for i, pa := range cfg.GetPortAuthorizations() {
		if pa.GetPort() == 0 || pa.GetPort() > 65535 {
			return nil, fmt.Errorf("port_authorizations[%d].port: %d is not a port (1-65535)", i, pa.GetPort())
		}
		if len(pa.GetPrincipals())+len(pa.GetPrincipalPrefixes()) == 0 {
			return nil, fmt.Errorf("port_authorizations[%d]: name at least one principal or principal prefix (a port nobody may reach is not served: leave it out of allowed_ports)", i)
		}
		if in.authz == nil {
			in.authz = map[uint16]portAuthorization{}
		}
		port := uint16(pa.GetPort())
		if _, dup := in.authz[port]; dup {
			return nil, fmt.Errorf("port_authorizations[%d].port: %d has rules already", i, port)
		}
		in.authz[port] = portAuthorization{exact: pa.GetPrincipals(), prefixes: pa.GetPrincipalPrefixes()}
	}
	in.counts = rbac.CountsFor(in.statPrefix)
	var err error
	if in.headerTimeout, err = pbcheck.Duration(cfg.GetHeaderTimeout(), "header_timeout", in.headerTimeout, pbcheck.Positive); err != nil {
		return nil, err
	}
	if in.connectTimeout, err = pbcheck.Duration(cfg.GetConnectTimeout(), "connect_timeout", in.connectTimeout, pbcheck.Positive); err != nil {
		return nil, err
	}
	if in.idleTimeout, err = pbcheck.Duration(cfg.GetIdleTimeout(), "idle_timeout", in.idleTimeout, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	return in, nil
}

// ServeConn implements filters.NetworkFilter: read the header, connect to
// the named local port, replay what followed the header, then relay.
func (in *Inbound) ServeConn(ctx context.Context, d *filters.Downstream) {
	down := d.Conn()
	defer down.Close()
	h, rest, err := readHeader(down, in.headerTimeout)
	if err != nil {
		in.log.Debug("opaque transport: bad header; closing", "remote", d.Info.RemoteAddr, "err", err)
		return
	}
	if len(in.allowed) > 0 {
		if _, ok := slices.BinarySearch(in.allowed, h.Port); !ok {
			in.log.Debug("opaque transport: port not allowed; closing", "remote", d.Info.RemoteAddr, "port", h.Port)
			return
		}
	}
	if a, ok := in.authz[h.Port]; ok {
		if !a.allows(d.Info.PeerIdentity) {
			in.counts.Denied.Add(1)
			in.log.Info("opaque transport: client not authorized for the port; closing", "remote", d.Info.RemoteAddr,
				"peer_identity", d.Info.PeerIdentity, "port", h.Port)
			return
		}
		in.counts.Allowed.Add(1)
	}
	target := net.JoinHostPort(in.address.String(), strconv.Itoa(int(h.Port)))
	dialer := net.Dialer{Timeout: in.connectTimeout, KeepAlive: -1}
	up, err := dialer.DialContext(ctx, "tcp", target)
	if err != nil {
		in.log.Debug("opaque transport: connect failed; closing", "remote", d.Info.RemoteAddr, "target", target, "err", err)
		return
	}
	defer up.Close()
	if len(rest) > 0 {
		if _, err := up.Write(rest); err != nil {
			return
		}
	}
	in.log.Debug("opaque transport", "remote", d.Info.RemoteAddr, "target", target, "protocol", h.Protocol, "server_first", h.ServerFirst)
	if _, err := tcpproxy.Relay(ctx, down, up, tcpproxy.Limits{Idle: in.idleTimeout}); err != nil && ctx.Err() == nil {
		in.log.Debug("opaque transport: connection ended with an error", "remote", d.Info.RemoteAddr, "target", target, "err", err)
	}
}

// readHeader reads c until a whole header has arrived, within timeout. It
// returns the header and the bytes read after it.
func readHeader(c net.Conn, timeout time.Duration) (header.Header, []byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return header.Header{}, nil, err
	}
	buf := make([]byte, 0, 512)
	for {
		m, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		h, n, need, perr := header.Parse(buf)
		switch {
		case perr != nil:
			return header.Header{}, nil, perr
		case need == 0:
			if err := c.SetReadDeadline(time.Time{}); err != nil {
				return header.Header{}, nil, err
			}
			return h, buf[n:], nil
		case err != nil:
			return header.Header{}, nil, fmt.Errorf("opaque transport: reading the header (%d of %d bytes): %w", len(buf), need, err)
		}
	}
}
