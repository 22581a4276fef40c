// Command mysql is a Sift protocol-sniffer plugin for MySQL and MariaDB, a
// protocol whose server speaks first: when a client stays silent and the
// server greets it, sift-proxy shows this plugin the greeting, and a
// protocol-10 handshake packet is reported as protocol "mysql" with the
// server's version. Clients' bytes are never claimed (a MySQL client never
// speaks first).
package main

import "github.com/siftmesh/sift/plugins"

func main() { plugins.Serve(sniffer{}) }

type sniffer struct{}

func (sniffer) Info() plugins.Info {
	return plugins.Info{Name: "mysql", Version: "1.0.0", Protocols: []string{"mysql"}, MaxBytes: 128}
}

// Sniff: a MySQL client waits for the server's handshake, so its own first
// bytes are never MySQL's.
func (sniffer) Sniff([]byte, bool) plugins.Result { return plugins.Result{Verdict: plugins.NoMatch} }

// SniffServer matches the initial handshake packet: a 3-byte little-endian
// payload length (at least 1+6+1+4, at most 16 MiB), sequence id 0,
// protocol version 10, then a NUL-terminated printable server version.
func (sniffer) SniffServer(b []byte) plugins.Result {
	no := plugins.Result{Verdict: plugins.NoMatch}
	if len(b) < 6 {
		return no
	}
	length := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	if b[3] != 0 || b[4] != 10 || length < 12 {
		return no
	}
	for i := 5; i < len(b) && i < 5+64; i++ {
		c := b[i]
		switch {
		case c == 0 && i > 5:
			return plugins.Result{Verdict: plugins.Match, Protocol: "mysql", Attributes: map[string]string{"server_version": string(b[5:i])}}
		case c < 0x20 || c > 0x7e:
			return no
		}
	}
	return no
}
