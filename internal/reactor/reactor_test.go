//go:build linux

package reactor

import (
	"net"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/siftmesh/sift/internal/testnet"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction(LoopFunction)) }

func rawConn(t *testing.T, c *net.TCPConn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// wakes returns a wake function and the channel it signals.
func wakes() (func(), chan struct{}) {
	ch := make(chan struct{}, 10)
	return func() { ch <- struct{}{} }, ch
}

func expectWake(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testnet.Limit):
		t.Fatalf("no wake: %s", what)
	}
}

// expectNoWake checks that nothing wakes within a short while (a wake
// that should not happen at all: the wait only bounds the test).
func expectNoWake(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("unexpected wake: %s", what)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestWatch(t *testing.T) {
	r, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	client, accepted := testnet.Pair(t)
	rc := rawConn(t, accepted)
	wake, woke := wakes()
	var w Watch
	w.Init(r, wake)

	// Armed on a quiet socket: no wake until bytes arrive.
	if err := w.Arm(rc); err != nil {
		t.Fatal(err)
	}
	expectNoWake(t, woke, "armed on a quiet socket")
	client.Write([]byte("x"))
	expectWake(t, woke, "bytes arrived")
	if w.Disarm() {
		t.Error("Disarm after the wake = true, want false")
	}

	// Re-armed (EPOLL_CTL_MOD) while the byte is still unread: at once.
	if err := w.Arm(rc); err != nil {
		t.Fatal(err)
	}
	expectWake(t, woke, "re-armed with bytes queued")
	accepted.Read(make([]byte, 1))

	// Disarmed: bytes no longer wake it.
	if err := w.Arm(rc); err != nil {
		t.Fatal(err)
	}
	if !w.Disarm() {
		t.Fatal("Disarm of an armed watch = false")
	}
	client.Write([]byte("y"))
	expectNoWake(t, woke, "disarmed")
	accepted.Read(make([]byte, 1))

	// The peer's FIN wakes it too.
	if err := w.Arm(rc); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	expectWake(t, woke, "the peer's FIN")

	// Arming a closed connection fails and leaves nothing armed.
	accepted.Close()
	if err := w.Arm(rc); err == nil {
		t.Error("Arm on a closed connection succeeded")
	}
	if w.Disarm() {
		t.Error("Disarm after a failed Arm = true")
	}
}

func TestClosedWhileArmed(t *testing.T) {
	r, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	armedBefore := r.Armed()
	_, accepted := testnet.Pair(t)
	wake, woke := wakes()
	var w Watch
	w.Init(r, wake)
	if err := w.Arm(rawConn(t, accepted)); err != nil {
		t.Fatal(err)
	}
	// Whoever closes an armed socket takes it back: the reactor never
	// reports a closed descriptor.
	accepted.Close()
	if !w.Disarm() {
		t.Fatal("Disarm after close = false")
	}
	expectNoWake(t, woke, "closed and disarmed")
	if got := r.Armed(); got != armedBefore {
		t.Errorf("Armed() = %d, want %d", got, armedBefore)
	}
}
