package controlplane

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/siftmesh/sift/mesh"
)

// NodeMatcher finds the workload of a proxy whose node id matched no
// workload's node_id exactly; nil when none.
type NodeMatcher func(m *mesh.Mesh, nodeID string) *mesh.Workload

// Node-id fallbacks, by flag value.
const (
	// FallbackNone: exact node ids only.
	FallbackNone = "none"
	// FallbackPrefix: a workload's node_id followed by '-' or '.' and
	// anything ("web" matches "web-7d9f8c-x2x4q", a pod of a Deployment);
	// the longest node_id wins.
	FallbackPrefix = "prefix"
	// FallbackIstio: Istio's sidecar node id, "sidecar~IP~NAME.NAMESPACE~DOMAIN":
	// the workload NAME in NAMESPACE, else the workload with address IP.
	FallbackIstio = "istio"
)

// Fallbacks lists the accepted fallback names.
var Fallbacks = []string{FallbackNone, FallbackPrefix, FallbackIstio}

// ParseFallback returns the matcher of a fallback name; FallbackNone is nil.
func ParseFallback(name string) (NodeMatcher, error) {
	switch name {
	case FallbackNone, "":
		return nil, nil
	case FallbackPrefix:
		return matchPrefix, nil
	case FallbackIstio:
		return matchIstio, nil
	}
	return nil, fmt.Errorf("unknown node-id fallback %q (known: %s)", name, strings.Join(Fallbacks, ", "))
}

// Resolve finds the workload of node id: exact node_id first, then fallback.
func Resolve(m *mesh.Mesh, fallback NodeMatcher, id string) *mesh.Workload {
	if id == "" {
		return nil
	}
	if w := m.WorkloadByNodeID(id); w != nil {
		return w
	}
	if fallback != nil {
		return fallback(m, id)
	}
	return nil
}

func matchPrefix(m *mesh.Mesh, id string) *mesh.Workload {
	var best *mesh.Workload
	for _, w := range m.Workloads() {
		rest, ok := strings.CutPrefix(id, w.NodeID)
		if !ok || rest == "" || (rest[0] != '-' && rest[0] != '.') {
			continue
		}
		if best == nil || len(w.NodeID) > len(best.NodeID) {
			best = w
		}
	}
	return best
}

func matchIstio(m *mesh.Mesh, id string) *mesh.Workload {
	parts := strings.Split(id, "~")
	if len(parts) != 4 {
		return nil
	}
	if name, ns, ok := strings.Cut(parts[2], "."); ok {
		if n := m.Namespace(ns); n != nil {
			for _, w := range n.Workloads {
				if w.Name == name {
					return w
				}
			}
		}
	}
	ip, err := netip.ParseAddr(parts[1])
	if err != nil {
		return nil
	}
	for _, w := range m.Workloads() {
		for _, a := range w.Addresses {
			if a == ip.Unmap() {
				return w
			}
		}
	}
	return nil
}
