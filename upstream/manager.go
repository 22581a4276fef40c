package upstream

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Manager names the clusters of the running configuration. Safe for
// concurrent use: Get is lock-free and may be called on the data path; the set
// is an immutable map swapped atomically by Replace. The zero Manager is empty
// and ready to use.
type Manager struct {
	mu       sync.Mutex // serialises writers
	clusters atomic.Pointer[map[string]*Cluster]
}

// NewManager returns an empty manager.
func NewManager() *Manager { return &Manager{} }

// Get returns the named cluster, or nil.
func (m *Manager) Get(name string) *Cluster {
	if p := m.clusters.Load(); p != nil {
		return (*p)[name]
	}
	return nil
}

// Replace makes clusters the whole set — at startup from static_resources,
// later on each CDS update — and returns the clusters of the previous set
// that are not in the new one (by identity: a cluster replaced by a new
// *Cluster of the same name is returned too).
//
// Replace closes nothing: closing the removed clusters is the caller's
// decision, typically once the listener generation that used them has
// drained (Close only stops DNS refresh; open connections are unaffected,
// and Dial keeps working on the last endpoints). Two clusters with one name,
// or a nil cluster, are an error and change nothing.
func (m *Manager) Replace(clusters []*Cluster) (removed []*Cluster, err error) {
	next := make(map[string]*Cluster, len(clusters))
	for i, c := range clusters {
		if c == nil {
			return nil, fmt.Errorf("upstream: clusters[%d] is nil", i)
		}
		if _, dup := next[c.Name()]; dup {
			return nil, fmt.Errorf("upstream: cluster %q: defined twice", c.Name())
		}
		next[c.Name()] = c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if prev := m.clusters.Load(); prev != nil {
		for name, c := range *prev {
			if next[name] != c {
				removed = append(removed, c)
			}
		}
	}
	m.clusters.Store(&next)
	slices.SortFunc(removed, func(a, b *Cluster) int { return strings.Compare(a.Name(), b.Name()) })
	return removed, nil
}

// Clusters returns the current set sorted by name, for the admin page.
func (m *Manager) Clusters() []*Cluster {
	p := m.clusters.Load()
	if p == nil {
		return nil
	}
	out := make([]*Cluster, 0, len(*p))
	for _, c := range *p {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b *Cluster) int { return strings.Compare(a.Name(), b.Name()) })
	return out
}
