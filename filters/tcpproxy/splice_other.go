//go:build !linux

package tcpproxy

import (
	"io"
	"net"
)

// copy copies d.src to d.dst until src's EOF, adding the bytes to d.n;
// it never parks off Linux.
func (d *direction) copy() (bool, error) {
	src, dst := d.conns()
	n, err := io.Copy(dst, countingReader{src, &d.r.moved})
	d.n += n
	return false, err
}

// parker is empty off Linux: there is no reactor to park in.
type parker struct{}

// canPark is false off Linux: connections keep a goroutine per direction.
func canPark(down, up net.Conn) bool { return false }

func (r *relay) initPark() {}

// relayRaw is empty off Linux: there is no splice.
type relayRaw struct{}

func (r *relay) initRaw() {}

func (d *direction) unpark() bool { return false }
