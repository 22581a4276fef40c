package controlplane

import (
	"slices"

	"github.com/siftmesh/sift/mesh"
)

// endpoint is one workload of a service port and the port it receives the
// service's traffic on.
type endpoint struct {
	w    *mesh.Workload
	port uint16
}

// published leaves out of eps the workloads Options.WithheldEndpoints
// withholds. It depends on the service's endpoints only, never on the
// workload being generated, so a service's clusters stay the same for
// every proxy.
func (g *generator) published(eps []*mesh.Workload) []*mesh.Workload {
	if len(g.opts.WithheldEndpoints) == 0 {
		return eps
	}
	return slices.DeleteFunc(slices.Clone(eps), func(w *mesh.Workload) bool {
		return g.opts.WithheldEndpoints[w.Key()]
	})
}

// targets resolves p's target port for each workload of eps: the number, or
// — for a named target port — each workload's port of that name, as
// kube-proxy does; a workload without such a port is no endpoint of p.
func targets(eps []*mesh.Workload, p mesh.ServicePort) []endpoint {
	out := make([]endpoint, 0, len(eps))
	for _, w := range eps {
		if port, ok := p.TargetFor(w); ok {
			out = append(out, endpoint{w: w, port: port})
		}
	}
	return out
}

// opaqueTargets returns the one port the opaque transport asks peers to
// forward p's connections to, and the workloads of eps that serve p on it.
// The opaque-transport header is per cluster (opaque_transport.v1
// OpaqueTransport.port), so when a named target port resolves to different
// numbers on different workloads (a rollout renumbering a container port),
// the port most of them share wins (the lowest on a tie) and the others are
// left out of the opaque cluster only; HTTP reaches each at its own port.
func opaqueTargets(eps []*mesh.Workload, p mesh.ServicePort) (uint16, []*mesh.Workload) {
	if p.TargetPortName == "" {
		return p.Target(), eps
	}
	resolved := targets(eps, p)
	count := map[uint16]int{}
	var best uint16
	for _, e := range resolved {
		count[e.port]++
		if n, b := count[e.port], count[best]; best == 0 || n > b || (n == b && e.port < best) {
			best = e.port
		}
	}
	var out []*mesh.Workload
	for _, e := range resolved {
		if e.port == best {
			out = append(out, e.w)
		}
	}
	return best, out
}

// atPort lists every workload of eps at port.
func atPort(eps []*mesh.Workload, port uint16) []endpoint {
	out := make([]endpoint, len(eps))
	for i, w := range eps {
		out[i] = endpoint{w: w, port: port}
	}
	return out
}
