// Package plugintest helps test protocol-sniffer plugins against the bytes
// real clients send: Capture runs a real client against a listener that
// records what it sends first, and Replay runs a sniffer over those bytes
// the way sift-proxy does.
package plugintest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/siftmesh/sift/plugins"
)

// RequireEnv is the environment variable that turns a missing client binary
// from a skip into a failure (Sift's CI sets it, having installed them).
const RequireEnv = "SIFT_REQUIRE_REAL_SERVERS"

// Binary returns the path of the named client program, or skips the test
// (fails it when RequireEnv is 1) naming the package that provides it.
func Binary(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := fmt.Sprintf("%s not found (Debian package %s)", name, pkg)
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf("%s=1: %s", RequireEnv, msg)
	}
	t.Skip(msg)
	return ""
}

// Capture starts a listener on 127.0.0.1, runs the client command that
// client builds for its address, and returns the bytes the client sent on
// its first connection before it fell silent for 300 ms, stopped, or sent
// 64 KiB. The listener never answers, so the capture is of what a client
// sends first — what a sniffer sees. The client is killed afterwards.
func Capture(t testing.TB, client func(host string, port int) *exec.Cmd) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	cmd := client("127.0.0.1", addr.Port)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", cmd.Path, err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("%s never connected: %v\n%s", cmd.Path, err, out.String())
	}
	defer c.Close()
	var got []byte
	buf := make([]byte, 4096)
	for len(got) < 64<<10 {
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if len(got) == 0 {
		t.Fatalf("%s sent nothing\n%s", cmd.Path, out.String())
	}
	return got
}

// Replay is plugins.Replay, failing the test when the sniffer breaks its
// contract (changes a decision, or cannot decide at the end of the stream).
func Replay(t testing.TB, s plugins.Sniffer, captured []byte) plugins.Result {
	t.Helper()
	r, err := plugins.Replay(s, captured, s.Info().MaxBytes)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
