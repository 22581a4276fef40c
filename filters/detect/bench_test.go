package detect_test

import (
	"crypto/tls"
	"net/http"
	"testing"

	"github.com/siftmesh/sift/filters/detect"
)

func benchmarkSniff(b *testing.B, sn detect.Sniffer, in []byte, want string) {
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	if r := sn.Sniff(in, false); r.Protocol != want {
		b.Fatalf("Sniff = %+v, want protocol %q", r, want)
	}
	for b.Loop() {
		sn.Sniff(in, false)
	}
}

// BenchmarkSniffTLS sniffs a complete crypto/tls ClientHello (the costly
// case: crypto/tls parses it).
func BenchmarkSniffTLS(b *testing.B) {
	in := clientHello(&tls.Config{ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}})
	benchmarkSniff(b, detect.TLS(), in, "tls")
}

// BenchmarkSniffTLSPartial sniffs the first record header of a ClientHello
// (what every round before the last costs).
func BenchmarkSniffTLSPartial(b *testing.B) {
	in := clientHello(&tls.Config{ServerName: "example.com"})
	benchmarkSniff(b, detect.TLS(), in[:100], "")
}

func BenchmarkSniffHTTP1(b *testing.B) {
	in := requestBytes(mustRequest(http.MethodGet, "http://example.com/api/v1/items?page=2", nil))
	benchmarkSniff(b, detect.HTTP1(), in, "http/1.1")
}

func BenchmarkSniffH2(b *testing.B) {
	benchmarkSniff(b, detect.H2(), h2Start(), "h2c")
}

// BenchmarkSniffAllHTTP1 is one detection round as the detect filter runs
// it on an HTTP/1.1 request: tls and h2 decline, http1 matches.
func BenchmarkSniffAllHTTP1(b *testing.B) {
	in := requestBytes(mustRequest(http.MethodGet, "http://example.com/api/v1/items?page=2", nil))
	sniffers := detect.Builtins()
	b.ReportAllocs()
	for b.Loop() {
		for _, sn := range sniffers {
			if sn.Sniff(in, false).Verdict == detect.Match {
				break
			}
		}
	}
}
