package main

import (
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/siftmesh/sift/plugins"
	"github.com/siftmesh/sift/plugins/plugintest"
)

func TestRealPsql(t *testing.T) {
	psql := plugintest.Binary(t, "psql", "postgresql-client")
	for _, tc := range []struct{ sslmode, want string }{
		{"disable", "startup"},
		{"require", "ssl_request"},
		{"prefer", "ssl_request"},
	} {
		got := plugintest.Capture(t, func(host string, port int) *exec.Cmd {
			cmd := exec.Command(psql, "-h", host, "-p", strconv.Itoa(port), "-U", "app", "-d", "shop", "-c", "select 1")
			cmd.Env = append(os.Environ(), "PGSSLMODE="+tc.sslmode, "PGGSSENCMODE=disable", "PGCONNECT_TIMEOUT=5", "PGPASSWORD=x")
			return cmd
		})
		r := plugintest.Replay(t, sniffer{}, got)
		if r.Verdict != plugins.Match || r.Attributes["request"] != tc.want {
			t.Errorf("psql sslmode=%s sent %q: %v %v, want a %s match", tc.sslmode, got[:min(len(got), 16)], r.Verdict, r.Attributes, tc.want)
		}
	}
}

func TestSniff(t *testing.T) {
	tests := []struct {
		in   []byte
		want plugins.Verdict
	}{
		{[]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}, plugins.Match},        // SSLRequest
		{[]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30}, plugins.Match},        // GSSENCRequest
		{[]byte{0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 1, 2}, plugins.Match}, // CancelRequest
		{[]byte{0, 0, 0, 41, 0, 3, 0, 0, 'u', 's'}, plugins.Match},         // StartupMessage 3.0
		{[]byte{0, 0, 0, 8}, plugins.NeedMore},
		{[]byte{0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f}, plugins.NoMatch}, // SSLRequest of the wrong length
		{[]byte{0, 0, 0, 41, 0, 2, 0, 0}, plugins.NoMatch},            // protocol 2
		{[]byte("GET / HTTP/1.1\r\n"), plugins.NoMatch},
		{[]byte{0x16, 3, 1, 0, 0xa5}, plugins.NoMatch}, // TLS
	}
	for _, tt := range tests {
		if got := (sniffer{}).Sniff(tt.in, false); got.Verdict != tt.want {
			t.Errorf("Sniff(%x) = %v, want %v", tt.in, got.Verdict, tt.want)
		}
	}
}

func FuzzSniff(f *testing.F) {
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add([]byte{0, 0, 0, 41, 0, 3, 0, 0, 'u', 's', 'e', 'r', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := plugins.Replay(sniffer{}, b, 0); err != nil {
			t.Fatal(err)
		}
	})
}
