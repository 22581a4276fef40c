// Command postgresql is a Sift protocol-sniffer plugin for PostgreSQL: it
// recognises the first message a client sends — an SSLRequest, a
// GSSENCRequest, a CancelRequest or a protocol 3.x StartupMessage — from its
// first 8 bytes, and reports protocol "postgresql" with the request's kind.
package main

import (
	"encoding/binary"

	"github.com/siftmesh/sift/plugins"
)

func main() { plugins.Serve(sniffer{}) }

type sniffer struct{}

// The request codes of PostgreSQL's frontend/backend protocol.
const (
	codeSSL     = 80877103 // 1234 << 16 | 5679
	codeGSSENC  = 80877104 // 1234 << 16 | 5680
	codeCancel  = 80877102 // 1234 << 16 | 5678
	protocol3   = 3 << 16  // StartupMessage, protocol 3.0; minor versions 3.x
	maxStartup  = 10000    // the server refuses longer startup packets
	headerBytes = 8
)

func (sniffer) Info() plugins.Info {
	return plugins.Info{Name: "postgresql", Version: "1.0.0", Protocols: []string{"postgresql"}, MaxBytes: headerBytes}
}

func (sniffer) Sniff(b []byte, atEOF bool) plugins.Result {
	if len(b) < headerBytes {
		if atEOF {
			return plugins.Result{Verdict: plugins.NoMatch}
		}
		// The length's high bytes are 0 for every valid first message.
		if len(b) >= 1 && b[0] != 0 || len(b) >= 2 && b[1] != 0 {
			return plugins.Result{Verdict: plugins.NoMatch}
		}
		return plugins.Result{Verdict: plugins.NeedMore, Need: headerBytes}
	}
	length := binary.BigEndian.Uint32(b[0:4])
	code := binary.BigEndian.Uint32(b[4:8])
	kind := ""
	switch {
	case code == codeSSL && length == 8:
		kind = "ssl_request"
	case code == codeGSSENC && length == 8:
		kind = "gssenc_request"
	case code == codeCancel && length == 16:
		kind = "cancel_request"
	case code>>16 == 3 && code&0xffff < 16 && length > headerBytes && length <= maxStartup:
		kind = "startup"
	default:
		return plugins.Result{Verdict: plugins.NoMatch}
	}
	return plugins.Result{Verdict: plugins.Match, Protocol: "postgresql", Attributes: map[string]string{"request": kind}}
}
