package mtls

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
)

// Source is one certificate, trust bundle or ticket-key set that handshakes
// read: inline (fixed), from files (reloaded when they change), or a named
// secret (SDS or the bootstrap's static secrets). Its Value is swapped
// atomically; a handshake reads it once and is never affected by a later
// swap, so rotation never touches established connections.
type Source struct {
	name  string // for errors and logs: the SDS name, or a field path
	value atomic.Pointer[Value]
	ready chan struct{}
	once  sync.Once
	// sds marks a secret fetched over SDS (its name is subscribed).
	sds bool
	// build re-reads and decodes the files of a file-backed source.
	build func() (*Value, error)
	files []string
}

// Value is a decoded secret: exactly one of its fields is set. Immutable.
type Value struct {
	// Cert is a TlsCertificate: the chain and its (checked) private key.
	Cert *tls.Certificate
	// Validation is a CertificateValidationContext with its data sources
	// read (trusted_ca inline), as the proto so that a combined validation
	// context can merge its default into it.
	Validation *tlsv3.CertificateValidationContext
	// TicketKeys are session ticket keys, the first one encrypting.
	TicketKeys [][32]byte
}

// Name returns the source's name.
func (s *Source) Name() string { return s.name }

// SDS reports whether the source is a secret fetched over SDS (its Name is
// then the secret's name, to subscribe to).
func (s *Source) SDS() bool { return s.sds }

// Load returns the current value, or nil while the source is warming (an SDS
// secret that has not arrived).
func (s *Source) Load() *Value { return s.value.Load() }

// Ready is closed once the source has a value.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Set replaces the value; handshakes that start after it see the new one.
func (s *Source) Set(v *Value) {
	s.value.Store(v)
	s.once.Do(func() { close(s.ready) })
}

func newSource(name string) *Source { return &Source{name: name, ready: make(chan struct{})} }

// fixedSource is an inline value.
func fixedSource(name string, v *Value) *Source {
	s := newSource(name)
	s.Set(v)
	return s
}

// readDataSource returns a DataSource's bytes: inline_bytes, inline_string,
// filename or environment_variable. Errors never quote the contents.
func readDataSource(ds *corev3.DataSource, field string) ([]byte, error) {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineBytes:
		return s.InlineBytes, nil
	case *corev3.DataSource_InlineString:
		return []byte(s.InlineString), nil
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return nil, fmt.Errorf("%s.filename: %w", field, err)
		}
		return b, nil
	case *corev3.DataSource_EnvironmentVariable:
		v, ok := os.LookupEnv(s.EnvironmentVariable)
		if !ok {
			return nil, fmt.Errorf("%s.environment_variable: %s is not set", field, s.EnvironmentVariable)
		}
		return []byte(v), nil
	}
	return nil, fmt.Errorf("%s: a data source must be set", field)
}

// fileWatcher polls the files of file-backed sources and rebuilds a source
// when any of its files changed (size, modification time or contents), as
// Envoy reloads certificates whose files are rotated. A rebuild that fails
// (a half-written key, a mismatched pair) keeps the old value and is retried
// at the next poll. One goroutine serves every source of a Store. Sources
// are held weakly: once no listener or cluster configuration uses one (an
// xDS update replaced it), it is collected and no longer polled.
type fileWatcher struct {
	interval time.Duration
	logf     func(msg string, args ...any)

	mu      sync.Mutex
	sources map[weak.Pointer[Source]][][]byte // last contents read
	stop    chan struct{}
	done    chan struct{}
}

func (w *fileWatcher) add(s *Source, contents [][]byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.sources == nil {
		w.sources = map[weak.Pointer[Source]][][]byte{}
	}
	w.sources[weak.Make(s)] = contents
	if w.stop == nil {
		w.stop, w.done = make(chan struct{}), make(chan struct{})
		go w.run(w.stop, w.done)
	}
}

func (w *fileWatcher) run(stop, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			w.poll()
		}
	}
}

func (w *fileWatcher) poll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for wp, last := range w.sources {
		s := wp.Value()
		if s == nil {
			delete(w.sources, wp) // its configuration is gone
			continue
		}
		cur := make([][]byte, len(s.files))
		var err error
		for i, f := range s.files {
			if cur[i], err = os.ReadFile(f); err != nil {
				break
			}
		}
		if err != nil {
			w.logf("mtls: reloading certificate files failed; keeping the previous ones", "source", s.name, "err", err)
			continue
		}
		if equalAll(cur, last) {
			continue
		}
		v, err := s.build()
		if err != nil {
			w.logf("mtls: reloaded certificate files are invalid; keeping the previous ones", "source", s.name, "err", err)
			continue
		}
		s.Set(v)
		w.sources[wp] = cur
		w.logf("mtls: certificate files reloaded", "source", s.name)
	}
}

func (w *fileWatcher) close() {
	w.mu.Lock()
	stop, done := w.stop, w.done
	w.stop = nil
	w.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

func equalAll(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}
