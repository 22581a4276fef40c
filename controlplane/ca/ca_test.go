package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openCA(t *testing.T, dir string, clock Clock, mod ...func(*Options)) *CA {
	t.Helper()
	opts := Options{Dir: dir, Clock: clock, Logger: quiet()}
	for _, f := range mod {
		f(&opts)
	}
	c, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verify checks l against bundle at time at, as a peer would (client and
// server usage both).
func verify(l *Leaf, bundle []*x509.Certificate, at time.Time) error {
	roots := x509.NewCertPool()
	for _, r := range bundle {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for rest := l.ChainPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if c, err := x509.ParseCertificate(b.Bytes); err == nil && !c.Equal(l.Certificate) {
			inter.AddCert(c)
		}
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
		if _, err := l.Certificate.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return err
		}
	}
	return nil
}

func TestLeafContents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		id      string
		ttl     time.Duration
		wantTTL time.Duration
		wantErr string
	}{
		{name: "workload", id: "spiffe://cluster.local/ns/shop/sa/web", wantTTL: 24 * time.Hour},
		{name: "other trust domain, custom lifetime", id: "spiffe://prod.example.com/ns/db/sa/default", ttl: time.Hour, wantTTL: time.Hour},
		{name: "not spiffe", id: "https://cluster.local/ns/a/sa/b", wantErr: "the scheme must be spiffe"},
		{name: "no path", id: "spiffe://cluster.local", wantErr: "needs a path"},
		{name: "upper-case trust domain", id: "spiffe://Cluster.local/ns/a/sa/b", wantErr: "lower-case"},
		{name: "port", id: "spiffe://cluster.local:8443/ns/a/sa/b", wantErr: "trust domain must be"},
		{name: "user", id: "spiffe://u@cluster.local/ns/a/sa/b", wantErr: "trust domain must be"},
		{name: "dot segment", id: "spiffe://cluster.local/ns/../sa/b", wantErr: "path segments"},
		{name: "empty segment", id: "spiffe://cluster.local/ns//sa/b", wantErr: "path segments"},
		{name: "query", id: "spiffe://cluster.local/ns/a/sa/b?x=1", wantErr: "path segments"},
		{name: "space would be escaped", id: "spiffe://cluster.local/ns/a b", wantErr: "path segments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clock := NewManualClock(t0)
			c := openCA(t, t.TempDir(), clock, func(o *Options) { o.LeafTTL = tt.ttl })
			l, err := c.Leaf("shop/web-0", tt.id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			cert := l.Certificate
			type contents struct {
				URIs          []string
				DNS           int
				KeyUsage      x509.KeyUsage
				ExtKeyUsage   []x509.ExtKeyUsage
				IsCA          bool
				Lifetime      time.Duration
				RenewAfter    time.Duration
				P256          bool
				SANCritical   bool
				SubjectIsNone bool
			}
			got := contents{DNS: len(cert.DNSNames) + len(cert.IPAddresses) + len(cert.EmailAddresses),
				KeyUsage: cert.KeyUsage, ExtKeyUsage: cert.ExtKeyUsage, IsCA: cert.IsCA,
				Lifetime: cert.NotAfter.Sub(t0), RenewAfter: l.RenewAt.Sub(t0), SubjectIsNone: len(cert.Subject.Names) == 0}
			for _, u := range cert.URIs {
				got.URIs = append(got.URIs, u.String())
			}
			if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); ok {
				got.P256 = pub.Curve == elliptic.P256()
			}
			for _, e := range cert.Extensions {
				if e.Id.Equal([]int{2, 5, 29, 17}) {
					got.SANCritical = e.Critical
				}
			}
			want := contents{URIs: []string{tt.id}, KeyUsage: x509.KeyUsageDigitalSignature,
				ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
				Lifetime:    tt.wantTTL, RenewAfter: time.Duration(0.7 * float64(tt.wantTTL)), P256: true,
				// SPIFFE X509-SVID: an empty subject makes the SAN extension critical.
				SANCritical: true, SubjectIsNone: true}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("leaf (-want +got):\n%s", diff)
			}
			if cert.NotBefore.After(t0) {
				t.Errorf("NotBefore %v is after issuance %v", cert.NotBefore, t0)
			}
			if err := verify(l, c.Bundle(), t0); err != nil {
				t.Errorf("chain does not verify to the root: %v", err)
			}
			if err := verify(l, c.Bundle(), t0.Add(tt.wantTTL+time.Second)); err == nil {
				t.Error("chain verifies after expiry")
			}
			if _, err := l.TLSCertificate().Leaf.Verify(x509.VerifyOptions{Roots: c.Pool(), CurrentTime: t0}); err != nil {
				t.Errorf("TLSCertificate: %v", err)
			}
		})
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "ca")
	clock := NewManualClock(t0)
	first := openCA(t, dir, clock)
	leaf, err := first.Leaf("shop/web-0", "spiffe://cluster.local/ns/a/sa/b")
	if err != nil {
		t.Fatal(err)
	}
	token := first.NodeToken("web-0.shop")

	second := openCA(t, dir, clock)
	if diff := cmp.Diff(first.BundlePEM(), second.BundlePEM()); diff != "" {
		t.Errorf("root changed across restart (-first +second):\n%s", diff)
	}
	if err := verify(leaf, second.Bundle(), t0); err != nil {
		t.Errorf("a leaf issued before the restart does not verify after it: %v", err)
	}
	if got := second.NodeToken("web-0.shop"); got != token {
		t.Error("node tokens changed across restart")
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}
	for _, name := range []string{RootFile, TokenKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", name, fi.Mode().Perm())
		}
	}
	// Tools that only read a CA refuse a directory without one.
	if _, err := Open(Options{Dir: filepath.Join(t.TempDir(), "typo"), MustExist: true, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "no CA in") {
		t.Errorf("MustExist on an empty directory: err = %v", err)
	}
	if _, err := Open(Options{Dir: dir, MustExist: true, Clock: clock, Logger: quiet()}); err != nil {
		t.Errorf("MustExist on an existing CA: %v", err)
	}
	// A different directory is a different CA.
	other := openCA(t, t.TempDir(), clock)
	if string(other.BundlePEM()) == string(first.BundlePEM()) {
		t.Error("two directories share a root")
	}
	if err := verify(leaf, other.Bundle(), t0); err == nil {
		t.Error("a leaf verifies against another CA's root")
	}
}

func TestCorruptStateIsAnError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file, content, wantErr string
	}{
		{name: "root", file: RootFile, content: "not pem", wantErr: "no CERTIFICATE PEM block"},
		{name: "token key", file: TokenKeyFile, content: "zz", wantErr: "not a hex key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, tt.file), []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(Options{Dir: dir, Logger: quiet()})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// writeCA writes a CA certificate signed by parent (self-signed when nil)
// and its key in separate PEM files.
func writeCA(t *testing.T, dir, name string, parent *authority, maxPathZero bool) (*authority, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		MaxPathLenZero: maxPathZero, KeyUsage: x509.KeyUsageCertSign}
	signerCert, signerKey := tmpl, key
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, &key.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	return &authority{cert: cert, key: key}, certPath, keyPath
}

func TestOperatorFiles(t *testing.T) {
	t.Parallel()
	files := t.TempDir()
	root, rootCert, rootKey := writeCA(t, files, "root", nil, false)
	_, interCert, interKey := writeCA(t, files, "intermediate", root, true)
	_, otherCert, _ := writeCA(t, files, "other", nil, false)
	tests := []struct {
		name              string
		cert, key, bundle string
		wantChain         int
		wantAnchor        string
		wantErr           string
	}{
		{name: "root", cert: rootCert, key: rootKey, wantChain: 1, wantAnchor: "root"},
		{name: "intermediate with its root", cert: interCert, key: interKey, bundle: rootCert, wantChain: 2, wantAnchor: "root"},
		{name: "key of another certificate", cert: interCert, key: rootKey, wantErr: "does not match"},
		{name: "bundle it does not chain to", cert: interCert, key: interKey, bundle: otherCert, wantErr: "does not chain"},
		{name: "cert without key", cert: rootCert, wantErr: "go together"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := Open(Options{Dir: t.TempDir(), CertFile: tt.cert, KeyFile: tt.key, BundleFile: tt.bundle, Clock: NewManualClock(t0), Logger: quiet()})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			l, err := c.Leaf("shop/web-0", "spiffe://cluster.local/ns/a/sa/b")
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(string(l.ChainPEM), "BEGIN CERTIFICATE"); got != tt.wantChain {
				t.Errorf("chain has %d certificates, want %d", got, tt.wantChain)
			}
			if got := len(l.TLSCertificate().Certificate); got != tt.wantChain {
				t.Errorf("TLS chain has %d certificates, want %d", got, tt.wantChain)
			}
			b := c.Bundle()
			if len(b) != 1 || b[0].Subject.CommonName != tt.wantAnchor {
				t.Fatalf("bundle = %d certs, first %q, want [%s]", len(b), b[0].Subject.CommonName, tt.wantAnchor)
			}
			if err := verify(l, b, t0); err != nil {
				t.Errorf("leaf does not verify: %v", err)
			}
			if _, err := os.Stat(filepath.Join(c.opts.Dir, RootFile)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a root was generated although files were given (%v)", err)
			}
		})
	}
}

// BenchmarkIssue measures issuing one workload certificate (key generation
// and signing): the cost of a renewal, paid once per workload per 70 % of
// the lifetime.
func BenchmarkIssue(b *testing.B) {
	c, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := c.Leaf("shop/web-0", "spiffe://cluster.local/ns/bench/sa/w"+strconv.Itoa(i)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAuthenticate measures checking one node token (once per xDS
// stream).
func BenchmarkAuthenticate(b *testing.B) {
	c, err := Open(Options{Dir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	n := nodeWithToken("web-0.shop", c.NodeToken("web-0.shop"))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Authenticate(n); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzValidateSPIFFEID: an accepted ID is a spiffe URI whose trust domain
// and path survive a parse round trip, so the certificate's URI SAN is the
// ID exactly.
func FuzzValidateSPIFFEID(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://x/y", "spiffe://X/y", "spiffe://x", "spiffe://x/a//b",
		"spiffe://x:1/a", "spiffe://u@x/a", "spiffe://x/a?b", "spiffe://x/a#b", "http://x/a", "spiffe://x/%2e%2e/a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if ValidateSPIFFEID(id) != nil {
			return
		}
		u, err := url.Parse(id)
		if err != nil || u.Scheme != "spiffe" || u.Host == "" || u.String() != id {
			t.Fatalf("accepted %q: parsed %v (%v)", id, u, err)
		}
	})
}
