package tcpproxy

import (
	"net"

	"golang.org/x/sys/unix"
)

// socketBytes returns the bytes received plus the bytes sent and acknowledged
// on a TCP socket (Linux TCP_INFO: tcpi_bytes_received, tcpi_bytes_acked).
// A connection layered on TCP (a *tls.Conn, anything with NetConn) counts
// its socket's bytes: records moving are activity.
func socketBytes(c net.Conn) (uint64, bool) {
	for {
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = u.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var serr error
	if err := raw.Control(func(fd uintptr) {
		info, serr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || serr != nil {
		return 0, false
	}
	return info.Bytes_received + info.Bytes_acked, true
}
