package main

import (
	"os/exec"
	"strconv"
	"testing"

	"github.com/siftmesh/sift/plugins"
	"github.com/siftmesh/sift/plugins/plugintest"
)

func TestRealRedisCLI(t *testing.T) {
	cli := plugintest.Binary(t, "redis-cli", "redis-tools")
	for _, args := range [][]string{{"PING"}, {"SET", "k", "v"}, {"CLIENT", "LIST"}} {
		got := plugintest.Capture(t, func(host string, port int) *exec.Cmd {
			return exec.Command(cli, append([]string{"-h", host, "-p", strconv.Itoa(port)}, args...)...)
		})
		r := plugintest.Replay(t, sniffer{}, got)
		if r.Verdict != plugins.Match || r.Protocol != "redis" {
			t.Errorf("redis-cli %v sent %q: %v %q, want a redis match", args, got, r.Verdict, r.Protocol)
		}
		t.Logf("redis-cli %v: %q → command %q", args, got, r.Attributes["command"])
	}
}

func TestSniff(t *testing.T) {
	tests := []struct {
		in   string
		want plugins.Verdict
	}{
		{"*1\r\n$4\r\nPING\r\n", plugins.Match},
		{"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$1\r\nv\r\n", plugins.Match},
		{"*1\r\n$4\r\nPI", plugins.NeedMore},
		{"*", plugins.NeedMore},
		{"PING\r\n", plugins.NoMatch},             // inline: not claimed
		{"GET / HTTP/1.1\r\n", plugins.NoMatch},   // HTTP
		{"*0\r\n", plugins.NoMatch},               // no command
		{"*1\r\n$4\r\nPI G\r\n", plugins.NoMatch}, // not a command name
		{"*1\r\n$99\r\n", plugins.NoMatch},        // longer than any command
		{"*1\r\n:4\r\n", plugins.NoMatch},
	}
	for _, tt := range tests {
		if got := (sniffer{}).Sniff([]byte(tt.in), false); got.Verdict != tt.want {
			t.Errorf("Sniff(%q) = %v, want %v", tt.in, got.Verdict, tt.want)
		}
	}
}

func FuzzSniff(f *testing.F) {
	f.Add([]byte("*1\r\n$4\r\nPING\r\n"))
	f.Add([]byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := plugins.Replay(sniffer{}, b, 0); err != nil {
			t.Fatal(err)
		}
	})
}
