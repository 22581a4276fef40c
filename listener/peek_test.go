package listener_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/listener"
)

// pair returns the two ends of a real TCP connection on 127.0.0.1.
func pair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestPeekConn(t *testing.T) {
	t.Parallel()
	t.Run("reads until n, keeps every byte, then replays them", func(t *testing.T) {
		t.Parallel()
		client, server := pair(t)
		pc := listener.NewPeekConn(server, 1024, time.Time{})
		go func() { client.Write([]byte("GET ")); client.Write([]byte("/ HTTP/1.1\r\n")) }()
		b, err := pc.Peek(10, time.Now().Add(10*time.Second))
		if err != nil || len(b) < 10 || string(b[:4]) != "GET " {
			t.Fatalf("Peek(10) = %q, %v", b, err)
		}
		peeked, err := pc.Release()
		if err != nil {
			t.Fatal(err)
		}
		// The connection reads on after the peeked bytes: nothing lost or repeated.
		client.Write([]byte("Host: x\r\n"))
		client.(*net.TCPConn).CloseWrite()
		rest, err := io.ReadAll(server)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(peeked) + string(rest); got != "GET / HTTP/1.1\r\nHost: x\r\n" {
			t.Errorf("peeked + rest = %q", got)
		}
	})
	t.Run("byte cap", func(t *testing.T) {
		t.Parallel()
		client, server := pair(t)
		pc := listener.NewPeekConn(server, 8, time.Time{})
		client.Write([]byte("0123456789abcdef"))
		b, err := pc.Peek(16, time.Now().Add(10*time.Second))
		if !errors.Is(err, filters.ErrPeekCap) || len(b) != 8 {
			t.Errorf("Peek past the cap = %q, %v; want 8 bytes and ErrPeekCap", b, err)
		}
	})
	t.Run("a filter's deadline is not the listener's, and not sticky", func(t *testing.T) {
		t.Parallel()
		client, server := pair(t)
		pc := listener.NewPeekConn(server, 64, time.Now().Add(time.Hour))
		_, err := pc.Peek(1, time.Now().Add(20*time.Millisecond))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Peek with a past filter deadline: %v", err)
		}
		if pc.TimedOut() {
			t.Error("TimedOut() after the filter's own deadline, want false: the listener's has not passed")
		}
		client.Write([]byte("x"))
		if b, err := pc.Peek(1, time.Now().Add(10*time.Second)); err != nil || string(b) != "x" {
			t.Errorf("Peek after a timeout = %q, %v", b, err)
		}
	})
	t.Run("the listener's deadline", func(t *testing.T) {
		t.Parallel()
		_, server := pair(t)
		pc := listener.NewPeekConn(server, 64, time.Now().Add(20*time.Millisecond))
		if _, err := pc.Peek(1, time.Time{}); !errors.Is(err, os.ErrDeadlineExceeded) || !pc.TimedOut() {
			t.Errorf("Peek = %v, TimedOut = %v; want the listener's timeout", err, pc.TimedOut())
		}
	})
	t.Run("EOF is sticky and keeps the bytes", func(t *testing.T) {
		t.Parallel()
		client, server := pair(t)
		pc := listener.NewPeekConn(server, 64, time.Time{})
		client.Write([]byte("GE"))
		client.(*net.TCPConn).CloseWrite()
		for i := 0; i < 2; i++ {
			b, err := pc.Peek(10, time.Now().Add(10*time.Second))
			if !errors.Is(err, io.EOF) || string(b) != "GE" {
				t.Errorf("Peek %d = %q, %v; want \"GE\" and EOF", i, b, err)
			}
		}
	})
}
