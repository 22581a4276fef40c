package tcpproxy

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyStream copies src to dst until src's EOF, by splice(2) through a
// kernel pipe when both are TCP sockets, and returns how many bytes it
// moved. Bytes copied in user space (not both TCP) are also added to moved
// as they go, for idle_timeout.
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
// Go's own TCPConn.ReadFrom splices too, but it holds its pipe for the whole
// call, while it waits for data as well: a proxy whose connections are mostly
// idle would pin two descriptors and a pipe per direction per connection.
func copyStream(dst, src net.Conn, moved *atomic.Uint64) (int64, error) {
	tdst, ok1 := dst.(*net.TCPConn)
	tsrc, ok2 := src.(*net.TCPConn)
	if !ok1 || !ok2 {
		return io.Copy(dst, countingReader{src, moved})
	}
	rsrc, err := tsrc.SyscallConn()
	if err != nil {
		return 0, err
	}
	rdst, err := tdst.SyscallConn()
	if err != nil {
		return 0, err
	}
	sp := &splicer{}
	// Bound once: a func literal per round would be an allocation per round.
	sp.in, sp.out = sp.spliceIn, sp.spliceOut
	var total int64
	for {
		n, err := sp.fill(rsrc)
		if err != nil || n == 0 {
			return total, err // n == 0: end of stream
		}
		m, err := sp.drain(rdst, n)
		total += int64(m)
		if err != nil {
			sp.p.close() // it may still hold bytes
			return total, err
		}
		putPipe(sp.p)
		sp.p = nil
	}
}

// splicer is one direction's splice state, shared with the callbacks that
// RawConn.Read and Write call on the socket descriptors.
type splicer struct {
	in, out func(fd uintptr) bool // spliceIn, spliceOut
	p       *kpipe                // the round's pipe, nil between rounds
	n, done int                   // bytes in the pipe; bytes moved out of it
	err     error                 // the callbacks' error
}

// fill waits until src has bytes queued or has ended, and moves what is
// queued into a pipe from the pool (sp.p). It returns n > 0 bytes in the
// pipe, or n == 0 and no pipe at end of stream or on error.
func (sp *splicer) fill(src syscall.RawConn) (int, error) {
	sp.n, sp.err = 0, nil
	err := src.Read(sp.in)
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
	sp.n, sp.done, sp.err = n, 0, nil
	err := dst.Write(sp.out)
	if err == nil {
		err = sp.err
	}
	return sp.done, err
}

func (sp *splicer) spliceOut(fd uintptr) bool {
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
