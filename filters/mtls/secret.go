package mtls

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
)

// Store holds the named secrets transport sockets refer to: the bootstrap's
// static_resources.secrets and the secrets fetched over SDS, in separate
// name spaces as in Envoy. It also runs the watcher that reloads
// certificates given as files. Safe for concurrent use.
type Store struct {
	log *slog.Logger
	// checkSDS validates an sds_config (nil: SDS is not available).
	checkSDS func(*corev3.ConfigSource) error

	mu      sync.Mutex
	static  map[string]*Source
	sds     map[string]*Source
	watcher fileWatcher
}

// StoreOptions configure a Store.
type StoreOptions struct {
	Logger *slog.Logger
	// CheckSDS validates the sds_config of a secret reference: the xDS
	// client must have a source for it. Nil means no SDS: a reference with
	// an sds_config is an error.
	CheckSDS func(*corev3.ConfigSource) error
	// FilePollInterval is how often certificate files are checked for
	// changes (default 1 s).
	FilePollInterval time.Duration
}

// NewStore returns an empty store. Close stops its file watcher.
func NewStore(opts StoreOptions) *Store {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.FilePollInterval <= 0 {
		opts.FilePollInterval = time.Second
	}
	s := &Store{log: opts.Logger, checkSDS: opts.CheckSDS, static: map[string]*Source{}, sds: map[string]*Source{}}
	s.watcher = fileWatcher{interval: opts.FilePollInterval, logf: func(msg string, args ...any) { s.log.Info(msg, args...) }}
	return s
}

// SetCheckSDS sets the check of sds_config sources (once the xDS client
// exists); nil disables SDS.
func (s *Store) SetCheckSDS(f func(*corev3.ConfigSource) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checkSDS = f
}

// Close stops reloading files. Sources keep their last values.
func (s *Store) Close() { s.watcher.close() }

// AddStatic decodes a bootstrap static secret. Names must be unique.
func (s *Store) AddStatic(pb *tlsv3.Secret) error {
	if pb.GetName() == "" {
		return errors.New("name: must be set")
	}
	v, err := s.decodeSecret(pb, true)
	if err != nil {
		return fmt.Errorf("secret %q: %w", pb.GetName(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.static[pb.GetName()]; dup {
		return fmt.Errorf("secret %q: defined twice", pb.GetName())
	}
	s.static[pb.GetName()] = v
	return nil
}

// SDSNames returns the names of the SDS secrets ever referenced, sorted.
func (s *Store) SDSNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.sds))
	for n := range s.sds {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// sdsSource returns the SDS secret name, creating it (warming) if new.
func (s *Store) sdsSource(name string) *Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	src := s.sds[name]
	if src == nil {
		src = newSource(name)
		src.sds = true
		s.sds[name] = src
	}
	return src
}

// ApplySDS decodes every secret of an SDS update, then sets them all; an
// error (naming the secret) changes nothing. Secrets absent from the update
// keep their values: connections are never cut by a missing secret.
func (s *Store) ApplySDS(resources map[string]*tlsv3.Secret) error {
	names := make([]string, 0, len(resources))
	for n := range resources {
		names = append(names, n)
	}
	sort.Strings(names)
	vals := make([]*Value, len(names))
	for i, n := range names {
		src, err := s.decodeSecret(resources[n], false)
		if err != nil {
			return fmt.Errorf("secret %q: %w", n, err)
		}
		vals[i] = src.Load()
	}
	for i, n := range names {
		s.sdsSource(n).Set(vals[i])
	}
	return nil
}

// ref resolves an SdsSecretConfig: a static secret when sds_config is unset,
// else an SDS secret (warming until it arrives).
func (s *Store) ref(pb *tlsv3.SdsSecretConfig, field string) (*Source, error) {
	if pb.GetName() == "" {
		return nil, fmt.Errorf("%s.name: must be set", field)
	}
	if pb.GetSdsConfig() == nil {
		s.mu.Lock()
		src := s.static[pb.GetName()]
		s.mu.Unlock()
		if src == nil {
			return nil, fmt.Errorf("%s: unknown static secret %q (sds_config is unset: the secret must be in static_resources.secrets)", field, pb.GetName())
		}
		return src, nil
	}
	s.mu.Lock()
	check := s.checkSDS
	s.mu.Unlock()
	if check == nil {
		return nil, fmt.Errorf("%s.sds_config: SDS needs dynamic_resources (an ADS or xDS server)", field)
	}
	if err := check(pb.GetSdsConfig()); err != nil {
		return nil, fmt.Errorf("%s.sds_config.%w", field, err)
	}
	return s.sdsSource(pb.GetName()), nil
}

// decodeSecret validates a Secret into a fixed source; for a static secret
// whose certificate comes from files, a watched one.
func (s *Store) decodeSecret(pb *tlsv3.Secret, static bool) (*Source, error) {
	if err := tlsPolicy.Check(pb); err != nil {
		return nil, err
	}
	switch t := pb.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		if static {
			return s.certSource(t.TlsCertificate, "tls_certificate", pb.GetName())
		}
		v, err := decodeCertificate(t.TlsCertificate, "tls_certificate")
		if err != nil {
			return nil, err
		}
		return fixedSource(pb.GetName(), v), nil
	case *tlsv3.Secret_ValidationContext:
		if static {
			return s.validationSource(t.ValidationContext, "validation_context", pb.GetName())
		}
		v, err := decodeValidation(t.ValidationContext, "validation_context")
		if err != nil {
			return nil, err
		}
		return fixedSource(pb.GetName(), v), nil
	case *tlsv3.Secret_SessionTicketKeys:
		v, err := decodeTicketKeys(t.SessionTicketKeys, "session_ticket_keys")
		if err != nil {
			return nil, err
		}
		return fixedSource(pb.GetName(), v), nil
	}
	return nil, errors.New("tls_certificate, validation_context or session_ticket_keys must be set")
}

// certSource decodes an inline TlsCertificate; one with files is reloaded
// when they change.
func (s *Store) certSource(pb *tlsv3.TlsCertificate, field, name string) (*Source, error) {
	v, err := decodeCertificate(pb, field)
	if err != nil {
		return nil, err
	}
	src := fixedSource(name, v)
	s.watch(src, func() (*Value, error) { return decodeCertificate(pb, field) },
		pb.GetCertificateChain().GetFilename(), pb.GetPrivateKey().GetFilename())
	return src, nil
}

// validationSource decodes an inline CertificateValidationContext; a
// trusted_ca file is reloaded when it changes.
func (s *Store) validationSource(pb *tlsv3.CertificateValidationContext, field, name string) (*Source, error) {
	v, err := decodeValidation(pb, field)
	if err != nil {
		return nil, err
	}
	src := fixedSource(name, v)
	s.watch(src, func() (*Value, error) { return decodeValidation(pb, field) }, pb.GetTrustedCa().GetFilename())
	return src, nil
}

func (s *Store) watch(src *Source, build func() (*Value, error), files ...string) {
	for _, f := range files {
		if f != "" {
			src.files = append(src.files, f)
		}
	}
	if len(src.files) == 0 {
		return
	}
	src.build = build
	contents := make([][]byte, len(src.files))
	for i, f := range src.files {
		contents[i], _ = readDataSource(&corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: f}}, "")
	}
	s.watcher.add(src, contents)
}

// decodeCertificate reads a certificate chain and its private key and checks
// that they belong together. Errors never contain key material.
func decodeCertificate(pb *tlsv3.TlsCertificate, field string) (*Value, error) {
	if pb.GetCertificateChain() == nil {
		return nil, fmt.Errorf("%s.certificate_chain: must be set", field)
	}
	if pb.GetPrivateKey() == nil {
		return nil, fmt.Errorf("%s.private_key: must be set", field)
	}
	chain, err := readDataSource(pb.GetCertificateChain(), field+".certificate_chain")
	if err != nil {
		return nil, err
	}
	key, err := readDataSource(pb.GetPrivateKey(), field+".private_key")
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(chain); blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s.certificate_chain: no PEM certificate found", field)
	}
	if blk, _ := pem.Decode(key); blk == nil {
		return nil, fmt.Errorf("%s.private_key: no PEM private key found", field)
	}
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		// crypto/tls's messages name the problem (mismatch, unsupported
		// key type) without quoting the key.
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("%s.certificate_chain: %w", field, err)
		}
	}
	return &Value{Cert: &cert}, nil
}

// decodeValidation reads trusted_ca (made inline) and checks every matcher
// compiles.
func decodeValidation(pb *tlsv3.CertificateValidationContext, field string) (*Value, error) {
	cvc := proto.Clone(pb).(*tlsv3.CertificateValidationContext)
	if ds := pb.GetTrustedCa(); ds != nil {
		b, err := readDataSource(ds, field+".trusted_ca")
		if err != nil {
			return nil, err
		}
		cvc.TrustedCa = &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
	}
	if _, err := buildValidation(cvc, field); err != nil {
		return nil, err
	}
	return &Value{Validation: cvc}, nil
}

// decodeTicketKeys derives crypto/tls's 32-byte keys from Envoy's 80-byte
// ones (16 bytes name, 32 HMAC, 32 AES): a SHA-256 of the whole key, so that
// every proxy given the same keys derives the same.
func decodeTicketKeys(pb *tlsv3.TlsSessionTicketKeys, field string) (*Value, error) {
	if len(pb.GetKeys()) == 0 {
		return nil, fmt.Errorf("%s.keys: at least one key is required", field)
	}
	v := &Value{}
	for i, ds := range pb.GetKeys() {
		b, err := readDataSource(ds, fmt.Sprintf("%s.keys[%d]", field, i))
		if err != nil {
			return nil, err
		}
		if len(b) != 80 {
			return nil, fmt.Errorf("%s.keys[%d]: a session ticket key must be 80 bytes, got %d", field, i, len(b))
		}
		v.TicketKeys = append(v.TicketKeys, sha256.Sum256(b))
	}
	return v, nil
}
