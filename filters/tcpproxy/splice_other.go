//go:build !linux

package tcpproxy

import (
	"io"
	"net"
)

// copyStream copies src to dst until src's EOF.
func copyStream(dst, src net.Conn) (int64, error) {
	return io.Copy(dst, src)
}
