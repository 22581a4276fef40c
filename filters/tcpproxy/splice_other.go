//go:build !linux

package tcpproxy

import (
	"io"
	"net"
	"sync/atomic"
)

// copyStream copies src to dst until src's EOF.
func copyStream(dst, src net.Conn, moved *atomic.Uint64) (int64, error) {
	return io.Copy(dst, countingReader{src, moved})
}
