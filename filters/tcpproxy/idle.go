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
type idleWatch struct {
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func watchIdle(timeout time.Duration, onIdle func(), moved *atomic.Uint64, conns ...net.Conn) *idleWatch {
	w := &idleWatch{}
	tick := max(timeout/4, time.Millisecond)
	// The first sample is taken at the first tick, not now: a connection
	// that ends sooner (most do; Envoy's default timeout is an hour) never
	// pays for reading the counters. Until then any count is news, so a
	// silent connection still ends between 1 and 1.25 timeouts after its
	// last byte.
	last := notSampled
	quietSince := time.Now()
	var check func()
	check = func() {
		now := time.Now()
		cur := activity(moved, conns)
		if cur != last {
			last, quietSince = cur, now
		} else if now.Sub(quietSince) >= timeout {
			onIdle()
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.stopped {
			w.timer.Reset(tick)
		}
	}
	w.mu.Lock()
	w.timer = time.AfterFunc(tick, check)
	w.mu.Unlock()
	return w
}

// notSampled is idleWatch's last count before its first sample.
const notSampled = ^uint64(0)

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
}

// activity sums moved and the bytes received and sent (acknowledged) on
// conns, as the kernel counts them where it does.
func activity(moved *atomic.Uint64, conns []net.Conn) uint64 {
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
