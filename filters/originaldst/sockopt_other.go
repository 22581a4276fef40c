//go:build !linux

package originaldst

import (
	"net"
	"net/netip"
)

// originalDst: redirect records are a Linux netfilter feature.
func originalDst(*net.TCPConn) (netip.AddrPort, bool, error) { return netip.AddrPort{}, false, nil }
