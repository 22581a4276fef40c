package tcpproxy

import (
	"net"
	"sync"
	"time"
)

// idleWatch implements Envoy's tcp_proxy idle_timeout — "the period in which
// there are no bytes sent or received on either the upstream or downstream
// connection" — without touching the data path: splice moves the bytes in
// the kernel, so instead of counting them in user space, a timer samples the
// sockets' kernel byte counters (TCP_INFO) every quarter of the timeout. The
// connection is closed once the counters have not moved for the whole
// timeout; it ends between 1 and 1.25 timeouts after the last byte.
type idleWatch struct {
	mu      sync.Mutex
	timer   *time.Timer
	stopped bool
}

func watchIdle(timeout time.Duration, onIdle func(), conns ...net.Conn) *idleWatch {
	w := &idleWatch{}
	tick := max(timeout/4, time.Millisecond)
	last, ok := activity(conns)
	if !ok {
		// No kernel counters (not TCP): fall back to a plain deadline from now.
		w.timer = time.AfterFunc(timeout, onIdle)
		return w
	}
	quietSince := time.Now()
	var check func()
	check = func() {
		now := time.Now()
		cur, _ := activity(conns)
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

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	w.timer.Stop()
}

// activity sums the bytes received and sent (acknowledged) on conns, as the
// kernel counts them. ok is false if any conn has no such counters.
func activity(conns []net.Conn) (total uint64, ok bool) {
	for _, c := range conns {
		n, ok := socketBytes(c)
		if !ok {
			return 0, false
		}
		total += n
	}
	return total, true
}
