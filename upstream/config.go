package upstream

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"

	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/upstream/balancer"
)

// Envoy's defaults (cluster.proto).
const (
	defaultConnectTimeout = 5 * time.Second
	defaultDNSRefreshRate = 5 * time.Second
	minDNSRefreshRate     = time.Millisecond
)

type discovery uint8

const (
	discoveryStatic discovery = iota
	discoveryStrictDNS
	// discoveryEDS: endpoints arrive over xDS (Cluster.UpdateLoadAssignment).
	discoveryEDS
)

// config is a validated Cluster: plain values, no protos.
type config struct {
	name           string
	discovery      discovery
	connectTimeout time.Duration
	// lb is the load-balancing policy, for connections (Dial) and requests
	// (filters/httplb) alike: lb_policy, or load_balancing_policy (http.go).
	lb balancer.Config
	// endpoints in configuration order. For STATIC clusters host is an IP
	// address; for STRICT_DNS clusters a name to resolve (or an IP literal).
	endpoints []endpointSpec
	dns       dnsConfig
	keepalive *net.KeepAliveConfig // nil: the dialer's own setting
	// edsServiceName is the ClusterLoadAssignment name an EDS cluster
	// subscribes to: eds_cluster_config.service_name, else the cluster's name.
	edsServiceName string
	edsConfig      *corev3.ConfigSource
	// http holds the HTTP options, request balancing and outlier detection (http.go).
	http httpConfig
	// opaque is the opaque-transport setting (opaque.go); nil: none.
	opaque *OpaqueTransport
}

type endpointSpec struct {
	path     string // e.g. "load_assignment.endpoints[0].lb_endpoints[1]", for logs
	host     string
	port     uint16
	weight   uint32
	health   corev3.HealthStatus
	hostname string // Endpoint.hostname
	ts       uint8  // transport socket: index into Cluster.tls (tls.go)
}

type dnsConfig struct {
	refresh     time.Duration
	failureBase time.Duration // backoff on failure: base doubling up to max
	failureMax  time.Duration
	jitter      time.Duration // upper bound (exclusive) of a random delay added to each wait
	family      clusterv3.Cluster_DnsLookupFamily
}

// parse validates pb into a config. Errors name the offending field by its
// path from the Cluster; Build adds the "upstream: cluster %q: " prefix.
func parse(pb *clusterv3.Cluster) (*config, error) {
	c := &config{name: pb.GetName()}
	if c.name == "" {
		return nil, errors.New("name: must be set")
	}

	// The discovery type first: "LOGICAL_DNS is not supported" is the useful
	// message for such a cluster, not a field check on what it carries.
	switch t := pb.GetClusterDiscoveryType().(type) {
	case nil:
		c.discovery = discoveryStatic
	case *clusterv3.Cluster_Type:
		switch t.Type {
		case clusterv3.Cluster_STATIC:
			c.discovery = discoveryStatic
		case clusterv3.Cluster_STRICT_DNS:
			c.discovery = discoveryStrictDNS
		case clusterv3.Cluster_EDS:
			c.discovery = discoveryEDS
		default:
			return nil, fmt.Errorf("type: %s is not supported by Sift (supported: STATIC, STRICT_DNS, EDS)", t.Type)
		}
	case *clusterv3.Cluster_ClusterType:
		return nil, fmt.Errorf("cluster_type: custom cluster type %q is not supported by Sift", t.ClusterType.GetName())
	}

	// Likewise the policy: "RING_HASH is not supported" before
	// "ring_hash_lb_config is not supported".
	c.lb = balancer.Config{ChoiceCount: balancer.DefaultChoiceCount, ActiveRequestBias: 1}
	switch p := pb.GetLbPolicy(); p {
	case clusterv3.Cluster_ROUND_ROBIN:
		c.lb.Policy = balancer.RoundRobin
	case clusterv3.Cluster_LEAST_REQUEST:
		c.lb.Policy = balancer.LeastRequest
	case clusterv3.Cluster_RANDOM:
		c.lb.Policy = balancer.Random
	default:
		return nil, fmt.Errorf("lb_policy: %s is not supported by Sift (supported: ROUND_ROBIN, LEAST_REQUEST, RANDOM)", p)
	}

	if err := policy.Check(pb); err != nil {
		return nil, err
	}

	var err error
	if c.connectTimeout, err = duration(pb.GetConnectTimeout(), "connect_timeout", defaultConnectTimeout, 1); err != nil {
		return nil, err
	}
	if err := c.parseLB(pb); err != nil {
		return nil, err
	}
	if err := c.parseHTTP(pb); err != nil {
		return nil, err
	}
	if err := c.parseOpaqueTransport(pb); err != nil {
		return nil, err
	}
	if err := c.parseDNS(pb); err != nil {
		return nil, err
	}
	if ka := pb.GetUpstreamConnectionOptions().GetTcpKeepalive(); ka != nil {
		// Envoy: a field left unset keeps the operating system's default,
		// which is what a negative value means to Go.
		c.keepalive = &net.KeepAliveConfig{Enable: true, Idle: -1, Interval: -1, Count: -1}
		if v := ka.GetKeepaliveTime(); v != nil {
			c.keepalive.Idle = time.Duration(v.GetValue()) * time.Second
		}
		if v := ka.GetKeepaliveInterval(); v != nil {
			c.keepalive.Interval = time.Duration(v.GetValue()) * time.Second
		}
		if v := ka.GetKeepaliveProbes(); v != nil {
			c.keepalive.Count = int(v.GetValue())
		}
	}
	if c.discovery == discoveryEDS {
		return c, c.parseEDS(pb)
	}
	if c.endpoints, err = parseAssignment(pb.GetLoadAssignment(), c.discovery); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *config) parseLB(pb *clusterv3.Cluster) error {
	if pb.GetRoundRobinLbConfig() != nil && c.lb.Policy != balancer.RoundRobin {
		return fmt.Errorf("round_robin_lb_config: set, but lb_policy is %s", pb.GetLbPolicy())
	}
	if lr := pb.GetLeastRequestLbConfig(); lr != nil {
		if c.lb.Policy != balancer.LeastRequest {
			return fmt.Errorf("least_request_lb_config: set, but lb_policy is %s", pb.GetLbPolicy())
		}
		if cc := lr.GetChoiceCount(); cc != nil {
			if cc.GetValue() < 2 {
				return fmt.Errorf("least_request_lb_config.choice_count: %d: must be at least 2", cc.GetValue())
			}
			c.lb.ChoiceCount = int(min(cc.GetValue(), math.MaxInt32))
		}
		if b := lr.GetActiveRequestBias(); b != nil && b.GetDefaultValue() != 1.0 {
			return fmt.Errorf("least_request_lb_config.active_request_bias.default_value: %v: only 1.0 (Envoy's default) is supported", b.GetDefaultValue())
		}
	}
	if t := pb.GetCommonLbConfig().GetHealthyPanicThreshold(); t != nil && t.GetValue() != 0 {
		return fmt.Errorf("common_lb_config.healthy_panic_threshold: %v: Sift has no panic mode, only 0 (disabled) is supported", t.GetValue())
	}
	return nil
}

func (c *config) parseDNS(pb *clusterv3.Cluster) error {
	var err error
	d := &c.dns
	if d.refresh, err = duration(pb.GetDnsRefreshRate(), "dns_refresh_rate", defaultDNSRefreshRate, minDNSRefreshRate); err != nil {
		return err
	}
	if d.jitter, err = duration(pb.GetDnsJitter(), "dns_jitter", 0, 0); err != nil {
		return err
	}
	d.failureBase, d.failureMax = d.refresh, d.refresh
	if fr := pb.GetDnsFailureRefreshRate(); fr != nil {
		if d.failureBase, d.failureMax, err = pbcheck.Backoff("dns_failure_refresh_rate", fr.GetBaseInterval(), fr.GetMaxInterval(), minDNSRefreshRate); err != nil {
			return err
		}
	}
	d.family = pb.GetDnsLookupFamily()
	if _, ok := clusterv3.Cluster_DnsLookupFamily_name[int32(d.family)]; !ok {
		return fmt.Errorf("dns_lookup_family: unknown value %d", d.family)
	}
	return nil
}

// parseAssignment validates the values of a ClusterLoadAssignment whose
// fields policy has accepted. For STATIC clusters and EDS updates (which
// call it with discoveryStatic, see parseEDSAssignment) addresses must be
// IPs; for STRICT_DNS they are names.
func parseAssignment(la *endpointv3.ClusterLoadAssignment, d discovery) ([]endpointSpec, error) {
	var eps []endpointSpec
	for i, lle := range la.GetEndpoints() {
		lp := fmt.Sprintf("load_assignment.endpoints[%d]", i)
		if lle.GetPriority() != 0 {
			return nil, fmt.Errorf("%s.priority: %d: priority levels are not supported by Sift (only 0)", lp, lle.GetPriority())
		}
		for j, lbe := range lle.GetLbEndpoints() {
			ep, err := parseLbEndpoint(lbe, d, fmt.Sprintf("%s.lb_endpoints[%d]", lp, j))
			if err != nil {
				return nil, err
			}
			eps = append(eps, ep)
		}
	}
	return eps, nil
}

func parseLbEndpoint(lbe *endpointv3.LbEndpoint, d discovery, path string) (endpointSpec, error) {
	ep := endpointSpec{path: path, weight: 1, health: lbe.GetHealthStatus()}
	if w := lbe.GetLoadBalancingWeight(); w != nil {
		if w.GetValue() < 1 {
			return ep, fmt.Errorf("%s.load_balancing_weight: must be at least 1", path)
		}
		ep.weight = w.GetValue()
	}
	if _, ok := corev3.HealthStatus_name[int32(ep.health)]; !ok {
		return ep, fmt.Errorf("%s.health_status: unknown value %d", path, ep.health)
	}
	e := lbe.GetEndpoint()
	if e == nil {
		return ep, fmt.Errorf("%s.endpoint: must be set", path)
	}
	ep.hostname = e.GetHostname()
	ap := path + ".endpoint.address"
	sa := e.GetAddress().GetSocketAddress()
	if sa == nil {
		return ep, fmt.Errorf("%s: socket_address must be set", ap)
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return ep, fmt.Errorf("%s.socket_address.protocol: %s is not supported by Sift (only TCP)", ap, sa.GetProtocol())
	}
	port := sa.GetPortValue()
	if port == 0 || port > math.MaxUint16 {
		return ep, fmt.Errorf("%s.socket_address.port_value: %d: must be in 1-65535", ap, port)
	}
	ep.port = uint16(port)
	host := sa.GetAddress()
	switch d {
	case discoveryStatic:
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return ep, fmt.Errorf("%s.socket_address.address: %q is not an IP address (a STATIC cluster needs IPs; use STRICT_DNS for names)", ap, host)
		}
		ep.host = ip.Unmap().String()
	case discoveryStrictDNS:
		if host == "" || strings.ContainsAny(host, " /\t\n") {
			return ep, fmt.Errorf("%s.socket_address.address: %q is not a DNS name", ap, host)
		}
		ep.host = host
	}
	return ep, nil
}

// duration is pbcheck.Duration, Sift's one duration validator; minimum 1
// (pbcheck.Positive) means "> 0".
var duration = pbcheck.Duration
