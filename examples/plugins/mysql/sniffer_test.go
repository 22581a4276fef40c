package main

import (
	"testing"

	"github.com/siftmesh/sift/plugins"
)

// A MariaDB 10.11 greeting's first bytes (the real server's greeting is
// checked end to end in test/plugins_test.go, through sift-proxy).
var mariadb = append([]byte{0x6b, 0x00, 0x00, 0x00, 0x0a}, []byte("5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x2b\x00\x00\x00")...)

func TestSniffServer(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want plugins.Verdict
	}{
		{"mariadb", mariadb, plugins.Match},
		{"mysql 8", append([]byte{0x4a, 0, 0, 0, 10}, "8.0.36\x00\x08\x00\x00\x00"...), plugins.Match},
		{"truncated before the NUL", mariadb[:12], plugins.NoMatch},
		{"sequence 1", append([]byte{0x4a, 0, 0, 1, 10}, "8.0.36\x00"...), plugins.NoMatch},
		{"protocol 9", append([]byte{0x4a, 0, 0, 0, 9}, "4.0\x00"...), plugins.NoMatch},
		{"SMTP", []byte("220 mail ESMTP\r\n"), plugins.NoMatch},
		{"empty version", []byte{0x4a, 0, 0, 0, 10, 0}, plugins.NoMatch},
	}
	for _, tt := range tests {
		if got := (sniffer{}).SniffServer(tt.in); got.Verdict != tt.want {
			t.Errorf("%s: SniffServer(%q) = %v, want %v", tt.name, tt.in, got.Verdict, tt.want)
		}
	}
	if got := (sniffer{}).SniffServer(mariadb).Attributes["server_version"]; got != "5.5.5-10.11.6-MariaDB-0+deb12u1" {
		t.Errorf("server_version = %q", got)
	}
	if got := (sniffer{}).Sniff([]byte("\x03select 1"), false); got.Verdict != plugins.NoMatch {
		t.Errorf("a client's bytes: %v", got.Verdict)
	}
}

func FuzzSniffServer(f *testing.F) {
	f.Add(mariadb)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := (sniffer{}).SniffServer(b)
		if r.Verdict == plugins.NeedMore {
			t.Fatalf("NeedMore for %q: a greeting gets one look", b)
		}
		if r.Verdict == plugins.Match && r.Protocol != "mysql" {
			t.Fatalf("protocol %q", r.Protocol)
		}
	})
}
