package httplb

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/internal/coalesce"
	"github.com/siftmesh/sift/upstream"
	"github.com/siftmesh/sift/upstream/balancer"
)

// errNoHealthy: the cluster has no endpoint that may take the request.
var errNoHealthy = errors.New("httplb: no healthy upstream")

// errOverflow: the cluster's max_requests circuit breaker is open.
var errOverflow = errors.New("httplb: upstream overflow (circuit_breakers max_requests)")

// poolKey is the upstream.Cluster extension key of a clusterPool.
type poolKey struct{}

// clusterPool is the request-level state of one cluster, shared by every
// HCM that routes to it: per-endpoint connection pools and balancer state,
// kept by address across endpoint updates, and the picker in service. The
// load its balancer.Endpoints count is requests in flight (the cluster's own
// endpoints, used by Dial for tcp_proxy, count connections).
type clusterPool struct {
	c       *upstream.Cluster
	opts    upstream.HTTPOptions
	lb      balancer.Config
	outlier *balancer.Outlier // nil: no outlier detection
	now     func() time.Time

	inflight atomic.Int64

	mu  sync.Mutex // serialises rebuilds; guards eps
	eps map[string]*endpoint
	cur atomic.Pointer[pickerState]
}

// pickerState is one picker and what it was built from. Immutable.
type pickerState struct {
	version any
	picker  balancer.Picker // nil: nothing to pick
	// unejectAt is the earliest time an ejected endpoint returns (zero:
	// none ejected); the picker is rebuilt then.
	unejectAt time.Time
	ejected   int
	n         int
	byAddr    map[string]*endpoint
}

// endpoint is one endpoint's balancer state and connection pools.
type endpoint struct {
	*balancer.Endpoint
	hostname string // immutable

	mu     sync.Mutex
	h1, h2 *http.Transport
	h1p    *h1Pool // plaintext HTTP/1.1 without upgrade (h1pool.go)
	h2p    *h2Pool // plaintext HTTP/2 without upgrade or pings (h2client.go)
}

func poolFor(c *upstream.Cluster) *clusterPool {
	return c.Extension(poolKey{}, func() any { return newClusterPool(c) }).(*clusterPool)
}

// RequestStates returns the request-level balancing state of c's endpoints
// by address — requests in flight and, for peak-EWMA, the latency estimate
// and cost — or nil when no HTTP connection manager has routed to c. For
// admin pages and metrics: it takes the pool's lock briefly.
func RequestStates(c *upstream.Cluster) map[string]balancer.State {
	v, ok := c.LookupExtension(poolKey{})
	if !ok {
		return nil
	}
	p := v.(*clusterPool)
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	out := make(map[string]balancer.State, len(p.eps))
	for addr, ep := range p.eps {
		out[addr] = p.lb.State(ep.Endpoint, now)
	}
	return out
}

func newClusterPool(c *upstream.Cluster) *clusterPool {
	return &clusterPool{c: c, opts: c.HTTPOptions(), lb: c.Balancing(), outlier: c.OutlierDetection(),
		eps: map[string]*endpoint{}, now: time.Now}
}

// pick returns the endpoint for one request, rebuilding the picker first if
// the endpoint set changed or an ejection ended.
func (p *clusterPool) pick() (*endpoint, error) {
	st := p.cur.Load()
	if st == nil || st.version != p.c.Version() || (!st.unejectAt.IsZero() && !p.now().Before(st.unejectAt)) {
		st = p.rebuild()
	}
	if st.picker == nil {
		return nil, errNoHealthy
	}
	return st.byAddr[st.picker.Pick().Addr], nil
}

// rebuild builds the picker for the cluster's current endpoints. Endpoints
// keep their state (EWMA, in-flight counts, pools) by address; pools of
// endpoints that left are closed when idle.
func (p *clusterPool) rebuild() *pickerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	version, eps := p.c.EndpointsVersion()
	now := p.now()
	if st := p.cur.Load(); st != nil && st.version == version && (st.unejectAt.IsZero() || now.Before(st.unejectAt)) {
		return st
	}
	next := make(map[string]*endpoint, len(eps))
	for _, e := range eps {
		ep := p.eps[e.Addr]
		if ep == nil || ep.Weight != e.Weight || ep.hostname != e.Hostname {
			old := ep
			ep = &endpoint{Endpoint: p.lb.NewEndpoint(e.Addr, e.Weight, now), hostname: e.Hostname}
			if old != nil { // a new weight or name: keep the pools and the estimate
				old.mu.Lock()
				ep.h1, ep.h2, ep.h1p, ep.h2p = old.h1, old.h2, old.h1p, old.h2p
				old.mu.Unlock()
				ep.Endpoint = old.Endpoint.WithWeight(e.Weight)
			}
		}
		next[e.Addr] = ep
	}
	for addr, ep := range p.eps {
		if next[addr] == nil {
			ep.closeIdle()
		}
	}
	p.eps = next
	eligible := balancer.Eligible(eps, upstream.Endpoint.LBHealth)
	st := &pickerState{version: version, n: len(eligible), byAddr: next}
	bes := make([]*balancer.Endpoint, len(eligible))
	for i, e := range eligible {
		bes[i] = next[e.Addr].Endpoint
	}
	var pickable []*balancer.Endpoint
	pickable, st.ejected, st.unejectAt = balancer.Pickable(bes, now)
	st.picker = p.lb.Build(pickable, nil, p.now)
	p.cur.Store(st)
	return st
}

// report feeds one outcome to outlier detection (status 0: local failure)
// and ejects the endpoint when a threshold is crossed and the ejection
// percentage allows.
func (p *clusterPool) report(ep *endpoint, status int) {
	if p.outlier == nil || !p.outlier.Report(ep.Endpoint, status, rand.IntN) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.cur.Load()
	if st == nil || ep.Ejected(p.now()) || !p.outlier.MayEject(st.ejected, st.n) {
		return
	}
	p.outlier.Eject(ep.Endpoint, p.now())
	p.cur.Store(&pickerState{version: nil}) // force a rebuild
}

// observe records a round trip, to response headers at now, on ep (peak
// EWMA).
func (p *clusterPool) observe(ep *endpoint, rtt time.Duration, now time.Time) {
	p.lb.Observe(ep.Endpoint, rtt, now)
}

// transport returns ep's connection pool for HTTP/2 or HTTP/1.
func (p *clusterPool) transport(ep *endpoint, h2 bool) *http.Transport {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if h2 {
		if ep.h2 == nil {
			ep.h2 = p.newTransport(ep.Addr, true)
		}
		return ep.h2
	}
	if ep.h1 == nil {
		ep.h1 = p.newTransport(ep.Addr, false)
	}
	return ep.h1
}

// h1Pool returns ep's pool of plaintext HTTP/1.1 connections (h1pool.go).
func (p *clusterPool) h1Pool(ep *endpoint) *h1Pool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.h1p == nil {
		addr := ep.Addr
		ep.h1p = newH1Pool(func(ctx context.Context) (net.Conn, error) { return p.c.DialEndpoint(ctx, addr) },
			p.opts.MaxConnections, p.opts.IdleTimeout, p.opts.MaxResponseHeaderBytes)
	}
	return ep.h1p
}

// h2Pool returns ep's pool of plaintext HTTP/2 connections (h2client.go).
func (p *clusterPool) h2Pool(ep *endpoint) *h2Pool {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if ep.h2p == nil {
		addr := ep.Addr
		ep.h2p = newH2Pool(func(ctx context.Context) (net.Conn, error) { return p.c.DialEndpoint(ctx, addr) },
			p.opts.MaxConnections, p.opts.IdleTimeout, p.opts.MaxResponseHeaderBytes, p.opts.H2StreamWindow, p.opts.H2ConnWindow)
	}
	return ep.h2p
}

// ownH2 reports whether plaintext HTTP/2 requests to the cluster go through
// h2Pool: not with TLS, nor with keep-alive pings (connection_keepalive),
// which only net/http's Transport sends.
func (p *clusterPool) ownH2() bool {
	return !p.c.TLS() && p.opts.H2PingInterval == 0 && p.opts.H2PingTimeout == 0
}

func (p *clusterPool) newTransport(addr string, h2 bool) *http.Transport {
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := p.c.DialEndpoint(ctx, addr)
			if err != nil || !h2 {
				return c, err
			}
			// net/http's HTTP/2 client flushes a request's HEADERS and
			// each DATA frame on its own: coalesce (performance.md).
			return coalesce.New(c, false), nil
		},
		// A proxy passes encodings through: never ask for gzip itself.
		DisableCompression:     true,
		MaxIdleConns:           0,
		MaxIdleConnsPerHost:    1024,
		MaxConnsPerHost:        p.opts.MaxConnections,
		IdleConnTimeout:        p.opts.IdleTimeout,
		MaxResponseHeaderBytes: p.opts.MaxResponseHeaderBytes,
		Protocols:              new(http.Protocols),
	}
	if h2 {
		t.Protocols.SetUnencryptedHTTP2(true)
		t.HTTP2 = &http.HTTP2Config{
			MaxReceiveBufferPerStream:     int(p.opts.H2StreamWindow),
			MaxReceiveBufferPerConnection: int(p.opts.H2ConnWindow),
			SendPingTimeout:               p.opts.H2PingInterval,
			PingTimeout:                   p.opts.H2PingTimeout,
		}
	} else {
		t.Protocols.SetHTTP1(true)
	}
	if p.c.TLS() {
		tlsTransport(t, p.c, addr, h2)
	}
	return t
}

// closeIdle closes ep's idle connections, and its HTTP/1.1 pool for good:
// the endpoint left, or the cluster closed.
func (ep *endpoint) closeIdle() {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	for _, t := range []*http.Transport{ep.h1, ep.h2} {
		if t != nil {
			t.CloseIdleConnections()
		}
	}
	if ep.h1p != nil {
		ep.h1p.closeIdle(true)
	}
	if ep.h2p != nil {
		ep.h2p.closeIdle(true)
	}
}

// Close closes idle pooled connections; the cluster calls it when it is
// closed. Requests in flight finish; a later request opens new connections.
func (p *clusterPool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ep := range p.eps {
		ep.closeIdle()
	}
	return nil
}
