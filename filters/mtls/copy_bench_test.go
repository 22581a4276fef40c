package mtls

import (
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"

	"github.com/siftmesh/sift/internal/testcerts"
)

// BenchmarkRelayCopy measures what one relay direction of an opaque proxy
// costs in this process (the package doc's kTLS paragraph): bytes arrive on
// one loopback socket and leave on another, by splice(2) (the plaintext
// path: TCPConn.ReadFrom), by a user-space copy through a 32 KiB buffer,
// and by decrypting TLS records in user space (crypto/tls) then copying —
// what a TLS-terminating hop does without kTLS. cpu-ns/MB is the process's
// user+system CPU per MB relayed, sender and receiver included.
func BenchmarkRelayCopy(b *testing.B) {
	leaf := testcerts.NewCA("bench").Issue("spiffe://bench/relay")
	for _, mode := range []string{"splice", "userspace", "tls-decrypt"} {
		b.Run(mode, func(b *testing.B) {
			in, out := listen(b), listen(b)
			sinkDone := make(chan struct{})
			go func() { // the receiver: discards
				defer close(sinkDone)
				c, err := out.Accept()
				if err != nil {
					return
				}
				io.Copy(io.Discard, c)
				c.Close()
			}()
			relayDone := make(chan struct{})
			go func() { // the relay
				defer close(relayDone)
				c, err := in.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				up, err := net.Dial("tcp", out.Addr().String())
				if err != nil {
					return
				}
				defer up.Close()
				switch mode {
				case "splice":
					up.(*net.TCPConn).ReadFrom(c)
				case "userspace":
					io.CopyBuffer(struct{ io.Writer }{up}, struct{ io.Reader }{c}, make([]byte, 32<<10))
				case "tls-decrypt":
					tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{leaf.TLS()}})
					io.CopyBuffer(struct{ io.Writer }{up}, tc, make([]byte, 32<<10))
				}
			}()
			var w io.WriteCloser
			c, err := net.Dial("tcp", in.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			w = c
			if mode == "tls-decrypt" {
				tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
				if err := tc.Handshake(); err != nil {
					b.Fatal(err)
				}
				w = tc
			}
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			before := cpu()
			b.ResetTimer()
			for range b.N {
				if _, err := w.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			w.Close()
			<-relayDone
			<-sinkDone
			b.StopTimer()
			b.ReportMetric(float64(cpu()-before)/float64(b.N), "cpu-ns/MB")
		})
	}
}

func listen(b *testing.B) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	return ln
}

// cpu returns the process's user+system CPU time in nanoseconds.
func cpu() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
