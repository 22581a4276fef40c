package main

import (
	"os/exec"
	"strings"
	"testing"
)

// sift-control and the mesh model must not link the data plane: the
// control plane names Envoy's wire values through the generated API
// packages and internal/envoynames, never through filters or upstream.
func TestNoDataPlaneDeps(t *testing.T) {
	t.Parallel()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	forbidden := []string{"github.com/siftmesh/sift/filters", "github.com/siftmesh/sift/upstream", "github.com/siftmesh/sift/listener"}
	for _, pkg := range []string{"github.com/siftmesh/sift/cmd/sift-control", "github.com/siftmesh/sift/mesh/..."} {
		out, err := exec.Command(goBin, "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, f := range forbidden {
				if dep == f || strings.HasPrefix(dep, f+"/") {
					t.Errorf("%s depends on %s", pkg, dep)
				}
			}
		}
	}
}
