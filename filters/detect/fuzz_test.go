package detect_test

import (
	"bytes"
	"testing"

	"github.com/siftmesh/sift/filters/detect"
)

// Fuzz targets, one per sniffer, seeded from testdata/fuzz/<FuzzName>/ and
// the table samples. Run one with
//
//	go test -run='^$' -fuzz='^FuzzTLS$' -fuzztime=30s -fuzzminimizetime=5s ./filters/detect/
//
// Without -fuzzminimizetime, FuzzTLS seems stuck at "0 execs/sec": Go's
// minimizer is quadratic in the input's length and ClientHellos are ~1.5 KB,
// so it spends its whole default 60 s budget on each new interesting input.

func FuzzTLS(f *testing.F)   { fuzzSniffer(f, detect.TLS()) }
func FuzzHTTP1(f *testing.F) { fuzzSniffer(f, detect.HTTP1()) }
func FuzzH2(f *testing.F)    { fuzzSniffer(f, detect.H2()) }

// maxSeed bounds the table inputs used as seeds.
const maxSeed = 4096

// fuzzSniffer checks, on any input: no panic; b left unmodified; no NeedMore
// at EOF; Need sane; no other built-in matching what sn matches (the
// built-ins are mutually exclusive); and the prefix properties of
// checkPrefixes on a sample of prefixes — in particular, if Sniff(b) is a
// Match, every shorter prefix is NeedMore or that same Match.
func fuzzSniffer(f *testing.F, sn detect.Sniffer) {
	for _, in := range sampleInputs() {
		// Large seeds stall Go's mutator (golang/go#51484: 0 execs/sec) and
		// add nothing small ones do not; the table tests cover them.
		if len(in) <= maxSeed {
			f.Add(in)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		r := sn.Sniff(b, false)
		e := sn.Sniff(b, true)
		if !bytes.Equal(b, orig) {
			t.Fatal("Sniff modified its input")
		}
		if r.Verdict == detect.NeedMore && r.Need != 0 && r.Need <= len(b) {
			t.Fatalf("NeedMore with Need %d ≤ len %d", r.Need, len(b))
		}
		if e.Verdict == detect.NeedMore {
			t.Fatal("NeedMore at EOF")
		}
		if r.Verdict == detect.Match {
			for _, other := range detect.Builtins() {
				if other.Name() == sn.Name() {
					continue
				}
				if o := other.Sniff(b, true); o.Verdict == detect.Match {
					t.Fatalf("both %s and %s match", sn.Name(), other.Name())
				}
			}
		}
		checkPrefixes(t, sn, b, true)
	})
}
