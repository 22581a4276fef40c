package admin_test

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// TestMemory: Envoy's /memory fields, all decimal strings, with the live
// heap no larger than what the heap holds, and Sift's own figures.
func TestMemory(t *testing.T) {
	t.Parallel()
	srv := newServer(t, true)
	r := get(t, "GET", srv.AdminAddr(), "/memory")
	if r.Status != http.StatusOK || r.ContentType != "application/json" {
		t.Fatalf("GET /memory: %d %s\n%s", r.Status, r.ContentType, r.Body)
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(r.Body), &m); err != nil {
		t.Fatalf("GET /memory: %v\n%s", err, r.Body)
	}
	num := func(k string) int64 {
		v, ok := m[k]
		if !ok {
			t.Fatalf("GET /memory: no %q in %s", k, r.Body)
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("GET /memory: %s = %q: %v", k, v, err)
		}
		return n
	}
	for _, k := range []string{"pageheap_unmapped", "pageheap_free", "total_thread_cache", "total_physical_bytes", "stack_inuse", "gc_cycles", "memory_limit"} {
		num(k)
	}
	if a, h := num("allocated"), num("heap_size"); a <= 0 || a > h {
		t.Errorf("allocated %d, heap_size %d: want 0 < allocated <= heap_size", a, h)
	}
	if g := num("goroutines"); g < 2 {
		t.Errorf("goroutines = %d: a running server has more", g)
	}
	if g := num("gogc"); g == 0 {
		t.Errorf("gogc = 0")
	}
}

// TestPprof: the index lists the named profiles, a heap profile is served
// in pprof's format, and a short CPU profile can be taken.
func TestPprof(t *testing.T) {
	t.Parallel()
	srv := newServer(t, true)
	addr := srv.AdminAddr()
	if r := get(t, "GET", addr, "/debug/pprof/"); r.Status != http.StatusOK || !strings.Contains(r.Body, "goroutine") || !strings.Contains(r.Body, "heap") {
		t.Errorf("GET /debug/pprof/: %d\n%s", r.Status, r.Body)
	}
	if r := get(t, "GET", addr, "/debug/pprof/goroutine?debug=1"); r.Status != http.StatusOK || !strings.Contains(r.Body, "goroutine profile: total") {
		t.Errorf("GET /debug/pprof/goroutine?debug=1: %d\n%.300s", r.Status, r.Body)
	}
	for _, path := range []string{"/debug/pprof/heap", "/debug/pprof/profile?seconds=1"} {
		if r := get(t, "GET", addr, path); r.Status != http.StatusOK || r.ContentType != "application/octet-stream" || len(r.Body) == 0 {
			t.Errorf("GET %s: %d %s, %d bytes", path, r.Status, r.ContentType, len(r.Body))
		}
	}
	if r := get(t, "GET", addr, "/help"); !strings.Contains(r.Body, "/memory") || !strings.Contains(r.Body, "/debug/pprof/") {
		t.Errorf("/help lists neither /memory nor /debug/pprof/:\n%s", r.Body)
	}
}
