package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/upstream/balancer"
)

// ErrNoHealthyEndpoint is returned (wrapped) by Dial when the cluster has no
// endpoint that may be picked: none configured, none resolved, or none
// healthy.
var ErrNoHealthyEndpoint = errors.New("no healthy endpoint")

// Options tune building a cluster; zero values mean production defaults.
type Options struct {
	// Resolver is used by STRICT_DNS clusters; nil means net.DefaultResolver.
	Resolver *net.Resolver
	// Dialer dials endpoints; nil means a net.Dialer without TCP keep-alive
	// (Envoy sends none unless configured). The cluster dials IP
	// addresses only, so the Dialer's own Resolver is never used. When the
	// cluster sets upstream_connection_options.tcp_keepalive, a copy of the
	// Dialer with that KeepAliveConfig is used.
	Dialer *net.Dialer
	// Secrets resolves the certificates of TLS transport sockets; nil: a
	// cluster with a TLS transport_socket is refused.
	Secrets *mtls.Store
	// Logger receives, at debug level, the fields Build accepts and ignores
	// (with the reason), and DNS resolution failures and recoveries (a change of
	// state is logged once, not every refresh); nil means slog.Default().
	Logger *slog.Logger

	// rand returns a random int in [0, n); nil means math/rand/v2.IntN.
	// Tests set it for reproducible load balancing.
	rand func(n int) int
}

// Cluster is a validated, running cluster. Safe for concurrent use.
type Cluster struct {
	cfg    *config
	dialer *net.Dialer
	rnd    func(int) int

	// snap is nil until the first endpoint set is known (STRICT_DNS: the
	// first resolution round), then never nil again.
	snap  atomic.Pointer[snapshot]
	ready chan struct{} // closed once snap is set, or on Close

	mu      sync.Mutex    // serialises setEndpoints
	changed chan struct{} // closed and replaced on each endpoint change; under mu

	dns       *dnsResolver // STRICT_DNS only
	closeOnce sync.Once
	readyOnce sync.Once
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	ext       extensions // state other packages keep per cluster (http.go)
	tls       transports // transport sockets (tls.go)
}

// snapshot is one endpoint set and the picker built for it. Immutable.
type snapshot struct {
	hosts  []*host
	picker balancer.Picker // nil: no host may be picked
}

// host is one endpoint of a cluster. Everything is immutable but the
// balancing state in ep (its load: the connections open to it from Dial,
// including ones still connecting; its connect-time estimate). A host keeps
// its identity, and so that state, across endpoint updates for as long as its
// address, weight, health and hostname stay in the set.
type host struct {
	ep       *balancer.Endpoint // Addr, Weight
	health   corev3.HealthStatus
	hostname string
	ts       uint8 // transport socket (tls.go)
}

// lbHealth is what balancing makes of a health_status.
func lbHealth(s corev3.HealthStatus) balancer.Health {
	switch s {
	case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
		return balancer.Healthy
	case corev3.HealthStatus_DEGRADED:
		return balancer.Degraded
	}
	return balancer.Unavailable
}

// newPicker builds the picker over the hosts that may be picked
// (balancer.Eligible), or returns nil when there is none.
func (c *Cluster) newPicker(hosts []*host) balancer.Picker {
	eligible := balancer.Eligible(hosts, func(h *host) balancer.Health { return lbHealth(h.health) })
	eps := make([]*balancer.Endpoint, len(eligible))
	for i, h := range eligible {
		eps[i] = h.ep
	}
	return c.cfg.lb.Build(eps, c.rnd, nil)
}

// Build validates pb and starts the cluster (STRICT_DNS clusters start
// resolving in the background; see Ready). Errors read
// `upstream: cluster "name": field.path: reason`. A cluster that Build
// returns must be closed when it is no longer used.
func Build(pb *clusterv3.Cluster, opts Options) (*Cluster, error) {
	if pb == nil {
		return nil, errors.New("upstream: nil cluster")
	}
	cfg, err := parse(pb)
	if err != nil {
		return nil, fmt.Errorf("upstream: cluster %q: %w", pb.GetName(), err)
	}
	policy.LogIgnored(opts.Logger, pb, "cluster", cfg.name)
	c := &Cluster{
		cfg:     cfg,
		dialer:  opts.Dialer,
		rnd:     opts.rand,
		ready:   make(chan struct{}),
		changed: make(chan struct{}),
		cancel:  func() {},
	}
	if c.dialer == nil {
		// No TCP keep-alive unless the cluster asks for it
		// (upstream_connection_options.tcp_keepalive), as in Envoy; Go would
		// otherwise enable it on every connection (more syscalls each).
		c.dialer = &net.Dialer{KeepAlive: -1}
	}
	if cfg.keepalive != nil {
		d := *c.dialer
		d.KeepAliveConfig = *cfg.keepalive
		c.dialer = &d
	}
	if c.rnd == nil {
		c.rnd = rand.IntN
	}
	if err := c.buildTransports(pb, opts.Secrets); err != nil {
		return nil, fmt.Errorf("upstream: cluster %q: %w", pb.GetName(), err)
	}
	c.tls.assign(cfg.endpoints, pb.GetLoadAssignment())
	switch cfg.discovery {
	case discoveryStatic:
		eps := make([]resolvedEndpoint, len(cfg.endpoints))
		for i, ep := range cfg.endpoints {
			eps[i] = ep.resolved(ep.host, ep.hostname)
		}
		c.setEndpoints(eps)
	case discoveryStrictDNS:
		r := opts.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		ctx, cancel := context.WithCancel(context.Background())
		c.cancel = cancel
		log := opts.Logger
		if log == nil {
			log = slog.Default()
		}
		c.dns = newDNSResolver(c, r, log)
		c.wg.Add(1)
		go c.dns.run(ctx)
	}
	return c, nil
}

// Name returns the cluster's name.
func (c *Cluster) Name() string { return c.cfg.name }

// ConnectTimeout is the cluster's connect_timeout (Envoy's default 5 s).
func (c *Cluster) ConnectTimeout() time.Duration { return c.cfg.connectTimeout }

// Ready is closed once the cluster knows its first endpoint set: at once for
// STATIC clusters, after the first resolution round (successful or not) for
// STRICT_DNS ones — Envoy's cluster warming. It is also closed by Close.
func (c *Cluster) Ready() <-chan struct{} { return c.ready }

// Dial picks an endpoint with the cluster's load-balancing policy (package
// balancer; the load it counts is open connections) and connects to it within
// connect_timeout (or ctx's deadline, if sooner). If the cluster is still
// warming (see Ready), Dial first waits for it within the same deadline. The
// returned Conn must be closed; closing it releases the endpoint's
// active-connection count (LEAST_REQUEST, PeakEWMA). Under PeakEWMA the
// connect time of each successful Dial is the endpoint's latency sample.
//
// Errors: ErrNoHealthyEndpoint (wrapped) when there is nothing to pick, a
// *DialError when the connection fails. Dial does not retry; a caller that
// retries (tcp_proxy's max_connect_attempts) calls Dial again and the load
// balancer may pick another endpoint. Dial keeps working after Close, on the
// last endpoint set, so that connections of a draining generation can still
// retry.
//
// On a TLS cluster the connection is handshaken before Dial returns (within
// the same connect_timeout); alpn, when the transport socket configures no
// alpn_protocols, is offered (gRPC to an xDS server offers "h2"). Until the
// transport socket's SDS secrets arrive, Dial waits for them within the
// same deadline (Envoy's cluster warming).
func (c *Cluster) Dial(ctx context.Context, alpn ...string) (*Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.connectTimeout)
	defer cancel()
	s := c.snap.Load()
	if s == nil {
		select {
		case <-c.ready:
			s = c.snap.Load()
		case <-dctx.Done():
			return nil, fmt.Errorf("upstream: cluster %q: waiting for the first DNS resolution: %w", c.cfg.name, dctx.Err())
		}
	}
	if s == nil || s.picker == nil {
		return nil, fmt.Errorf("upstream: cluster %q: %w", c.cfg.name, ErrNoHealthyEndpoint)
	}
	ep := s.picker.Pick()
	ep.Start()
	start := time.Now()
	nc, err := c.dialer.DialContext(dctx, "tcp", ep.Addr)
	if err != nil {
		ep.Done()
		de := &DialError{Cluster: c.cfg.name, Addr: ep.Addr, Err: err}
		// The caller's context is still live but ours expired: connect_timeout.
		if ctx.Err() == nil && errors.Is(dctx.Err(), context.DeadlineExceeded) {
			de.connectTimeout = c.cfg.connectTimeout
		}
		return nil, de
	}
	var id mtls.Identity
	if t := c.tls.of(c.transportOf(ep.Addr)); t != nil {
		tc, tid, err := c.handshake(dctx, ctx, t, nc, ep.Addr, alpn)
		if err != nil {
			ep.Done()
			return nil, err
		}
		nc, id = tc, tid
	}
	// Peak EWMA: the connection's latency is its connect time, handshake
	// included (a failed connect is not observed).
	now := time.Now()
	c.cfg.lb.Observe(ep, now.Sub(start), now)
	return &Conn{Conn: nc, Addr: ep.Addr, ep: ep, TLS: id}, nil
}

// Close stops the cluster's background work (DNS refresh) and waits for it to
// end. Idempotent. Connections already made are not touched, and Dial keeps
// working on the last endpoint set.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		c.cancel()
		c.wg.Wait()
		c.ext.close()
		c.markReady()
	})
}

func (c *Cluster) markReady() { c.readyOnce.Do(func() { close(c.ready) }) }

// Endpoint describes one endpoint of a cluster at one moment (see
// Cluster.Endpoints), for tests and the admin page.
type Endpoint struct {
	// Addr is "ip:port".
	Addr string
	// Weight is the endpoint's load_balancing_weight (1 when unset).
	Weight uint32
	// Health is Envoy's HealthStatus name from the configuration: UNKNOWN,
	// HEALTHY, DEGRADED, UNHEALTHY, DRAINING or TIMEOUT.
	Health string
	// Hostname is Endpoint.hostname, or for STRICT_DNS the name resolved.
	Hostname string
	// Active is the number of connections open to it from Dial.
	Active int64
	// RTT and Cost are the connection-level peak-EWMA estimate and cost
	// (balancer.State), zero unless the cluster balances with peak-EWMA.
	RTT  time.Duration
	Cost float64
}

// LBHealth is what balancing makes of e's Health.
func (e Endpoint) LBHealth() balancer.Health {
	return lbHealth(corev3.HealthStatus(corev3.HealthStatus_value[e.Health]))
}

// Endpoints returns the current endpoint set, in configuration order (for
// STRICT_DNS, each name's addresses sorted), or nil while the cluster is
// warming.
func (c *Cluster) Endpoints() []Endpoint {
	s := c.snap.Load()
	if s == nil {
		return nil
	}
	out := make([]Endpoint, len(s.hosts))
	for i, h := range s.hosts {
		out[i] = h.view()
	}
	return out
}

// EndpointStates returns the current endpoints with their balancing state
// (RTT and Cost filled for peak-EWMA), for admin pages and metrics; nil while
// the cluster is warming.
func (c *Cluster) EndpointStates() []Endpoint {
	s := c.snap.Load()
	if s == nil {
		return nil
	}
	now := time.Now()
	out := make([]Endpoint, len(s.hosts))
	for i, h := range s.hosts {
		out[i] = h.view()
		st := c.cfg.lb.State(h.ep, now)
		out[i].RTT, out[i].Cost = st.RTT, st.Cost
	}
	return out
}

func (h *host) view() Endpoint {
	return Endpoint{Addr: h.ep.Addr, Weight: h.ep.Weight, Health: h.health.String(), Hostname: h.hostname, Active: h.ep.Load()}
}

// resolvedEndpoint is an endpoint with an IP address: the input to
// setEndpoints.
type resolvedEndpoint struct {
	addr     string // "ip:port"
	weight   uint32
	health   corev3.HealthStatus
	hostname string
	ts       uint8 // transport socket (tls.go)
}

func (ep endpointSpec) resolved(ip, hostname string) resolvedEndpoint {
	return resolvedEndpoint{
		ts:       ep.ts,
		addr:     net.JoinHostPort(ip, fmt.Sprint(ep.port)),
		weight:   ep.weight,
		health:   ep.health,
		hostname: hostname,
	}
}

// setEndpoints makes eps the cluster's endpoint set: it builds a new picker
// and swaps the snapshot in. A host whose address, weight, health and
// hostname are unchanged keeps its identity and active count. Setting the
// same set again changes nothing (a round-robin rotation is not restarted by
// a DNS refresh that found the same addresses). This is the seam for EDS.
func (c *Cluster) setEndpoints(eps []resolvedEndpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.snap.Load()
	if old != nil && sameEndpoints(old.hosts, eps) {
		return
	}
	reuse := map[resolvedEndpoint][]*host{}
	if old != nil {
		for _, h := range old.hosts {
			k := h.key()
			reuse[k] = append(reuse[k], h)
		}
	}
	hosts := make([]*host, len(eps))
	now := time.Now()
	for i, ep := range eps {
		if hs := reuse[ep]; len(hs) > 0 {
			hosts[i], reuse[ep] = hs[0], hs[1:]
			continue
		}
		hosts[i] = &host{ep: c.cfg.lb.NewEndpoint(ep.addr, ep.weight, now), health: ep.health, hostname: ep.hostname, ts: ep.ts}
	}
	c.snap.Store(&snapshot{hosts: hosts, picker: c.newPicker(hosts)})
	close(c.changed)
	c.changed = make(chan struct{})
	c.markReady()
}

// changedCh returns a channel closed at the next endpoint change. Tests read
// it before checking Endpoints, then wait on it.
func (c *Cluster) changedCh() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

func (h *host) key() resolvedEndpoint {
	return resolvedEndpoint{addr: h.ep.Addr, weight: h.ep.Weight, health: h.health, hostname: h.hostname, ts: h.ts}
}

func sameEndpoints(hosts []*host, eps []resolvedEndpoint) bool {
	return slices.EqualFunc(hosts, eps, func(h *host, ep resolvedEndpoint) bool { return h.key() == ep })
}

// DialError is a failed connection to an endpoint. It unwraps to the dialer's
// error (a *net.OpError), so errors.Is(err, syscall.ECONNREFUSED) and
// net.Error's Timeout work.
type DialError struct {
	Cluster string
	Addr    string // the endpoint, "ip:port"
	Err     error

	connectTimeout time.Duration // set when connect_timeout expired
}

func (e *DialError) Error() string {
	if e.connectTimeout > 0 {
		return fmt.Sprintf("upstream: cluster %q: connect %s: connect_timeout %v exceeded", e.Cluster, e.Addr, e.connectTimeout)
	}
	return fmt.Sprintf("upstream: cluster %q: connect %s: %v", e.Cluster, e.Addr, cause(e.Err))
}

func (e *DialError) Unwrap() error { return e.Err }

// Timeout reports whether the connection attempt timed out.
func (e *DialError) Timeout() bool {
	var ne net.Error
	return e.connectTimeout > 0 || (errors.As(e.Err, &ne) && ne.Timeout())
}

// cause strips *net.OpError and *os.SyscallError, whose texts repeat what
// DialError already says ("dial tcp 127.0.0.1:9: connect: ").
func cause(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		err = sc.Err
	}
	return err
}

// Conn is an upstream connection with the endpoint it went to.
//
// The embedded net.Conn is the dialer's connection itself (a *net.TCPConn),
// so that a proxy can splice it. Close the *Conn, not the embedded
// connection: only Conn.Close releases the endpoint's active count.
type Conn struct {
	net.Conn
	// Addr is the endpoint's address ("ip:port").
	Addr string
	// TLS is what the transport socket's handshake established (the
	// server's identity: server_id), zero for plaintext.
	TLS mtls.Identity

	ep       *balancer.Endpoint
	released atomic.Bool
}

// Close closes the connection and, the first time only, releases the
// endpoint's active-connection count.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	if c.ep != nil && c.released.CompareAndSwap(false, true) {
		c.ep.Done()
	}
	return err
}

// CloseWrite shuts down the writing side (a half-close), when the underlying
// connection supports it.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return &net.OpError{Op: "close", Net: "tcp", Addr: c.RemoteAddr(), Err: errors.ErrUnsupported}
}

// CloseRead shuts down the reading side, when the underlying connection
// supports it.
func (c *Conn) CloseRead() error {
	if cr, ok := c.Conn.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return &net.OpError{Op: "close", Net: "tcp", Addr: c.RemoteAddr(), Err: errors.ErrUnsupported}
}

// ReadFrom lets io.Copy(conn, src) use the embedded connection's ReadFrom,
// which splices from a *net.TCPConn on Linux.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}
