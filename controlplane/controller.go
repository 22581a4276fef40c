package controlplane

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/siftmesh/sift/mesh"
)

// Config configures a Controller.
type Config struct {
	Source  mesh.Source
	Options Options
	// Fallback matches node ids that are no workload's node_id; nil: none.
	Fallback NodeMatcher
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the metrics (see metrics.go); nil: not exported.
	Registerer prometheus.Registerer
	// Authenticator, when set, must accept the node of every xDS stream
	// before the stream gets anything (see auth.go); nil: any node id is
	// believed (plaintext development setups without a CA).
	Authenticator Authenticator
	// EndpointACKTimeout is how long a new meshed workload's endpoints
	// wait for its proxy to acknowledge its inbound listener before they
	// are published anyway (endpointgate.go); 0 turns the gate off.
	EndpointACKTimeout time.Duration
	// FullPush regenerates every snapshot from scratch on every mesh change
	// and gives each a new version, so that every connected proxy is sent
	// its whole configuration again: the baseline of the scale benchmark
	// (test/control_scale_test.go, make bench-control), not for production.
	FullPush bool
}

// Controller keeps a snapshot cache in step with a mesh source: one snapshot
// per proxy node id, for every workload's node_id and for every connected
// node id that the fallback matches to a workload. It is also the xDS
// server's callbacks (metrics, logs, and learning node ids as proxies
// connect). Safe for concurrent use.
//
// A node whose workload leaves the mesh keeps its last snapshot (its proxy
// keeps its last configuration, as when the control plane is unreachable);
// a proxy whose node id matches no workload gets nothing until one does.
type Controller struct {
	cfg     Config
	log     *slog.Logger
	cache   cache.SnapshotCache
	metrics *metrics
	// builder is used by apply only (one at a time: New, then Run's goroutine).
	builder *builder

	mu        sync.Mutex
	mesh      *mesh.Mesh
	snapshots map[string]*cache.Snapshot // workload key -> snapshot of the current mesh
	nodes     map[string]*nodeState      // node id -> state, for connected nodes
	streams   map[streamKey]*streamState
	// learned is each node's last report of server-first destinations, and
	// advised what was last made of them (insights.go).
	learned map[string][]netip.AddrPort
	advised []ServerFirstSuggestion
	// secretStates maps snapshot versions of this and the previous
	// generation to the security state their secrets carry
	// (SecurityStater), for ProxiesWithout.
	secretStates, prevSecretStates map[string]string
	// gen counts applied meshes; responses remember the generation they
	// were sent in (sentResponse).
	gen  uint64
	gate endpointGate
}

type nodeState struct {
	streams  int
	workload string // "" while unmatched
	// secrets is the security state of the Secret version the node last
	// acknowledged ("" none or unknown); subscribed: it asks for Secrets.
	secrets    string
	subscribed bool
	// inboundACKed: the Listener state the node last acknowledged holds
	// its inbound listener (endpointgate.go).
	inboundACKed bool
}

type streamKey struct {
	delta bool
	id    int64
}

type streamState struct {
	flavor string // sotw_ads, sotw, delta_ads, delta
	node   string
	// sent are the responses not yet answered, by type (a delta ACK names
	// only the response's nonce).
	sent sentLog
}

var _ serverv3.Callbacks = (*Controller)(nil)

// New builds a controller and the snapshots of the source's current mesh.
func New(cfg Config) (*Controller, error) {
	if cfg.Source == nil {
		return nil, fmt.Errorf("controlplane: a mesh source is required")
	}
	c := &Controller{
		cfg:     cfg,
		log:     cfg.Logger,
		nodes:   map[string]*nodeState{},
		streams: map[streamKey]*streamState{},
		gate:    newEndpointGate(cfg.EndpointACKTimeout),
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.cache = cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger{c.log})
	c.builder = newBuilder(cfg.Options, cfg.FullPush)
	var err error
	if c.metrics, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	c.apply(cfg.Source.Snapshot())
	c.metrics.meshUpdates.Inc()
	return c, nil
}

// Cache is the snapshot cache to serve.
func (c *Controller) Cache() cache.SnapshotCache { return c.cache }

// Run applies each new mesh of the source, and regenerates the snapshots
// when the Security's output changes (SecurityWatcher: certificates renewed,
// trust bundle rotated) and when the endpoint gate publishes a workload
// (its proxy's ACK, or the timeout), until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	updates := c.cfg.Source.Watch(ctx)
	var changed <-chan struct{}
	if w, ok := c.cfg.Options.Security.(SecurityWatcher); ok {
		changed = w.Changed()
	}
	timeout := time.NewTimer(time.Hour)
	defer timeout.Stop()
	for {
		timeout.Stop()
		var timeouts <-chan time.Time
		if d := c.gateDeadline(); !d.IsZero() {
			timeout.Reset(time.Until(d))
			timeouts = timeout.C
		}
		select {
		case <-c.gate.wake:
			c.apply(c.cfg.Source.Snapshot())
		case <-timeouts:
			c.apply(c.cfg.Source.Snapshot())
		case _, ok := <-updates:
			if !ok {
				return
			}
			c.apply(c.cfg.Source.Snapshot())
			c.metrics.meshUpdates.Inc()
		case <-changed:
			c.builder.securityChanged()
			c.apply(c.cfg.Source.Snapshot())
			c.metrics.securityUpdates.Inc()
		}
	}
}

// MeshReloaded records a source's reload attempt (file.Options.OnReload).
func (c *Controller) MeshReloaded(err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	c.metrics.reloads.WithLabelValues(result).Inc()
}

// apply makes m current: it builds every workload's snapshot (regenerating
// only what changed, see builder) and sets the changed ones.
func (c *Controller) apply(m *mesh.Mesh) {
	c.mu.Lock()
	withheld := c.updateGateLocked(m, time.Now(), c.gen+1)
	c.mu.Unlock()
	stater, _ := c.cfg.Options.Security.(SecurityStater)
	var state string
	if stater != nil {
		state = stater.SecurityState()
	}
	snaps, invalid := c.builder.build(m, withheld)
	for key, err := range invalid {
		// Generate's output is consistent by construction; this is a bug.
		c.log.Error("controlplane: generated an invalid snapshot; workload skipped", "workload", key, "error", err)
	}
	states := map[string]string{}
	if stater != nil && stater.SecurityState() == state {
		// Unchanged while generating: every snapshot's secrets are of state.
		// (When it changed, the Security notifies and apply runs again.)
		for _, snap := range snaps {
			states[snap.GetVersion(resource.SecretType)] = state
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prevSecretStates, c.secretStates = c.secretStates, states
	c.mesh, c.snapshots = m, snaps
	if len(c.learned) > 0 {
		c.adviseLocked()
	}
	set := 0
	for _, w := range m.Workloads() {
		if c.sync(w.NodeID) {
			set++
		}
	}
	for id := range c.nodes {
		if m.WorkloadByNodeID(id) == nil && c.sync(id) {
			set++
		}
	}
	c.gen++ // responses from here on carry this mesh's snapshots
	st := c.builder.stats
	c.log.Info("snapshots built", "services", st.Services, "services_generated", st.ServicesGenerated,
		"workloads", st.Workloads, "workloads_generated", st.WorkloadsGenerated, "snapshots", st.Snapshots, "snapshots_new", st.SnapshotsNew,
		"nodes_set", set)
}

// sync sets node id's snapshot from the current mesh if it changed, and
// reports whether it did. c.mu held.
func (c *Controller) sync(id string) bool {
	w := Resolve(c.mesh, c.cfg.Fallback, id)
	st := c.nodes[id]
	if w == nil {
		if st != nil && st.workload != "" {
			c.log.Warn("node's workload left the mesh; its proxy keeps its last configuration", "node", id, "workload", st.workload)
			st.workload = ""
		} else if st != nil {
			c.log.Warn("connected node matches no workload; it gets no configuration until one does", "node", id)
		}
		c.metrics.setUnmatched(c.nodes)
		return false
	}
	if st != nil {
		st.workload = w.Key()
	}
	c.metrics.setUnmatched(c.nodes)
	snap := c.snapshots[w.Key()]
	if snap == nil {
		return false
	}
	if cur, err := c.cache.GetSnapshot(id); err == nil && sameVersions(cur, snap) {
		return false // unchanged: nothing to push
	}
	version := snapshotVersion(snap)
	if err := c.cache.SetSnapshot(context.Background(), id, snap); err != nil {
		c.log.Error("controlplane: set snapshot", "node", id, "error", err)
		return false
	}
	c.metrics.snapshotsSet.Inc()
	c.metrics.snapshotVersion.DeletePartialMatch(prometheus.Labels{"node": id})
	c.metrics.snapshotVersion.WithLabelValues(id, w.Key(), version).Set(1)
	// Debug: at 10 000 workloads a change may set every node's snapshot.
	c.log.Debug("snapshot set", "node", id, "workload", w.Key(), "version", version)
	return true
}

// snapshotTypes are the types a generated snapshot has.
var snapshotTypes = []resource.Type{resource.ListenerType, resource.ClusterType, resource.EndpointType, resource.RouteType, resource.SecretType}

// sameVersions reports whether a and b have the same version of every type.
func sameVersions(a cache.ResourceSnapshot, b *cache.Snapshot) bool {
	for _, t := range snapshotTypes {
		if a.GetVersion(t) != b.GetVersion(t) {
			return false
		}
	}
	return true
}

// snapshotVersion names a snapshot's content (its types' versions) in logs
// and metrics.
func snapshotVersion(s *cache.Snapshot) string {
	vs := make([]string, len(snapshotTypes))
	for i, t := range snapshotTypes {
		vs[i] = s.GetVersion(t)
	}
	return hashStrings("snapshot", vs...)
}

// attach records the node of a stream on its first request naming one.
func (c *Controller) attach(k streamKey, node *corev3.Node) {
	if node.GetId() == "" {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[k]
	if s == nil || s.node != "" {
		return
	}
	s.node = node.GetId()
	st := c.nodes[s.node]
	if st == nil {
		st = &nodeState{}
		c.nodes[s.node] = st
		c.log.Info("proxy connected", "node", s.node, "stream", s.flavor)
	}
	st.streams++
	c.metrics.proxies.Set(float64(len(c.nodes)))
	// Before the server creates the stream's first watch: a node matched by
	// the fallback has its snapshot by the time the cache looks.
	c.sync(s.node)
}

func (c *Controller) open(k streamKey, typeURL string) {
	flavor := "sotw"
	if k.delta {
		flavor = "delta"
	}
	if typeURL == resource.AnyType {
		flavor += "_ads"
	}
	c.mu.Lock()
	c.streams[k] = &streamState{flavor: flavor, sent: sentLog{}}
	c.mu.Unlock()
	c.metrics.streams.WithLabelValues(flavor).Inc()
}

func (c *Controller) close(k streamKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[k]
	if s == nil {
		return
	}
	delete(c.streams, k)
	c.metrics.streams.WithLabelValues(s.flavor).Dec()
	st := c.nodes[s.node]
	if st == nil {
		return
	}
	if st.streams--; st.streams > 0 {
		return
	}
	delete(c.nodes, s.node)
	c.metrics.proxies.Set(float64(len(c.nodes)))
	c.metrics.setUnmatched(c.nodes)
	c.log.Info("proxy disconnected", "node", s.node)
	if c.mesh.WorkloadByNodeID(s.node) == nil {
		// Matched by the fallback (or not at all): forget it; it is
		// matched again if it reconnects.
		c.cache.ClearSnapshot(s.node)
		c.metrics.snapshotVersion.DeletePartialMatch(prometheus.Labels{"node": s.node})
	}
}

func (c *Controller) flavor(k streamKey) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[k]; s != nil {
		return s.flavor
	}
	return "unknown"
}

// request counts a request and logs NACKs with the proxy's reason.
func (c *Controller) request(k streamKey, node *corev3.Node, typeURL, nonce, version string, nack *statusDetail) {
	c.attach(k, node)
	c.answer(k, typeURL, nonce, version, nack)
	result := "ack"
	switch {
	case nack != nil:
		result = "nack"
		c.log.Warn("proxy rejected configuration (NACK)", "node", c.nodeOf(k), "type", typeURL, "version", version, "error", nack.msg)
	case nonce == "":
		result = "request"
	}
	c.metrics.requests.WithLabelValues(c.flavor(k), shortType(typeURL), result).Inc()
}

type statusDetail struct{ msg string }

func (c *Controller) nodeOf(k streamKey) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.streams[k]; s != nil {
		return s.node
	}
	return ""
}

// answer records what a node's request acknowledges (or rejects): the
// response it answers, by nonce (a delta ACK names no version), feeds the
// endpoint gate (endpointgate.go) and, for Secrets, the security state of
// the snapshot version it ACKs (ProxiesWithout).
func (c *Controller) answer(k streamKey, typeURL, nonce, version string, nack *statusDetail) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.streams[k]
	if s == nil || s.node == "" {
		return
	}
	st := c.nodes[s.node]
	if st == nil {
		return
	}
	var sent sentResponse
	answered := false
	if nonce != "" {
		sent, answered = s.sent.take(typeURL, nonce)
	}
	if answered {
		reason := ""
		if nack != nil {
			reason = nack.msg
			if reason == "" {
				reason = "(no reason given)"
			}
		}
		c.gateAnswerLocked(st, typeURL, sent, reason)
	}
	if typeURL != resource.SecretType {
		return
	}
	st.subscribed = true
	if k.delta && nonce != "" {
		version = sent.version
	}
	if nack != nil || nonce == "" || version == "" {
		return
	}
	if state, ok := c.secretStates[version]; ok {
		st.secrets = state
	} else if state, ok := c.prevSecretStates[version]; ok {
		st.secrets = state
	} else {
		st.secrets = ""
	}
}

// ProxiesWithout returns the connected proxies (node ids, sorted) that ask
// for Secrets and whose last acknowledged Secret version does not carry the
// security state state: the proxies a CA rotation phase must wait for
// (ca.CA.SetRotationGate). It takes the controller's lock.
func (c *Controller) ProxiesWithout(state string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id, st := range c.nodes {
		if st.subscribed && st.workload != "" && st.secrets != state {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// OnStreamOpen implements serverv3.Callbacks.
func (c *Controller) OnStreamOpen(_ context.Context, id int64, typeURL string) error {
	c.open(streamKey{id: id}, typeURL)
	return nil
}

// OnStreamClosed implements serverv3.Callbacks.
func (c *Controller) OnStreamClosed(id int64, _ *corev3.Node) { c.close(streamKey{id: id}) }

// OnDeltaStreamOpen implements serverv3.Callbacks.
func (c *Controller) OnDeltaStreamOpen(_ context.Context, id int64, typeURL string) error {
	c.open(streamKey{delta: true, id: id}, typeURL)
	return nil
}

// OnDeltaStreamClosed implements serverv3.Callbacks.
func (c *Controller) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.close(streamKey{delta: true, id: id})
}

// OnStreamRequest implements serverv3.Callbacks.
func (c *Controller) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	var nack *statusDetail
	if d := req.GetErrorDetail(); d != nil {
		nack = &statusDetail{msg: d.GetMessage()}
	}
	c.request(streamKey{id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), req.GetVersionInfo(), nack)
	return nil
}

// OnStreamResponse implements serverv3.Callbacks.
func (c *Controller) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, resp *discoveryv3.DiscoveryResponse) {
	k := streamKey{id: id}
	c.mu.Lock()
	if s := c.streams[k]; s != nil {
		s.sent.add(resp.GetTypeUrl(), sotwSent(resp, c.gen))
	}
	c.mu.Unlock()
	c.metrics.responses.WithLabelValues(c.flavor(k), shortType(resp.GetTypeUrl())).Inc()
	c.log.Debug("pushed", "node", c.nodeOf(k), "type", resp.GetTypeUrl(), "version", resp.GetVersionInfo(), "resources", len(resp.GetResources()))
}

// OnStreamDeltaRequest implements serverv3.Callbacks.
func (c *Controller) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	var nack *statusDetail
	if d := req.GetErrorDetail(); d != nil {
		nack = &statusDetail{msg: d.GetMessage()}
	}
	c.request(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), req.GetResponseNonce(), "", nack)
	return nil
}

// OnStreamDeltaResponse implements serverv3.Callbacks.
func (c *Controller) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, resp *discoveryv3.DeltaDiscoveryResponse) {
	k := streamKey{delta: true, id: id}
	c.mu.Lock()
	if s := c.streams[k]; s != nil {
		s.sent.add(resp.GetTypeUrl(), deltaSent(resp, c.gen))
	}
	c.mu.Unlock()
	c.metrics.responses.WithLabelValues(c.flavor(k), shortType(resp.GetTypeUrl())).Inc()
	c.log.Debug("pushed", "node", c.nodeOf(k), "type", resp.GetTypeUrl(), "system_version", resp.GetSystemVersionInfo(),
		"resources", len(resp.GetResources()), "removed", len(resp.GetRemovedResources()))
}

// OnFetchRequest implements serverv3.Callbacks (REST is not served).
func (c *Controller) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error { return nil }

// OnFetchResponse implements serverv3.Callbacks.
func (c *Controller) OnFetchResponse(*discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {}

// cacheLogger adapts slog to go-control-plane's logger, at debug level
// except errors.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(f string, a ...any) { c.l.Debug("cache: " + fmt.Sprintf(f, a...)) }
func (c cacheLogger) Infof(f string, a ...any)  { c.l.Debug("cache: " + fmt.Sprintf(f, a...)) }
func (c cacheLogger) Warnf(f string, a ...any)  { c.l.Debug("cache: " + fmt.Sprintf(f, a...)) }
func (c cacheLogger) Errorf(f string, a ...any) { c.l.Error("cache: " + fmt.Sprintf(f, a...)) }
