package testnet

import (
	"errors"
	"io"
	"net"
	"syscall"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestServeCleansUp: when the test that started a server ends, the
// connections its handlers still hold are closed and the handlers have
// returned.
func TestServeCleansUp(t *testing.T) {
	t.Parallel()
	returned := make(chan struct{})
	var client net.Conn
	t.Run("server", func(t *testing.T) {
		addr := Backend(t, func(c net.Conn) {
			defer close(returned)
			io.WriteString(c, "hi")
			io.Copy(io.Discard, c) // until the cleanup closes c
		})
		var err error
		if client, err = net.Dial("tcp", addr); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2)
		if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "hi" {
			t.Fatalf("greeting %q, %v", buf, err)
		}
	})
	defer client.Close()
	select {
	case <-returned:
	default:
		t.Fatal("the handler had not returned when the cleanup ended")
	}
	if got := ReadAll(t, client); got != "" {
		t.Errorf("read %q after the cleanup, want EOF", got)
	}
}

func TestPair(t *testing.T) {
	t.Parallel()
	client, accepted := Pair(t)
	if client.LocalAddr().String() != accepted.RemoteAddr().String() {
		t.Fatalf("not one connection: client %v, accepted from %v", client.LocalAddr(), accepted.RemoteAddr())
	}
	io.WriteString(client, "ping")
	client.CloseWrite()
	if got := ReadAll(t, accepted); got != "ping" {
		t.Errorf("accepted end read %q", got)
	}
}

func TestRefusingAddr(t *testing.T) {
	t.Parallel()
	_, err := net.Dial("tcp", RefusingAddr(t))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial: %v, want connection refused", err)
	}
}

func TestReadAllCountsResetAsEnd(t *testing.T) {
	t.Parallel()
	client, accepted := Pair(t)
	accepted.SetLinger(0)
	accepted.Close() // RST
	if got := ReadAll(t, client); got != "" {
		t.Errorf("read %q", got)
	}
}
