package controlplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	controlv1 "github.com/siftmesh/sift/api/sift/control/v1"
	"github.com/siftmesh/sift/mesh"
)

// The Controller serves sift.control.v1.Insights beside xDS: proxies report
// the destinations they learned to be server-speaks-first, and sift-control
// says which service ports should be marked opaque (docs/detection.md).
var _ controlv1.InsightsServer = (*Controller)(nil)

// maxReportedDestinations bounds one report (a proxy's table holds 4096).
const maxReportedDestinations = 4096

// nodeTokenKey is the node metadata key of the node token (controlplane/ca).
const nodeTokenKey = "sift.node_token"

// ServerFirstSuggestion is a service port that proxies found to be
// server-speaks-first while it is not marked opaque.
type ServerFirstSuggestion struct {
	Service string   `json:"service"` // namespace/name
	Port    uint16   `json:"port"`
	Nodes   []string `json:"reported_by"`
	// Advice is the sentence sift-control logs.
	Advice string `json:"advice"`
}

// ReportLearned implements controlv1.InsightsServer. The report replaces
// the node's previous one. With an Authenticator the node must prove its id
// as an xDS stream does.
func (c *Controller) ReportLearned(_ context.Context, req *controlv1.ReportLearnedRequest) (*controlv1.ReportLearnedResponse, error) {
	if req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "insights: node_id: must be set")
	}
	if len(req.GetDestinations()) > maxReportedDestinations {
		return nil, status.Errorf(codes.InvalidArgument, "insights: destinations: %d, at most %d", len(req.GetDestinations()), maxReportedDestinations)
	}
	if c.cfg.Authenticator != nil {
		node := &corev3.Node{Id: req.GetNodeId(), Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{
			nodeTokenKey: structpb.NewStringValue(req.GetNodeToken()),
		}}}
		if err := c.cfg.Authenticator.Authenticate(node); err != nil {
			c.log.Warn("insights: report refused", "node", req.GetNodeId(), "reason", err)
			return nil, status.Error(codes.PermissionDenied, "insights: node not authenticated")
		}
	}
	var dsts []netip.AddrPort
	for i, d := range req.GetDestinations() {
		ap, err := netip.ParseAddrPort(d.GetDestination())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "insights: destinations[%d].destination: %v", i, err)
		}
		dsts = append(dsts, ap)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.learned == nil {
		c.learned = map[string][]netip.AddrPort{}
	}
	if len(dsts) == 0 {
		delete(c.learned, req.GetNodeId())
	} else {
		c.learned[req.GetNodeId()] = dsts
	}
	c.adviseLocked()
	return &controlv1.ReportLearnedResponse{}, nil
}

// adviseLocked recomputes the suggestions — after a report, or a mesh
// change that can map reported destinations to other service ports — logs
// the ones not advised before, and sets the metric. c.mu held.
func (c *Controller) adviseLocked() {
	after := c.suggestionsLocked()
	for _, s := range after {
		if !slices.ContainsFunc(c.advised, func(b ServerFirstSuggestion) bool { return b.Service == s.Service && b.Port == s.Port }) {
			c.log.Info(s.Advice, "service", s.Service, "port", s.Port, "reported_by", s.Nodes)
		}
	}
	c.advised = after
	c.metrics.setServerFirst(after)
}

// ServerFirstSuggestions lists the service ports proxies learned to be
// server-first that the mesh does not mark opaque, sorted.
func (c *Controller) ServerFirstSuggestions() []ServerFirstSuggestion {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.suggestionsLocked()
}

// suggestionsLocked maps every reported destination to a service port of
// the current mesh: by cluster IP and service port, or by workload address
// and target port. c.mu held.
func (c *Controller) suggestionsLocked() []ServerFirstSuggestion {
	if c.mesh == nil {
		return nil
	}
	type key struct {
		svc  *mesh.Service
		port mesh.ServicePort
	}
	nodes := map[key][]string{}
	for node, dsts := range c.learned {
		for _, d := range dsts {
			for _, s := range c.mesh.Services() {
				for _, p := range s.Ports {
					if !c.servesAt(s, p, d) || c.mesh.ServicePortTreatment(s, p) == mesh.Opaque {
						continue
					}
					k := key{s, p}
					if !slices.Contains(nodes[k], node) {
						nodes[k] = append(nodes[k], node)
					}
				}
			}
		}
	}
	out := make([]ServerFirstSuggestion, 0, len(nodes))
	for k, ns := range nodes {
		slices.Sort(ns)
		name := k.svc.Namespace + "/" + k.svc.Name
		out = append(out, ServerFirstSuggestion{Service: name, Port: k.port.Port, Nodes: ns,
			Advice: fmt.Sprintf("port %d of service %s looks server-first: mark it opaque (opaque_ports, or config.linkerd.io/opaque-ports: %q) so that its clients skip detection",
				k.port.Port, name, strconv.Itoa(int(k.port.Port)))})
	}
	slices.SortFunc(out, func(a, b ServerFirstSuggestion) int {
		if a.Service != b.Service {
			if a.Service < b.Service {
				return -1
			}
			return 1
		}
		return int(a.Port) - int(b.Port)
	})
	return out
}

// servesAt reports whether d is port p of s: a cluster IP with the service
// port, or one of its workloads' addresses with the target port.
func (c *Controller) servesAt(s *mesh.Service, p mesh.ServicePort, d netip.AddrPort) bool {
	if d.Port() == p.Port && slices.Contains(s.ClusterIPs, d.Addr()) {
		return true
	}
	for _, w := range c.mesh.Endpoints(s) {
		if port, ok := p.TargetFor(w); ok && port == d.Port() && slices.Contains(w.Addresses, d.Addr()) {
			return true
		}
	}
	return false
}
