// Package ca is sift-control's certificate authority: a root kept on disk
// (generated at first start, or loaded from the operator's files), X.509
// SVIDs for workloads (SPIFFE IDs spiffe://<trust domain>/ns/<ns>/sa/<sa> as
// the only URI SAN, ECDSA P-256, 24 h by default, renewed at 70 % of their
// lifetime), trust-bundle rotation with an overlap, node tokens that bind an
// xDS node id to the mesh, the SDS secrets and TLS contexts that carry it
// all to proxies, and the server certificate of sift-control's own xDS over
// TLS. docs/mesh-identity.md is the design.
//
// Nothing here logs or formats a private key or a token: errors name files
// and fields, never their content.
package ca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults.
const (
	DefaultLeafTTL = 24 * time.Hour
	// DefaultRenewFraction: a leaf is renewed once this fraction of its
	// lifetime has passed.
	DefaultRenewFraction = 0.7
	// DefaultRootTTL is the lifetime of a generated root.
	DefaultRootTTL = 10 * 365 * 24 * time.Hour
	// DefaultPollInterval: how often Run looks for a rotation started by
	// StartRotation (sift-control ca rotate) in another process.
	DefaultPollInterval = 5 * time.Second
	// DefaultOverlap is how long both roots are trusted during a rotation.
	DefaultOverlap = 24 * time.Hour
)

// backdate is subtracted from NotBefore so that a peer whose clock is a
// little behind accepts a certificate issued just now.
const backdate = time.Minute

// Options configure a CA.
type Options struct {
	// Dir holds the CA's state (see the *File constants); created 0700 if
	// missing. Required.
	Dir string
	// CertFile and KeyFile, when set, name the root (or an intermediate:
	// any CA certificate allowed to sign) and its key, instead of the root
	// kept in Dir. Rotation through Dir is then not available: rotate by
	// replacing the files and restarting.
	CertFile, KeyFile string
	// BundleFile, with CertFile, is the trust bundle (PEM certificates) when
	// CertFile is an intermediate; "" means CertFile's certificate is the
	// trust anchor.
	BundleFile string
	// LeafTTL is the lifetime of issued certificates; 0 means DefaultLeafTTL.
	LeafTTL time.Duration
	// RenewFraction of the lifetime after which a leaf is renewed; 0 means
	// DefaultRenewFraction.
	RenewFraction float64
	// RootTTL is the lifetime of generated roots; 0 means DefaultRootTTL.
	RootTTL time.Duration
	// MustExist refuses to create state: a missing root or node-token key
	// is an error (tools that read a CA sift-control created, so that a
	// mistyped directory does not silently become a new CA).
	MustExist bool
	// BundleOut, when set, is a file kept holding the current trust bundle
	// (PEM, mode 0644: it is public), written at Open and whenever the
	// bundle changes: what proxies' trusted_ca.filename for xDS over TLS can
	// point at (through a shared volume) so that rotations need no manual
	// refresh.
	BundleOut string
	// PollInterval: see DefaultPollInterval.
	PollInterval time.Duration
	// Clock; nil means RealClock.
	Clock Clock
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the CA's metrics; nil: not exported.
	Registerer prometheus.Registerer
}

// CA issues and renews certificates. Safe for concurrent use.
type CA struct {
	opts     Options
	clock    Clock
	log      *slog.Logger
	tokenKey []byte
	external bool // the signer comes from CertFile/KeyFile
	metrics  *metrics

	mu       sync.Mutex
	current  *authority
	extra    []*x509.Certificate // BundleFile's certificates (external only)
	next     *authority          // during a rotation
	rotation *rotationState      // during a rotation
	leaves   map[string]*Leaf    // by cache key (see Leaf, ServerLeaf)
	state    string              // stateLocked as Run last saw it
	changed  chan struct{}

	// The rotation gate (SetRotationGate): a phase of a rotation ends
	// only once every proxy has acknowledged the secrets of the phase.
	gate       func(state string) []string
	switched   bool      // this rotation's leaves come from the new root (sticky)
	waiting    int       // proxies the gate waited for at its last look
	waitLogged time.Time // when a wait was last logged
}

// Leaf is an issued certificate with its key. Immutable.
type Leaf struct {
	// ID is the SPIFFE ID (URI SAN), "" for a server certificate with DNS
	// names only.
	ID string
	// Certificate is the parsed leaf.
	Certificate *x509.Certificate
	// ChainPEM is the leaf then the issuing chain below the trust anchor,
	// PEM-encoded (Envoy's certificate_chain).
	ChainPEM []byte
	// KeyPEM is the PKCS #8 private key (Envoy's private_key). Secret.
	KeyPEM []byte
	// RenewAt is when the leaf is replaced.
	RenewAt time.Time

	issuer *authority
	tls    tls.Certificate
}

// TLSCertificate returns the leaf for crypto/tls.
func (l *Leaf) TLSCertificate() *tls.Certificate { return &l.tls }

// Open loads the CA from opts.Dir, generating the root and the node-token
// key at first start. A rotation recorded in Dir is resumed (and finished if
// its overlap has passed while sift-control was down).
func Open(opts Options) (*CA, error) {
	if opts.Dir == "" {
		return nil, errors.New("ca: a state directory is required")
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("ca: a certificate file and a key file go together")
	}
	if opts.BundleFile != "" && opts.CertFile == "" {
		return nil, errors.New("ca: a bundle file needs a certificate and key file")
	}
	if opts.LeafTTL == 0 {
		opts.LeafTTL = DefaultLeafTTL
	}
	if opts.LeafTTL < 2*backdate {
		return nil, fmt.Errorf("ca: leaf lifetime %v is too short (at least %v)", opts.LeafTTL, 2*backdate)
	}
	if opts.RenewFraction == 0 {
		opts.RenewFraction = DefaultRenewFraction
	}
	if opts.RenewFraction <= 0 || opts.RenewFraction >= 1 {
		return nil, fmt.Errorf("ca: renew fraction %v is not between 0 and 1", opts.RenewFraction)
	}
	if opts.RootTTL == 0 {
		opts.RootTTL = DefaultRootTTL
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = DefaultPollInterval
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &CA{opts: opts, clock: opts.Clock, log: opts.Logger, leaves: map[string]*Leaf{}, changed: make(chan struct{}, 1)}
	if opts.MustExist {
		if _, err := os.Stat(filepath.Join(opts.Dir, TokenKeyFile)); err != nil {
			return nil, fmt.Errorf("ca: no CA in %s (start sift-control with --ca-dir %s first): %w", opts.Dir, opts.Dir, err)
		}
		if _, err := os.Stat(filepath.Join(opts.Dir, RootFile)); err != nil && opts.CertFile == "" {
			return nil, fmt.Errorf("ca: no root in %s (start sift-control with --ca-dir %s first): %w", opts.Dir, opts.Dir, err)
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	var err error
	if c.tokenKey, err = readTokenKey(c.path(TokenKeyFile)); err != nil {
		return nil, fmt.Errorf("ca: node-token key: %w", err)
	}
	c.warnPermissions()
	if opts.CertFile != "" {
		if err := c.loadExternal(); err != nil {
			return nil, err
		}
	} else if err := c.loadDir(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.state = c.stateLocked(c.clock.Now())
	bundle := c.bundlePEMLocked(c.clock.Now())
	c.mu.Unlock()
	if err := c.writeBundle(bundle); err != nil {
		return nil, err
	}
	if c.metrics, err = newMetrics(c, opts.Registerer); err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	return c, nil
}

func (c *CA) path(name string) string { return filepath.Join(c.opts.Dir, name) }

// warnPermissions logs the state files that others than the owner may read.
func (c *CA) warnPermissions() {
	for _, name := range []string{"", RootFile, NextRootFile, TokenKeyFile} {
		fi, err := os.Stat(c.path(name))
		if err == nil && fi.Mode().Perm()&0o077 != 0 {
			c.log.Warn("ca: the CA's state is readable by others than its owner (want 0600 files in a 0700 directory)", "path", c.path(name), "mode", fi.Mode().Perm().String())
		}
	}
}

func (c *CA) loadExternal() error {
	certPEM, err := os.ReadFile(c.opts.CertFile)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	keyPEM, err := os.ReadFile(c.opts.KeyFile)
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	a, err := parseAuthority(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("ca: %s: %w", c.opts.CertFile, err)
	}
	c.current, c.external = a, true
	if c.opts.BundleFile != "" {
		data, err := os.ReadFile(c.opts.BundleFile)
		if err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		if c.extra, err = parseCertificates(data); err != nil || len(c.extra) == 0 {
			return fmt.Errorf("ca: %s: no certificates (%v)", c.opts.BundleFile, err)
		}
		pool := x509.NewCertPool()
		for _, r := range c.extra {
			pool.AddCert(r)
		}
		if _, err := a.cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: c.clock.Now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("ca: %s does not chain to %s: %w", c.opts.CertFile, c.opts.BundleFile, err)
		}
	}
	if _, err := os.Stat(c.path(RotationFile)); err == nil {
		c.log.Warn("ca: a rotation is recorded in the CA directory but the signing certificate comes from files; the rotation is ignored", "file", c.path(RotationFile))
	}
	c.log.Info("ca: signing certificate loaded", "file", c.opts.CertFile, "fingerprint", a.fingerprint(), "not_after", a.cert.NotAfter)
	return nil
}

func (c *CA) loadDir() error {
	a, err := readAuthority(c.path(RootFile))
	if err != nil {
		return fmt.Errorf("ca: %w", err)
	}
	if a == nil {
		if a, err = newRoot(c.clock.Now(), c.opts.RootTTL); err != nil {
			return fmt.Errorf("ca: generate root: %w", err)
		}
		if err := writeAuthority(c.path(RootFile), a); err != nil {
			return fmt.Errorf("ca: %w", err)
		}
		c.log.Info("ca: root generated", "file", c.path(RootFile), "fingerprint", a.fingerprint(), "not_after", a.cert.NotAfter)
	} else {
		c.log.Info("ca: root loaded", "file", c.path(RootFile), "fingerprint", a.fingerprint(), "not_after", a.cert.NotAfter)
	}
	c.current = a
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, err := c.reloadLocked(); err != nil {
		return err
	}
	c.advanceLocked(c.clock.Now())
	return nil
}

// Reload looks for a rotation started in Dir by another process
// (StartRotation) and starts following it. It reports whether a rotation
// was picked up.
func (c *CA) Reload() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reloadLocked()
}

func (c *CA) reloadLocked() (bool, error) {
	if c.external || c.rotation != nil {
		return false, nil
	}
	st, err := readRotation(c.path(RotationFile))
	if err != nil || st == nil {
		if err != nil {
			err = fmt.Errorf("ca: %w", err)
		}
		return false, err
	}
	next, err := readAuthority(c.path(NextRootFile))
	if err != nil {
		return false, fmt.Errorf("ca: %w", err)
	}
	switch {
	case next == nil && st.Next == c.current.fingerprint():
		// Finished, but stopped before the rotation file was removed.
		os.Remove(c.path(RotationFile))
		return false, nil
	case next == nil:
		return false, fmt.Errorf("ca: %s records a rotation but %s is missing", c.path(RotationFile), c.path(NextRootFile))
	case next.fingerprint() == c.current.fingerprint():
		// Finished in memory but the files could not be moved: try again.
		if err := os.Rename(c.path(NextRootFile), c.path(RootFile)); err != nil {
			return false, fmt.Errorf("ca: finishing rotation: %w", err)
		}
		os.Remove(c.path(RotationFile))
		return false, nil
	case next.fingerprint() != st.Next:
		return false, fmt.Errorf("ca: %s is for root %s but %s holds %s", c.path(RotationFile), st.Next, c.path(NextRootFile), next.fingerprint())
	}
	c.next, c.rotation = next, st
	c.log.Info("ca: rotation in progress", "old", c.current.fingerprint(), "new", next.fingerprint(),
		"started", st.Started, "leaves_switch", st.Started.Add(time.Duration(st.Overlap)/2), "old_dropped", st.Started.Add(time.Duration(st.Overlap)))
	return true, nil
}

// Rotation phases.
type phase int

const (
	phaseSteady     phase = iota // one root
	phaseIntroduced              // bundle old+new, leaves from the old root
	phaseSwitched                // bundle old+new, leaves from the new root
)

// phaseLocked is the rotation's phase now. Leaves switch to the new root at
// half the overlap, and not before every proxy the gate knows has
// acknowledged a trust bundle with the new root in it (else a proxy still
// trusting only the old root would refuse its peers' new certificates).
func (c *CA) phaseLocked(now time.Time) phase {
	if c.rotation == nil {
		return phaseSteady
	}
	if c.switched {
		return phaseSwitched
	}
	if now.Before(c.rotation.Started.Add(time.Duration(c.rotation.Overlap) / 2)) {
		return phaseIntroduced
	}
	if c.waitLocked(now, stateOf(c.current, c.current, c.next), "switching leaves to the new root") {
		return phaseIntroduced
	}
	c.switched = true
	c.log.Info("ca: rotation: leaves now come from the new root", "root", c.next.fingerprint())
	return phaseSwitched
}

// stateOf names what proxies are given: the signer of their leaves and the
// trust bundle (stateLocked's form).
func stateOf(signer *authority, bundle ...*authority) string {
	st := signer.fingerprint()
	for _, b := range bundle {
		st += " " + b.fingerprint()
	}
	return st
}

// SetRotationGate makes a rotation wait for proxies: gate returns the
// proxies (node ids) that have not acknowledged the secrets of state (a
// SecurityState value) — the controller knows, from their ACKs. Leaves
// switch to the new root only once every proxy has the new trust bundle,
// and the old root leaves the bundle only once every proxy has a leaf of the
// new root; the overlap's times are the earliest moments. A proxy that
// never acknowledges holds the rotation (logged, and counted in
// sift_control_ca_rotation_waiting_proxies). gate is called with the CA's
// lock held: it must not call the CA.
func (c *CA) SetRotationGate(gate func(state string) []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gate = gate
}

// SecurityState names the secrets the CA gives proxies now: the signer of
// their leaves and the trust bundle. It changes only with a rotation's
// phases, not with renewals.
func (c *CA) SecurityState() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stateLocked(c.clock.Now())
}

// waitLocked asks the gate which proxies lack state, logs them (at most
// every 30 s) and reports whether any do.
func (c *CA) waitLocked(now time.Time, state, step string) bool {
	c.waiting = 0
	if c.gate == nil {
		return false
	}
	waiting := c.gate(state)
	c.waiting = len(waiting)
	if len(waiting) == 0 {
		return false
	}
	if now.Sub(c.waitLogged) >= 30*time.Second {
		c.waitLogged = now
		c.log.Warn("ca: rotation waits for proxies to acknowledge their secrets before "+step,
			"waiting", len(waiting), "proxies", waiting[:min(len(waiting), 10)])
	}
	return true
}

// advanceLocked finishes a rotation whose overlap has passed and whose new
// leaves every proxy has acknowledged: the new root becomes the root (on
// disk too) and the old one is dropped.
func (c *CA) advanceLocked(now time.Time) {
	if c.rotation == nil || now.Before(c.rotation.Started.Add(time.Duration(c.rotation.Overlap))) {
		return
	}
	if c.phaseLocked(now) != phaseSwitched || c.waitLocked(now, stateOf(c.next, c.current, c.next), "dropping the old root") {
		return
	}
	old := c.current
	c.current, c.next, c.rotation, c.switched = c.next, nil, nil, false
	if err := os.Rename(c.path(NextRootFile), c.path(RootFile)); err != nil {
		// The new root serves from memory; on restart the rotation file
		// finishes the rotation again.
		c.log.Error("ca: finishing rotation: "+err.Error(), "dir", c.opts.Dir)
		return
	}
	if err := os.Remove(c.path(RotationFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Error("ca: finishing rotation: "+err.Error(), "dir", c.opts.Dir)
	}
	c.log.Info("ca: rotation finished; old root dropped from the trust bundle", "old", old.fingerprint(), "root", c.current.fingerprint())
}

// signerLocked returns the authority that signs leaves now.
func (c *CA) signerLocked(now time.Time) *authority {
	c.advanceLocked(now)
	if c.phaseLocked(now) == phaseSwitched {
		return c.next
	}
	return c.current
}

// bundleLocked returns the trust anchors now, the current root first.
func (c *CA) bundleLocked(now time.Time) []*x509.Certificate {
	c.advanceLocked(now)
	if c.external {
		if len(c.extra) > 0 {
			return slices.Clone(c.extra)
		}
		return []*x509.Certificate{c.current.cert}
	}
	out := []*x509.Certificate{c.current.cert}
	if c.next != nil {
		out = append(out, c.next.cert)
	}
	return out
}

// Bundle returns the trust bundle now: the root, or during a rotation the
// old and the new root.
func (c *CA) Bundle() []*x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundleLocked(c.clock.Now())
}

// BundlePEM returns Bundle PEM-encoded (Envoy's trusted_ca).
func (c *CA) BundlePEM() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bundlePEMLocked(c.clock.Now())
}

func (c *CA) bundlePEMLocked(now time.Time) []byte {
	var out []byte
	for _, cert := range c.bundleLocked(now) {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	return out
}

// Pool returns Bundle as a CertPool.
func (c *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, cert := range c.Bundle() {
		pool.AddCert(cert)
	}
	return pool
}

// ValidateSPIFFEID checks that id is a SPIFFE ID as the SPIFFE ID
// specification restricts it: "spiffe://" + a trust domain of lower-case
// letters, digits, '.', '-' and '_' + a non-empty path of segments of
// letters, digits, '.', '-' and '_' (not "." or ".."). Nothing in it is
// escaped, so the certificate's URI SAN is id exactly.
func ValidateSPIFFEID(id string) error {
	rest, ok := strings.CutPrefix(id, "spiffe://")
	if !ok {
		return fmt.Errorf("ca: SPIFFE ID %q: the scheme must be spiffe", id)
	}
	td, path, _ := strings.Cut(rest, "/")
	if td == "" || len(td) > 255 || !spiffeChars(td, false) {
		return fmt.Errorf("ca: SPIFFE ID %q: the trust domain must be lower-case letters, digits, '.', '-' and '_'", id)
	}
	if path == "" {
		return fmt.Errorf("ca: SPIFFE ID %q: a workload ID needs a path", id)
	}
	if len(id) > 2048 {
		return fmt.Errorf("ca: SPIFFE ID %q: longer than 2048 bytes", id)
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." || !spiffeChars(seg, true) {
			return fmt.Errorf("ca: SPIFFE ID %q: path segments must be letters, digits, '.', '-' and '_', not empty, . or ..", id)
		}
	}
	return nil
}

// spiffeChars reports whether s has only SPIFFE's ID characters (upper-case
// letters only in paths).
func spiffeChars(s string, upper bool) bool {
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= '0' && b <= '9', b == '.', b == '-', b == '_':
		case upper && b >= 'A' && b <= 'Z':
		default:
			return false
		}
	}
	return true
}

// Leaf returns holder's current certificate for SPIFFE ID id, issuing one
// when there is none, when it is due for renewal, or when a rotation changed
// the signing root. Between those moments it returns the same *Leaf, so
// that snapshots built from it are unchanged. holder names who gets the key
// (a workload, "namespace/name"): workloads sharing an identity (a service
// account) share the SPIFFE ID but never a private key.
func (c *CA) Leaf(holder, id string) (*Leaf, error) {
	if err := ValidateSPIFFEID(id); err != nil {
		return nil, err
	}
	u, _ := url.Parse(id)
	return c.leaf("workload "+holder+" "+id, "workload", &x509.Certificate{URIs: []*url.URL{u}})
}

// ServerLeaf returns the current server certificate for names (DNS names,
// and IP addresses given in their text form), renewed like Leaf's. It has
// no URI SAN, so no workload certificate can pass for it, and a workload
// certificate (URI SAN only) cannot pass for it with a client checking a
// DNS name.
func (c *CA) ServerLeaf(names []string) (*Leaf, error) {
	if len(names) == 0 {
		return nil, errors.New("ca: a server certificate needs a name")
	}
	tmpl := &x509.Certificate{}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	return c.leaf("server "+strings.Join(names, ","), "server", tmpl)
}

func (c *CA) leaf(key, kind string, tmpl *x509.Certificate) (*Leaf, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	signer := c.signerLocked(now)
	if l := c.leaves[key]; l != nil && now.Before(l.RenewAt) && l.issuer == signer {
		return l, nil
	}
	l, err := c.issueLocked(now, signer, tmpl)
	if err != nil {
		return nil, err
	}
	c.leaves[key] = l
	c.metrics.issued.WithLabelValues(kind).Inc()
	c.log.Debug("ca: certificate issued", "id", l.ID, "dns", tmpl.DNSNames, "serial", l.Certificate.SerialNumber.Text(16),
		"not_after", l.Certificate.NotAfter, "renew_at", l.RenewAt)
	return l, nil
}

func (c *CA) issueLocked(now time.Time, signer *authority, tmpl *x509.Certificate) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	notAfter := now.Add(c.opts.LeafTTL)
	if notAfter.After(signer.cert.NotAfter) {
		notAfter = signer.cert.NotAfter // never outlive the signer
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("ca: the signing certificate %s expired at %v", signer.fingerprint(), signer.cert.NotAfter)
	}
	t := *tmpl
	t.SerialNumber = serial
	t.NotBefore = now.Add(-backdate)
	t.NotAfter = notAfter
	t.KeyUsage = x509.KeyUsageDigitalSignature
	t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	t.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, &t, signer.cert, &key.PublicKey, signer.key)
	if err != nil {
		return nil, fmt.Errorf("ca: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	chain := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	tlsCert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}
	if c.external && len(c.extra) > 0 {
		// The signer is an intermediate: peers need it to reach the anchor.
		chain = append(chain, signer.certPEM()...)
		tlsCert.Certificate = append(tlsCert.Certificate, signer.cert.Raw)
	}
	life := notAfter.Sub(now)
	l := &Leaf{
		Certificate: cert,
		ChainPEM:    chain,
		KeyPEM:      pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		RenewAt:     now.Add(time.Duration(float64(life) * c.opts.RenewFraction)),
		issuer:      signer,
		tls:         tlsCert,
	}
	if len(cert.URIs) == 1 {
		l.ID = cert.URIs[0].String()
	}
	return l, nil
}

// NextEvent returns when the CA's output next changes on its own after
// now: the soonest leaf renewal or rotation phase boundary; zero when
// nothing is scheduled.
func (c *CA) NextEvent() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nextEventLocked(c.clock.Now())
}

func (c *CA) nextEventLocked(now time.Time) time.Time {
	var next time.Time
	earlier := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, l := range c.leaves {
		earlier(l.RenewAt)
	}
	if r := c.rotation; r != nil {
		earlier(r.Started.Add(time.Duration(r.Overlap) / 2))
		earlier(r.Started.Add(time.Duration(r.Overlap)))
	}
	return next
}

// Changed returns a channel that receives a value whenever certificates or
// the trust bundle should be fetched again (a renewal is due, a rotation
// started or moved to its next phase), while Run runs. Notifications
// coalesce.
func (c *CA) Changed() <-chan struct{} { return c.changed }

// Run wakes at each NextEvent (and every PollInterval, to pick up a rotation
// started by another process), notifies Changed, and forgets leaves nobody
// renewed after the previous notification. It returns when stop is closed.
func (c *CA) Run(stop <-chan struct{}) {
	last := c.clock.Now()
	for {
		wait := c.opts.PollInterval
		if next := c.NextEvent(); !next.IsZero() && next.Sub(c.clock.Now()) < wait {
			wait = next.Sub(c.clock.Now()) // NextEvent is after now: positive
		}
		select {
		case <-stop:
			return
		case <-c.clock.After(wait):
		}
		if _, err := c.Reload(); err != nil {
			c.log.Error(err.Error())
		}
		now := c.clock.Now()
		due, bundle := c.due(last, now)
		if bundle != nil {
			if err := c.writeBundle(bundle); err != nil {
				c.log.Error(err.Error())
			}
		}
		if due {
			select {
			case c.changed <- struct{}{}:
			default:
			}
		}
		last = now
	}
}

// due reports whether a leaf came due for renewal in (last, now] or the
// trust bundle or signer changed since the previous call (then bundle is the
// bundle now, PEM), and forgets leaves that were due at the previous call
// (last) but were not renewed since.
func (c *CA) due(last, now time.Time) (due bool, bundle []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, l := range c.leaves {
		if !l.RenewAt.After(last) || !now.Before(l.Certificate.NotAfter) {
			// Due at an earlier wake and not renewed since: nobody asks
			// for it any more (its workload left). Forgotten, so that the
			// soonest-expiry metric shows certificates in use; asked for
			// again, it is issued anew.
			delete(c.leaves, k)
			continue
		}
		if !l.RenewAt.After(now) {
			due = true
		}
	}
	if st := c.stateLocked(now); st != c.state {
		c.state, due, bundle = st, true, c.bundlePEMLocked(now)
	}
	return due, bundle
}

// writeBundle writes bundle to Options.BundleOut, if set.
func (c *CA) writeBundle(bundle []byte) error {
	if c.opts.BundleOut == "" {
		return nil
	}
	if err := writeFileAtomic(c.opts.BundleOut, bundle, 0o644); err != nil {
		return fmt.Errorf("ca: trust bundle file: %w", err)
	}
	return nil
}

// stateLocked names the trust bundle and the signer now: it changes when a
// rotation starts, switches leaves or ends.
func (c *CA) stateLocked(now time.Time) string {
	st := c.signerLocked(now).fingerprint()
	for _, b := range c.bundleLocked(now) {
		st += " " + fingerprint(b)
	}
	return st
}

// StartRotation begins a trust-bundle rotation: a new root (generated, or
// read from certFile/keyFile) enters the trust bundle beside the current one
// now; at overlap/2 leaves are re-issued by the new root; at overlap the old
// root leaves the bundle. It writes NextRootFile then RotationFile in dir; a
// running sift-control picks them up within its poll interval. It refuses
// while a rotation is in progress. The returned string is the new root's
// SHA-256 fingerprint.
func StartRotation(dir string, overlap time.Duration, certFile, keyFile string, clock Clock) (string, error) {
	if overlap <= 0 {
		return "", fmt.Errorf("ca: rotate: the overlap must be positive, got %v", overlap)
	}
	if clock == nil {
		clock = RealClock{}
	}
	cur, err := readAuthority(filepath.Join(dir, RootFile))
	if err != nil {
		return "", fmt.Errorf("ca: rotate: %w", err)
	}
	if cur == nil {
		return "", fmt.Errorf("ca: rotate: no root in %s (start sift-control with this --ca-dir first)", dir)
	}
	if st, err := readRotation(filepath.Join(dir, RotationFile)); err != nil || st != nil {
		if err != nil {
			return "", fmt.Errorf("ca: rotate: %w", err)
		}
		return "", fmt.Errorf("ca: rotate: a rotation started at %v is in progress (until %v)", st.Started, st.Started.Add(time.Duration(st.Overlap)))
	}
	var next *authority
	if certFile != "" || keyFile != "" {
		certPEM, err := os.ReadFile(certFile)
		if err != nil {
			return "", fmt.Errorf("ca: rotate: %w", err)
		}
		keyPEM, err := os.ReadFile(keyFile)
		if err != nil {
			return "", fmt.Errorf("ca: rotate: %w", err)
		}
		if next, err = parseAuthority(certPEM, keyPEM); err != nil {
			return "", fmt.Errorf("ca: rotate: %s: %w", certFile, err)
		}
	} else if next, err = newRoot(clock.Now(), DefaultRootTTL); err != nil {
		return "", fmt.Errorf("ca: rotate: %w", err)
	}
	if next.fingerprint() == cur.fingerprint() {
		return "", errors.New("ca: rotate: the new root is the current root")
	}
	if err := writeAuthority(filepath.Join(dir, NextRootFile), next); err != nil {
		return "", fmt.Errorf("ca: rotate: %w", err)
	}
	st := rotationState{Started: clock.Now().UTC(), Overlap: Duration(overlap), Next: next.fingerprint()}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(dir, RotationFile), data); err != nil {
		return "", fmt.Errorf("ca: rotate: %w", err)
	}
	return next.fingerprint(), nil
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func pkixName(cn string) pkix.Name { return pkix.Name{Organization: []string{"Sift"}, CommonName: cn} }

func fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

func parseCertificates(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out, nil
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}
