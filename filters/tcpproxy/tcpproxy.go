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
	"syscall"
	"time"

	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/pbcheck"
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
}

// Envoy's defaults.
const (
	defaultIdleTimeout     = time.Hour
	defaultBackoffBase     = time.Second
	defaultBackoffMaxRatio = 10
)

var policy = pbcheck.Policy{
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy": pbcheck.Fields("stat_prefix, cluster, weighted_clusters, " +
		"idle_timeout, max_connect_attempts, backoff_options, max_downstream_connection_duration"),
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
}

type weightedCluster struct {
	name   string
	weight uint32
}

var _ filters.NetworkFilter = (*Proxy)(nil)

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
	// Attributes go on the rare log lines themselves: a logger built with
	// With per connection would allocate on every connection.
	remote := d.Info.RemoteAddr

	clusterName := p.pickCluster()
	up, err := p.connect(ctx, clusterName)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("upstream connect failed; closing downstream", "remote", remote, "cluster", clusterName, "err", err)
		}
		return
	}
	defer up.Close()

	if peeked := d.Peeked(); len(peeked) > 0 {
		if _, err := up.Write(peeked); err != nil {
			p.log.Debug("upstream write failed", "remote", remote, "cluster", clusterName, "upstream", up.Addr, "err", err)
			return
		}
	}

	var once sync.Once
	abort := func() { once.Do(func() { down.Close(); up.Close() }) }
	stopCtx := context.AfterFunc(ctx, abort)
	defer stopCtx()
	if p.maxDuration > 0 {
		t := time.AfterFunc(p.maxDuration, abort)
		defer t.Stop()
	}
	if p.idleTimeout > 0 {
		w := watchIdle(p.idleTimeout, abort, down, up.Conn)
		defer w.stop()
	}

	// up.Conn, not up: the embedded interface hides *net.TCPConn's ReadFrom,
	// which is where splice happens.
	done := make(chan error, 1)
	go func() { done <- pipe(up.Conn, down) }()
	errDown := pipe(down, up.Conn)
	if errDown != nil {
		abort()
	}
	if errUp := <-done; errUp != nil || errDown != nil {
		abort()
		if err := errors.Join(errUp, errDown); !expectedEnd(err) && ctx.Err() == nil {
			p.log.Debug("connection ended with an error", "remote", remote, "cluster", clusterName, "upstream", up.Addr, "err", err)
		}
	}
}

// pipe copies src to dst until src ends, then half-closes dst. It returns nil
// when src ended with EOF: the other direction may go on.
func pipe(dst, src net.Conn) error {
	if err := copyStream(dst, src); err != nil {
		return err
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
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
func (p *Proxy) connect(ctx context.Context, name string) (*upstream.Conn, error) {
	c := p.manager.Get(name)
	if c == nil {
		return nil, fmt.Errorf("tcp_proxy: cluster %q not found", name)
	}
	var errs []error
	backoff := p.backoffBase
	for attempt := 1; ; attempt++ {
		conn, err := c.Dial(ctx)
		if err == nil {
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
