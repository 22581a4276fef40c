package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Files in the CA directory (Options.Dir). Every file is written 0600
// (atomically: a temporary file renamed over the old one) in a 0700
// directory; only the certificates are not secret, and they live beside
// their keys.
const (
	// RootFile holds the current root: a CERTIFICATE and a PRIVATE KEY
	// (PKCS #8) PEM block in one file, so that a rotation replaces both
	// with one rename.
	RootFile = "root.pem"
	// NextRootFile holds the new root while a rotation is in progress.
	NextRootFile = "next-root.pem"
	// RotationFile records a rotation in progress (started, overlap); its
	// appearance is what a running sift-control notices.
	RotationFile = "rotation.json"
	// TokenKeyFile holds the mesh key of node tokens (32 random bytes, hex).
	TokenKeyFile = "node-token.key"
)

// authority is a signing certificate and its key.
type authority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// certPEM returns the certificate alone, PEM-encoded.
func (a *authority) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.cert.Raw})
}

// fingerprint is the SHA-256 of the certificate, hex: how logs name a root.
func (a *authority) fingerprint() string { return fingerprint(a.cert) }

// encode returns the certificate and the key as PEM blocks in one file.
func (a *authority) encode() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(a.key)
	if err != nil {
		return nil, err
	}
	return append(a.certPEM(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...), nil
}

// newRoot generates a self-signed root valid from now for ttl.
func newRoot(now time.Time, ttl time.Duration) (*authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkixName("Sift mesh root CA " + now.UTC().Format("2006-01-02T15:04:05Z")),
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		IsCA:         true,
		// Leaves only (no intermediates below a generated root).
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key}, nil
}

// parseAuthority reads a signing certificate and its private key from PEM
// (they may be in the same data). The key must be an ECDSA or PKCS #8 ECDSA
// key matching the certificate, which must be a CA allowed to sign
// certificates.
func parseAuthority(certPEM, keyPEM []byte) (*authority, error) {
	var cert *x509.Certificate
	for rest := certPEM; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("certificate: %w", err)
			}
			cert = c
			break // the first certificate is the signing one
		}
	}
	if cert == nil {
		return nil, errors.New("no CERTIFICATE PEM block")
	}
	var key *ecdsa.PrivateKey
	for rest := keyPEM; key == nil; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("private key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("private key: %T keys are not supported (use ECDSA)", k)
			}
			key = ek
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("private key: %w", err)
			}
			key = k
		}
	}
	if key == nil {
		return nil, errors.New("no PRIVATE KEY or EC PRIVATE KEY PEM block")
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("the private key does not match the certificate")
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("the certificate is not a CA allowed to sign certificates (basicConstraints CA, keyCertSign)")
	}
	return &authority{cert: cert, key: key}, nil
}

// readAuthority reads an authority file of the CA directory; a missing file
// is (nil, nil).
func readAuthority(path string) (*authority, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	a, err := parseAuthority(data, data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return a, nil
}

func writeAuthority(path string, a *authority) error {
	data, err := a.encode()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, data)
}

// rotationState is the content of RotationFile.
type rotationState struct {
	// Started is when the new root entered the trust bundle.
	Started time.Time `json:"started"`
	// Overlap is how long both roots are trusted: leaves switch to the new
	// root at half of it, the old root is dropped at its end.
	Overlap Duration `json:"overlap"`
	// Next is the fingerprint of NextRootFile's certificate: a rotation
	// file never applies to another root than the one it was written for.
	Next string `json:"next"`
}

// Duration is a time.Duration that reads and writes as "1h30m" in JSON.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

func readRotation(path string) (*rotationState, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st rotationState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Overlap <= 0 || st.Started.IsZero() || st.Next == "" {
		return nil, fmt.Errorf("%s: started, a positive overlap and next are required", path)
	}
	return &st, nil
}

// readTokenKey reads the node-token key, generating it on first use.
func readTokenKey(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		if err := writeFileAtomic(path, []byte(hex.EncodeToString(key)+"\n")); err != nil {
			return nil, err
		}
		return key, nil
	}
	if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(string(trimSpace(data)))
	if err != nil || len(key) < 16 {
		return nil, fmt.Errorf("%s: not a hex key of at least 16 bytes", path)
	}
	return key, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

// WriteFileAtomic writes data to path with mode perm so that a reader sees
// the old content or the new, never a part of it (sift-control bootstrap's
// trust file, which running proxies may be reading).
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	return writeFileAtomic(path, data, perm)
}

// writeFileAtomic writes data to path with mode 0600 (or perm) through a
// temporary file in the same directory, synced and renamed over path.
func writeFileAtomic(path string, data []byte, perm ...os.FileMode) error {
	mode := os.FileMode(0o600)
	if len(perm) > 0 {
		mode = perm[0]
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op after the rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
