package tcpproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"
)

// Limits bound a relayed connection; zero values mean none.
type Limits struct {
	// Idle closes both sides after this long without a byte either way
	// (Envoy's idle_timeout).
	Idle time.Duration
	// MaxDuration closes both sides this long after the relay started
	// (max_downstream_connection_duration).
	MaxDuration time.Duration
}

// Counts are the bytes a Relay moved each way.
type Counts struct {
	// Upstream went from down to up; Downstream from up to down.
	Upstream, Downstream int64
}

// Relay copies bytes both ways between down and up until both directions
// have ended, carrying half-closes across (CloseWrite), by splice(2) when
// both are raw *net.TCPConn. It closes both connections early when ctx is
// done, a limit is reached, or one direction fails. It returns the bytes
// moved and the directions' errors (nil when both ended with EOF); the
// caller still owns and closes down and up. It blocks until both directions
// have ended, holding a goroutine per direction (the caller's and one more).
//
// ctx is meant to be long-lived and shared by many relays (a listener
// generation's): relays with the same ctx and idle timeout share one drain
// registration and one idle timer (relayGroup), which stays until ctx ends.
// A context made per connection works, but keeps its small group entry
// until that context is done — cancel it when the relay returns.
func Relay(ctx context.Context, down, up net.Conn, lim Limits) (Counts, error) {
	res := &relayResult{done: make(chan struct{})}
	res.r.start(ctx, down, up, lim, false, res)
	<-res.done
	return res.c, res.err
}

// relayResult is Relay's relay and what it reports.
type relayResult struct {
	r    relay
	c    Counts
	err  error
	done chan struct{}
}

func (r *relayResult) relayEnded(c Counts, err error) { r.c, r.err = c, err; close(r.done) }

// relayOwner is what a relay tells, once, when it has ended: its owner,
// which holds it (a session, a relayResult), so that the relay and what
// reports it are one allocation.
type relayOwner interface {
	relayEnded(Counts, error)
}

// start is Relay's engine; r is zero and becomes owner's. It starts the
// down→up direction on a new goroutine and runs up→down on the caller's,
// and returns when that one has ended — with park, it starts both on new
// goroutines and returns at once; owner.relayEnded is called once, on
// whichever goroutine ends the last direction (possibly the caller's,
// before start returns), with what Relay would return.
//
// With park (Linux, both sides *net.TCPConn, canPark), a direction that
// has moved nothing for a quiet period (parkQuiet) gives up its
// goroutine: its source socket is armed in the reactor (internal/reactor)
// and a fresh goroutine resumes the splice rounds when
// bytes, a FIN, a reset or an error arrive. An idle connection then holds
// no goroutine at all. The limits keep working on parked directions:
// idle_timeout samples the sockets' kernel counters, and whatever closes
// the connection (ctx, a limit, the other direction's failure) takes the
// parked directions back from the reactor and ends them.
func (r *relay) start(ctx context.Context, down, up net.Conn, lim Limits, park bool, owner relayOwner) {
	r.down, r.up, r.owner = down, up, owner
	r.pending.Store(2)
	r.dirs[toUp] = direction{r: r}
	r.dirs[toDown] = direction{r: r}
	r.initRaw()
	if park {
		r.initPark()
	}
	r.join(ctx, lim.Idle)
	if lim.MaxDuration > 0 {
		r.maxTimer = time.AfterFunc(lim.MaxDuration, r.abort)
	}
	go r.dirs[toUp].run()
	if park {
		// The caller's goroutine has the deep stack of accepting and
		// connecting (8 KiB after a dial); fresh goroutines start small.
		// Many connections open at once each wait with two small stacks
		// until they park, not a large one and a small one.
		go r.dirs[toDown].run()
		return
	}
	r.dirs[toDown].run()
}

// Direction indexes of relay.dirs.
const (
	toUp   = 0 // down → up
	toDown = 1 // up → down
)

// relay is what Relay's two directions and its timers share.
type relay struct {
	down, up net.Conn
	dirs     [2]direction
	pending  atomic.Int32  // directions not yet ended
	aborted  atomic.Bool   // both connections closed by abort
	moved    atomic.Uint64 // bytes copied in user space (no kernel counter sees them)
	owner    relayOwner
	// Set before the directions start; stopped by finish.
	maxTimer    *time.Timer
	idle        idleWatch // sampled by the group (idle.go)
	groupMember           // aborted when the context ends or idle (group.go)
	relayRaw              // splice_linux.go
}

// direction is one way of a relay. Its fields belong to the goroutine
// running it (a parked direction's, to whoever wakes or disarms it); n and
// err are read by finish after the direction has ended.
type direction struct {
	r      *relay
	n      int64 // bytes moved
	err    error // why it ended; nil for EOF
	parker       // park-mode state (splice_linux.go)
}

// conns returns d's source and destination connections.
func (d *direction) conns() (src, dst net.Conn) {
	if d == &d.r.dirs[toUp] {
		return d.r.down, d.r.up
	}
	return d.r.up, d.r.down
}

func (d *direction) srcConn() net.Conn { src, _ := d.conns(); return src }
func (d *direction) dstConn() net.Conn { _, dst := d.conns(); return dst }

// run copies until the direction ends (then ends it) or parks.
func (d *direction) run() {
	parked, err := d.copy()
	if parked {
		return
	}
	if err == nil {
		// src ended: half-close dst; the other direction may go on.
		if cw, ok := d.dstConn().(interface{ CloseWrite() error }); ok {
			err = cw.CloseWrite()
		}
	}
	d.end(err)
}

// end records that d has ended; a failed direction ends the other one too
// (abort). The last direction to end finishes the relay.
func (d *direction) end(err error) {
	d.err = err
	if err != nil {
		d.r.abort()
	}
	if d.r.pending.Add(-1) == 0 {
		d.r.finish()
	}
}

// errParkedClosed ends a parked direction whose connection was closed
// under it (as a read on a closed connection would end).
var errParkedClosed = fmt.Errorf("tcp_proxy: parked connection closed: %w", net.ErrClosed)

// abort closes both connections, once, and ends the directions that were
// parked (the reactor never reports a closed socket).
func (r *relay) abort() {
	if !r.aborted.CompareAndSwap(false, true) {
		return
	}
	r.down.Close()
	r.up.Close()
	for i := range r.dirs {
		if d := &r.dirs[i]; d.unpark() {
			d.end(errParkedClosed)
		}
	}
}

// finish stops the relay's timers and reports its outcome.
func (r *relay) finish() {
	r.leave()
	if r.maxTimer != nil {
		r.maxTimer.Stop()
	}
	up, down := &r.dirs[toUp], &r.dirs[toDown]
	err := errors.Join(up.err, down.err)
	if err != nil {
		r.abort()
	}
	r.owner.relayEnded(Counts{Upstream: up.n, Downstream: down.n}, err)
}
