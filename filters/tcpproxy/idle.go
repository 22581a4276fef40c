package tcpproxy

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// idleWatch implements Envoy's tcp_proxy idle_timeout — "the period in which
// there are no bytes sent or received on either the upstream or downstream
// connection" — without touching the splice path: splice moves the bytes in
// the kernel, so instead of counting them in user space, a timer samples the
// sockets' kernel byte counters (TCP_INFO; for TLS, its TCP socket's) every
// quarter of the timeout, plus moved, the bytes copied in user space where
// no socket counts them (a unix socket). The connection is closed once
// nothing has moved for the whole timeout; it ends between 1 and 1.25
// timeouts after the last byte.
//
// Its state lives in the relay (one allocation per connection, and no
// closure: the timer calls relay.checkIdle); the timer keeps running while
// a connection is parked.
type idleWatch struct {
	mu         sync.Mutex
	timer      *time.Timer
	timeout    time.Duration
	last       uint64        // activity at the last check
	quietSince time.Duration // when activity last changed (monoNow)
	stopped    bool
}

// monoBase anchors monoNow: a Duration is a third of a time.Time in the
// relay, which every connection holds.
var monoBase = time.Now()

// monoNow is the monotonic clock's reading as a Duration since monoBase.
func monoNow() time.Duration { return time.Since(monoBase) }

// watchIdle starts r's idle_timeout: r.abort after timeout without a byte.
func (r *relay) watchIdle(timeout time.Duration) {
	w := &r.idle
	w.timeout = timeout
	// The first sample is taken at the first tick, not now: a connection
	// that ends sooner (most do; Envoy's default timeout is an hour) never
	// pays for reading the counters. Until then any count is news, so a
	// silent connection still ends between 1 and 1.25 timeouts after its
	// last byte.
	w.last = notSampled
	w.quietSince = monoNow()
	w.mu.Lock()
	w.timer = time.AfterFunc(w.tick(), r.checkIdle)
	w.mu.Unlock()
}

// notSampled is idleWatch's last count before its first sample.
const notSampled = ^uint64(0)

// tick is how often the counters are sampled: a quarter of the timeout.
func (w *idleWatch) tick() time.Duration { return max(w.timeout/4, time.Millisecond) }

// checkIdle is the idle timer's function: it samples the counters and
// closes the connection once they have not moved for the whole timeout.
func (r *relay) checkIdle() {
	w := &r.idle
	now := monoNow()
	cur := r.activity()
	w.mu.Lock()
	idle := cur == w.last && now-w.quietSince >= w.timeout
	if cur != w.last {
		w.last, w.quietSince = cur, now
	}
	if !idle && !w.stopped {
		w.timer.Reset(w.tick())
	}
	w.mu.Unlock()
	if idle {
		r.abort() // may finish the relay, which stops w: not under w.mu
	}
}

// stop stops the watch, if it was started.
func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.timer != nil {
		w.timer.Stop()
	}
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
