package tcpproxy

import (
	"io"
	"net"
	"sync/atomic"
	"time"
)

// idleWatch is one relay's part of Envoy's tcp_proxy idle_timeout — "the
// period in which there are no bytes sent or received on either the
// upstream or downstream connection" — implemented without touching the
// splice path: splice moves the bytes in the kernel, so instead of counting
// them in user space, the relay's group (group.go: the relays of one
// context with one timeout) samples every member's sockets' kernel byte
// counters (TCP_INFO; for TLS, its TCP socket's) every quarter of the
// timeout, plus moved, the bytes copied in user space where no socket
// counts them (a unix socket). A connection is closed once nothing has
// moved for the whole timeout; it ends between 1 and 1.25 timeouts after
// the last byte. The sampling goes on while a connection is parked.
//
// One timer per group, not per connection: an idle connection holds 16
// bytes here instead of a timer and its callback.
type idleWatch struct {
	last       uint64        // activity at the last sample (notSampled before the first)
	quietSince time.Duration // when activity last changed (monoNow)
}

// monoBase anchors monoNow: a Duration is a third of a time.Time in the
// relay, which every connection holds.
var monoBase = time.Now()

// monoNow is the monotonic clock's reading as a Duration since monoBase.
func monoNow() time.Duration { return time.Since(monoBase) }

// notSampled is idleWatch's last count before its first sample. The first
// sample is taken at the group's first tick after the relay joined, not at
// its start: a connection that ends sooner (most do; Envoy's default
// timeout is an hour) never pays for reading the counters. Until then any
// count is news, so a silent connection still ends between 1 and 1.25
// timeouts after its last byte.
const notSampled = ^uint64(0)

// idleTick is how often a group with idle timeout d samples its members.
func idleTick(d time.Duration) time.Duration { return max(d/4, time.Millisecond) }

// checkIdle samples r's counters at now and reports whether r has been
// idle for timeout. Only r's group's sweep calls it (one at a time).
func (r *relay) checkIdle(now, timeout time.Duration) bool {
	w := &r.idle
	cur := r.activity()
	if cur != w.last {
		w.last, w.quietSince = cur, now
		return false
	}
	return now-w.quietSince >= timeout
}

// activity is what the idle watch samples for r's two connections.
func (r *relay) activity() uint64 { return activity(&r.moved, r.down, r.up) }

// activity sums moved and the bytes received and sent (acknowledged) on
// conns, as the kernel counts them where it does.
func activity(moved *atomic.Uint64, conns ...net.Conn) uint64 {
	total := moved.Load()
	for _, c := range conns {
		if n, ok := socketBytes(c); ok {
			total += n
		}
	}
	return total
}

// countingReader counts the bytes read through it into n.
type countingReader struct {
	r io.Reader
	n *atomic.Uint64
}

func (c countingReader) Read(b []byte) (int, error) {
	m, err := c.r.Read(b)
	c.n.Add(uint64(m))
	return m, err
}
