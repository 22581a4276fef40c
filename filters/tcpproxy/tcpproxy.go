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
	"sync"
	"sync/atomic"
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

// ServeConn implements filters.NetworkFilter.
func (p *Proxy) ServeConn(ctx context.Context, d *filters.Downstream) {
	down := d.Raw()
	defer down.Close()
	rec := streaminfo.Conn{Start: d.Info.AcceptedAt, Filter: "tcp_proxy", StatPrefix: p.statPrefix, Info: d.Info}
	defer p.report(&rec)
	// The start is reported once the upstream is settled (connected, or
	// given up on), so that its series carry the upstream's TLS identity
	// (outbound server_id); every path out of here reports it.
	started := false
	start := func(up *upstream.Conn) {
		if up != nil && up.TLS != (mtls.Identity{}) {
			d.Info.UpstreamTLS, d.Info.UpstreamIdentity = true, up.TLS.Peer
		}
		streaminfo.ReportConnStart(d.Info)
		started = true
	}
	defer func() {
		if !started {
			start(nil)
		}
	}()
	// Attributes go on the rare log lines themselves: a logger built with
	// With per connection would allocate on every connection.
	remote := d.Info.RemoteAddr

	var up *upstream.Conn
	if early := d.TakeEarly(); early != nil {
		// Opened during detection (the server-first race) to this cluster:
		// what the server already said goes to the client first.
		rec.Cluster, up = early.Cluster, early.Conn.(*upstream.Conn)
		rec.Endpoint = up.Addr
		defer up.Close()
		start(up)
		if len(early.Greeting) > 0 {
			n, err := down.Write(early.Greeting)
			rec.BytesSent += int64(n)
			if err != nil {
				rec.Err = err
				p.log.Debug("downstream write failed", "remote", remote, "cluster", rec.Cluster, "upstream", up.Addr, "err", err)
				return
			}
		}
	} else {
		rec.Cluster = p.pickCluster()
		var err error
		if up, err = p.connect(ctx, rec.Cluster, d.Info, false); err != nil {
			rec.ConnectFailed, rec.Err = true, err
			if ctx.Err() == nil {
				p.log.Warn("upstream connect failed; closing downstream", "remote", remote, "cluster", rec.Cluster, "err", err)
			}
			return
		}
		rec.Endpoint = up.Addr
		defer up.Close()
		start(up)
	}

	if peeked := d.Peeked(); len(peeked) > 0 {
		n, err := up.Write(peeked)
		rec.BytesReceived += int64(n)
		if err != nil {
			rec.Err = err
			p.log.Debug("upstream write failed", "remote", remote, "cluster", rec.Cluster, "upstream", up.Addr, "err", err)
			return
		}
	}

	// up.Conn, not up: the embedded interface hides *net.TCPConn's ReadFrom,
	// which is where splice happens.
	counts, err := Relay(ctx, down, up.Conn, Limits{Idle: p.idleTimeout, MaxDuration: p.maxDuration})
	rec.BytesReceived += counts.Upstream
	rec.BytesSent += counts.Downstream
	rec.Err = err
	if err != nil && !expectedEnd(err) && ctx.Err() == nil {
		p.log.Debug("connection ended with an error", "remote", remote, "cluster", rec.Cluster, "upstream", up.Addr, "err", err)
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
	r := *rec // the hook may keep it; rec lives on ServeConn's stack
	p.accessLogs.LogConn(&r)
	streaminfo.ReportConn(&r)
}

// Limits bound a relayed connection; zero values mean none.
type Limits struct {
	// Idle closes both sides after this long without a byte either way
	// (Envoy's idle_timeout).
	Idle time.Duration
	// MaxDuration closes both sides this long after the relay started
	// (max_downstream_connection_duration).
	MaxDuration time.Duration
}

// Counts are the bytes a Relay moved each way.
type Counts struct {
	// Upstream went from down to up; Downstream from up to down.
	Upstream, Downstream int64
}

// Relay copies bytes both ways between down and up until both directions
// have ended, carrying half-closes across (CloseWrite), by splice(2) when
// both are raw *net.TCPConn. It closes both connections early when ctx is
// done, a limit is reached, or one direction fails. It returns the bytes
// moved and the directions' errors (nil when both ended with EOF); the
// caller still owns and closes down and up.
func Relay(ctx context.Context, down, up net.Conn, lim Limits) (Counts, error) {
	r := &relay{down: down, up: up, done: make(chan struct{})} // one allocation for the shared state
	stopCtx := context.AfterFunc(ctx, r.abort)
	defer stopCtx()
	if lim.MaxDuration > 0 {
		t := time.AfterFunc(lim.MaxDuration, r.abort)
		defer t.Stop()
	}
	if lim.Idle > 0 {
		w := watchIdle(lim.Idle, r.abort, &r.moved, down, up)
		defer w.stop()
	}
	go r.upstream()
	var c Counts
	var errDown error
	c.Downstream, errDown = pipe(down, up, &r.moved)
	if errDown != nil {
		r.abort()
	}
	<-r.done
	c.Upstream = r.upBytes
	if r.errUp != nil || errDown != nil {
		r.abort()
		return c, errors.Join(r.errUp, errDown)
	}
	return c, nil
}

// relay is what Relay's two directions and its timers share.
type relay struct {
	down, up net.Conn
	once     sync.Once
	moved    atomic.Uint64 // bytes copied in user space (no kernel counter sees them)
	done     chan struct{} // closed when the upstream direction has ended
	upBytes  int64         // set before done is closed
	errUp    error         //
}

// upstream copies down to up, on its own goroutine.
func (r *relay) upstream() {
	defer close(r.done)
	r.upBytes, r.errUp = pipe(r.up, r.down, &r.moved)
}

// abort closes both connections, once.
func (r *relay) abort() { r.once.Do(func() { r.down.Close(); r.up.Close() }) }

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

// pipe copies src to dst until src ends, then half-closes dst. It returns nil
// when src ended with EOF: the other direction may go on.
func pipe(dst, src net.Conn, moved *atomic.Uint64) (int64, error) {
	n, err := copyStream(dst, src, moved)
	if err != nil {
		return n, err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return n, cw.CloseWrite()
	}
	return n, nil
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
