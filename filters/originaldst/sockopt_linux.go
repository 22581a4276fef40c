package originaldst

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and
// IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h); both are 80.
const soOriginalDst = 80

// originalDst reads the pre-NAT destination of c. ok is false when the
// connection was not redirected (the kernel answers ENOENT).
func originalDst(c *net.TCPConn) (netip.AddrPort, bool, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, false, err
	}
	local := c.LocalAddr().(*net.TCPAddr)
	var (
		buf  [unix.SizeofSockaddrInet6]byte
		serr error
	)
	level := unix.SOL_IP
	if local.IP.To4() == nil {
		level = unix.SOL_IPV6
	}
	if err := raw.Control(func(fd uintptr) {
		size := uint32(len(buf))
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno != 0 {
			serr = errno
		}
	}); err != nil {
		return netip.AddrPort{}, false, err
	}
	if serr != nil {
		if errors.Is(serr, syscall.ENOENT) || errors.Is(serr, syscall.ENOPROTOOPT) {
			return netip.AddrPort{}, false, nil
		}
		return netip.AddrPort{}, false, serr
	}
	if level == unix.SOL_IP {
		return ipv4Addr(buf[:]), true, nil
	}
	return ipv6Addr(buf[:]), true, nil
}
