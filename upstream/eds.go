package upstream

import (
	"errors"
	"fmt"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/proto"
)

// EDS clusters (type: EDS) start with no endpoints and are not Ready until
// their first ClusterLoadAssignment arrives through UpdateLoadAssignment —
// Envoy's cluster warming. The xDS client subscribes to EDSServiceName from
// the source EDSConfig names.

// parseEDS validates an EDS cluster's eds_cluster_config.
func (c *config) parseEDS(pb *clusterv3.Cluster) error {
	if pb.GetLoadAssignment() != nil {
		return errors.New("load_assignment: not used by an EDS cluster (its endpoints come from eds_cluster_config)")
	}
	eds := pb.GetEdsClusterConfig()
	if eds.GetEdsConfig() == nil {
		return errors.New("eds_cluster_config.eds_config: must be set for type EDS")
	}
	c.edsServiceName = eds.GetServiceName()
	if c.edsServiceName == "" {
		c.edsServiceName = c.name
	}
	c.edsConfig = proto.Clone(eds.GetEdsConfig()).(*corev3.ConfigSource)
	return nil
}

// EDSServiceName returns the ClusterLoadAssignment name an EDS cluster takes
// its endpoints from (eds_cluster_config.service_name, else the cluster's
// name), or "" for other cluster types.
func (c *Cluster) EDSServiceName() string { return c.cfg.edsServiceName }

// EDSConfig returns where an EDS cluster's endpoints come from, or nil for
// other cluster types. The caller must not modify it.
func (c *Cluster) EDSConfig() *corev3.ConfigSource { return c.cfg.edsConfig }

// UpdateLoadAssignment replaces an EDS cluster's endpoints with those of cla,
// after validating it as a whole: on error nothing changes. Per-endpoint state
// of addresses that stay is kept. Safe for concurrent use with Dial.
func (c *Cluster) UpdateLoadAssignment(cla *endpointv3.ClusterLoadAssignment) error {
	if c.cfg.discovery != discoveryEDS {
		return fmt.Errorf("upstream: cluster %q: not an EDS cluster", c.cfg.name)
	}
	specs, err := parseEDSAssignment(cla)
	if err != nil {
		return fmt.Errorf("upstream: cluster %q: %w", c.cfg.name, err)
	}
	c.tls.assign(specs, cla)
	eps := make([]resolvedEndpoint, len(specs))
	for i, ep := range specs {
		eps[i] = ep.resolved(ep.host, ep.hostname)
	}
	c.setEndpoints(eps)
	return nil
}

// CheckLoadAssignment validates an EDS ClusterLoadAssignment without applying
// it, so that an update can be checked whole before any cluster changes.
func CheckLoadAssignment(cla *endpointv3.ClusterLoadAssignment) error {
	if _, err := parseEDSAssignment(cla); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	return nil
}

func parseEDSAssignment(cla *endpointv3.ClusterLoadAssignment) ([]endpointSpec, error) {
	if err := policy.CheckAt(cla, "load_assignment"); err != nil {
		return nil, fmt.Errorf("ClusterLoadAssignment %q: %w", cla.GetClusterName(), err)
	}
	specs, err := parseAssignment(cla, discoveryStatic) // EDS endpoints are IP addresses
	if err != nil {
		return nil, fmt.Errorf("ClusterLoadAssignment %q: %w", cla.GetClusterName(), err)
	}
	return specs, nil
}
