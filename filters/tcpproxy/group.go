package tcpproxy

import (
	"context"
	"sync"
)

// relayGroup is the set of live relays started with one context (for a
// listener, its generation's: done when the drain time is over). When the
// context ends, the group aborts every member. It replaces a
// context.AfterFunc per connection — about 170 bytes each, with its entry
// in the context's children — by one per context and two list pointers per
// relay, which matters for idle connections that hold nothing else.
type relayGroup struct {
	ctx  context.Context
	mu   sync.Mutex
	head *relay // members, linked through relay.gnext and gprev
	n    int    // members
	done bool   // ctx has ended: members were aborted; a joiner aborts at once
}

// groups maps a context to its relayGroup until the context ends.
var groups sync.Map // context.Context → *relayGroup

// groupMember is a relay's link in its group. grp is set by join before
// the relay's directions start and never changes; the rest is guarded by
// grp.mu.
type groupMember struct {
	grp          *relayGroup
	gnext, gprev *relay
	inGroup      bool
}

// join adds r to ctx's group, so that r is aborted when ctx ends. When ctx
// has ended already, it aborts r at once (as context.AfterFunc runs its
// function at once for a done context). A context that never ends (Done
// returns nil) has no group. Call it once, before r's directions start.
func (r *relay) join(ctx context.Context) {
	if ctx.Done() == nil {
		return
	}
	v, ok := groups.Load(ctx)
	if !ok {
		g := &relayGroup{ctx: ctx}
		var loaded bool
		if v, loaded = groups.LoadOrStore(ctx, g); !loaded {
			// Runs at once, on its own goroutine, when ctx is done already.
			context.AfterFunc(ctx, g.abortAll)
		}
	}
	g := v.(*relayGroup)
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
	groups.CompareAndDelete(g.ctx, g)
	g.mu.Lock()
	g.done = true
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

// size returns how many relays are in g (for tests).
func (g *relayGroup) size() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.n
}
