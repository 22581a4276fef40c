package tcpproxy

import (
	"context"
	"sync"
	"time"
)

// relayGroup is the set of live relays started with one context (for a
// listener, its generation's: done when the drain time is over) and one
// idle timeout. It replaces two registrations per connection by one per
// group: when the context ends, the group aborts every member (instead of
// a context.AfterFunc per connection, ~170 bytes with its entry in the
// context's children), and one timer samples every member for idle_timeout
// (instead of a timer and its callback per connection, ~140 bytes; see
// idleWatch). A member costs three pointers. This matters for idle
// connections, which hold nothing else but their sockets and the relay.
type relayGroup struct {
	key groupKey

	mu      sync.Mutex
	head    *relay // members, linked through relay.gnext and gprev
	n       int    // members
	done    bool   // the context has ended: members were aborted; a joiner aborts at once
	timer   *time.Timer
	ticking bool     // timer armed (idle > 0 and members)
	scratch []*relay // the sweep's copy of the members, reused
}

type groupKey struct {
	ctx  context.Context
	idle time.Duration // 0: none
}

// groups holds the live groups by key. A group whose context ends is
// removed; one whose context never ends (Done returns nil) stays.
var groups sync.Map // groupKey → *relayGroup

// groupMember is a relay's link in its group. grp is set by join before
// the relay's directions start and never changes; the rest is guarded by
// grp.mu.
type groupMember struct {
	grp          *relayGroup
	gnext, gprev *relay
	inGroup      bool
}

// join adds r to the group of ctx and idle, so that r is aborted when ctx
// ends or after idle without a byte (idle > 0). When ctx has ended
// already, it aborts r at once (as context.AfterFunc runs its function at
// once for a done context). With neither a context that can end nor an
// idle timeout, r joins nothing. Call it once, before r's directions start.
func (r *relay) join(ctx context.Context, idle time.Duration) {
	if ctx.Done() == nil && idle <= 0 {
		return
	}
	key := groupKey{ctx, max(idle, 0)}
	v, ok := groups.Load(key)
	if !ok {
		g := &relayGroup{key: key}
		var loaded bool
		if v, loaded = groups.LoadOrStore(key, g); !loaded && ctx.Done() != nil {
			// Runs at once, on its own goroutine, when ctx is done already.
			context.AfterFunc(ctx, g.abortAll)
		}
	}
	g := v.(*relayGroup)
	if key.idle > 0 {
		r.idle = idleWatch{last: notSampled, quietSince: monoNow()}
	}
	g.mu.Lock()
	if g.done {
		g.mu.Unlock()
		r.abort()
		return
	}
	r.grp, r.inGroup = g, true
	r.gnext = g.head
	if g.head != nil {
		g.head.gprev = r
	}
	g.head = r
	g.n++
	if key.idle > 0 && !g.ticking {
		g.ticking = true
		if g.timer == nil {
			g.timer = time.AfterFunc(idleTick(key.idle), g.sweep)
		} else {
			g.timer.Reset(idleTick(key.idle))
		}
	}
	g.mu.Unlock()
}

// leave removes r from its group (when it finishes), unless abortAll
// already took it out.
func (r *relay) leave() {
	g := r.grp
	if g == nil {
		return
	}
	g.mu.Lock()
	if r.inGroup {
		if r.gprev != nil {
			r.gprev.gnext = r.gnext
		} else {
			g.head = r.gnext
		}
		if r.gnext != nil {
			r.gnext.gprev = r.gprev
		}
		r.gnext, r.gprev, r.inGroup = nil, nil, false
		g.n--
	}
	g.mu.Unlock()
}

// abortAll runs when g's context ends: it aborts every member, serially on
// the context's AfterFunc goroutine, and makes later joiners abort at once.
func (g *relayGroup) abortAll() {
	groups.CompareAndDelete(g.key, g)
	g.mu.Lock()
	g.done = true
	if g.timer != nil {
		g.timer.Stop()
		g.ticking = false
	}
	members := make([]*relay, 0, g.n)
	for r := g.head; r != nil; {
		next := r.gnext
		r.gnext, r.gprev, r.inGroup = nil, nil, false
		members = append(members, r)
		r = next
	}
	g.head, g.n = nil, 0
	g.mu.Unlock()
	// Outside g.mu: an abort may finish its relay, which leaves the group.
	for _, r := range members {
		r.abort()
	}
}

// sweep is the idle timer's function: it samples every member's counters
// (outside g.mu: two getsockopt calls per member) and aborts those idle
// for the whole timeout, then re-arms while there are members. Sweeps
// never overlap (one timer, re-armed at the end).
func (g *relayGroup) sweep() {
	g.mu.Lock()
	batch := g.scratch[:0]
	for r := g.head; r != nil; r = r.gnext {
		batch = append(batch, r)
	}
	g.scratch = nil
	g.mu.Unlock()
	now := monoNow()
	for i, r := range batch {
		// A member that finished meanwhile is sampled once more at most;
		// aborting it again does nothing.
		if r.checkIdle(now, g.key.idle) {
			r.abort() // may finish r, which leaves the group: not under g.mu
		}
		batch[i] = nil
	}
	g.mu.Lock()
	g.scratch = batch[:0]
	if g.n > 0 && !g.done {
		g.timer.Reset(idleTick(g.key.idle))
	} else {
		g.ticking = false
	}
	g.mu.Unlock()
}

// size returns how many relays are in g (for tests).
func (g *relayGroup) size() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}
