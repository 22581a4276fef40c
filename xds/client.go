package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Source is one xDS server and how to speak to it.
type Source struct {
	// Conn reaches the server. The client closes it on Close.
	Conn *grpc.ClientConn
	// ADS multiplexes every type routed to this source on one aggregated
	// stream; otherwise each type gets its own stream on its own service
	// (LDS, CDS, EDS, RDS, SDS).
	ADS bool
	// Delta speaks the incremental protocol (api_type DELTA_GRPC).
	Delta bool
	// NodeOnFirstMessageOnly sends the node on a stream's first request only
	// (set_node_on_first_message_only); delta streams always do.
	NodeOnFirstMessageOnly bool
	// Name identifies the source in logs and errors.
	Name string
}

// Config is a Client's configuration.
type Config struct {
	Node    *corev3.Node
	Handler Handler
	// Sources routes each type URL to the source that serves it. Types
	// without a source cannot be subscribed to.
	Sources map[string]*Source
	// InitialFetchTimeout bounds the wait for a type's first response before
	// Initialized stops waiting for it (Envoy's initial_fetch_timeout,
	// default 15 s; zero waits forever).
	InitialFetchTimeout map[string]time.Duration
	Logger              *slog.Logger
	// Backoff between reconnects: from BackoffBase doubling to BackoffMax,
	// with jitter (defaults 500 ms and 30 s).
	BackoffBase, BackoffMax time.Duration
}

// Client is an xDS client. Its methods are safe for concurrent use.
type Client struct {
	cfg     Config
	log     *slog.Logger
	applyMu sync.Mutex // serialises Handler.Apply
	streams map[string]*stream
	byType  map[string]*stream

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	initMu  sync.Mutex
	pending map[string]bool // wildcard types awaiting their first response
	initted chan struct{}
}

// New validates cfg and returns a client; Start begins subscribing.
func New(cfg Config) (*Client, error) {
	if cfg.Handler == nil {
		return nil, errors.New("xds: no handler")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.BackoffBase <= 0 {
		cfg.BackoffBase = 500 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger.With("component", "xds"),
		streams: map[string]*stream{}, byType: map[string]*stream{},
		pending: map[string]bool{}, initted: make(chan struct{}),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	for typeURL, src := range cfg.Sources {
		if _, ok := newResource(typeURL); !ok {
			return nil, fmt.Errorf("xds: unsupported resource type %s", typeURL)
		}
		key := src.Name + "|" + typeURL
		if src.ADS {
			key = src.Name + "|ads"
		}
		s := c.streams[key]
		if s == nil {
			s = &stream{c: c, src: src, states: map[string]*typeState{}}
			if !src.ADS {
				s.typeURL = typeURL
			}
			c.streams[key] = s
		}
		s.states[typeURL] = &typeState{url: typeURL, subscribed: map[string]bool{}, known: map[string]resource{}}
		c.byType[typeURL] = s
	}
	return c, nil
}

// Start subscribes to every wildcard type (LDS, CDS) that has a source and
// starts the streams. Named types are subscribed by the Handler through
// Subscribe as the resources that reference them arrive.
func (c *Client) Start() {
	for typeURL, s := range c.byType {
		if wildcard(typeURL) {
			c.initMu.Lock()
			c.pending[typeURL] = true
			c.initMu.Unlock()
			s.mu.Lock()
			s.states[typeURL].interested = true
			s.mu.Unlock()
			if t := c.cfg.InitialFetchTimeout[typeURL]; t > 0 {
				typeURL := typeURL
				timer := time.AfterFunc(t, func() {
					if c.markInitialized(typeURL) {
						c.log.Warn("initial fetch timed out; continuing without it", "type", typeURL, "timeout", t)
					}
				})
				c.wg.Add(1)
				go func() { defer c.wg.Done(); <-c.ctx.Done(); timer.Stop() }()
			}
		}
	}
	c.initMu.Lock()
	if len(c.pending) == 0 {
		close(c.initted)
	}
	c.initMu.Unlock()
	for _, s := range c.streams {
		c.wg.Add(1)
		go func() { defer c.wg.Done(); s.run(c.ctx) }()
	}
}

// Initialized is closed once LDS and CDS have each had a first response (or
// their initial fetch timed out): the proxy is then ready to serve.
func (c *Client) Initialized() <-chan struct{} { return c.initted }

// markInitialized records typeURL's first response (or its timeout) and
// reports whether it was still awaited.
func (c *Client) markInitialized(typeURL string) bool {
	c.initMu.Lock()
	defer c.initMu.Unlock()
	if !c.pending[typeURL] {
		return false
	}
	delete(c.pending, typeURL)
	if len(c.pending) == 0 {
		close(c.initted)
	}
	return true
}

// Subscribe makes names the subscription of a named type (EDS, RDS, SDS),
// replacing the previous one; resources no longer named are forgotten.
func (c *Client) Subscribe(typeURL string, names []string) error {
	s := c.byType[typeURL]
	if s == nil {
		return fmt.Errorf("xds: no config source for %s", typeURL)
	}
	s.subscribe(typeURL, names)
	return nil
}

// CanSubscribe reports whether a source serves typeURL.
func (c *Client) CanSubscribe(typeURL string) bool { return c.byType[typeURL] != nil }

// Close stops every stream and closes the sources' connections.
func (c *Client) Close() {
	c.cancel()
	c.wg.Wait()
	closed := map[*grpc.ClientConn]bool{}
	for _, s := range c.streams {
		if !closed[s.src.Conn] {
			closed[s.src.Conn] = true
			s.src.Conn.Close()
		}
	}
}

// Resource is an accepted resource, for config dumps.
type Resource struct {
	Msg proto.Message
	// Version is the resource's own version (delta), or the response's.
	Version     string
	LastUpdated time.Time
}

// Accepted returns the accepted resources of typeURL and the version of the
// last accepted update.
func (c *Client) Accepted(typeURL string) (string, map[string]Resource) {
	s := c.byType[typeURL]
	if s == nil {
		return "", nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.states[typeURL]
	out := make(map[string]Resource, len(st.known))
	for n, r := range st.known {
		out[n] = Resource(r)
	}
	return st.version, out
}

// apply runs the handler on a candidate set, serialised with other applies.
func (c *Client) apply(typeURL string, next map[string]resource) error {
	msgs := make(map[string]proto.Message, len(next))
	for n, r := range next {
		msgs[n] = r.Msg
	}
	c.applyMu.Lock()
	defer c.applyMu.Unlock()
	return c.cfg.Handler.Apply(typeURL, msgs)
}

// resource is an accepted resource.
type resource struct {
	Msg         proto.Message
	Version     string
	LastUpdated time.Time
}

// typeState is the protocol state of one type on one stream. Guarded by the
// stream's mu.
type typeState struct {
	url        string
	interested bool            // subscribed at all (wildcard, or named with names)
	subscribed map[string]bool // named types: the names
	version    string          // last accepted version (SotW) / system version (delta)
	nonce      string          // last response nonce (SotW)
	known      map[string]resource
	// sent is, for delta, the names the server has been told on this stream.
	sent map[string]bool
	// nackedVersion and nackDelay damp NACK loops: a server that answers a
	// NACK by resending the same bad version at once (go-control-plane's
	// snapshot cache does) gets each further NACK of that version later,
	// doubling up to maxNACKDelay, instead of in a hot loop.
	nackedVersion string
	nackDelay     time.Duration
	// responses counts the responses received for the type; a delayed NACK
	// is dropped if another response came after the one it answers.
	responses uint64
}

const (
	minNACKDelay = 100 * time.Millisecond
	maxNACKDelay = 10 * time.Second
)

func (st *typeState) names() []string {
	names := make([]string, 0, len(st.subscribed))
	for n := range st.subscribed {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// jitter returns d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d*4/5 + rand.N(d*2/5+1)
}
