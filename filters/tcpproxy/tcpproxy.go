// Package tcpproxy is Envoy's envoy.filters.network.tcp_proxy: it proxies an
// opaque connection byte for byte to an endpoint of a cluster, with half-close
// in both directions, and moves the bytes by splice(2) — no user-space copy —
// once the bytes peeked during detection have been written.
package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"syscall"
	"time"

	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/filters/opaquetransport/header"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/telemetry/accesslog"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/upstream"
)

func init() {
	filters.RegisterNetworkFilter(&tcpproxyv3.TcpProxy{}, func(cfg proto.Message, bc filters.BuildContext) (filters.NetworkFilter, error) {
		p, err := New(cfg.(*tcpproxyv3.TcpProxy), bc)
		if err != nil {
			return nil, fmt.Errorf("tcp_proxy: %w", err)
		}
		return p, nil
	})
	filters.RegisterClusterRefs(&tcpproxyv3.TcpProxy{}, func(cfg proto.Message) []filters.ClusterRef {
		tp := cfg.(*tcpproxyv3.TcpProxy)
		var refs []filters.ClusterRef
		if c := tp.GetCluster(); c != "" {
			refs = append(refs, filters.ClusterRef{Field: "cluster", Cluster: c})
		}
		for i, wc := range tp.GetWeightedClusters().GetClusters() {
			refs = append(refs, filters.ClusterRef{Field: fmt.Sprintf("weighted_clusters.clusters[%d].name", i), Cluster: wc.GetName()})
		}
		return refs
	})
}

// Envoy's defaults.
const (
	defaultIdleTimeout     = time.Hour
	defaultBackoffBase     = time.Second
	defaultBackoffMaxRatio = 10
)

var policy = pbcheck.Policy{
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": pbcheck.Fields("stat_prefix, cluster, weighted_clusters, " +
		"idle_timeout, max_connect_attempts, backoff_options, max_downstream_connection_duration, access_log"),
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster":               pbcheck.Fields("clusters"),
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight": pbcheck.Fields("name, weight"),
}

// Proxy is a configured tcp_proxy. It is immutable and safe for concurrent use.
type Proxy struct {
	statPrefix      string
	clusters        []weightedCluster // one entry when cluster is set
	totalWeight     uint32
	idleTimeout     time.Duration // 0: none
	maxDuration     time.Duration // 0: none
	connectAttempts int
	backoffBase     time.Duration
	backoffMax      time.Duration
	manager         *upstream.Manager
	log             *slog.Logger
	accessLogs      accesslog.Loggers
}

type weightedCluster struct {
	name   string
	weight uint32
}

var (
	_ filters.NetworkFilter = (*Proxy)(nil)
	_ filters.Preconnector  = (*Proxy)(nil)
	_ filters.EarlyAdopter  = (*Proxy)(nil)
)

// New validates cfg and returns the filter. Clusters are looked up by name on
// each connection, so a cluster may be defined (or replaced) after the
// listener, as in Envoy.
func New(cfg *tcpproxyv3.TcpProxy, bc filters.BuildContext) (*Proxy, error) {
	if err := policy.Check(cfg); err != nil {
		return nil, err
	}
	if cfg.GetStatPrefix() == "" {
		return nil, errors.New("stat_prefix: must be set")
	}
	p := &Proxy{
		statPrefix:      cfg.GetStatPrefix(),
		idleTimeout:     defaultIdleTimeout,
		connectAttempts: 1,
		backoffBase:     defaultBackoffBase,
		manager:         bc.Clusters,
		log:             bc.Logger,
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("filter", "tcp_proxy", "stat_prefix", p.statPrefix)
	switch spec := cfg.GetClusterSpecifier().(type) {
	case *tcpproxyv3.TcpProxy_Cluster:
		if spec.Cluster == "" {
			return nil, errors.New("cluster: must not be empty")
		}
		p.clusters = []weightedCluster{{name: spec.Cluster, weight: 1}}
	case *tcpproxyv3.TcpProxy_WeightedClusters:
		for i, c := range spec.WeightedClusters.GetClusters() {
			if c.GetName() == "" {
				return nil, fmt.Errorf("weighted_clusters.clusters[%d].name: must be set", i)
			}
			if c.GetWeight() == 0 {
				return nil, fmt.Errorf("weighted_clusters.clusters[%d].weight: must be at least 1", i)
			}
			p.clusters = append(p.clusters, weightedCluster{name: c.GetName(), weight: c.GetWeight()})
			p.totalWeight += c.GetWeight()
		}
		if len(p.clusters) == 0 {
			return nil, errors.New("weighted_clusters.clusters: at least one cluster is required")
		}
	default:
		return nil, errors.New("cluster or weighted_clusters: one must be set")
	}
	var err error
	if p.accessLogs, err = accesslog.Decode(cfg.GetAccessLog(), accesslog.Context{Clusters: bc.Clusters}); err != nil {
		return nil, err
	}
	if p.idleTimeout, err = pbcheck.Duration(cfg.GetIdleTimeout(), "idle_timeout", p.idleTimeout, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	if p.maxDuration, err = pbcheck.Duration(cfg.GetMaxDownstreamConnectionDuration(), "max_downstream_connection_duration",
		0, pbcheck.NonNegative); err != nil {
		return nil, err
	}
	if n := cfg.GetMaxConnectAttempts(); n != nil {
		if n.GetValue() < 1 {
			return nil, errors.New("max_connect_attempts: must be at least 1")
		}
		p.connectAttempts = int(min(n.GetValue(), 1000))
	}
	p.backoffMax = defaultBackoffMaxRatio * p.backoffBase
	if b := cfg.GetBackoffOptions(); b != nil {
		if p.backoffBase, p.backoffMax, err = pbcheck.Backoff("backoff_options", b.GetBaseInterval(), b.GetMaxInterval(), pbcheck.Positive); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// ServeConn implements filters.NetworkFilter. When both sides are raw TCP
// sockets (splice serves them) and the caller allows it
// (filters.Downstream.Detach), it detaches the connection: it returns as
// soon as the upstream is connected and both directions run on goroutines
// of their own, and the connection lives on with no goroutine while idle
// (relay.start's park mode); the record, the access logs, the
// closes and the caller's end function then come from whichever goroutine
// ends the connection. Otherwise (TLS on either side, or a caller that
// needs ServeConn to block) it returns when the connection has ended.
func (p *Proxy) ServeConn(ctx context.Context, d *filters.Downstream) {
	s := &session{p: p, ctx: ctx, info: d.Info,
		rec: streaminfo.Conn{Start: d.Info.AcceptedAt, Filter: "tcp_proxy", StatPrefix: p.statPrefix, Info: d.Info}}
	s.r.down = d.Raw()
	if !s.open(ctx, d) {
		s.end()
		return
	}
	lim := Limits{Idle: p.idleTimeout, MaxDuration: p.maxDuration}
	// s.up.Conn, not s.up: the embedded interface hides *net.TCPConn's
	// ReadFrom and SyscallConn, which is where splice happens.
	if canPark(s.r.down, s.up.Conn) {
		if end, ok := d.Detach(); ok {
			s.detachedEnd = end
			// From here on s belongs to the relay: it may end (and s.end
			// run) on another goroutine before this returns.
			s.r.start(ctx, s.r.down, s.up.Conn, lim, true, s)
			return
		}
	}
	s.relayEnded(Relay(ctx, s.r.down, s.up.Conn, lim))
}

// session is one connection served by tcp_proxy: what ServeConn opened and
// the record reported when it ends. It lives on the heap so that a
// detached connection can end on any goroutine.
type session struct {
	p       *Proxy
	ctx     context.Context
	info    *filters.ConnInfo
	up      *upstream.Conn // nil until connected
	rec     streaminfo.Conn
	started bool // the connection's start has been reported
	// unreported: nothing reads the record (start dropped info).
	unreported bool
	// detachedEnd is the listener's end function of a detached connection.
	detachedEnd func()
	// r relays a detached connection (one allocation for both); r.down is
	// the downstream connection from the start.
	r relay
}

// open connects the upstream (or adopts the early one), writes the
// server's greeting to the client and the peeked bytes to the upstream. It
// returns false when the connection cannot go on (s.rec says why).
func (s *session) open(ctx context.Context, d *filters.Downstream) bool {
	p := s.p
	// Attributes go on the rare log lines themselves: a logger built with
	// With per connection would allocate on every connection.
	remote := s.info.RemoteAddr
	if early := d.TakeEarly(); early != nil {
		// Opened during detection (the server-first race) to this cluster:
		// what the server already said goes to the client first.
		s.rec.Cluster, s.up = early.Cluster, early.Conn.(*upstream.Conn)
		s.rec.Endpoint = s.up.Addr
		s.start()
		if len(early.Greeting) > 0 {
			n, err := s.r.down.Write(early.Greeting)
			s.rec.BytesSent += int64(n)
			if err != nil {
				s.rec.Err = err
				p.log.Debug("downstream write failed", "remote", remote, "cluster", s.rec.Cluster, "upstream", s.up.Addr, "err", err)
				return false
			}
		}
	} else {
		s.rec.Cluster = p.pickCluster()
		up, err := p.connect(ctx, s.rec.Cluster, s.info, false)
		if err != nil {
			s.rec.ConnectFailed, s.rec.Err = true, err
			if ctx.Err() == nil {
				p.log.Warn("upstream connect failed; closing downstream", "remote", remote, "cluster", s.rec.Cluster, "err", err)
			}
			return false
		}
		s.up = up
		s.rec.Endpoint = up.Addr
		s.start()
	}
	if peeked := d.Peeked(); len(peeked) > 0 {
		n, err := s.up.Write(peeked)
		s.rec.BytesReceived += int64(n)
		if err != nil {
			s.rec.Err = err
			p.log.Debug("upstream write failed", "remote", remote, "cluster", s.rec.Cluster, "upstream", s.up.Addr, "err", err)
			return false
		}
	}
	return true
}

// start reports the connection's start, once the upstream is settled
// (connected, or given up on), so that its series carry the upstream's TLS
// identity (outbound server_id); every path out reports it.
func (s *session) start() {
	if s.up != nil && s.up.TLS != (mtls.Identity{}) {
		s.info.UpstreamTLS, s.info.UpstreamIdentity = true, s.up.TLS.Peer
	}
	streaminfo.ReportConnStart(s.info)
	s.started = true
	if len(s.p.accessLogs) == 0 && !streaminfo.HasConnHook() {
		// Nothing will read the record (no access log, no metrics): the
		// connection keeps no ConnInfo for its life. A hook set later
		// sees neither this connection's start nor its end.
		s.info, s.rec.Info, s.unreported = nil, nil, true
	}
}

// relayEnded records what the relay moved and ends the connection.
func (s *session) relayEnded(counts Counts, err error) {
	s.rec.BytesReceived += counts.Upstream
	s.rec.BytesSent += counts.Downstream
	s.rec.Err = err
	if err != nil && !expectedEnd(err) && s.ctx.Err() == nil {
		s.p.log.Debug("connection ended with an error", "remote", s.r.down.RemoteAddr(), "cluster", s.rec.Cluster, "upstream", s.up.Addr, "err", err)
	}
	s.end()
}

// end closes both sides, reports the connection, and — for a detached
// connection — tells the listener. It runs once per connection.
func (s *session) end() {
	if s.up != nil {
		s.up.Close()
	}
	if !s.started {
		s.start()
	}
	if !s.unreported {
		s.p.report(&s.rec)
	}
	s.r.down.Close()
	if s.detachedEnd != nil {
		s.detachedEnd()
	}
}

// report hands a finished connection's record to the access logs and the
// process-wide hook; it copies the record only when one of them is there.
func (p *Proxy) report(rec *streaminfo.Conn) {
	if len(p.accessLogs) == 0 && !streaminfo.HasConnHook() {
		return
	}
	if !rec.Start.IsZero() {
		rec.Duration = time.Since(rec.Start)
	}
	r := *rec // the hook may keep it; rec is reused
	p.accessLogs.LogConn(&r)
	streaminfo.ReportConn(&r)
}

// Preconnect implements filters.Preconnector: it opens the connection
// ServeConn would open (a cluster picked by weight, max_connect_attempts
// with backoff), for the server-first race.
func (p *Proxy) Preconnect(ctx context.Context, info *filters.ConnInfo) (*filters.EarlyUpstream, error) {
	name := p.pickCluster()
	up, err := p.connect(ctx, name, info, true)
	if err != nil {
		return nil, err
	}
	return &filters.EarlyUpstream{Conn: up, Cluster: name, Endpoint: up.Addr}, nil
}

// CanAdopt implements filters.EarlyAdopter: an early upstream to one of
// this proxy's clusters, opened by a tcp_proxy, serves the connection.
func (p *Proxy) CanAdopt(e *filters.EarlyUpstream) bool {
	if _, ok := e.Conn.(*upstream.Conn); !ok {
		return false
	}
	for _, c := range p.clusters {
		if c.name == e.Cluster {
			return true
		}
	}
	return false
}

// writeTransportHeader starts conn with the opaque-transport header.
func writeTransportHeader(conn net.Conn, ot *upstream.OpaqueTransport, info *filters.ConnInfo, early bool) error {
	h := header.Header{Port: ot.Port, ServerFirst: early}
	if h.Port == 0 {
		h.Port = info.LocalAddr.Port()
	}
	if d := &info.Detection; !early && d.Ran {
		h.Detected, h.Protocol = true, d.Protocol
	}
	var buf [header.MaxLen]byte
	b, err := header.Append(buf[:0], h)
	if err != nil {
		return err
	}
	_, err = conn.Write(b)
	return err
}

// expectedEnd reports errors that are ordinary ways for a connection to end.
func expectedEnd(err error) bool {
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, io.EOF)
}

func (p *Proxy) pickCluster() string {
	if len(p.clusters) == 1 {
		return p.clusters[0].name
	}
	n := rand.Uint32N(p.totalWeight)
	for _, c := range p.clusters {
		if n < c.weight {
			return c.name
		}
		n -= c.weight
	}
	return p.clusters[len(p.clusters)-1].name
}

// connect tries up to max_connect_attempts times, backing off between tries
// (Envoy's backoff_options: jittered exponential from base_interval).
//
// For a cluster with the opaque transport (docs/mesh-transport.md), the
// connection starts with the header: the peer's port, what detection found
// of info, and early — the connection is opened by the server-first race,
// before the client spoke.
func (p *Proxy) connect(ctx context.Context, name string, info *filters.ConnInfo, early bool) (*upstream.Conn, error) {
	c := p.manager.Get(name)
	if c == nil {
		return nil, fmt.Errorf("tcp_proxy: cluster %q not found", name)
	}
	var errs []error
	backoff := p.backoffBase
	for attempt := 1; ; attempt++ {
		conn, err := c.Dial(ctx)
		if err == nil {
			if ot := c.OpaqueTransport(); ot != nil {
				if err := writeTransportHeader(conn, ot, info, early); err != nil {
					conn.Close()
					return nil, fmt.Errorf("tcp_proxy: cluster %q: %w", name, err)
				}
			}
			return conn, nil
		}
		errs = append(errs, err)
		if attempt >= p.connectAttempts || ctx.Err() != nil {
			return nil, fmt.Errorf("tcp_proxy: %d connect attempt(s): %w", attempt, errors.Join(errs...))
		}
		t := time.NewTimer(rand.N(backoff) + 1)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("tcp_proxy: %w", errors.Join(append(errs, ctx.Err())...))
		case <-t.C:
		}
		backoff = min(2*backoff, p.backoffMax)
	}
}
