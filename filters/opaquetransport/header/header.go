// Package header is the opaque-transport header: the small versioned header
// an outbound Sift proxy writes first inside the mTLS stream to a peer's
// inbound port, saying which local port the connection is for and what the
// outbound side learned of it (docs/mesh-transport.md). Pure: bytes in,
// header out.
package header

import (
	"errors"
	"fmt"
)

// Header is the opaque-transport header.
type Header struct {
	// Port is the original destination port on the peer. Not zero.
	Port uint16
	// ServerFirst: the outbound side saw the server speak first (or the
	// destination is learned to be server-first).
	ServerFirst bool
	// Detected: Protocol is a detection verdict rather than a declaration.
	Detected bool
	// Protocol is what the outbound side knows of the protocol ("opaque",
	// "tls", "http/1.1", a plugin's name); at most MaxProtocolLen printable
	// ASCII bytes, possibly empty.
	Protocol string
}

// Wire format constants (docs/mesh-transport.md).
const (
	Magic          = "SIFT"
	Version        = 1
	fixedLen       = 9 // magic 4, version 1, flags 1, port 2, protocol length 1
	MaxProtocolLen = 64
	// MaxLen is the longest header.
	MaxLen = fixedLen + MaxProtocolLen

	flagServerFirst = 1 << 0
	flagDetected    = 1 << 1
)

// ALPN is the TLS application protocol that announces the opaque transport
// on the mTLS connection between proxies.
const ALPN = "sift.opaque/1"

// Errors Parse returns, wrapped with details.
var (
	ErrBadMagic  = errors.New("opaque transport: not an opaque-transport header")
	ErrVersion   = errors.New("opaque transport: unsupported header version")
	ErrBadHeader = errors.New("opaque transport: malformed header")
)

// Parse reads a header from the start of b. It returns the header and its
// length; or, when b is a valid but incomplete prefix, need > len(b): the
// total length at which it can decide (the sniffers' NeedMore shape); or an
// error for bytes that cannot start a header. It never reads past MaxLen.
func Parse(b []byte) (h Header, n int, need int, err error) {
	for i := 0; i < len(Magic) && i < len(b); i++ {
		if b[i] != Magic[i] {
			return Header{}, 0, 0, fmt.Errorf("%w (first bytes %q)", ErrBadMagic, b[:i+1])
		}
	}
	if len(b) < fixedLen {
		return Header{}, 0, fixedLen, nil
	}
	if b[4] != Version {
		return Header{}, 0, 0, fmt.Errorf("%w %d (this proxy speaks %d)", ErrVersion, b[4], Version)
	}
	flags := b[5]
	h.ServerFirst = flags&flagServerFirst != 0
	h.Detected = flags&flagDetected != 0
	h.Port = uint16(b[6])<<8 | uint16(b[7])
	if h.Port == 0 {
		return Header{}, 0, 0, fmt.Errorf("%w: port 0", ErrBadHeader)
	}
	plen := int(b[8])
	if plen > MaxProtocolLen {
		return Header{}, 0, 0, fmt.Errorf("%w: protocol name of %d bytes (at most %d)", ErrBadHeader, plen, MaxProtocolLen)
	}
	if len(b) < fixedLen+plen {
		return Header{}, 0, fixedLen + plen, nil
	}
	name := b[fixedLen : fixedLen+plen]
	for _, c := range name {
		if c < 0x21 || c > 0x7e {
			return Header{}, 0, 0, fmt.Errorf("%w: protocol name %q is not printable ASCII", ErrBadHeader, name)
		}
	}
	h.Protocol = string(name)
	return h, fixedLen + plen, 0, nil
}

// Append appends h's encoding to b. It fails for a header Parse would
// refuse (port 0, a protocol name too long or not printable ASCII).
func Append(b []byte, h Header) ([]byte, error) {
	if h.Port == 0 {
		return b, fmt.Errorf("%w: port 0", ErrBadHeader)
	}
	if len(h.Protocol) > MaxProtocolLen {
		return b, fmt.Errorf("%w: protocol name of %d bytes (at most %d)", ErrBadHeader, len(h.Protocol), MaxProtocolLen)
	}
	for i := 0; i < len(h.Protocol); i++ {
		if c := h.Protocol[i]; c < 0x21 || c > 0x7e {
			return b, fmt.Errorf("%w: protocol name %q is not printable ASCII", ErrBadHeader, h.Protocol)
		}
	}
	var flags byte
	if h.ServerFirst {
		flags |= flagServerFirst
	}
	if h.Detected {
		flags |= flagDetected
	}
	b = append(b, Magic...)
	b = append(b, Version, flags, byte(h.Port>>8), byte(h.Port), byte(len(h.Protocol)))
	return append(b, h.Protocol...), nil
}
