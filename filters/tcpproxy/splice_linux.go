package tcpproxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/siftmesh/sift/internal/reactor"
)

// copy copies d.src to d.dst until src's EOF, by splice(2) through a
// kernel pipe when both are TCP sockets, adding the bytes it moves to d.n.
// It returns parked == true when it gave up its goroutine to the reactor
// (park mode: see relay.start) instead of ending. Bytes copied in user space
// (not both TCP) are also added to r.moved as they go, for idle_timeout.
//
// The copy runs in rounds, each one the way HAProxy splices: splice from src
// into a pipe as much as is queued (up to the pipe's 1 MiB), then from the
// pipe to dst until the pipe is empty. A round takes a pipe from a pool and
// gives it back empty, so that an idle connection holds no pipe: between
// rounds the goroutine waits for src to become readable through Go's
// netpoller with nothing but its stack. End of stream is splice returning 0;
// "nothing yet" is EAGAIN. Per round that is one splice in, one splice out
// per pipe-full, and one splice that finds nothing before waiting — no
// FIONREAD, no peek.
//
// In park mode the wait has a read deadline: when it passes and no round
// ran for parkQuiet, the direction is quiet and parks; when rounds ran, the
// deadline moves to parkQuiet after the last one. A busy direction pays one
// deadline reset per parkQuiet and a clock reading per round, nothing per
// byte.
//
// At a direction's first bulk round (more than pacedRound bytes) the
// destination socket gets TCP_NOTSENT_LOWAT (see notSentLowat): from then on
// a splice out stops, and the socket waits to be writable, while that much is
// queued unsent.
//
// Go's own TCPConn.ReadFrom splices too, but it holds its pipe for the whole
// call, while it waits for data as well: a proxy whose connections are mostly
// idle would pin two descriptors and a pipe per direction per connection.
func (d *direction) copy() (parked bool, err error) {
	rsrc, rdst := d.rawConns()
	if d.sp.step == nil {
		if rsrc == nil {
			if err := d.r.rawErr; err != nil {
				return false, err
			}
			src, dst := d.conns()
			d.n, err = io.Copy(dst, countingReader{src, &d.r.moved})
			return false, err
		}
		// Bound once: a func literal per round would be an allocation per round.
		d.sp.step = d.sp.spliceStep
		if d.parking {
			d.quietFrom()
		}
	}
	sp := &d.sp
	for {
		n, err := sp.fill(rsrc)
		if err != nil {
			if d.parking && errors.Is(err, os.ErrDeadlineExceeded) {
				if rest := d.lastRound + parkQuiet - monoNow(); rest > 0 {
					// Busy since the deadline was set: wait for the rest
					// of the quiet period after the last round.
					d.srcConn().SetReadDeadline(time.Now().Add(rest))
					continue
				}
				if d.park() {
					return true, nil
				}
				continue // could not park: waits without a deadline from now on
			}
			return false, err
		}
		if n == 0 {
			return false, nil // end of stream
		}
		m, err := sp.drain(rdst, n)
		d.n += int64(m)
		if err != nil {
			sp.p.close() // it may still hold bytes
			sp.p = nil
			return false, err
		}
		putPipe(sp.p)
		sp.p = nil
		d.lastRound = monoNow()
	}
}

// parkQuiet is how long a direction waits without a round before it
// parks: it parks parkQuiet after its last bytes (or after it started).
// Long enough that a request/response exchange keeps its goroutines (a
// park and wake cost an epoll_ctl and a goroutine start), short next to an
// idle connection's life.
const parkQuiet = 150 * time.Millisecond

// parker is a direction's park-mode state.
type parker struct {
	sp        splicer
	parking   bool          // park mode (initPark)
	lastRound time.Duration // monoNow at the last round (or the quiet period's start)
	watch     reactor.Watch
}

// relayRaw is the relay's view of its sockets' descriptors, for splice.
type relayRaw struct {
	raw    [2]syscall.RawConn // down's, up's; nil unless both are *net.TCPConn
	rawErr error              // SyscallConn failed
}

// initRaw gets both sockets' descriptors when both are TCP.
func (r *relay) initRaw() {
	tdown, ok1 := r.down.(*net.TCPConn)
	tup, ok2 := r.up.(*net.TCPConn)
	if !ok1 || !ok2 {
		return
	}
	rd, err := tdown.SyscallConn()
	if err != nil {
		r.rawErr = err
		return
	}
	ru, err := tup.SyscallConn()
	if err != nil {
		r.rawErr = err
		return
	}
	r.raw = [2]syscall.RawConn{rd, ru}
}

// rawConns returns d's source and destination descriptors (nil when not
// both TCP).
func (d *direction) rawConns() (src, dst syscall.RawConn) {
	if d == &d.r.dirs[toUp] {
		return d.r.raw[0], d.r.raw[1]
	}
	return d.r.raw[1], d.r.raw[0]
}

// canPark reports whether a relay between down and up can park its
// directions: both are TCP sockets (splice serves them) and the reactor
// runs.
func canPark(down, up net.Conn) bool {
	_, ok1 := down.(*net.TCPConn)
	_, ok2 := up.(*net.TCPConn)
	if !ok1 || !ok2 {
		return false
	}
	_, err := reactor.Default()
	return err == nil
}

// initPark puts r's directions in park mode (canPark was true).
func (r *relay) initPark() {
	re, err := reactor.Default()
	if err != nil {
		return
	}
	for i := range r.dirs {
		d := &r.dirs[i]
		d.parking = true
		d.watch.Init(re, d.resume)
	}
}

// quietFrom starts a quiet period now.
func (d *direction) quietFrom() {
	d.lastRound = monoNow()
	d.srcConn().SetReadDeadline(time.Now().Add(parkQuiet)) // an error (closed) shows in the next read
}

// park arms d's source socket in the reactor. It returns false when the
// reactor refused (the direction then stops parking and keeps waiting on
// its goroutine).
func (d *direction) park() bool {
	rsrc, _ := d.rawConns()
	if err := d.watch.Arm(rsrc); err != nil {
		d.parking = false
		d.srcConn().SetReadDeadline(time.Time{})
		return false
	}
	// Nothing of d may be touched from here: it may already have been
	// woken on another goroutine, or ended by abort.
	return true
}

// resume runs a woken direction on the reactor's fresh goroutine.
func (d *direction) resume() {
	d.quietFrom()
	d.run()
}

// unpark takes a parked direction back from the reactor; true means it was
// parked and its caller now ends it. Safe to call from any goroutine (it
// reads only the watch, bound before the directions started).
func (d *direction) unpark() bool { return d.watch.Disarm() }

// splicer is one direction's splice state, shared with the callbacks that
// RawConn.Read and Write call on the socket descriptors.
type splicer struct {
	step    func(fd uintptr) bool // spliceStep, bound once
	out     bool                  // step is splicing out of the pipe (drain), not in (fill)
	p       *kpipe                // the round's pipe, nil between rounds
	n, done int                   // bytes in the pipe; bytes moved out of it
	paced   bool                  // notSentLowat set on the destination
	err     error                 // the callbacks' error
}

// fill waits until src has bytes queued or has ended, and moves what is
// queued into a pipe from the pool (sp.p). It returns n > 0 bytes in the
// pipe, or n == 0 and no pipe at end of stream or on error.
func (sp *splicer) fill(src syscall.RawConn) (int, error) {
	sp.n, sp.err, sp.out = 0, nil, false
	err := src.Read(sp.step)
	if err == nil {
		err = sp.err
	}
	if err != nil || sp.n == 0 {
		if sp.p != nil {
			putPipe(sp.p) // empty
			sp.p = nil
		}
		return 0, err
	}
	return sp.n, nil
}

// spliceStep is the callback of RawConn.Read (fill) and Write (drain):
// one func value per direction instead of two.
func (sp *splicer) spliceStep(fd uintptr) bool {
	if sp.out {
		return sp.spliceOut(fd)
	}
	return sp.spliceIn(fd)
}

func (sp *splicer) spliceIn(fd uintptr) bool {
	if sp.p, sp.err = getPipe(); sp.err != nil {
		return true
	}
	for {
		sp.n, sp.err = splice(sp.p.w, int(fd), maxPipe)
		if sp.err != unix.EINTR {
			break
		}
	}
	if sp.err == unix.EAGAIN {
		// Nothing queued: wait for readability without a pipe.
		putPipe(sp.p)
		sp.p, sp.err = nil, nil
		return false
	}
	return true
}

// drain moves the n bytes in sp.p to dst, waiting for dst to be writable as
// needed, and returns how many it moved.
func (sp *splicer) drain(dst syscall.RawConn, n int) (int, error) {
	sp.n, sp.done, sp.err, sp.out = n, 0, nil, true
	err := dst.Write(sp.step)
	if err == nil {
		err = sp.err
	}
	return sp.done, err
}

func (sp *splicer) spliceOut(fd uintptr) bool {
	if !sp.paced && sp.n > pacedRound {
		// Best effort: an error leaves the socket as it was.
		sp.paced = true
		unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, notSentLowat)
	}
	for sp.done < sp.n {
		m, err := splice(int(fd), sp.p.r, sp.n-sp.done)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return false // wait for dst to drain
		case err != nil:
			sp.err = err
			return true
		case m == 0:
			sp.err = io.ErrUnexpectedEOF // the pipe had fewer bytes than splice in reported
			return true
		}
		sp.done += m
	}
	return true
}

// notSentLowat is the TCP_NOTSENT_LOWAT a direction sets on its destination
// socket at its first round of more than pacedRound bytes.
//
// Without it a round handed the socket up to a whole pipe (1 MiB) that the
// receiver's window could not take yet (3.4 MB were seen queued unsent), and
// that data left later from the receiver's acknowledgements: on the
// receiver's CPU, in its ACK processing, with the pages gone cold. Worse, each
// window the receiver opened was filled in one burst, microseconds later, so
// the receiver's kernel measured a window's round trip in microseconds and its
// receive-buffer autotuning never grew the window past its initial 64 KiB. On
// loopback, where a sidecar meets its application, an ordinary Go reader (8 KiB
// reads) ran at 0.6× the throughput it reached behind HAProxy. Handing TCP
// only what it can send soon keeps the sending on the proxy's CPU and lets the
// receiver's window grow (docs/performance.md, "Receive windows"). The cost
// is more splice calls and writability waits per byte on the proxy; short
// exchanges (rounds of at most pacedRound) never set it.
const (
	notSentLowat = 32 << 10
	pacedRound   = 16 << 10
)

func splice(out, in, max int) (int, error) {
	n, err := unix.Splice(in, nil, out, nil, max, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	return int(n), err
}

// maxPipe is the pipe size asked for (F_SETPIPE_SZ) and the most one splice
// moves: 1 MiB, the default /proc/sys/fs/pipe-max-size, as Go's own splice.
const maxPipe = 1 << 20

// kpipe is a kernel pipe for splice rounds. Pooled pipes are empty.
type kpipe struct{ r, w int }

// pipePool keeps up to maxFreePipes empty pipes for the next rounds; a pipe
// given back beyond that is closed at once, so descriptors never wait for a
// garbage collection. A round holds a pipe only while bytes are in flight, so
// a few pipes serve many connections.
var pipePool struct {
	mu   sync.Mutex
	free []*kpipe
}

const maxFreePipes = 16

// getPipe returns an empty pipe, pooled or new.
func getPipe() (*kpipe, error) {
	pipePool.mu.Lock()
	if n := len(pipePool.free); n > 0 {
		p := pipePool.free[n-1]
		pipePool.free = pipePool.free[:n-1]
		pipePool.mu.Unlock()
		return p, nil
	}
	pipePool.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("tcp_proxy: splice pipe: %w", err)
	}
	// A smaller pipe works too, with more rounds: the error is ignored.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, maxPipe)
	return &kpipe{r: fds[0], w: fds[1]}, nil
}

// putPipe gives an empty pipe back.
func putPipe(p *kpipe) {
	pipePool.mu.Lock()
	if len(pipePool.free) < maxFreePipes {
		pipePool.free = append(pipePool.free, p)
		pipePool.mu.Unlock()
		return
	}
	pipePool.mu.Unlock()
	p.close()
}

// close closes a pipe (one that may still hold bytes, or one the pool does
// not keep).
func (p *kpipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
}
