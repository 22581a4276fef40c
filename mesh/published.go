package mesh

import (
	"context"
	"sync"
	"sync/atomic"
)

// Published is the half of a Source that every implementation shares: the
// current mesh and the channels of its watchers. A source embeds it, which
// gives it Snapshot and Watch, and calls Set for its first mesh and Publish
// for each later one. Safe for concurrent use; the zero value is ready.
type Published struct {
	cur  atomic.Pointer[Mesh]
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Snapshot implements Source: the current mesh, nil before the first Set.
func (p *Published) Snapshot() *Mesh { return p.cur.Load() }

// Watch implements Source.
func (p *Published) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	p.mu.Lock()
	if p.subs == nil {
		p.subs = map[chan struct{}]struct{}{}
	}
	p.subs[ch] = struct{}{}
	p.mu.Unlock()
	context.AfterFunc(ctx, func() {
		p.mu.Lock()
		delete(p.subs, ch)
		close(ch)
		p.mu.Unlock()
	})
	return ch
}

// Set makes m current without notifying (a source's first mesh).
func (p *Published) Set(m *Mesh) { p.cur.Store(m) }

// Publish makes m current and notifies every watcher; notifications
// coalesce and never block.
func (p *Published) Publish(m *Mesh) {
	p.cur.Store(m)
	p.mu.Lock()
	for ch := range p.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	p.mu.Unlock()
}
