// Package testnet holds the real-socket plumbing that package tests share:
// servers on 127.0.0.1 that run a handler per connection, connected pairs,
// and reads bounded by a limit. Everything it opens is closed, and every
// goroutine it starts has ended, when the test that opened it ends (so that
// goleak in a package's TestMain sees none of it).
//
// It is for tests only; nothing outside _test.go files imports it.
package testnet

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Limit bounds every blocking step of these helpers: it keeps a broken test
// from hanging and is no assertion about speed.
const Limit = 30 * time.Second

// Serve accepts connections on ln and runs handle on each, in a goroutine of
// its own, closing the connection when handle returns. When the test ends,
// ln and the connections still open are closed, and Serve waits for the
// handlers to return.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	t.Helper()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					mu.Lock()
					delete(conns, c)
					mu.Unlock()
					c.Close()
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// Backend listens on 127.0.0.1 (a new port), serves each connection with
// handle as Serve does, and returns the address.
func Backend(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	Serve(t, ln, handle)
	return ln.Addr().String()
}

// RefusingAddr returns an address on 127.0.0.1 on which nothing listens:
// connecting to it is refused.
func RefusingAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Dial connects to addr over TCP; the connection is closed when the test
// ends.
func Dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// Accept connects to ln with dial and returns the end ln accepted; both ends
// are closed when the test ends. dial lets the client side come from
// elsewhere (a network namespace); nil dials ln's address.
func Accept(t testing.TB, ln net.Listener, dial func() (net.Conn, error)) net.Conn {
	t.Helper()
	if dial == nil {
		dial = func() (net.Conn, error) { return net.Dial(ln.Addr().Network(), ln.Addr().String()) }
	}
	client, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Pair returns both ends of a TCP connection over 127.0.0.1: the client's
// and the one a listener accepted. Both are closed when the test ends.
func Pair(t testing.TB) (client, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var c net.Conn
	s := Accept(t, ln, func() (net.Conn, error) {
		var err error
		c, err = net.Dial("tcp", ln.Addr().String())
		return c, err
	})
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// ReadAll reads c until EOF (a reset after the bytes counts as the end too)
// and fails the test if that takes longer than Limit.
func ReadAll(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(Limit))
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	if err != nil {
		t.Fatalf("reading until EOF: %v (read %q)", err, b)
	}
	return string(b)
}
