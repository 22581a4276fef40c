package test

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sync"
	"testing"
)

// built is one `go build` of a main package, shared by every test of the run.
type built struct {
	once sync.Once
	path string
	err  error
}

var (
	builtMu sync.Mutex
	builds  = map[string]*built{}
)

// binary builds the main package pkg (an import path) once per test run and
// returns the executable's path, named after the package's last element.
// The executables are left in the system's temporary directory (a few per
// run), so that processes started from them may outlive a test's cleanup.
func binary(t *testing.T, pkg string) string {
	t.Helper()
	builtMu.Lock()
	b := builds[pkg]
	if b == nil {
		b = &built{}
		builds[pkg] = b
	}
	builtMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "sift-test-bin")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, path.Base(pkg))
		if out, err := exec.Command("go", "build", "-o", b.path, pkg).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// siftProxyBinary builds cmd/sift-proxy once per test run.
func siftProxyBinary(t *testing.T) string {
	t.Helper()
	return binary(t, "github.com/siftmesh/sift/cmd/sift-proxy")
}

// siftControlBinary builds cmd/sift-control once per test run.
func siftControlBinary(t *testing.T) string {
	t.Helper()
	return binary(t, "github.com/siftmesh/sift/cmd/sift-control")
}
