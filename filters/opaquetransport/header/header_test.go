package header_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/siftmesh/sift/filters/opaquetransport/header"
)

func TestAppendParse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		h    header.Header
		want []byte
	}{
		{name: "server-first mysql", h: header.Header{Port: 3306, ServerFirst: true, Detected: true, Protocol: "opaque"},
			want: []byte("SIFT\x01\x03\x0c\xea\x06opaque")},
		{name: "declared tls", h: header.Header{Port: 443, Protocol: "tls"}, want: []byte("SIFT\x01\x00\x01\xbb\x03tls")},
		{name: "no protocol", h: header.Header{Port: 65535}, want: []byte("SIFT\x01\x00\xff\xff\x00")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, err := header.Append([]byte("x"), tt.h)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b[1:], tt.want) {
				t.Errorf("Append = %q, want %q", b[1:], tt.want)
			}
			h, n, need, err := header.Parse(append(b[1:], "payload"...))
			if err != nil || need != 0 || n != len(tt.want) {
				t.Fatalf("Parse: n %d need %d err %v; want n %d", n, need, err, len(tt.want))
			}
			if diff := cmp.Diff(tt.h, h); diff != "" {
				t.Errorf("Parse (-want +got):\n%s", diff)
			}
			// Every proper prefix asks for more, and never for less than it has.
			for i := range len(tt.want) {
				_, n, need, err := header.Parse(tt.want[:i])
				if err != nil || n != 0 || need <= i {
					t.Fatalf("Parse(prefix %d) = n %d need %d err %v; want need > %d", i, n, need, err, i)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		wantErr error
		wantMsg string
	}{
		{name: "http request", in: "GET / HTTP/1.1\r\n", wantErr: header.ErrBadMagic, wantMsg: `(first bytes "G")`},
		{name: "wrong magic late", in: "SIFX", wantErr: header.ErrBadMagic},
		{name: "version 2", in: "SIFT\x02\x00\x00\x50\x00", wantErr: header.ErrVersion, wantMsg: "unsupported header version 2 (this proxy speaks 1)"},
		{name: "port 0", in: "SIFT\x01\x00\x00\x00\x00", wantErr: header.ErrBadHeader, wantMsg: "port 0"},
		{name: "protocol too long", in: "SIFT\x01\x00\x00\x50\x41", wantErr: header.ErrBadHeader, wantMsg: "65 bytes"},
		{name: "protocol not printable", in: "SIFT\x01\x00\x00\x50\x02a\n", wantErr: header.ErrBadHeader, wantMsg: "not printable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, _, _, err := header.Parse([]byte(tt.in))
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Parse(%q) = %v, want %v containing %q", tt.in, err, tt.wantErr, tt.wantMsg)
			}
		})
	}
	for _, h := range []header.Header{{}, {Port: 1, Protocol: strings.Repeat("a", 65)}, {Port: 1, Protocol: "a b"}} {
		if _, err := header.Append(nil, h); !errors.Is(err, header.ErrBadHeader) {
			t.Errorf("Append(%+v) = %v, want ErrBadHeader", h, err)
		}
	}
}

// FuzzParse: Parse never panics, never claims more bytes than it was given,
// asks only for more than it has, and what it accepts re-encodes to the
// same bytes.
func FuzzParse(f *testing.F) {
	f.Add([]byte("SIFT\x01\x03\x0c\xea\x06opaque"))
	f.Add([]byte("SIFT\x01\x00\x01\xbb\x03tls rest"))
	f.Add([]byte("SIFT"))
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Add([]byte("SIFT\x01\x00\x00\x50\x40"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, need, err := header.Parse(b)
		switch {
		case err != nil:
			if n != 0 || need != 0 {
				t.Fatalf("error %v with n %d need %d", err, n, need)
			}
		case need != 0:
			if need <= len(b) || need > header.MaxLen || n != 0 {
				t.Fatalf("need %d with %d bytes (n %d)", need, len(b), n)
			}
		default:
			if n > len(b) || n > header.MaxLen {
				t.Fatalf("n %d of %d bytes", n, len(b))
			}
			enc, err := header.Append(nil, h)
			if err != nil {
				t.Fatalf("Append of a parsed header %+v: %v", h, err)
			}
			// Flags bits other than the two defined are ignored on parse.
			want := bytes.Clone(b[:n])
			want[5] &= 0x03
			if !bytes.Equal(enc, want) {
				t.Fatalf("re-encoded %q, parsed from %q", enc, b[:n])
			}
		}
	})
}
