package controlplane

import (
	"net/netip"
	"slices"
	"strings"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/siftmesh/sift/mesh"
)

// The endpoint gate: a meshed workload's endpoints reach other proxies only
// once its own proxy has acknowledged (ACKed) a configuration that holds its
// inbound listener, so that no peer sends it traffic before its proxy
// listens (docs/kubernetes.md, "Endpoints wait for their proxy"). In short:
//
//   - Gated: meshed workloads (not mesh.Workload.Unmeshed), from the moment
//     an incarnation (the workload's key with its addresses) first appears
//     in a mesh after the first one with an inbound listener. Workloads of
//     the first mesh are published at once: after a restart the control
//     plane cannot know which proxies ACKed its predecessor, and emptying
//     the mesh until every proxy reconnects would be worse. Nothing is
//     persisted.
//   - Opened by an ACK, on any stream of the workload's node, of a response
//     sent after the incarnation appeared, while the node's last
//     acknowledged Listener state holds its inbound listener.
//   - A NACK of a Listener response carrying the inbound listener keeps the
//     workload withheld (logged and counted by the request metrics; the
//     gauge counts it as nacked) until a later ACK, past the timeout too.
//   - Otherwise the timeout (Config.EndpointACKTimeout) publishes it anyway
//     with a warning: the escape hatch for a proxy that never connects.
//   - A published workload stays published whatever its proxy does later
//     (disconnects, reconnects): only a new incarnation is gated again,
//     unless its node's proxy is connected and has ACKed its inbound
//     listener already (the same workload at new addresses).
//
// All of it is guarded by Controller.mu.

// endpointGate is the gate's state.
type endpointGate struct {
	timeout time.Duration // 0: the gate is off
	started bool          // the first mesh has been applied
	// seen maps each meshed workload of the current mesh to its
	// incarnation: its addresses (the mesh is immutable, so its slice).
	seen map[workloadID][]netip.Addr
	// waiting are the withheld workloads, by key.
	waiting map[string]*waitingWorkload
	// wake tells Run to regenerate (a workload was published); capacity 1.
	wake chan struct{}
}

type waitingWorkload struct {
	node  string
	since time.Time
	// gen is the controller generation from which responses count: those
	// sent after the incarnation appeared.
	gen  uint64
	nack string // the proxy's last NACK of its inbound listener; "" none
}

func newEndpointGate(timeout time.Duration) endpointGate {
	return endpointGate{timeout: timeout, seen: map[workloadID][]netip.Addr{}, waiting: map[string]*waitingWorkload{},
		wake: make(chan struct{}, 1)}
}

// workloadID is a workload's key without building the string. With the
// workload's addresses it names an incarnation, one life of the workload (a
// pod recreated under the same name has new addresses).
type workloadID struct{ namespace, name string }

// updateGateLocked brings the gate to mesh m at now: new incarnations of
// meshed workloads start waiting (from generation gen on), workloads that
// left stop, and those past the timeout are published. It returns the
// workloads to withhold. c.mu held.
func (c *Controller) updateGateLocked(m *mesh.Mesh, now time.Time, gen uint64) map[string]bool {
	g := &c.gate
	if g.timeout <= 0 {
		return nil
	}
	next := make(map[workloadID][]netip.Addr, len(g.seen))
	for _, w := range allWorkloads(m) {
		if w.Unmeshed {
			continue // no proxy to wait for
		}
		id := workloadID{w.Namespace, w.Name}
		next[id] = w.Addresses
		if prev, ok := g.seen[id]; ok && slices.Equal(prev, w.Addresses) {
			continue
		}
		key := w.Key()
		delete(g.waiting, key)
		if !g.started || len(m.InboundPorts(w)) == 0 {
			continue // present at startup (see above), or nothing its proxy listens for
		}
		if st := c.nodes[w.NodeID]; st != nil && st.workload == key && st.inboundACKed {
			// The same workload at new addresses (a mesh-file edit) whose
			// proxy is connected and serves its inbound listener: nothing
			// would be pushed to it to ACK, and it already listens.
			continue
		}
		g.waiting[key] = &waitingWorkload{node: w.NodeID, since: now, gen: gen}
		c.log.Info("endpoints wait for their proxy to acknowledge its inbound listener", "workload", key, "node", w.NodeID,
			"addresses", w.Addresses, "timeout", g.timeout)
	}
	for key := range g.waiting {
		ns, name, _ := strings.Cut(key, "/")
		if _, ok := next[workloadID{ns, name}]; !ok {
			delete(g.waiting, key) // left the mesh, or no longer meshed
		}
	}
	g.seen, g.started = next, true
	for key, ww := range g.waiting {
		if ww.nack == "" && now.Sub(ww.since) >= g.timeout {
			delete(g.waiting, key)
			c.metrics.endpointsPublished.WithLabelValues("timeout").Inc()
			c.log.Warn("endpoints published without their proxy's acknowledgement: timeout", "workload", key, "node", ww.node,
				"waited", now.Sub(ww.since).Round(time.Millisecond), "timeout", g.timeout)
		}
	}
	c.setGateMetricsLocked()
	if len(g.waiting) == 0 {
		return nil
	}
	withheld := make(map[string]bool, len(g.waiting))
	for key := range g.waiting {
		withheld[key] = true
	}
	return withheld
}

// allWorkloads lists m's workloads in no particular order (mesh.Workloads
// sorts, which costs more than the gate's whole pass).
func allWorkloads(m *mesh.Mesh) []*mesh.Workload {
	var out []*mesh.Workload
	for _, ns := range m.Namespaces {
		out = append(out, ns.Workloads...)
	}
	return out
}

// gateDeadline is when the next waiting workload times out; zero if none.
func (c *Controller) gateDeadline() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first time.Time
	for _, ww := range c.gate.waiting {
		if ww.nack != "" {
			continue
		}
		if d := ww.since.Add(c.gate.timeout); first.IsZero() || d.Before(first) {
			first = d
		}
	}
	return first
}

func (c *Controller) setGateMetricsLocked() {
	waiting, nacked := 0, 0
	for _, ww := range c.gate.waiting {
		if ww.nack != "" {
			nacked++
		} else {
			waiting++
		}
	}
	c.metrics.endpointsWaiting.WithLabelValues("waiting").Set(float64(waiting))
	c.metrics.endpointsWaiting.WithLabelValues("nacked").Set(float64(nacked))
}

// gateAnswerLocked applies a proxy's answer to a response it was sent:
// the node's acknowledged inbound-listener state, then the gate of its
// workload. c.mu held.
func (c *Controller) gateAnswerLocked(st *nodeState, typeURL string, sent sentResponse, nack string) {
	if nack == "" && typeURL == resource.ListenerType {
		switch {
		case sent.inbound:
			st.inboundACKed = true
		case sent.removesInbound || !sent.delta:
			// A state-of-the-world response is the whole set.
			st.inboundACKed = false
		}
	}
	ww := c.gate.waiting[st.workload]
	if ww == nil || sent.gen < ww.gen {
		return
	}
	if nack != "" {
		if typeURL == resource.ListenerType && sent.inbound {
			ww.nack = nack
			c.log.Warn("endpoints stay withheld: the proxy rejected its inbound listener", "workload", st.workload, "node", ww.node, "error", nack)
			c.setGateMetricsLocked()
		}
		return
	}
	if !st.inboundACKed {
		return
	}
	delete(c.gate.waiting, st.workload)
	c.setGateMetricsLocked()
	c.metrics.endpointsPublished.WithLabelValues("ack").Inc()
	c.log.Info("endpoints published: the proxy acknowledged its inbound listener", "workload", st.workload, "node", ww.node,
		"waited", time.Since(ww.since).Round(time.Millisecond))
	select {
	case c.gate.wake <- struct{}{}:
	default:
	}
}

// EndpointsWaiting returns the workloads (by key) whose endpoints are
// withheld until their proxy acknowledges its inbound listener, each with
// its proxy's NACK when it rejected it ("" otherwise). It takes the
// controller's lock.
func (c *Controller) EndpointsWaiting() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.gate.waiting))
	for key, ww := range c.gate.waiting {
		out[key] = ww.nack
	}
	return out
}

// sentResponse is what the controller keeps of a response pushed on a
// stream until the proxy answers it (the answer names the response's nonce;
// a delta answer carries no version).
type sentResponse struct {
	nonce   string
	version string // version_info (SotW) or system_version_info (delta)
	gen     uint64 // the controller's generation when it was sent
	delta   bool
	// inbound: a Listener response carrying the node's inbound listener;
	// removesInbound: a delta Listener response removing it.
	inbound, removesInbound bool
}

// maxUnanswered bounds the responses kept per type and stream: a proxy
// answers the latest; older unanswered ones are stale.
const maxUnanswered = 4

// sentLog keeps the last responses of each type on one stream.
type sentLog map[string][]sentResponse

func (l sentLog) add(typeURL string, r sentResponse) {
	rs := append(l[typeURL], r)
	if len(rs) > maxUnanswered {
		rs = slices.Delete(rs, 0, len(rs)-maxUnanswered)
	}
	l[typeURL] = rs
}

// take returns the response with nonce and forgets it and those sent
// before it (answering one supersedes them).
func (l sentLog) take(typeURL, nonce string) (sentResponse, bool) {
	rs := l[typeURL]
	for i, r := range rs {
		if r.nonce == nonce {
			l[typeURL] = slices.Delete(rs, 0, i+1)
			return r, true
		}
	}
	return sentResponse{}, false
}

// sotwSent summarises a state-of-the-world response.
func sotwSent(resp *discoveryv3.DiscoveryResponse, gen uint64) sentResponse {
	r := sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo(), gen: gen}
	if resp.GetTypeUrl() == resource.ListenerType {
		for _, a := range resp.GetResources() {
			if listenerName(a.GetValue()) == InboundListenerName {
				r.inbound = true
			}
		}
	}
	return r
}

// deltaSent summarises a delta response.
func deltaSent(resp *discoveryv3.DeltaDiscoveryResponse, gen uint64) sentResponse {
	r := sentResponse{nonce: resp.GetNonce(), version: resp.GetSystemVersionInfo(), gen: gen, delta: true}
	if resp.GetTypeUrl() == resource.ListenerType {
		for _, res := range resp.GetResources() {
			r.inbound = r.inbound || res.GetName() == InboundListenerName
		}
		r.removesInbound = slices.Contains(resp.GetRemovedResources(), InboundListenerName)
	}
	return r
}

// listenerName reads field 1 (name) of an encoded envoy.config.listener.v3
// Listener without decoding the rest; "" if absent or malformed.
func listenerName(b []byte) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return ""
			}
			return string(v)
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return ""
		}
		b = b[n:]
	}
	return ""
}
