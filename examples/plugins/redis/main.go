// Command redis is a Sift protocol-sniffer plugin for Redis: it recognises a
// client's first command in RESP (an array of bulk strings, which is what
// every Redis client library and redis-cli send) and reports protocol
// "redis" with the command's name. Inline commands ("PING\r\n") are not
// matched: any line-based text protocol looks like them.
package main

import "github.com/siftmesh/sift/plugins"

func main() { plugins.Serve(sniffer{}) }

type sniffer struct{}

// maxCommand bounds a command name (the longest Redis command is about 30).
const maxCommand = 64

func (sniffer) Info() plugins.Info {
	return plugins.Info{Name: "redis", Version: "1.0.0", Protocols: []string{"redis"}, MaxBytes: 96}
}

// Sniff matches "*<count>\r\n$<len>\r\n<name>\r\n" with 1 ≤ count ≤ 1 048 576,
// 1 ≤ len ≤ 64 and a name of letters (and '-', '_', '|').
func (sniffer) Sniff(b []byte, atEOF bool) plugins.Result {
	no := plugins.Result{Verdict: plugins.NoMatch}
	more := plugins.Result{Verdict: plugins.NeedMore}
	if atEOF {
		more = no
	}
	i := 0
	count, i, ok := number(b, i, '*', 1<<20)
	switch {
	case !ok:
		return no
	case i < 0:
		return more
	case count < 1:
		return no
	}
	n, i, ok := number(b, i, '$', maxCommand)
	switch {
	case !ok:
		return no
	case i < 0:
		return more
	case n < 1:
		return no
	}
	for j := range n + 2 {
		if i+j >= len(b) {
			more.Need = i + n + 2
			return more
		}
		c := b[i+j]
		switch {
		case j < n && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_' || c == '|'):
		case j == n && c == '\r', j == n+1 && c == '\n':
		default:
			return no
		}
	}
	return plugins.Result{Verdict: plugins.Match, Protocol: "redis",
		Attributes: map[string]string{"command": lower(b[i : i+n])}}
}

// number parses "<prefix><digits>\r\n" at b[i:], the value at most limit.
// It returns the value and the index after it; i < 0 when b ends first;
// ok false when b cannot be that.
func number(b []byte, i int, prefix byte, limit int) (v, next int, ok bool) {
	if i >= len(b) {
		return 0, -1, true
	}
	if b[i] != prefix {
		return 0, 0, false
	}
	i++
	digits := 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		v = v*10 + int(b[i]-'0')
		digits++
		if v > limit {
			return 0, 0, false
		}
	}
	switch {
	case i == len(b):
		return 0, -1, true
	case digits == 0 || b[i] != '\r':
		return 0, 0, false
	case i+1 == len(b):
		return 0, -1, true
	case b[i+1] != '\n':
		return 0, 0, false
	}
	return v, i + 2, true
}

func lower(b []byte) string {
	out := make([]byte, len(b))
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		out[i] = c
	}
	return string(out)
}
