package xds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
)

// stream is one gRPC stream to a source — the aggregated one, or one type's
// own — with its types' protocol state, reopened with backoff when it breaks.
type stream struct {
	c       *Client
	src     *Source
	typeURL string // per-type streams: the one type; "" for ADS

	mu     sync.Mutex // guards states, sendFn, first, generation
	states map[string]*typeState
	// generation counts stream openings, so a delayed NACK is not sent on a
	// newer stream (which resubscribes from scratch anyway).
	generation int
	// sendFn sends on the open stream; nil while disconnected. Requests made
	// while disconnected are not queued: reconnecting sends the whole state.
	sendFn func(sotw *discoveryv3.DiscoveryRequest, delta *discoveryv3.DeltaDiscoveryRequest) error
	first  bool // the next request is the stream's first
}

type sotwStream interface {
	Send(*discoveryv3.DiscoveryRequest) error
	Recv() (*discoveryv3.DiscoveryResponse, error)
}

type deltaStream interface {
	Send(*discoveryv3.DeltaDiscoveryRequest) error
	Recv() (*discoveryv3.DeltaDiscoveryResponse, error)
}

// run keeps the stream open until ctx ends.
func (s *stream) run(ctx context.Context) {
	backoff := s.c.cfg.BackoffBase
	for {
		gotResponse, err := s.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if gotResponse {
			backoff = s.c.cfg.BackoffBase
		}
		wait := jitter(backoff)
		s.c.log.Warn("xds stream ended; reconnecting (serving the last good configuration meanwhile)",
			"source", s.src.Name, "stream", s.label(), "err", err, "retry_in", wait.Round(time.Millisecond))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.c.cfg.BackoffMax)
	}
}

func (s *stream) label() string {
	if s.typeURL == "" {
		return "ads"
	}
	return s.typeURL[strings.LastIndex(s.typeURL, ".")+1:]
}

// once runs one stream until it fails. gotResponse reports whether any
// response arrived (the backoff then starts over).
func (s *stream) once(ctx context.Context) (gotResponse bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.src.Delta {
		st, err := s.openDelta(ctx)
		if err != nil {
			return false, err
		}
		s.connect(func(_ *discoveryv3.DiscoveryRequest, r *discoveryv3.DeltaDiscoveryRequest) error { return st.Send(r) })
		defer s.disconnect()
		for {
			resp, err := st.Recv()
			if err != nil {
				return gotResponse, recvError(err)
			}
			gotResponse = true
			s.onDelta(resp)
		}
	}
	st, err := s.openSotW(ctx)
	if err != nil {
		return false, err
	}
	s.connect(func(r *discoveryv3.DiscoveryRequest, _ *discoveryv3.DeltaDiscoveryRequest) error { return st.Send(r) })
	defer s.disconnect()
	for {
		resp, err := st.Recv()
		if err != nil {
			return gotResponse, recvError(err)
		}
		gotResponse = true
		s.onSotW(resp)
	}
}

func recvError(err error) error {
	if errors.Is(err, io.EOF) {
		return errors.New("server closed the stream")
	}
	return err
}

func (s *stream) openSotW(ctx context.Context) (sotwStream, error) {
	conn := s.src.Conn
	if s.src.ADS {
		return discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	}
	switch s.typeURL {
	case ListenerType:
		return listenerservice.NewListenerDiscoveryServiceClient(conn).StreamListeners(ctx)
	case ClusterType:
		return clusterservice.NewClusterDiscoveryServiceClient(conn).StreamClusters(ctx)
	case EndpointType:
		return endpointservice.NewEndpointDiscoveryServiceClient(conn).StreamEndpoints(ctx)
	case RouteType:
		return routeservice.NewRouteDiscoveryServiceClient(conn).StreamRoutes(ctx)
	case SecretType:
		return secretservice.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	}
	return nil, fmt.Errorf("xds: no service for %s", s.typeURL)
}

func (s *stream) openDelta(ctx context.Context) (deltaStream, error) {
	conn := s.src.Conn
	if s.src.ADS {
		return discoveryv3.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(ctx)
	}
	switch s.typeURL {
	case ListenerType:
		return listenerservice.NewListenerDiscoveryServiceClient(conn).DeltaListeners(ctx)
	case ClusterType:
		return clusterservice.NewClusterDiscoveryServiceClient(conn).DeltaClusters(ctx)
	case EndpointType:
		return endpointservice.NewEndpointDiscoveryServiceClient(conn).DeltaEndpoints(ctx)
	case RouteType:
		return routeservice.NewRouteDiscoveryServiceClient(conn).DeltaRoutes(ctx)
	case SecretType:
		return secretservice.NewSecretDiscoveryServiceClient(conn).DeltaSecrets(ctx)
	}
	return nil, fmt.Errorf("xds: no service for %s", s.typeURL)
}

// connect installs send and (re)sends every subscription: after a reconnect
// the server learns what the client has, so it need not resend it.
func (s *stream) connect(send func(*discoveryv3.DiscoveryRequest, *discoveryv3.DeltaDiscoveryRequest) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendFn, s.first = send, true
	s.generation++
	urls := make([]string, 0, len(s.states))
	for u := range s.states {
		urls = append(urls, u)
	}
	// Clusters before listeners, as Envoy orders its subscriptions.
	sort.Slice(urls, func(i, j int) bool { return subscribeOrder(urls[i]) < subscribeOrder(urls[j]) })
	for _, u := range urls {
		st := s.states[u]
		if !st.interested {
			continue
		}
		if s.src.Delta {
			st.sent = map[string]bool{}
			req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: u, InitialResourceVersions: map[string]string{}}
			if wildcard(u) {
				req.ResourceNamesSubscribe = []string{"*"}
			} else {
				req.ResourceNamesSubscribe = st.names()
			}
			for _, n := range req.ResourceNamesSubscribe {
				st.sent[n] = true
			}
			for n, r := range st.known {
				req.InitialResourceVersions[n] = r.Version
			}
			s.sendLocked(nil, req)
			continue
		}
		st.nonce = "" // nonces are per stream
		s.sendLocked(s.sotwRequest(st, nil), nil)
	}
}

func subscribeOrder(u string) int {
	switch u {
	case ClusterType:
		return 0
	case EndpointType:
		return 1
	case ListenerType:
		return 2
	case RouteType:
		return 3
	}
	return 4
}

func (s *stream) disconnect() {
	s.mu.Lock()
	s.sendFn = nil
	s.mu.Unlock()
}

// sendLocked sends one request if connected, adding the node where the
// protocol wants it. A send error is left to Recv to report.
func (s *stream) sendLocked(sotw *discoveryv3.DiscoveryRequest, delta *discoveryv3.DeltaDiscoveryRequest) {
	if s.sendFn == nil {
		return
	}
	withNode := s.first || (sotw != nil && !s.src.NodeOnFirstMessageOnly)
	if withNode {
		if sotw != nil {
			sotw.Node = s.c.cfg.Node
		} else {
			delta.Node = s.c.cfg.Node
		}
	}
	s.first = false
	if err := s.sendFn(sotw, delta); err != nil {
		s.c.log.Debug("xds send failed", "source", s.src.Name, "err", err)
	}
}

// sotwRequest is the request that states st: its names, the last accepted
// version, the last nonce, and the NACK reason if any.
func (s *stream) sotwRequest(st *typeState, nack error) *discoveryv3.DiscoveryRequest {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: st.url, VersionInfo: st.version, ResponseNonce: st.nonce}
	if !wildcard(st.url) {
		req.ResourceNames = st.names()
	}
	if nack != nil {
		req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	return req
}

// subscribe replaces a named type's subscription and tells the server.
func (s *stream) subscribe(typeURL string, names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.states[typeURL]
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	if maps.Equal(want, st.subscribed) && st.interested == (len(want) > 0) {
		return
	}
	st.subscribed = want
	st.interested = len(want) > 0
	for n := range st.known {
		if !want[n] {
			delete(st.known, n)
		}
	}
	if s.src.Delta {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL}
		if st.sent == nil {
			st.sent = map[string]bool{}
		}
		for n := range want {
			if !st.sent[n] {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, n)
				st.sent[n] = true
			}
		}
		for n := range st.sent {
			if !want[n] {
				req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, n)
				delete(st.sent, n)
			}
		}
		sort.Strings(req.ResourceNamesSubscribe)
		sort.Strings(req.ResourceNamesUnsubscribe)
		if len(req.ResourceNamesSubscribe)+len(req.ResourceNamesUnsubscribe) > 0 {
			s.sendLocked(nil, req)
		}
		return
	}
	s.sendLocked(s.sotwRequest(st, nil), nil)
}

// onSotW handles a state-of-the-world response: decode, merge, apply, then
// ACK or NACK.
func (s *stream) onSotW(resp *discoveryv3.DiscoveryResponse) {
	s.mu.Lock()
	st := s.states[resp.GetTypeUrl()]
	if st == nil {
		// A type Sift does not consume (RTDS, say): acknowledge, no effect.
		s.sendLocked(&discoveryv3.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}, nil)
		s.mu.Unlock()
		return
	}
	st.nonce = resp.GetNonce()
	st.responses++
	next := map[string]resource{}
	if !wildcard(st.url) { // named types: a response may carry only some names
		maps.Copy(next, st.known)
	}
	subscribed := maps.Clone(st.subscribed)
	s.mu.Unlock()

	now := time.Now()
	err := func() error {
		for i, a := range resp.GetResources() {
			m, name, err := decode(resp.GetTypeUrl(), a)
			if err != nil {
				return fmt.Errorf("resources[%d]: %w", i, err)
			}
			if !wildcard(st.url) && !subscribed[name] {
				continue
			}
			next[name] = resource{Msg: m, Version: resp.GetVersionInfo(), LastUpdated: now}
		}
		return s.c.apply(st.url, next)
	}()
	s.finish(st, next, resp.GetVersionInfo(), err, func(nack error) {
		s.sendLocked(s.sotwRequest(st, nack), nil)
	})
}

// onDelta handles an incremental response.
func (s *stream) onDelta(resp *discoveryv3.DeltaDiscoveryResponse) {
	s.mu.Lock()
	st := s.states[resp.GetTypeUrl()]
	if st == nil {
		s.sendLocked(nil, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()})
		s.mu.Unlock()
		return
	}
	st.responses++
	next := maps.Clone(st.known)
	subscribed := maps.Clone(st.subscribed)
	s.mu.Unlock()

	now := time.Now()
	err := func() error {
		for i, r := range resp.GetResources() {
			m, name, err := decode(resp.GetTypeUrl(), r.GetResource())
			if err != nil {
				return fmt.Errorf("resources[%d] (%s): %w", i, r.GetName(), err)
			}
			if r.GetName() != "" && r.GetName() != name {
				return fmt.Errorf("resources[%d]: name %q does not match the resource's own name %q", i, r.GetName(), name)
			}
			if !wildcard(st.url) && !subscribed[name] {
				continue
			}
			next[name] = resource{Msg: m, Version: r.GetVersion(), LastUpdated: now}
		}
		for _, n := range resp.GetRemovedResources() {
			delete(next, n)
		}
		return s.c.apply(st.url, next)
	}()
	s.finish(st, next, resp.GetSystemVersionInfo(), err, func(nack error) {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: st.url, ResponseNonce: resp.GetNonce()}
		if nack != nil {
			req.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
		}
		s.sendLocked(nil, req)
	})
}

// finish records an applied (err == nil) or rejected update and answers.
func (s *stream) finish(st *typeState, next map[string]resource, version string, err error, answer func(nack error)) {
	s.mu.Lock()
	if err == nil {
		if !wildcard(st.url) { // the subscription may have changed meanwhile
			maps.DeleteFunc(next, func(n string, _ resource) bool { return !st.subscribed[n] })
		}
		st.known, st.version = next, version
		st.nackedVersion, st.nackDelay = "", 0
		s.c.log.Debug("xds update accepted", "type", st.url, "version", version, "resources", len(next))
		answer(nil)
	} else {
		err = fmt.Errorf("%s version %q rejected: %w", st.url, version, err)
		if st.nackedVersion == version && version != "" {
			// The same bad version again: answer later (see typeState).
			st.nackDelay = min(max(2*st.nackDelay, minNACKDelay), maxNACKDelay)
			gen, seq, delay := s.generation, st.responses, st.nackDelay
			s.c.log.Debug("xds update rejected again; delaying the NACK", "err", err, "delay", delay)
			time.AfterFunc(delay, func() {
				s.mu.Lock()
				defer s.mu.Unlock()
				// Only if nothing newer came meanwhile: that response has been
				// answered itself, and this NACK would now name its nonce.
				if s.generation == gen && st.responses == seq && s.c.ctx.Err() == nil {
					answer(err)
				}
			})
		} else {
			st.nackedVersion = version
			s.c.log.Warn("xds update rejected (NACK); keeping the last good configuration", "err", err)
			answer(err)
		}
	}
	s.mu.Unlock()
	if wildcard(st.url) {
		s.c.markInitialized(st.url)
	}
}
