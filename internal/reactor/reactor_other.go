//go:build !linux

package reactor

import "syscall"

// Reactor is not available off Linux.
type Reactor struct{}

// Default reports ErrUnsupported off Linux.
func Default() (*Reactor, error) { return nil, ErrUnsupported }

// Watch is not available off Linux.
type Watch struct{}

// Init does nothing off Linux.
func (w *Watch) Init(*Reactor, func()) {}

// Arm reports ErrUnsupported off Linux.
func (w *Watch) Arm(syscall.RawConn) error { return ErrUnsupported }

// Disarm reports false off Linux: nothing is ever armed.
func (w *Watch) Disarm() bool { return false }
