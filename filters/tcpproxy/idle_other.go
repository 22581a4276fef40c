//go:build !linux

package tcpproxy

import "net"

// socketBytes has no kernel counters to read off Linux: idle_timeout then
// runs from the connection's start.
func socketBytes(net.Conn) (uint64, bool) { return 0, false }
