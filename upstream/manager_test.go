package upstream

import (
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func names(cs []*Cluster) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.Name())
	}
	return out
}

func TestManager(t *testing.T) {
	t.Parallel()
	mk := func(name string) *Cluster {
		return build(t, clusterJSON(t, staticCluster(name, "", "127.0.0.1:80")), Options{})
	}
	a, b, b2, c := mk("a"), mk("b"), mk("b"), mk("c")

	var zero Manager
	if zero.Get("a") != nil || zero.Clusters() != nil {
		t.Error("zero Manager is not empty")
	}

	m := NewManager()
	removed, err := m.Replace([]*Cluster{b, a})
	if err != nil || len(removed) != 0 {
		t.Fatalf("Replace: %v, removed %v", err, names(removed))
	}
	if m.Get("a") != a || m.Get("b") != b || m.Get("c") != nil {
		t.Error("Get after the first Replace")
	}
	if diff := cmp.Diff([]string{"a", "b"}, names(m.Clusters())); diff != "" {
		t.Errorf("Clusters (-want +got):\n%s", diff)
	}

	// b is replaced by a new cluster of the same name, a disappears, c comes.
	removed, err = m.Replace([]*Cluster{c, b2})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 || removed[0] != a || removed[1] != b {
		t.Errorf("removed %v, want [a b(old)]", names(removed))
	}
	if m.Get("a") != nil || m.Get("b") != b2 || m.Get("c") != c {
		t.Error("Get after the second Replace")
	}

	// A bad set changes nothing.
	for _, bad := range [][]*Cluster{{a, mk("a")}, {a, nil}} {
		if _, err := m.Replace(bad); err == nil {
			t.Error("Replace accepted a bad set")
		}
	}
	if diff := cmp.Diff([]string{"b", "c"}, names(m.Clusters())); diff != "" {
		t.Errorf("Clusters after rejected Replace (-want +got):\n%s", diff)
	}
}

// Get runs lock-free beside Replace (run with -race).
func TestManagerConcurrent(t *testing.T) {
	t.Parallel()
	a := build(t, clusterJSON(t, staticCluster("a", "", "127.0.0.1:80")), Options{})
	m := NewManager()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c := m.Get("a"); c != nil && c != a {
					t.Error("Get returned a stranger")
				}
			}
		})
	}
	for i := range 200 {
		set := []*Cluster{a}
		if i%2 == 1 {
			set = nil
		}
		if _, err := m.Replace(set); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}
