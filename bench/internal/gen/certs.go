package gen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ServerName is the name in the bench server certificate (and the SNI the
// originating side sends).
const ServerName = "backend.bench"

// Certs are PEM files for the mTLS scenario: one CA, a server and a client
// certificate. The *PEM files hold certificate then key (HAProxy's format).
type Certs struct {
	CA, ServerCert, ServerKey, ServerPEM, ClientCert, ClientKey, ClientPEM string
}

// GenerateCerts writes a fresh ECDSA P-256 CA, server and client
// certificate into dir.
func GenerateCerts(dir string) (Certs, error) {
	c := Certs{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"), ServerKey: filepath.Join(dir, "server.key"), ServerPEM: filepath.Join(dir, "server.pem"),
		ClientCert: filepath.Join(dir, "client.crt"), ClientKey: filepath.Join(dir, "client.key"), ClientPEM: filepath.Join(dir, "client.pem"),
	}
	now := time.Now().Add(-time.Hour)
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return c, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "siftbench CA"},
		NotBefore: now, NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return c, err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	if err := writePEM(c.CA, pemBlock("CERTIFICATE", caDER)); err != nil {
		return c, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certPath, keyPath, bothPath string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now, NotAfter: now.Add(48 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames: []string{cn}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			URIs: nil,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		cp, kp := pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", kb)
		if err := writePEM(certPath, cp); err != nil {
			return err
		}
		if err := writePEM(keyPath, kp); err != nil {
			return err
		}
		return writePEM(bothPath, append(cp, kp...))
	}
	if err := leaf(2, ServerName, x509.ExtKeyUsageServerAuth, c.ServerCert, c.ServerKey, c.ServerPEM); err != nil {
		return c, err
	}
	if err := leaf(3, "client.bench", x509.ExtKeyUsageClientAuth, c.ClientCert, c.ClientKey, c.ClientPEM); err != nil {
		return c, err
	}
	return c, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func writePEM(path string, b []byte) error { return os.WriteFile(path, b, 0o600) }
