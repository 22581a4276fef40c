// Package reactor lets an idle socket wait for its next bytes without a
// goroutine of its own: many sockets are registered, one-shot, with one
// epoll instance, and one goroutine (parked in Go's netpoller on that epoll
// descriptor) waits for all of them. When a registered socket becomes
// readable, hangs up or fails, the reactor starts a fresh goroutine with the
// socket's wake function. tcp_proxy uses it to park idle connections
// (docs/performance.md, "Idle connections without goroutines").
//
// Linux only: elsewhere Default reports ErrUnsupported and callers keep a
// goroutine per waiting socket.
package reactor

import "errors"

// ErrUnsupported is Default's error where there is no epoll.
var ErrUnsupported = errors.New("reactor: not supported on this platform")

// LoopFunction names the reactor's goroutine, which runs for the life of
// the process once Default has been called: tests that check for leaked
// goroutines ignore it (goleak.IgnoreAnyFunction(reactor.LoopFunction)).
const LoopFunction = "github.com/siftmesh/sift/internal/reactor.(*Reactor).loop"
