// Package listener accepts connections and carries each through Envoy's
// listener pipeline: listener filters on a peeking connection under one
// deadline, filter-chain match, then the chain's network filter.
//
// Configuration comes in generations: a Config is built and validated
// offline (Decode), swapped in atomically, and connections keep the
// generation they were accepted on; an old generation drains — its
// connections are told (Downstream.Draining), then closed when the drain time
// ends.
package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener/chainmatch"
)

// peekLimit caps the bytes any listener filter may peek (Envoy's
// tls_inspector reads at most 64 KiB too).
const peekLimit = 64 << 10

// Stats are a listener's counters. Fields are updated atomically.
type Stats struct {
	Accepted         atomic.Uint64 // connections accepted (or handed off to this listener)
	Active           atomic.Int64  // connections open now
	NoChain          atomic.Uint64 // closed: no filter chain matched
	FiltersTimeout   atomic.Uint64 // closed: listener filters timed out
	FiltersError     atomic.Uint64 // closed: a listener filter failed (read error)
	DetectionRan     atomic.Uint64 // protocol detection ran
	DetectionSkipped atomic.Uint64 // protocol detection was skipped or disabled
	// Detection outcomes of connections that reached filter-chain match.
	DetectionServerFirst atomic.Uint64 // the server spoke first (after the grace period, or learned)
	DetectionRaced       atomic.Uint64 // an early upstream was opened (or tried) for the race
	DetectionTimeout     atomic.Uint64 // the client stayed silent until the timeout (failed open)
	// DetectionClosed counts connections closed by detection: failing closed
	// on timeout, or a read error.
	DetectionClosed  atomic.Uint64
	TLSHandshakes    atomic.Uint64 // the chain's TLS handshake completed
	TLSHandshakeFail atomic.Uint64 // closed: the chain's TLS handshake failed or timed out
	// TLSHandshakeTimeout counts the failures that were the chain's
	// transport_socket_connect_timeout (half-open handshakes).
	TLSHandshakeTimeout atomic.Uint64
}

// Listener is one bound (or hand-off only) listener and its generations.
type Listener struct {
	name string
	mgr  *Manager
	ln   net.Listener // nil when not bound to a port
	addr netip.AddrPort
	// genMu orders acquiring a generation for a new connection against
	// swapping it out, so that no connection joins a generation that has
	// started draining (its WaitGroup could already have been waited on).
	genMu sync.Mutex
	gen   atomic.Pointer[generation]
	stats Stats
	log   *slog.Logger

	acceptDone chan struct{}
}

// generation is one Config in service and the connections accepted on it.
type generation struct {
	cfg        *Config
	drainCtx   context.Context    // done when the generation starts draining
	startDrain context.CancelFunc //
	draining   <-chan struct{}    // drainCtx.Done()
	ctx        context.Context    // cancelled when its connections must end now
	cancel     context.CancelFunc //
	conns      sync.WaitGroup
}

func newGeneration(cfg *Config) *generation {
	ctx, cancel := context.WithCancel(context.Background())
	drainCtx, startDrain := context.WithCancel(context.Background())
	return &generation{cfg: cfg, drainCtx: drainCtx, startDrain: startDrain, draining: drainCtx.Done(), ctx: ctx, cancel: cancel}
}

// drain tells the generation's connections to finish, waits up to
// drainTime for them, then ends the rest. It blocks until all have ended.
func (g *generation) drain(drainTime time.Duration) {
	g.startDrain()
	done := make(chan struct{})
	go func() { g.conns.Wait(); close(done) }()
	timer := time.NewTimer(drainTime)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	}
	g.cancel()
	<-done
}

// acquire returns the generation in service with a connection added to it.
func (l *Listener) acquire() *generation {
	l.genMu.Lock()
	g := l.gen.Load()
	g.conns.Add(1)
	l.genMu.Unlock()
	return g
}

// swap puts cfg in service and returns the previous generation.
func (l *Listener) swap(cfg *Config) *generation {
	l.genMu.Lock()
	defer l.genMu.Unlock()
	return l.gen.Swap(newGeneration(cfg))
}

// Name returns the listener's name.
func (l *Listener) Name() string { return l.name }

// Addr returns the bound address; for a listener not bound to a port, its
// configured address.
func (l *Listener) Addr() netip.AddrPort { return l.addr }

// Stats returns the listener's counters.
func (l *Listener) Stats() *Stats { return &l.stats }

// Config returns the configuration in service.
func (l *Listener) Config() *Config { return l.gen.Load().cfg }

func (l *Listener) acceptLoop() {
	defer close(l.acceptDone)
	var backoff time.Duration
	for {
		c, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("accept failed; retrying", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		go l.serve(c, l.acquire(), time.Now())
	}
}

// connEnd is the bookkeeping a connection owes its listeners when it ends:
// the Active gauge and the generation's drain wait of the listener that
// accepted it (and of the one it was handed off to), and the done functions
// of the chain's connection filters (connection_limit). It runs once: when
// serve returns, or — when the network filter detached the connection
// (filters.Downstream.Detach) — when the filter calls the end function.
type connEnd struct {
	held       [2]heldGen // accepting listener, then the hand-off target
	nHeld      int
	filterDone []func() // in admission order; called in reverse
	detached   bool     // the end function belongs to the network filter
}

type heldGen struct {
	l *Listener
	g *generation
}

// hold counts the connection as accepted and active on l and g (g.conns has
// been incremented for it).
func (e *connEnd) hold(l *Listener, g *generation) {
	l.stats.Accepted.Add(1)
	l.stats.Active.Add(1)
	e.held[e.nHeld] = heldGen{l, g}
	e.nHeld++
}

// Detach implements filters.Detacher.
func (e *connEnd) Detach() func() {
	e.detached = true
	return e.end
}

// endUnlessDetached ends the connection's bookkeeping when serve returns,
// unless the network filter took it over.
func (e *connEnd) endUnlessDetached() {
	if !e.detached {
		e.end()
	}
}

// end releases what the connection held, once.
func (e *connEnd) end() {
	for i := len(e.filterDone) - 1; i >= 0; i-- {
		e.filterDone[i]()
	}
	for i := e.nHeld - 1; i >= 0; i-- {
		h := e.held[i]
		h.l.stats.Active.Add(-1)
		h.g.conns.Done()
	}
}

// serve carries one connection through the pipeline on generation g.
// g.conns has been incremented for it.
func (l *Listener) serve(c net.Conn, g *generation, accepted time.Time) {
	ce := &connEnd{}
	ce.hold(l, g)
	defer ce.endUnlessDetached()

	info := &filters.ConnInfo{LocalAddr: addrPort(c.LocalAddr()), RemoteAddr: addrPort(c.RemoteAddr()), AcceptedAt: accepted,
		Listener: l.name, Direction: g.cfg.Direction, Fallback: g}
	peeked, ok := l.inspect(c, g.cfg, info, accepted)
	if !ok {
		l.record(info, nil, OutcomeClosed)
		logUnserved(g.cfg, info, false)
		closeEarly(info)
		c.Close()
		return
	}
	if g.cfg.UseOriginalDst && info.LocalAddrRestored {
		if target := l.mgr.handOffTarget(info.LocalAddr); target != nil && target != l {
			closeEarly(info) // opened for this listener's chains, not the target's
			tg := target.acquire()
			// Envoy runs the receiving listener's filters again from the start;
			// bytes peeked so far are not lost: the target re-reads them.
			target.serveHandedOff(c, tg, info, peeked, accepted, ce)
			return
		}
	}
	l.dispatch(c, g, info, peeked, ce)
}

// serveHandedOff serves a connection another listener accepted and handed to
// this one because its original destination is this listener's address.
// g.conns has been incremented for it; ce (the accepting listener's) holds
// it from then on.
func (l *Listener) serveHandedOff(c net.Conn, g *generation, prev *filters.ConnInfo, peeked []byte, accepted time.Time, ce *connEnd) {
	ce.hold(l, g)
	info := &filters.ConnInfo{LocalAddr: prev.LocalAddr, RemoteAddr: prev.RemoteAddr, LocalAddrRestored: true, AcceptedAt: accepted,
		Listener: l.name, Direction: g.cfg.Direction, Fallback: g}
	conn := net.Conn(c)
	if len(peeked) > 0 {
		conn = filters.NewDownstream(c, peeked, info, nil).Conn()
	}
	more, ok := l.inspect(conn, g.cfg, info, accepted)
	if !ok {
		l.record(info, nil, OutcomeClosed)
		logUnserved(g.cfg, info, false)
		closeEarly(info)
		c.Close()
		return
	}
	// The replaying conn delivered peeked first; what inspect read is a
	// superset of peeked when it read at all.
	if len(more) < len(peeked) {
		more = peeked
	}
	l.dispatch(c, g, info, more, ce)
}

// dispatch picks the filter chain and hands the connection to its network
// filter, which may detach it (ce then ends when the filter says so).
func (l *Listener) dispatch(c net.Conn, g *generation, info *filters.ConnInfo, peeked []byte, ce *connEnd) {
	if info.TransportProtocol == "" {
		info.TransportProtocol = filters.TransportRawBuffer
	}
	chain := g.cfg.match(info)
	l.countDetection(info)
	if chain == nil {
		l.stats.NoChain.Add(1)
		l.record(info, nil, OutcomeNoChain)
		logUnserved(g.cfg, info, true)
		l.log.Debug("no filter chain matched; closing", "remote", info.RemoteAddr, "local", info.LocalAddr,
			"transport", info.TransportProtocol, "sni", info.ServerName, "alpn", info.ApplicationProtocols)
		closeEarly(info)
		c.Close()
		return
	}
	adoptEarly(info, chain)
	l.record(info, chain, OutcomeDispatched)
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		d := &info.Detection
		l.log.Debug("connection", "remote", info.RemoteAddr, "local", info.LocalAddr, "chain", chain.Name,
			"detected", d.Protocol, "reason", d.Reason, "detect_bytes", d.Bytes, "detect_duration", d.Duration,
			"verdicts", verdictsAttr(d), "raced", d.Raced, "race_error", d.RaceError, "early_upstream_reused", info.Early != nil)
	}
	if chain.TLS != nil { // the transport socket wraps the connection (tls.go)
		tc, ok := l.handshake(g.ctx, c, chain, info, peeked)
		if !ok {
			closeEarly(info)
			c.Close()
			return
		}
		c, peeked = tc, nil
	}
	d := filters.NewDownstream(c, peeked, info, g.draining)
	d.DrainContext = g.drainCtx
	defer closeEarly(info) // a filter that can adopt it took it at once
	if len(chain.Connection) > 0 {
		ce.filterDone = make([]func(), 0, len(chain.Connection))
	}
	for _, cf := range chain.Connection {
		done, ok := cf.Admit(g.ctx, d)
		if !ok {
			c.Close()
			return
		}
		ce.filterDone = append(ce.filterDone, done)
	}
	d.AllowDetach(ce)
	chain.Network.ServeConn(g.ctx, d)
}

// inspect runs the listener filters. It returns the peeked bytes and false
// when the connection must be closed.
func (l *Listener) inspect(c net.Conn, cfg *Config, info *filters.ConnInfo, accepted time.Time) ([]byte, bool) {
	if len(cfg.ListenerFilters) == 0 {
		l.noteSkipped(info, filters.ReasonSkipped)
		return nil, true
	}
	var deadline time.Time
	if cfg.FiltersTimeout > 0 {
		deadline = accepted.Add(cfg.FiltersTimeout)
	}
	pc := NewPeekConn(c, peekLimit, deadline)
	for _, lf := range cfg.ListenerFilters {
		provides := lf.Filter.Provides()
		if lf.Disabled != nil && lf.Disabled(info.LocalAddr.Port()) {
			l.noteSkipped(info, filters.ReasonDisabled)
			continue
		}
		if provides&filters.FieldDestination == 0 && provides&cfg.needs(info) == 0 {
			// Nothing this filter could find would change the chain: an
			// opaque port costs no detection time.
			l.noteSkipped(info, filters.ReasonOpaquePort)
			continue
		}
		if provides&filters.FieldsDetected != 0 {
			l.stats.DetectionRan.Add(1)
		}
		if err := lf.Filter.OnAccept(pc, info); err != nil {
			l.stats.FiltersError.Add(1)
			if provides&filters.FieldsDetected != 0 {
				l.stats.DetectionClosed.Add(1)
			}
			l.log.Debug("listener filter failed; closing", "filter", lf.Name, "remote", info.RemoteAddr, "err", err)
			return nil, false
		}
		if pc.TimedOut() {
			if !cfg.ContinueOnFiltersTimeout {
				l.stats.FiltersTimeout.Add(1)
				l.log.Debug("listener filters timed out; closing", "remote", info.RemoteAddr, "timeout", cfg.FiltersTimeout)
				return nil, false
			}
			break
		}
	}
	peeked, err := pc.Release()
	if err != nil {
		l.log.Debug("connection failed during inspection", "remote", info.RemoteAddr, "err", err)
		return nil, false
	}
	return peeked, true
}

func (l *Listener) noteSkipped(info *filters.ConnInfo, reason string) {
	if !info.Detection.Ran && info.Detection.Reason == "" {
		info.Detection.Reason = reason
		l.stats.DetectionSkipped.Add(1)
	}
}

// needs reports which detected fields could change the chain for info's addresses.
func (cfg *Config) needs(info *filters.ConnInfo) filters.Field {
	return cfg.table.Needs(chainmatch.Input{Destination: info.LocalAddr, Source: info.RemoteAddr})
}

// match returns the chain for info, the default chain, or nil.
func (cfg *Config) match(info *filters.ConnInfo) *FilterChain {
	return cfg.chainFor(chainmatch.Input{
		Destination:          info.LocalAddr,
		Source:               info.RemoteAddr,
		ServerName:           info.ServerName,
		TransportProtocol:    info.TransportProtocol,
		ApplicationProtocols: info.ApplicationProtocols,
	})
}

// chainFor returns the chain in's facts select, the default chain, or nil.
func (cfg *Config) chainFor(in chainmatch.Input) *FilterChain {
	if i, ok := cfg.table.Match(in); ok {
		return cfg.Chains[i]
	}
	return cfg.DefaultChain
}

// Manager runs a set of listeners by name. Its methods are safe for
// concurrent use; Apply calls are serialised.
type Manager struct {
	log       *slog.Logger
	drainTime time.Duration

	mu        sync.Mutex // serialises Apply and Shutdown
	listeners atomic.Pointer[map[string]*Listener]
	draining  sync.WaitGroup // generations draining in the background

	detections *DetectionLog
}

// Detections returns the log of recent connections' detection records,
// shared by every listener of the manager.
func (m *Manager) Detections() *DetectionLog { return m.detections }

// NewManager returns a manager whose replaced generations drain for drainTime.
func NewManager(log *slog.Logger, drainTime time.Duration) *Manager {
	m := &Manager{log: log, drainTime: drainTime, detections: NewDetectionLog(DefaultDetectionLogSize)}
	empty := map[string]*Listener{}
	m.listeners.Store(&empty)
	return m
}

// Listeners returns the running listeners by name. The map must not be modified.
func (m *Manager) Listeners() map[string]*Listener { return *m.listeners.Load() }

// Get returns the named listener, or nil.
func (m *Manager) Get(name string) *Listener { return m.Listeners()[name] }

// Apply makes the running listeners exactly cfgs: new names are bound,
// listeners whose address is unchanged get a new generation on the same
// socket (no connection is refused), changed addresses are rebound, and
// listeners no longer present stop accepting and drain. Binding errors leave
// the running set unchanged.
func (m *Manager) Apply(cfgs []*Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.Listeners()
	next := make(map[string]*Listener, len(cfgs))
	var started []*Listener // bound by this call, closed if it fails
	fail := func(err error) error {
		for _, l := range started {
			l.ln.Close()
		}
		return err
	}
	reuse := map[string]bool{}
	for _, cfg := range cfgs {
		if _, dup := next[cfg.Name]; dup {
			return fail(fmt.Errorf("listener: duplicate listener name %q", cfg.Name))
		}
		if l := old[cfg.Name]; l != nil && l.sameSocket(cfg) {
			next[cfg.Name] = l
			reuse[cfg.Name] = true
			continue
		}
		l, err := m.bind(cfg)
		if err != nil {
			return fail(err)
		}
		started = append(started, l)
		next[cfg.Name] = l
	}
	// Commit: swap generations of reused listeners, start new ones, retire the rest.
	for _, cfg := range cfgs {
		l := next[cfg.Name]
		if reuse[cfg.Name] {
			if prev := l.swap(cfg); prev.cfg != cfg {
				m.retire(prev)
			}
		}
	}
	m.listeners.Store(&next)
	for _, l := range started {
		if l.ln != nil {
			go l.acceptLoop()
		}
	}
	for name, l := range old {
		if next[name] != l {
			m.stop(l)
		}
	}
	return nil
}

func (l *Listener) sameSocket(cfg *Config) bool {
	c := l.Config()
	return c.Address == cfg.Address && c.BindToPort == cfg.BindToPort
}

func (m *Manager) bind(cfg *Config) (*Listener, error) {
	l := &Listener{name: cfg.Name, mgr: m, log: m.log.With("listener", cfg.Name), acceptDone: make(chan struct{})}
	l.gen.Store(newGeneration(cfg))
	if !cfg.BindToPort {
		l.addr = netip.MustParseAddrPort(cfg.Address)
		close(l.acceptDone)
		return l, nil
	}
	// The configured family only, as Envoy binds: with plain "tcp", Go makes
	// 0.0.0.0 (and [::]) a dual-stack [::] socket, which accepts IPv6 on an
	// IPv4 listener and reports [::] — so use_original_dst never found a
	// 0.0.0.0 listener for an IPv4 destination (handOffTarget).
	network := "tcp4"
	if ap, err := netip.ParseAddrPort(cfg.Address); err == nil && ap.Addr().Is6() {
		network = "tcp6" // IPV6_V6ONLY: Envoy's default (ipv4_compat is not supported)
	}
	// No TCP keep-alive on accepted connections, as Envoy (it enables it
	// only through socket options); Go's default would set it on each.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), network, cfg.Address)
	if err != nil {
		return nil, fmt.Errorf("listener %q: %w", cfg.Name, err)
	}
	l.ln = ln
	l.addr = addrPort(ln.Addr())
	l.log.Info("listening", "address", l.addr.String())
	return l, nil
}

// retire drains a replaced generation in the background.
func (m *Manager) retire(g *generation) {
	m.draining.Add(1)
	go func() {
		defer m.draining.Done()
		g.drain(m.drainTime)
	}()
}

// stop closes l's socket and drains its generation in the background.
func (m *Manager) stop(l *Listener) {
	if l.ln != nil {
		l.ln.Close()
	}
	m.draining.Add(1)
	go func() {
		defer m.draining.Done()
		<-l.acceptDone
		l.gen.Load().drain(m.drainTime)
	}()
}

// Shutdown stops accepting on every listener, drains all connections (up to
// the drain time, or until ctx is done, whichever is first), and returns when
// every connection has ended.
func (m *Manager) Shutdown(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	all := m.Listeners()
	empty := map[string]*Listener{}
	m.listeners.Store(&empty)
	for _, l := range all {
		m.stop(l)
	}
	done := make(chan struct{})
	go func() { m.draining.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		for _, l := range all {
			l.gen.Load().cancel()
		}
		<-done
	}
}

// handOffTarget finds the listener for a restored original destination:
// an exact address match first, then a wildcard address on the same port.
func (m *Manager) handOffTarget(dst netip.AddrPort) *Listener {
	var wildcard *Listener
	for _, l := range m.Listeners() {
		switch {
		case l.addr == dst:
			return l
		case l.addr.Port() == dst.Port() && l.addr.Addr().IsUnspecified() &&
			l.addr.Addr().Is4() == dst.Addr().Is4():
			wildcard = l
		}
	}
	return wildcard
}
