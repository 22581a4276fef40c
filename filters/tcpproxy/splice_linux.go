package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// copyStream copies src to dst until src's EOF, by splice(2) when both are
// TCP sockets, and returns how many bytes it moved. Bytes copied in user
// space (not both TCP) are also added to moved as they go, for idle_timeout.
//
// Go's TCPConn.ReadFrom splices through a pipe it holds for the whole call —
// while it waits for data too. A proxy whose connections are mostly idle
// would then pin a pipe pair (two descriptors and the pipe's buffer) per
// direction per connection. So the copy runs in rounds: wait until src is
// readable, ask the kernel how many bytes are queued (FIONREAD), and splice
// exactly that many; between rounds no pipe is held. When nothing is queued a
// one-byte MSG_PEEK (no payload is copied) tells "wait" (EAGAIN) from end of
// stream (0): readiness alone cannot, since an edge-triggered event may carry
// the last bytes and the FIN together and will not fire again.
func copyStream(dst, src net.Conn, moved *atomic.Uint64) (int64, error) {
	tdst, ok1 := dst.(*net.TCPConn)
	tsrc, ok2 := src.(*net.TCPConn)
	if !ok1 || !ok2 {
		return io.Copy(dst, countingReader{src, moved})
	}
	raw, err := tsrc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	lr := &io.LimitedReader{R: tsrc}
	for {
		n, err := queued(raw)
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil // EOF
		}
		lr.N = int64(n)
		m, err := tdst.ReadFrom(lr)
		total += m
		if err != nil {
			return total, err
		}
		if lr.N > 0 {
			// ReadFrom stopped early: the peer sent EOF or the copy was cut.
			// Go on: the next round tells which.
			continue
		}
	}
}

// queued blocks until the socket is readable and returns how many bytes are
// queued; 0 means end of stream.
func queued(raw syscall.RawConn) (int, error) {
	var (
		n    int
		rerr error
		peek [1]byte
	)
	err := raw.Read(func(fd uintptr) bool {
		n, rerr = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if rerr != nil || n > 0 {
			return true
		}
		m, _, perr := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case errors.Is(perr, unix.EAGAIN):
			return false // nothing yet: wait for readability
		case perr != nil:
			rerr = perr
		case m > 0:
			n = m // data arrived meanwhile
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}
