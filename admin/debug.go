package admin

import (
	"encoding/json"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"strconv"
)

// memory is Envoy's /memory: the allocator's figures as JSON strings, with
// Go's runtime standing in for tcmalloc — allocated is the live heap,
// heap_size what the heap holds from the OS, pageheap_unmapped what it gave
// back, pageheap_free what it holds unused, total_thread_cache the per-P
// caches, total_physical_bytes everything the runtime holds minus what it
// gave back. Sift adds goroutines, stack_inuse (goroutine stacks, outside
// the heap), gc_cycles, and the collector's settings gogc (-1: off) and
// memory_limit. It stops the world briefly (runtime.ReadMemStats).
func (s *Server) memory(w http.ResponseWriter, _ *http.Request) {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	gogc := debug.SetGCPercent(-1)
	debug.SetGCPercent(gogc)
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	out := map[string]string{
		"allocated":            u(m.HeapAlloc),
		"heap_size":            u(m.HeapSys),
		"pageheap_unmapped":    u(m.HeapReleased),
		"pageheap_free":        u(m.HeapIdle - m.HeapReleased),
		"total_thread_cache":   u(m.MCacheInuse),
		"total_physical_bytes": u(m.Sys - m.HeapReleased),
		"goroutines":           strconv.Itoa(runtime.NumGoroutine()),
		"stack_inuse":          u(m.StackInuse),
		"gc_cycles":            u(uint64(m.NumGC)),
		"gogc":                 strconv.Itoa(gogc),
		"memory_limit":         strconv.FormatInt(debug.SetMemoryLimit(-1), 10),
	}
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(out)
}

// pprofHandlers are Go's profiling endpoints under /debug/pprof/ beside the
// index (an endpoint of its own, which also serves the named profiles: heap,
// allocs, goroutine, block, mutex, threadcreate): profile (CPU,
// ?seconds=N), trace, cmdline and symbol. They are Sift's counterpart of
// Envoy's /cpuprofiler and /heapprofiler; like all of the admin server they
// must not be exposed beyond the host.
func pprofHandlers() map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"/debug/pprof/cmdline": pprof.Cmdline,
		"/debug/pprof/profile": pprof.Profile,
		"/debug/pprof/symbol":  pprof.Symbol,
		"/debug/pprof/trace":   pprof.Trace,
	}
}
