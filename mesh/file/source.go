package file

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/siftmesh/sift/mesh"
)

// DefaultInterval is how often Run looks at the file. An edit is picked up
// within one interval (a same-size edit inside the file system's mtime
// granularity within four: the contents are hashed every fourth poll).
const DefaultInterval = 250 * time.Millisecond

// Load reads, parses and validates the mesh file at path.
func Load(path string) (*mesh.Mesh, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh file: %w", err)
	}
	return Parse(path, data)
}

// Options tune a Source. The zero value is ready to use.
type Options struct {
	// Interval between polls; 0 means DefaultInterval.
	Interval time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// OnReload, if set, is called after each attempt to load a changed file:
	// with nil when the new mesh was accepted, else with the error (the
	// previous mesh stays). Called from Run's goroutine.
	OnReload func(error)
}

// Source is a mesh.Source backed by a file: it serves the last valid mesh
// and, while Run runs, reloads the file when it changes. A change that does
// not parse or validate is logged and the previous mesh stays.
type Source struct {
	path string
	opts Options
	log  *slog.Logger

	mesh.Published // Snapshot, Watch

	// Run's state, owned by its goroutine.
	stat     fileStat
	sum      [sha256.Size]byte
	lastErr  string
	statErrs bool
}

var _ mesh.Source = (*Source)(nil)

type fileStat struct {
	size  int64
	mtime time.Time
}

// Open loads the file; it must be valid. Call Run to watch it.
func Open(path string, opts Options) (*Source, error) {
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	s := &Source{path: path, opts: opts, log: opts.Logger}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("mesh_file", path)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("mesh file: %w", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh file: %w", err)
	}
	m, err := Parse(path, data)
	if err != nil {
		return nil, err
	}
	s.stat = fileStat{size: fi.Size(), mtime: fi.ModTime()}
	s.sum = sha256.Sum256(data)
	s.Set(m)
	return s, nil
}

// Run polls the file until ctx ends. Run at most once at a time.
func (s *Source) Run(ctx context.Context) {
	t := time.NewTicker(s.opts.Interval)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.poll(n%4 == 0)
	}
}

func (s *Source) poll(hashAnyway bool) {
	fi, err := os.Stat(s.path)
	if err != nil {
		if !s.statErrs { // once per outage: the file may be mid-replace
			s.log.Warn("mesh file unreadable; keeping the previous mesh", "error", err)
			s.statErrs = true
		}
		return
	}
	s.statErrs = false
	st := fileStat{size: fi.Size(), mtime: fi.ModTime()}
	if st == s.stat && !hashAnyway {
		return
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		s.log.Warn("mesh file unreadable; keeping the previous mesh", "error", err)
		return
	}
	s.stat = st
	sum := sha256.Sum256(data)
	if bytes.Equal(sum[:], s.sum[:]) {
		return
	}
	s.sum = sum
	m, err := Parse(s.path, data)
	if s.opts.OnReload != nil {
		s.opts.OnReload(err)
	}
	if err != nil {
		// Each distinct error is logged once, at error level: the operator
		// needs to see it, but not every 250ms.
		if msg := err.Error(); msg != s.lastErr {
			s.lastErr = msg
			s.log.Error("mesh file rejected; keeping the previous mesh", "error", err)
		}
		return
	}
	s.lastErr = ""
	s.log.Info("mesh file reloaded", "namespaces", len(m.Namespaces), "services", len(m.Services()), "workloads", len(m.Workloads()))
	s.Publish(m)
}
