// Package learn remembers destinations that proved to be server-speaks-first,
// so that protocol detection can start the server-first race at accept
// instead of after a grace period (see filters/detect and docs/detection.md).
//
// A destination is an address and port: the original destination of a
// redirected connection, or the listener's own address, whose fallback
// chain then names the cluster. It is learned after it proved server-first
// a threshold number of times, stays learned for a TTL that each new proof
// refreshes, and is forgotten at once when a client speaks first to it.
// Memory is bounded: the least recently proven entry is evicted first.
package learn

import (
	"container/list"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCapacity bounds a Table made with capacity ≤ 0.
const DefaultCapacity = 4096

// Table is the set of destinations seen to be server-first. It is safe for
// concurrent use; its methods take one short lock, and Learned and
// ClientFirst take none while the table is empty.
type Table struct {
	mu       sync.Mutex
	capacity int
	entries  map[netip.AddrPort]*list.Element // of *entry
	lru      list.List                        // front: most recently proven
	size     atomic.Int64                     // len(entries), read without mu
	now      func() time.Time

	evictions atomic.Uint64
	forgotten atomic.Uint64
}

type entry struct {
	dst          netip.AddrPort
	proofs       uint64
	firstSeen    time.Time
	lastProof    time.Time
	learnedAt    time.Time // zero until the threshold is reached
	learnedUntil time.Time
}

// New returns an empty table holding at most capacity destinations
// (DefaultCapacity when capacity ≤ 0).
func New(capacity int) *Table {
	return NewWithClock(capacity, time.Now)
}

// NewWithClock is New with the clock the table reads (tests).
func NewWithClock(capacity int, now func() time.Time) *Table {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	return &Table{capacity: capacity, entries: map[netip.AddrPort]*list.Element{}, now: now}
}

// Learned reports whether dst is learned now: it proved server-first at
// least the threshold number of times and its TTL has not passed.
func (t *Table) Learned(dst netip.AddrPort) bool {
	if t == nil || t.size.Load() == 0 {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	el := t.entries[dst]
	if el == nil {
		return false
	}
	e := el.Value.(*entry)
	if e.learnedAt.IsZero() {
		return false
	}
	if !t.now().Before(e.learnedUntil) {
		t.remove(el) // expired: the next connections race after the grace period again
		return false
	}
	return true
}

// ServerFirst records that dst's server spoke first. Once dst has done so
// after times (at least 1), it is learned for ttl; every later proof
// extends the TTL. It reports whether dst is learned after this proof.
func (t *Table) ServerFirst(dst netip.AddrPort, after int, ttl time.Duration) bool {
	if t == nil || after < 1 || ttl <= 0 {
		return false
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var e *entry
	if el := t.entries[dst]; el != nil {
		e = el.Value.(*entry)
		if !e.learnedAt.IsZero() && !now.Before(e.learnedUntil) {
			// Expired: start counting afresh.
			*e = entry{dst: dst, firstSeen: now}
		}
		t.lru.MoveToFront(el)
	} else {
		for len(t.entries) >= t.capacity {
			t.remove(t.lru.Back())
			t.evictions.Add(1)
		}
		e = &entry{dst: dst, firstSeen: now}
		t.entries[dst] = t.lru.PushFront(e)
		t.size.Store(int64(len(t.entries)))
	}
	e.proofs++
	e.lastProof = now
	if e.proofs >= uint64(after) {
		if e.learnedAt.IsZero() {
			e.learnedAt = now
		}
		e.learnedUntil = now.Add(ttl)
		return true
	}
	return false
}

// ClientFirst records that a client spoke first to dst: whatever was
// learned or counted about dst is forgotten.
func (t *Table) ClientFirst(dst netip.AddrPort) {
	if t == nil || t.size.Load() == 0 {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if el := t.entries[dst]; el != nil {
		t.remove(el)
		t.forgotten.Add(1)
	}
}

func (t *Table) remove(el *list.Element) {
	delete(t.entries, el.Value.(*entry).dst)
	t.lru.Remove(el)
	t.size.Store(int64(len(t.entries)))
}

// Entry is one destination in a Snapshot.
type Entry struct {
	Destination string    `json:"destination"`
	Learned     bool      `json:"learned"`
	Proofs      uint64    `json:"server_first_count"`
	FirstSeen   time.Time `json:"first_seen"`
	LastProof   time.Time `json:"last_server_first"`
	// LearnedUntil is zero while the destination is still being counted.
	LearnedUntil time.Time `json:"learned_until,omitzero"`
}

// Stats are the table's counters.
type Stats struct {
	Entries   int    `json:"entries"`
	Learned   int    `json:"learned"`
	Capacity  int    `json:"capacity"`
	Evictions uint64 `json:"evictions"`
	Forgotten uint64 `json:"forgotten"`
}

// Snapshot returns every entry that has not expired, learned ones first,
// then by destination, and the table's counters.
func (t *Table) Snapshot() ([]Entry, Stats) {
	if t == nil {
		return nil, Stats{}
	}
	now := t.now()
	t.mu.Lock()
	out := make([]Entry, 0, len(t.entries))
	for el := t.lru.Front(); el != nil; el = el.Next() {
		e := el.Value.(*entry)
		learned := !e.learnedAt.IsZero() && now.Before(e.learnedUntil)
		if !e.learnedAt.IsZero() && !learned {
			continue // expired
		}
		out = append(out, Entry{Destination: e.dst.String(), Learned: learned, Proofs: e.proofs,
			FirstSeen: e.firstSeen, LastProof: e.lastProof, LearnedUntil: e.learnedUntil})
	}
	st := Stats{Entries: len(t.entries), Capacity: t.capacity, Evictions: t.evictions.Load(), Forgotten: t.forgotten.Load()}
	t.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Learned != out[j].Learned {
			return out[i].Learned
		}
		return out[i].Destination < out[j].Destination
	})
	for _, e := range out {
		if e.Learned {
			st.Learned++
		}
	}
	return out, st
}
