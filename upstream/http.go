package upstream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	leastrequestv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/least_request/v3"
	randomv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/random/v3"
	roundrobinv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/round_robin/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	peakewmav1 "github.com/siftmesh/sift/api/sift/extensions/load_balancing_policies/peak_ewma/v1"
	httpupgradev1 "github.com/siftmesh/sift/api/sift/extensions/upstreams/http_upgrade/v1"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/upstream/balancer"
)

// This file holds what a cluster means to HTTP: the upstream protocol and
// connection-pool options, load_balancing_policy (which Dial honours too),
// and outlier detection. The cluster validates them (in Build) and exposes them as plain
// values; the HTTP connection manager (filters/httplb) keeps the
// request-level state — per-endpoint connection pools and balancer state —
// in the cluster's extension slot (Extension).

// Envoy's defaults.
const (
	defaultHTTPIdleTimeout = time.Hour
	defaultOutlierInterval = 10 * time.Second
	httpOptionsName        = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// HTTPProtocol is the protocol a cluster speaks to its endpoints.
type HTTPProtocol uint8

const (
	// HTTP1 is HTTP/1.1 (Envoy's default).
	HTTP1 HTTPProtocol = iota
	// HTTP2 is HTTP/2; without TLS, cleartext with prior knowledge (h2c).
	HTTP2
	// HTTPDownstream uses the downstream request's protocol
	// (use_downstream_protocol_config, protocol_selection USE_DOWNSTREAM_PROTOCOL).
	HTTPDownstream
)

// HTTPOptions are a cluster's validated HTTP upstream options.
type HTTPOptions struct {
	Protocol HTTPProtocol
	// IdleTimeout closes pooled connections idle this long
	// (common_http_protocol_options.idle_timeout; Envoy's default 1 h; 0:
	// never).
	IdleTimeout time.Duration
	// MaxResponseHeaderBytes is max_response_headers_kb in bytes (0: Go's
	// default, 1 MiB).
	MaxResponseHeaderBytes int64
	// HTTP/2 (http2_protocol_options): flow-control windows (0: defaults) and
	// connection keep-alive pings (0: none).
	H2StreamWindow, H2ConnWindow  uint32
	H2PingInterval, H2PingTimeout time.Duration
	// MaxConnections caps the connections to each endpoint
	// (circuit_breakers.thresholds[DEFAULT].max_connections; Envoy's limit is
	// cluster-wide, Sift applies it to each endpoint's pool); 0: no limit.
	MaxConnections int
	// MaxRequests caps the requests in flight to the cluster
	// (circuit_breakers.thresholds[DEFAULT].max_requests); 0: no limit.
	MaxRequests int
	// UpgradeHTTP1 sends requests that arrived as HTTP/1 over HTTP/2 with
	// the l5d-orig-proto header, for the peer proxy to restore (Sift's
	// sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade; mesh
	// clusters between proxies, docs/mesh-transport.md).
	UpgradeHTTP1 bool
}

// httpConfig is the HTTP part of a config.
type httpConfig struct {
	opts    HTTPOptions
	outlier *balancer.Outlier
}

// HTTPOptions returns the cluster's HTTP upstream options.
func (c *Cluster) HTTPOptions() HTTPOptions { return c.cfg.http.opts }

// Balancing returns the cluster's load-balancing policy: lb_policy, or the
// first entry of load_balancing_policy that Sift supports. Dial balances
// connections with it; filters/httplb balances requests with it.
func (c *Cluster) Balancing() balancer.Config { return c.cfg.lb }

// OutlierDetection returns the cluster's outlier detection (consecutive 5xx
// and gateway failures; success-rate and failure-percentage ejection are not
// implemented), or nil. filters/httplb applies it to requests.
func (c *Cluster) OutlierDetection() *balancer.Outlier { return c.cfg.http.outlier }

var httpPolicy = pbcheck.Policy{
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pbcheck.Fields("common_http_protocol_options, " +
		"explicit_http_config, use_downstream_protocol_config"),
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig": pbcheck.Fields("http_protocol_options, http2_protocol_options"),
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig": pbcheck.Fields("http_protocol_options, " +
		"http2_protocol_options"),
	"envoy.config.core.v3.HttpProtocolOptions": pbcheck.Fields("idle_timeout, max_response_headers_kb"),
	"envoy.config.core.v3.Http1ProtocolOptions": pbcheck.Fields("").
		Ignore("enable_trailers", "Sift's HTTP/1 codec (Go's net/http) has no trailer switch"),
	"envoy.config.core.v3.Http2ProtocolOptions": pbcheck.Fields("max_concurrent_streams, initial_stream_window_size, " +
		"initial_connection_window_size, connection_keepalive"),
	"envoy.config.core.v3.KeepaliveSettings": pbcheck.Fields("interval, timeout"),
	"envoy.config.cluster.v3.OutlierDetection": pbcheck.Fields("consecutive_5xx, interval, base_ejection_time, " +
		"max_ejection_percent, enforcing_consecutive_5xx, enforcing_success_rate, consecutive_gateway_failure, " +
		"enforcing_consecutive_gateway_failure, enforcing_failure_percentage, max_ejection_time, split_external_local_origin_errors"),
	"envoy.config.cluster.v3.LoadBalancingPolicy":        pbcheck.Fields("policies"),
	"envoy.config.cluster.v3.LoadBalancingPolicy.Policy": pbcheck.Fields("typed_extension_config"),
	"envoy.config.core.v3.TypedExtensionConfig":          pbcheck.Fields("name, typed_config"),
	"envoy.config.cluster.v3.CircuitBreakers":            pbcheck.Fields("thresholds"),
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds": pbcheck.Fields("priority, max_connections, max_requests").
		Ignore("max_pending_requests, max_retries", "they bound queues Sift does not keep: requests wait for a connection in Go's pool").
		Ignore("track_remaining", "statistics only"),
	"envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":     nil,
	"envoy.extensions.load_balancing_policies.random.v3.Random":              nil,
	"envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest": pbcheck.Fields("choice_count, active_request_bias"),
	"envoy.config.core.v3.RuntimeDouble": pbcheck.Fields("default_value").
		Ignore("runtime_key", whyNoRuntime),
}

// parseHTTP validates the Cluster fields about HTTP and request balancing,
// and sets the connection-level policy when load_balancing_policy replaces
// lb_policy.
func (c *config) parseHTTP(pb *clusterv3.Cluster) error {
	h := &c.http
	h.opts.IdleTimeout = defaultHTTPIdleTimeout
	var common *corev3.HttpProtocolOptions
	var h2 *corev3.Http2ProtocolOptions
	for name := range pb.GetTypedExtensionProtocolOptions() {
		if name != httpOptionsName && name != opaqueTransportName && name != httpUpgradeName {
			return fmt.Errorf("typed_extension_protocol_options[%s]: not supported by Sift (only %s, %s and %s)",
				name, httpOptionsName, opaqueTransportName, httpUpgradeName)
		}
	}
	if a, ok := pb.GetTypedExtensionProtocolOptions()[httpOptionsName]; ok {
		if pb.GetHttp2ProtocolOptions() != nil || pb.GetHttpProtocolOptions() != nil || pb.GetCommonHttpProtocolOptions() != nil ||
			pb.GetProtocolSelection() != clusterv3.Cluster_USE_CONFIGURED_PROTOCOL {
			return errors.New("typed_extension_protocol_options: set together with the deprecated http2_protocol_options, " +
				"http_protocol_options, common_http_protocol_options or protocol_selection")
		}
		opts := &httpv3.HttpProtocolOptions{}
		if err := anypb.UnmarshalTo(a, opts, proto.UnmarshalOptions{}); err != nil {
			return fmt.Errorf("typed_extension_protocol_options[%s]: %w", httpOptionsName, err)
		}
		if err := httpPolicy.Check(opts); err != nil {
			return fmt.Errorf("typed_extension_protocol_options[%s].%w", httpOptionsName, err)
		}
		common = opts.GetCommonHttpProtocolOptions()
		switch pc := opts.GetUpstreamProtocolOptions().(type) {
		case *httpv3.HttpProtocolOptions_ExplicitHttpConfig_:
			if h2 = pc.ExplicitHttpConfig.GetHttp2ProtocolOptions(); h2 != nil {
				h.opts.Protocol = HTTP2
			}
		case *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig:
			h.opts.Protocol = HTTPDownstream
			h2 = pc.UseDownstreamProtocolConfig.GetHttp2ProtocolOptions()
		case nil:
			return fmt.Errorf("typed_extension_protocol_options[%s]: explicit_http_config or use_downstream_protocol_config must be set", httpOptionsName)
		}
	} else {
		for _, m := range []proto.Message{pb.GetCommonHttpProtocolOptions(), pb.GetHttpProtocolOptions(), pb.GetHttp2ProtocolOptions()} {
			if err := httpPolicy.Check(m); err != nil {
				return err
			}
		}
		common, h2 = pb.GetCommonHttpProtocolOptions(), pb.GetHttp2ProtocolOptions()
		if h2 != nil {
			h.opts.Protocol = HTTP2
		}
		switch pb.GetProtocolSelection() {
		case clusterv3.Cluster_USE_CONFIGURED_PROTOCOL:
		case clusterv3.Cluster_USE_DOWNSTREAM_PROTOCOL:
			h.opts.Protocol = HTTPDownstream
		}
	}
	var err error
	if common.GetIdleTimeout() != nil {
		if h.opts.IdleTimeout, err = duration(common.GetIdleTimeout(), "common_http_protocol_options.idle_timeout", 0, 0); err != nil {
			return err
		}
	}
	if kb := common.GetMaxResponseHeadersKb(); kb != nil {
		if kb.GetValue() < 1 || kb.GetValue() > 8192 {
			return fmt.Errorf("common_http_protocol_options.max_response_headers_kb: %d: must be in 1-8192", kb.GetValue())
		}
		h.opts.MaxResponseHeaderBytes = int64(kb.GetValue()) << 10
	}
	if w := h2.GetInitialStreamWindowSize(); w != nil {
		h.opts.H2StreamWindow = w.GetValue()
	}
	if w := h2.GetInitialConnectionWindowSize(); w != nil {
		h.opts.H2ConnWindow = w.GetValue()
	}
	if ka := h2.GetConnectionKeepalive(); ka != nil {
		if h.opts.H2PingInterval, err = duration(ka.GetInterval(), "http2_protocol_options.connection_keepalive.interval", 0, 0); err != nil {
			return err
		}
		if h.opts.H2PingTimeout, err = duration(ka.GetTimeout(), "http2_protocol_options.connection_keepalive.timeout", 0, 1); err != nil {
			return err
		}
	}
	if err := c.parseHTTPUpgrade(pb); err != nil {
		return err
	}
	if err := c.parseCircuitBreakers(pb.GetCircuitBreakers()); err != nil {
		return err
	}
	if lbp := pb.GetLoadBalancingPolicy(); lbp != nil {
		if err := c.parseLBPolicy(lbp); err != nil {
			return fmt.Errorf("load_balancing_policy.%w", err)
		}
	}
	if od := pb.GetOutlierDetection(); od != nil {
		if h.outlier, err = parseOutlier(od); err != nil {
			return fmt.Errorf("outlier_detection.%w", err)
		}
	}
	return nil
}

// httpUpgradeName is the typed_extension_protocol_options key of Sift's
// HTTP/1-over-HTTP/2 upgrade between proxies.
var httpUpgradeName = string(proto.MessageName(&httpupgradev1.HttpUpgrade{}))

// parseHTTPUpgrade reads the cluster's HttpUpgrade entry: it needs a
// cluster that may speak HTTP/2 (explicit HTTP/2 or the downstream's
// protocol), since it sends HTTP/1 requests as HTTP/2.
func (c *config) parseHTTPUpgrade(pb *clusterv3.Cluster) error {
	a, ok := pb.GetTypedExtensionProtocolOptions()[httpUpgradeName]
	if !ok {
		return nil
	}
	field := "typed_extension_protocol_options[" + httpUpgradeName + "]"
	u := &httpupgradev1.HttpUpgrade{}
	if err := anypb.UnmarshalTo(a, u, proto.UnmarshalOptions{}); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	if err := httpUpgradePolicy.CheckAt(u, field); err != nil {
		return err
	}
	if c.http.opts.Protocol == HTTP1 {
		return fmt.Errorf("%s: the cluster speaks HTTP/1.1 only; the upgrade needs %s with explicit_http_config.http2_protocol_options "+
			"or use_downstream_protocol_config", field, httpOptionsName)
	}
	c.http.opts.UpgradeHTTP1 = true
	return nil
}

var httpUpgradePolicy = pbcheck.Policy{"sift.extensions.upstreams.http_upgrade.v1.HttpUpgrade": nil}

func (c *config) parseCircuitBreakers(cb *clusterv3.CircuitBreakers) error {
	if cb == nil {
		return nil
	}
	if err := httpPolicy.Check(cb); err != nil {
		return fmt.Errorf("circuit_breakers.%w", err)
	}
	for i, t := range cb.GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			return fmt.Errorf("circuit_breakers.thresholds[%d].priority: only DEFAULT is supported by Sift", i)
		}
		if v := t.GetMaxConnections(); v != nil {
			c.http.opts.MaxConnections = int(min(v.GetValue(), math.MaxInt32))
		}
		if v := t.GetMaxRequests(); v != nil {
			c.http.opts.MaxRequests = int(min(v.GetValue(), math.MaxInt32))
		}
	}
	return nil
}

// parseLBPolicy takes the first policy Sift supports, as Envoy does.
func (c *config) parseLBPolicy(lbp *clusterv3.LoadBalancingPolicy) error {
	if err := httpPolicy.Check(lbp); err != nil {
		return err
	}
	var names []string
	for i, p := range lbp.GetPolicies() {
		tc := p.GetTypedExtensionConfig()
		msg, err := anypb.UnmarshalNew(tc.GetTypedConfig(), proto.UnmarshalOptions{})
		if err != nil {
			names = append(names, tc.GetTypedConfig().GetTypeUrl())
			continue
		}
		path := fmt.Sprintf("policies[%d].typed_extension_config.typed_config", i)
		if err := httpPolicy.Check(msg); err != nil {
			return fmt.Errorf("%s.%w", path, err)
		}
		lb := &c.lb
		switch m := msg.(type) {
		case *roundrobinv3.RoundRobin:
			lb.Policy = balancer.RoundRobin
		case *randomv3.Random:
			lb.Policy = balancer.Random
		case *leastrequestv3.LeastRequest:
			lb.Policy, lb.ChoiceCount = balancer.LeastRequest, balancer.DefaultChoiceCount
			if cc := m.GetChoiceCount(); cc != nil {
				if cc.GetValue() < 2 {
					return fmt.Errorf("%s.choice_count: %d: must be at least 2", path, cc.GetValue())
				}
				lb.ChoiceCount = int(min(cc.GetValue(), math.MaxInt32))
			}
			if b := m.GetActiveRequestBias(); b != nil {
				if b.GetDefaultValue() < 0 {
					return fmt.Errorf("%s.active_request_bias.default_value: must not be negative", path)
				}
				lb.ActiveRequestBias = b.GetDefaultValue()
			}
		case *peakewmav1.PeakEwma:
			// Requests observe the time to response headers, connections
			// (Dial) their connect time.
			lb.Policy = balancer.PeakEWMA
			if lb.DefaultRTT, err = duration(m.GetDefaultRtt(), path+".default_rtt", balancer.DefaultRTT, 1); err != nil {
				return err
			}
			if lb.Decay, err = duration(m.GetDecay(), path+".decay", balancer.DefaultDecay, 1); err != nil {
				return err
			}
		default:
			names = append(names, tc.GetTypedConfig().GetTypeUrl())
			continue
		}
		return nil
	}
	return fmt.Errorf("policies: none is supported by Sift (got %v; supported: envoy.extensions.load_balancing_policies "+
		"round_robin, least_request, random, and sift.extensions.load_balancing_policies.peak_ewma.v1.PeakEwma)", names)
}

func parseOutlier(od *clusterv3.OutlierDetection) (*balancer.Outlier, error) {
	if err := httpPolicy.Check(od); err != nil {
		return nil, err
	}
	o := balancer.DefaultOutlier()
	u32 := func(v interface{ GetValue() uint32 }, field string, dst *int32, percent bool) error {
		if v == nil {
			return nil
		}
		if percent && v.GetValue() > 100 {
			return fmt.Errorf("%s: %d: must be at most 100", field, v.GetValue())
		}
		*dst = int32(min(v.GetValue(), math.MaxInt32))
		return nil
	}
	var maxPct int32 = 10
	for _, f := range []struct {
		v       interface{ GetValue() uint32 }
		set     bool
		field   string
		dst     *int32
		percent bool
	}{
		{od.GetConsecutive_5Xx(), od.GetConsecutive_5Xx() != nil, "consecutive_5xx", &o.Consecutive5xx, false},
		{od.GetEnforcingConsecutive_5Xx(), od.GetEnforcingConsecutive_5Xx() != nil, "enforcing_consecutive_5xx", &o.EnforcingConsecutive5xx, true},
		{od.GetConsecutiveGatewayFailure(), od.GetConsecutiveGatewayFailure() != nil, "consecutive_gateway_failure", &o.ConsecutiveGateway, false},
		{od.GetEnforcingConsecutiveGatewayFailure(), od.GetEnforcingConsecutiveGatewayFailure() != nil, "enforcing_consecutive_gateway_failure", &o.EnforcingGateway, true},
		{od.GetMaxEjectionPercent(), od.GetMaxEjectionPercent() != nil, "max_ejection_percent", &maxPct, true},
	} {
		if !f.set {
			continue
		}
		if err := u32(f.v, f.field, f.dst, f.percent); err != nil {
			return nil, err
		}
	}
	o.MaxEjectionPercent = int(maxPct)
	if v := od.GetEnforcingSuccessRate(); v != nil && v.GetValue() != 0 {
		return nil, errors.New("enforcing_success_rate: success-rate ejection is not supported by Sift (set it to 0)")
	}
	if v := od.GetEnforcingFailurePercentage(); v != nil && v.GetValue() != 0 {
		return nil, errors.New("enforcing_failure_percentage: failure-percentage ejection is not supported by Sift (set it to 0)")
	}
	if od.GetSplitExternalLocalOriginErrors() {
		return nil, errors.New("split_external_local_origin_errors: not supported by Sift")
	}
	var err error
	if o.BaseEjection, err = duration(od.GetBaseEjectionTime(), "base_ejection_time", o.BaseEjection, 1); err != nil {
		return nil, err
	}
	if o.MaxEjection, err = duration(od.GetMaxEjectionTime(), "max_ejection_time", max(o.MaxEjection, o.BaseEjection), 1); err != nil {
		return nil, err
	}
	// interval is validated but unused: Sift ejects on the failure that
	// crosses the threshold and returns an endpoint when its time is up,
	// with no periodic sweep.
	if _, err = duration(od.GetInterval(), "interval", defaultOutlierInterval, 1); err != nil {
		return nil, err
	}
	return &o, nil
}

// DialEndpoint connects to addr ("ip:port", one of the cluster's endpoints
// as Endpoints reports them) within connect_timeout, bypassing the
// connection-level balancer: the request balancer has already chosen. Errors
// are *DialError.
//
// On a TLS cluster the connection is a handshaken *tls.Conn; alpn, when
// the transport socket configures no alpn_protocols, is offered instead
// (Envoy's ALPN override per connection pool: "h2" or "http/1.1").
func (c *Cluster) DialEndpoint(ctx context.Context, addr string, alpn ...string) (net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.connectTimeout)
	defer cancel()
	nc, err := c.dialer.DialContext(dctx, "tcp", addr)
	if err != nil {
		de := &DialError{Cluster: c.cfg.name, Addr: addr, Err: err}
		if ctx.Err() == nil && errors.Is(dctx.Err(), context.DeadlineExceeded) {
			de.connectTimeout = c.cfg.connectTimeout
		}
		return nil, de
	}
	if t := c.tls.of(c.transportOf(addr)); t != nil {
		tc, _, err := c.handshake(dctx, ctx, t, nc, addr, alpn)
		return tc, err
	}
	return nc, nil
}

// EndpointsVersion returns the current endpoint set with a token that
// changes (by identity) whenever the set does, so that a request balancer
// can check per request, with one atomic load, whether to rebuild. The
// token is nil while the cluster is warming.
func (c *Cluster) EndpointsVersion() (any, []Endpoint) {
	s := c.snap.Load()
	if s == nil {
		return nil, nil
	}
	out := make([]Endpoint, len(s.hosts))
	for i, h := range s.hosts {
		out[i] = h.view()
	}
	return s, out
}

// Version returns the token EndpointsVersion would return now, without
// copying the endpoints.
func (c *Cluster) Version() any {
	if s := c.snap.Load(); s != nil {
		return s
	}
	return nil
}

// extensions is a cluster's slot for state other packages keep per cluster
// (filters/httplb's connection pools and balancer state). Values that
// implement io.Closer are closed when the cluster is.
type extensions struct {
	mu     sync.Mutex
	m      map[any]any
	closed bool
}

// Extension returns the value stored under key, creating it with create the
// first time. Keys are compared with ==; use an unexported type, as for
// context keys. After Close, create's value is still returned (and closed at
// once if it is an io.Closer) so a draining user keeps working.
func (c *Cluster) Extension(key any, create func() any) any {
	e := &c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	if v, ok := e.m[key]; ok {
		return v
	}
	v := create()
	if e.closed {
		closeExt(v)
		return v
	}
	if e.m == nil {
		e.m = map[any]any{}
	}
	e.m[key] = v
	return v
}

// LookupExtension returns the value stored under key by Extension, without
// creating one.
func (c *Cluster) LookupExtension(key any) (any, bool) {
	e := &c.ext
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.m[key]
	return v, ok
}

func (e *extensions) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for _, v := range e.m {
		closeExt(v)
	}
}

func closeExt(v any) {
	if c, ok := v.(interface{ Close() error }); ok {
		c.Close()
	}
}
