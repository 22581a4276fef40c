package tcpproxy

import (
	"context"
	"io"
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// TestBulkRoundSetsNotSentLowat relays a small exchange and then a bulk
// transfer and checks that only the bulk direction's destination socket got
// TCP_NOTSENT_LOWAT, and only once it moved a round larger than pacedRound.
func TestBulkRoundSetsNotSentLowat(t *testing.T) {
	backLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backLn.Close()
	frontLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer frontLn.Close()

	const bulk = 8 << 20
	backDone := make(chan error, 1)
	got := make(chan int64, 1)
	go func() {
		c, err := backLn.Accept()
		if err != nil {
			backDone <- err
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		if _, err := io.ReadFull(c, b); err != nil { // the small request
			backDone <- err
			return
		}
		if _, err := c.Write([]byte("y")); err != nil { // the small reply
			backDone <- err
			return
		}
		n, err := io.Copy(io.Discard, c) // the bulk upload, to EOF
		got <- n
		backDone <- err
	}()

	client, err := net.Dial("tcp", frontLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	down, err := frontLn.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer down.Close()
	up, err := net.Dial("tcp", backLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	relayed := make(chan error, 1)
	go func() {
		_, err := Relay(context.Background(), down, up, Limits{})
		relayed <- err
	}()

	lowat := func(c net.Conn) int {
		t.Helper()
		raw, err := c.(*net.TCPConn).SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var gerr error
		raw.Control(func(fd uintptr) { v, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT) })
		if gerr != nil {
			t.Fatal(gerr)
		}
		return v
	}
	defUp, defDown := lowat(up), lowat(down)

	if _, err := client.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := io.ReadFull(client, b); err != nil {
		t.Fatal(err)
	}
	if v := lowat(up); v != defUp {
		t.Errorf("after a 1-byte exchange the upstream socket's TCP_NOTSENT_LOWAT is %d, want the default %d", v, defUp)
	}

	buf := make([]byte, 128<<10)
	for sent := 0; sent < bulk; sent += len(buf) {
		if _, err := client.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	client.(*net.TCPConn).CloseWrite()
	if n := <-got; n != bulk {
		t.Fatalf("backend read %d bytes, want %d", n, bulk)
	}
	if err := <-backDone; err != nil {
		t.Fatal(err)
	}
	if v := lowat(up); v != notSentLowat {
		t.Errorf("after a bulk upload the upstream socket's TCP_NOTSENT_LOWAT is %d, want %d", v, notSentLowat)
	}
	if v := lowat(down); v != defDown {
		t.Errorf("the downstream socket, which carried one byte, has TCP_NOTSENT_LOWAT %d, want the default %d", v, defDown)
	}
	client.Close()
	if err := <-relayed; err != nil {
		t.Fatalf("relay: %v", err)
	}
}
