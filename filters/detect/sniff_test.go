package detect_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/detect"
)

func TestBuiltins(t *testing.T) {
	t.Parallel()
	var order []string
	for _, s := range detect.Builtins() {
		order = append(order, s.Name())
	}
	if diff := cmp.Diff([]string{"tls", "h2", "http1"}, order); diff != "" {
		t.Errorf("Builtins() order (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"h2", "http1", "tls"}, detect.BuiltinNames()); diff != "" {
		t.Errorf("BuiltinNames() (-want +got):\n%s", diff)
	}
	for _, name := range []string{"tls", "h2", "http1"} {
		if s, ok := detect.Builtin(name); !ok || s.Name() != name {
			t.Errorf("Builtin(%q) = %v, %v", name, s, ok)
		}
	}
	if s, ok := detect.Builtin("ssh"); ok {
		t.Errorf("Builtin(%q) = %v, true; want false", "ssh", s)
	}
}

// TestSniffers asks every built-in sniffer about every sample. Since every
// sniffer answers every sample, this also checks that the built-ins are
// mutually exclusive. Each call returning at all is the must-not-block test:
// a sniffer has nothing to wait on.
func TestSniffers(t *testing.T) {
	t.Parallel()
	for _, s := range samples() {
		for _, sn := range detect.Builtins() {
			t.Run(s.name+"/"+sn.Name(), func(t *testing.T) {
				t.Parallel()
				want, ok := s.want[sn.Name()]
				if !ok {
					want = detect.Result{Verdict: detect.NoMatch}
				}
				got := sn.Sniff(s.in, s.atEOF)
				if diff := cmp.Diff(want, got, cmpopts.EquateEmpty(), ignoreVerdicts); diff != "" {
					t.Errorf("%s.Sniff(%q, %v) (-want +got):\n%s", sn.Name(), abbrev(s.in), s.atEOF, diff)
				}
			})
		}
	}
}

// TestSniffDoesNotBlock feeds the sniffers inputs on which a sniffer doing
// I/O would wait: a TLS record announcing more bytes than present (crypto/tls
// over a live connection would block reading them), a complete ClientHello
// (crypto/tls would block writing its alert to a connection nobody reads),
// and partial HTTP inputs. A blocked Sniff would hang the test; goleak in
// TestMain checks that no goroutine outlives it.
func TestSniffDoesNotBlock(t *testing.T) {
	t.Parallel()
	hello := clientHello(&tls.Config{ServerName: "example.com"})
	inputs := [][]byte{
		hello[:5],
		hello[:len(hello)/2],
		hello,
		{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc},
		[]byte("GET / HTTP/1.1"),
		[]byte("PRI * HTTP/2.0\r\n"),
	}
	for _, in := range inputs {
		for _, sn := range detect.Builtins() {
			for _, atEOF := range []bool{false, true} {
				sn.Sniff(in, atEOF)
			}
		}
	}
}

// TestSniffPrefixes is the fragmentation property: on every sample, every
// prefix gets NeedMore until the sniffer decides, and then the same verdict;
// a Need is honoured; nothing is NeedMore at EOF.
func TestSniffPrefixes(t *testing.T) {
	t.Parallel()
	for _, s := range samples() {
		for _, sn := range detect.Builtins() {
			t.Run(s.name+"/"+sn.Name(), func(t *testing.T) {
				t.Parallel()
				checkPrefixes(t, sn, s.in, false)
				if want, ok := s.want[sn.Name()]; ok && want.Verdict == detect.Match && !s.atEOF {
					// A valid input is never NoMatch on a prefix.
					for k := range len(s.in) {
						if r := sn.Sniff(s.in[:k], false); r.Verdict == detect.NoMatch {
							t.Fatalf("Sniff(in[:%d]) = NoMatch on a prefix of a valid input", k)
						}
					}
				}
			})
		}
	}
}

// checkPrefixes checks a sniffer's answers on the prefixes of b (all of them
// until it decides, unless sparse; see nextPrefix):
//   - NeedMore only without EOF, with Need 0 or more than the input;
//   - a Match names its protocol;
//   - verdicts are NeedMore until the first decision, then all equal to it
//     (more bytes never change a decision);
//   - no decision before a Need promised by a shorter prefix;
//   - at EOF, a decided prefix keeps its verdict and an undecided one is
//     decided.
func checkPrefixes(t testing.TB, sn detect.Sniffer, b []byte, sparse bool) {
	t.Helper()
	var (
		decided   *detect.Result
		decidedAt int
		promise   int // no decision before this length
		promiseAt int
	)
	for k := 0; k <= len(b); k = nextPrefix(k, decidedAt, decided != nil, sparse, len(b)) {
		r := sn.Sniff(b[:k], false)
		switch r.Verdict {
		case detect.NeedMore:
			if r.Need != 0 && r.Need <= k {
				t.Fatalf("Sniff(b[:%d]) = NeedMore with Need %d ≤ %d", k, r.Need, k)
			}
		case detect.Match:
			if r.Protocol == "" {
				t.Fatalf("Sniff(b[:%d]) = Match without a protocol", k)
			}
		case detect.NoMatch:
		default:
			t.Fatalf("Sniff(b[:%d]) = verdict %v", k, r.Verdict)
		}
		if decided != nil {
			if diff := resultDiff(*decided, r); diff != "" {
				t.Fatalf("Sniff(b[:%d]) differs from the decision at %d (-then +now):\n%s", k, decidedAt, diff)
			}
		} else if r.Verdict != detect.NeedMore {
			if k < promise {
				t.Fatalf("Sniff(b[:%d]) = %v, but b[:%d] promised Need %d", k, r.Verdict, promiseAt, promise)
			}
			decided, decidedAt = &r, k
		} else if r.Need > promise {
			promise, promiseAt = r.Need, k
		}
		e := sn.Sniff(b[:k], true)
		if e.Verdict == detect.NeedMore {
			t.Fatalf("Sniff(b[:%d], atEOF) = NeedMore", k)
		}
		if r.Verdict != detect.NeedMore {
			if diff := resultDiff(r, e); diff != "" {
				t.Fatalf("Sniff(b[:%d]) changes at EOF (-without +with):\n%s", k, diff)
			}
		}
	}
}

// nextPrefix steps through the prefixes of an n-byte input: every one
// until the decision, then the next 4 and about 4 more up to the whole input
// (re-checking thousands of decided prefixes would be slow: each decided TLS
// prefix is a crypto/tls parse). With sparse set, for fuzzing, it checks only
// the first 256 and about 64 more prefixes before the decision, and only the
// whole input after it.
func nextPrefix(k, decidedAt int, decided, sparse bool, n int) int {
	switch {
	case k >= n:
		return k + 1
	case decided && sparse:
		return n
	case decided && k >= decidedAt+4:
		return min(n, k+max(1, (n-decidedAt)/4))
	case !decided && sparse && k >= 256:
		return min(n, k+max(1, n/64))
	}
	return k + 1
}

// memPeeker is a filters.Peeker over a byte slice. With exact set it reads
// exactly the bytes asked for, as if they arrived one Peek at a time;
// otherwise everything at once. It reports io.EOF at the end.
type memPeeker struct {
	data  []byte
	n     int
	exact bool
	peeks int
}

func (p *memPeeker) Peeked() []byte { return p.data[:p.n] }

// Interrupt is never called: memPeeker runs no race.
func (p *memPeeker) Interrupt() { panic("memPeeker: Interrupt") }

func (p *memPeeker) Peek(n int, _ time.Time) ([]byte, error) {
	if p.n >= n {
		return p.Peeked(), nil
	}
	p.peeks++
	if p.n == len(p.data) {
		return p.Peeked(), io.EOF
	}
	if p.exact {
		p.n = min(n, len(p.data))
	} else {
		p.n = len(p.data)
	}
	if p.n < n {
		return p.Peeked(), io.EOF
	}
	return p.Peeked(), nil
}

// TestRunSamples runs the detection loop over each sample arriving
// byte-by-need (exact) and all at once: both reach the verdict the sniffers
// give on the whole input, and an exact run stops at the shortest prefix that
// decides — detection reads nothing it does not need.
func TestRunSamples(t *testing.T) {
	t.Parallel()
	for _, s := range samples() {
		for _, exact := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/exact=%v", s.name, exact), func(t *testing.T) {
				t.Parallel()
				want := wantOutcome(s.in)
				p := &memPeeker{data: s.in, exact: exact}
				got, err := detect.Run(p, detect.Builtins(), 0, time.Time{})
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
				if !exact {
					want.Bytes = len(s.in)
				}
				if diff := cmp.Diff(want, got, cmpopts.EquateEmpty(), ignoreVerdicts); diff != "" {
					t.Errorf("Run (-want +got):\n%s", diff)
				}
			})
		}
	}
}

// wantOutcome is what Run must find when in arrives as needed: the first
// builtin to match, at the shortest prefix it matches; else no_match at the
// shortest prefix all decline, or eof.
func wantOutcome(in []byte) detect.Outcome {
	for k := 0; k <= len(in); k++ {
		undecided := false
		for _, sn := range detect.Builtins() {
			switch r := sn.Sniff(in[:k], false); r.Verdict {
			case detect.Match:
				return detect.Outcome{Reason: filters.ReasonMatch, Sniffer: sn.Name(), Result: r, Bytes: k}
			case detect.NeedMore:
				undecided = true
			}
		}
		if !undecided {
			return detect.Outcome{Reason: filters.ReasonNoMatch, Bytes: k}
		}
	}
	for _, sn := range detect.Builtins() {
		if r := sn.Sniff(in, true); r.Verdict == detect.Match {
			return detect.Outcome{Reason: filters.ReasonMatch, Sniffer: sn.Name(), Result: r, Bytes: len(in)}
		}
	}
	return detect.Outcome{Reason: filters.ReasonEOF, Bytes: len(in)}
}

func TestRunByteCap(t *testing.T) {
	t.Parallel()
	hello := clientHello(&tls.Config{ServerName: "example.com"})
	tests := []struct {
		name      string
		in        []byte
		maxBytes  int
		want      detect.Outcome
		wantPeeks int
	}{
		{
			// Once the record and handshake headers (5+4 bytes) say the
			// ClientHello ends past the cap, stop at once.
			name: "tls hello over the cap", in: hello, maxBytes: 64,
			want:      detect.Outcome{Reason: filters.ReasonByteCap, Bytes: 9},
			wantPeeks: 9,
		},
		{
			name: "http line over the cap", in: []byte("GET /" + string(bytes.Repeat([]byte("a"), 100)) + " HTTP/1.1\r\n"), maxBytes: 64,
			want:      detect.Outcome{Reason: filters.ReasonByteCap, Bytes: 64},
			wantPeeks: 64,
		},
		{
			name: "match right at the cap", in: []byte("GET / HTTP/1.1\r\n"), maxBytes: 16,
			want:      detect.Outcome{Reason: filters.ReasonMatch, Sniffer: "http1", Result: detect.Result{Verdict: detect.Match, Protocol: "http/1.1"}, Bytes: 16},
			wantPeeks: 16,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := &memPeeker{data: tt.in, exact: true}
			got, err := detect.Run(p, detect.Builtins(), tt.maxBytes, time.Time{})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty(), ignoreVerdicts); diff != "" {
				t.Errorf("Run (-want +got):\n%s", diff)
			}
			if p.peeks != tt.wantPeeks {
				t.Errorf("Run peeked %d times, want %d", p.peeks, tt.wantPeeks)
			}
		})
	}
}

// resultDiff is cmp.Diff for Results, fast when they are equal (checkPrefixes
// compares thousands).
func resultDiff(x, y detect.Result) string {
	if x.Verdict == y.Verdict && x.Protocol == y.Protocol && x.Need == y.Need &&
		x.ServerName == y.ServerName && slices.Equal(x.ALPN, y.ALPN) {
		return ""
	}
	return cmp.Diff(x, y, cmpopts.EquateEmpty())
}

// abbrev shortens b for messages.
func abbrev(b []byte) []byte {
	if len(b) > 64 {
		return append(b[:60:60], "..."...)
	}
	return b
}

// ignoreVerdicts leaves the recorded verdicts out of Outcome comparisons;
// TestRunRecordsVerdicts checks them.
var ignoreVerdicts = cmpopts.IgnoreFields(detect.Outcome{}, "VerdictCodes", "NumVerdicts")

func TestRunRecordsVerdicts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		want []filters.SnifferVerdict
	}{
		{name: "http1", in: "GET / HTTP/1.1\r\n\r\n", want: []filters.SnifferVerdict{
			{Sniffer: "tls", Verdict: "no_match"}, {Sniffer: "h2", Verdict: "no_match"}, {Sniffer: "http1", Verdict: "match"}}},
		{name: "opaque", in: "\x00\x01binary", want: []filters.SnifferVerdict{
			{Sniffer: "tls", Verdict: "no_match"}, {Sniffer: "h2", Verdict: "no_match"}, {Sniffer: "http1", Verdict: "no_match"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, err := detect.Run(&memPeeker{data: []byte(tt.in)}, detect.Builtins(), 0, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			d := filters.Detection{SnifferNames: []string{"tls", "h2", "http1"}, VerdictCodes: o.VerdictCodes, NumVerdicts: o.NumVerdicts}
			if diff := cmp.Diff(tt.want, d.RecordedVerdicts()); diff != "" {
				t.Errorf("verdicts (-want +got):\n%s", diff)
			}
		})
	}
}
