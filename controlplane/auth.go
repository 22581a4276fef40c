package controlplane

import (
	"context"
	"errors"
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Authenticator checks that an xDS client may use the node id it sends
// (ca.CA checks a token in the node's metadata). Authenticate must be safe
// for concurrent use, cheap, and its errors must not contain secrets: they
// are logged and returned to the client.
type Authenticator interface {
	Authenticate(node *corev3.Node) error
}

// AuthReasoner is implemented by an Authenticator whose errors fall in a
// few kinds, used as the reason label of
// sift_control_node_auth_failures_total.
type AuthReasoner interface {
	Reason(err error) string
}

// SecurityWatcher is implemented by a Security whose output changes with
// time (certificates renew, trust bundles rotate): Changed receives a value
// whenever the snapshots should be generated again.
type SecurityWatcher interface {
	Changed() <-chan struct{}
}

// SecurityStater is implemented by a Security whose secrets change in
// phases (a CA's root rotation): SecurityState names what Secrets returns
// now. The controller records it per snapshot version, so that
// ProxiesWithout can tell which proxies have acknowledged which phase.
type SecurityStater interface {
	SecurityState() string
}

// authCallbacks puts node authentication in front of a Controller's
// callbacks. The first request of a stream must name a node that the
// Authenticator accepts; a later request naming another node is checked
// again; a request naming none keeps the stream's node (go-control-plane
// does the same). A refused request ends the stream with PermissionDenied
// before the cache sees it, so no watch is ever opened for an
// unauthenticated node: its snapshot — with its private key — cannot be
// read.
type authCallbacks struct {
	*Controller
	auth Authenticator

	mu    sync.Mutex
	nodes map[streamKey]string // stream -> authenticated node id
}

var _ serverv3.Callbacks = (*authCallbacks)(nil)

func (c *Controller) callbacks() serverv3.Callbacks {
	if c.cfg.Authenticator == nil {
		return c
	}
	return &authCallbacks{Controller: c, auth: c.cfg.Authenticator, nodes: map[streamKey]string{}}
}

// check authenticates node for stream k.
func (a *authCallbacks) check(k streamKey, node *corev3.Node) error {
	a.mu.Lock()
	authed, ok := a.nodes[k]
	a.mu.Unlock()
	id := node.GetId()
	if ok && (id == "" || id == authed) {
		return nil
	}
	err := a.auth.Authenticate(node)
	if err == nil {
		if node.GetId() == "" {
			err = errors.New("controlplane: the node has no id")
		} else {
			a.mu.Lock()
			a.nodes[k] = id
			a.mu.Unlock()
			return nil
		}
	}
	reason := "other"
	if r, ok := a.auth.(AuthReasoner); ok {
		reason = r.Reason(err)
	}
	a.metrics.authFailures.WithLabelValues(reason).Inc()
	a.log.Warn("xds stream refused: node authentication failed", "node", id, "reason", reason, "error", err)
	return status.Error(codes.PermissionDenied, "node authentication failed: "+err.Error())
}

func (a *authCallbacks) forget(k streamKey) {
	a.mu.Lock()
	delete(a.nodes, k)
	a.mu.Unlock()
}

// OnStreamRequest implements serverv3.Callbacks.
func (a *authCallbacks) OnStreamRequest(id int64, req *discoveryv3.DiscoveryRequest) error {
	if err := a.check(streamKey{id: id}, req.GetNode()); err != nil {
		return err
	}
	return a.Controller.OnStreamRequest(id, req)
}

// OnStreamDeltaRequest implements serverv3.Callbacks.
func (a *authCallbacks) OnStreamDeltaRequest(id int64, req *discoveryv3.DeltaDiscoveryRequest) error {
	if err := a.check(streamKey{delta: true, id: id}, req.GetNode()); err != nil {
		return err
	}
	return a.Controller.OnStreamDeltaRequest(id, req)
}

// OnStreamClosed implements serverv3.Callbacks.
func (a *authCallbacks) OnStreamClosed(id int64, node *corev3.Node) {
	a.forget(streamKey{id: id})
	a.Controller.OnStreamClosed(id, node)
}

// OnDeltaStreamClosed implements serverv3.Callbacks.
func (a *authCallbacks) OnDeltaStreamClosed(id int64, node *corev3.Node) {
	a.forget(streamKey{delta: true, id: id})
	a.Controller.OnDeltaStreamClosed(id, node)
}

// OnFetchRequest implements serverv3.Callbacks: REST fetches are not
// served, and with authentication on they are refused outright.
func (a *authCallbacks) OnFetchRequest(context.Context, *discoveryv3.DiscoveryRequest) error {
	return status.Error(codes.PermissionDenied, "REST fetches are not served with node authentication on")
}
