// Command mqtt is a Sift protocol-sniffer plugin for MQTT: it recognises a
// client's CONNECT packet (MQTT 3.1, 3.1.1 and 5) and reports protocol
// "mqtt" with the protocol version.
package main

import "github.com/siftmesh/sift/plugins"

func main() { plugins.Serve(sniffer{}) }

type sniffer struct{}

func (sniffer) Info() plugins.Info {
	return plugins.Info{Name: "mqtt", Version: "1.0.0", Protocols: []string{"mqtt"}, MaxBytes: 16}
}

// Sniff matches a CONNECT fixed header (0x10, a remaining length of one to
// four bytes), then the protocol name "MQTT" (levels 4 and 5) or "MQIsdp"
// (level 3) and the protocol level.
func (sniffer) Sniff(b []byte, atEOF bool) plugins.Result {
	no := plugins.Result{Verdict: plugins.NoMatch}
	need := func(n int) plugins.Result {
		if atEOF {
			return no
		}
		return plugins.Result{Verdict: plugins.NeedMore, Need: n}
	}
	if len(b) < 1 {
		return need(1)
	}
	if b[0] != 0x10 { // CONNECT, flags 0
		return no
	}
	// Remaining length: base-128, at most 4 bytes, the last without 0x80.
	i, remaining := 1, 0
	for shift := 0; ; shift += 7 {
		if i >= len(b) {
			return need(i + 1)
		}
		if shift == 28 {
			return no
		}
		c := b[i]
		remaining |= int(c&0x7f) << shift
		i++
		if c&0x80 == 0 {
			break
		}
	}
	for _, p := range []struct {
		name  string
		level byte
		ver   string
	}{{"\x00\x04MQTT", 4, "3.1.1"}, {"\x00\x04MQTT", 5, "5"}, {"\x00\x06MQIsdp", 3, "3.1"}} {
		whole := p.name + string(p.level)
		if remaining < len(whole)+3 { // + connect flags and keep alive
			continue
		}
		n := min(len(b)-i, len(whole))
		if string(b[i:i+n]) != whole[:n] {
			continue
		}
		if n < len(whole) {
			return need(i + len(whole))
		}
		return plugins.Result{Verdict: plugins.Match, Protocol: "mqtt", Attributes: map[string]string{"version": p.ver}}
	}
	return no
}
