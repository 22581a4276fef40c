package reactor

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reactor is one epoll instance and the goroutine that waits on it. It is
// safe for concurrent use; it runs for the life of the process.
type Reactor struct {
	epfd int
	file *os.File // epfd as a pollable file (held: its finalizer would close epfd)
	mu   sync.Mutex
	// armed maps an epoll registration's token to its Watch while the
	// Watch is armed; an event whose token is absent is stale (its Watch was
	// disarmed) and is ignored.
	armed map[uint64]*Watch
	next  atomic.Uint64 // last token handed out
}

var (
	defaultOnce    sync.Once
	defaultReactor *Reactor
	defaultErr     error
)

// Default returns the process's reactor, started on first use. An error
// (no epoll) means callers must keep waiting the usual way.
func Default() (*Reactor, error) {
	defaultOnce.Do(func() { defaultReactor, defaultErr = start() })
	return defaultReactor, defaultErr
}

// start creates the epoll instance and its waiting goroutine. The epoll
// descriptor is itself non-blocking and registered with Go's netpoller
// (epoll descriptors are pollable), so the goroutine waits without holding
// an OS thread in epoll_wait.
func start() (*Reactor, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("reactor: epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("reactor: epoll descriptor: %w", err)
	}
	f := os.NewFile(uintptr(epfd), "reactor-epoll")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reactor: epoll descriptor: %w", err)
	}
	r := &Reactor{epfd: epfd, file: f, armed: map[uint64]*Watch{}}
	go r.loop(rc)
	return r, nil
}

// loop waits for events forever.
func (r *Reactor) loop(rc syscall.RawConn) {
	events := make([]unix.EpollEvent, 128)
	var n int
	var werr error
	wait := func(fd uintptr) bool {
		n, werr = unix.EpollWait(int(fd), events, 0)
		if werr == unix.EINTR {
			n, werr = 0, nil
		}
		// Nothing ready: wait in the netpoller for the epoll descriptor
		// to become readable (Go registers it edge-triggered; every wait
		// starts from an empty ready list, so no edge is missed).
		return n > 0 || werr != nil
	}
	for {
		if err := rc.Read(wait); err != nil {
			panic(fmt.Sprintf("reactor: waiting on the epoll descriptor: %v", err)) // it is never closed
		}
		if werr != nil {
			panic(fmt.Sprintf("reactor: epoll_wait: %v", werr)) // EBADF, EFAULT, EINVAL: a bug
		}
		for i := range events[:n] {
			r.fire(token(&events[i]))
		}
	}
}

// fire starts the wake function of the Watch armed with tok, unless it was
// disarmed first.
func (r *Reactor) fire(tok uint64) {
	r.mu.Lock()
	w := r.armed[tok]
	delete(r.armed, tok)
	r.mu.Unlock()
	if w != nil && w.state.CompareAndSwap(true, false) {
		go w.wake()
	}
}

// Watch is one socket's registration with a reactor. The zero value is
// unusable: call Init. A Watch is armed and woken many times over its
// socket's life; it is owned by whoever waits on the socket, except between
// a successful Arm and the wake (or a successful Disarm).
type Watch struct {
	r     *Reactor
	wake  func()
	token uint64
	// added is true once the socket is in the epoll set (re-armed by
	// EPOLL_CTL_MOD: a one-shot registration stays in the set, disabled,
	// until the socket is closed). Only the owner touches it.
	added bool
	state atomic.Bool // armed
}

// Init binds w to r and to the function run, on a new goroutine, each time
// the armed socket becomes readable, hangs up or fails.
func (w *Watch) Init(r *Reactor, wake func()) {
	w.token = r.next.Add(1)
	w.r, w.wake = r, wake
}

// Arm registers rc's socket, one-shot, for readability, read hang-up and
// errors (EPOLLIN|EPOLLRDHUP|EPOLLONESHOT; hang-up and errors are always
// reported). Bytes that arrived before Arm wake it at once. The descriptor
// stays owned by its connection: the reactor never closes it, and closing
// it removes it from the epoll set (a closed socket is never reported, so
// whoever closes an armed socket must Disarm it and finish its work).
//
// After Arm returns nil the caller gives up the socket: either the wake
// function will run, or Disarm will return true to someone. On error
// nothing is armed and the caller still owns it.
func (w *Watch) Arm(rc syscall.RawConn) error {
	r := w.r
	op := unix.EPOLL_CTL_ADD
	if w.added {
		op = unix.EPOLL_CTL_MOD
	}
	// Everything the owner writes comes before the registration is
	// published: the wake may run as soon as epoll_ctl has been called.
	w.added = true
	w.state.Store(true)
	r.mu.Lock()
	r.armed[w.token] = w
	r.mu.Unlock()
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT}
	setToken(&ev, w.token)
	var cerr error
	err := rc.Control(func(fd uintptr) { cerr = unix.EpollCtl(r.epfd, op, int(fd), &ev) })
	if err == nil {
		err = cerr
	}
	if err == nil {
		return nil
	}
	if !w.state.CompareAndSwap(true, false) {
		return nil // disarmed meanwhile: the Disarm caller owns it now
	}
	r.mu.Lock()
	delete(r.armed, w.token)
	r.mu.Unlock()
	w.added = op == unix.EPOLL_CTL_MOD
	return fmt.Errorf("reactor: epoll_ctl: %w", err)
}

// Disarm takes back an armed Watch. It returns true when w was armed and its
// wake function will now not run (the caller owns the socket's work again),
// false when w was not armed or its wake has already been started. Safe to
// call concurrently with Arm, the reactor and other Disarms.
func (w *Watch) Disarm() bool {
	if w.r == nil || !w.state.CompareAndSwap(true, false) {
		return false
	}
	w.r.mu.Lock()
	delete(w.r.armed, w.token)
	w.r.mu.Unlock()
	return true
}

// Armed returns how many watches are armed now (for tests and metrics).
func (r *Reactor) Armed() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.armed)
}

// setToken and token store a Watch's token in an event's 64-bit data (the
// Fd and Pad fields on every Linux architecture).
func setToken(ev *unix.EpollEvent, tok uint64) {
	ev.Fd, ev.Pad = int32(uint32(tok)), int32(uint32(tok>>32))
}

func token(ev *unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
