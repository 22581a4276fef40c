// Package admin is sift-proxy's admin server, at the bootstrap's
// admin.address, with Envoy's endpoints where Sift has them: / (the index),
// /ready (200 "LIVE" while serving, 503 while starting or draining),
// /server_info, /listeners and /clusters (text, or ?format=json), /config_dump,
// /stats, /stats/prometheus (also at /metrics); and Sift's own /detections
// (why each recent connection went where it went), /detections/learned
// (destinations learned to be server-first) and /dashboard (a live page
// over the JSON endpoints, embedded in the binary: dashboard.html). The
// endpoint list is in endpoints (endpoints.go).
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync/atomic"
	"time"
)

// State is the server's lifecycle state as /ready reports it.
type State int32

// The states: PRE_INITIALIZING until the server serves (/ready 503), LIVE
// (/ready 200), DRAINING once shutdown began (/ready 503).
const (
	StateInitializing State = iota
	StateLive
	StateDraining
)

func (s State) String() string {
	switch s {
	case StateLive:
		return "LIVE"
	case StateDraining:
		return "DRAINING"
	}
	return "PRE_INITIALIZING"
}

// Source supplies what the admin pages show. Its methods are called
// concurrently from request goroutines.
type Source interface {
	// ListenerAddrs returns each listener's name and bound address.
	ListenerAddrs() map[string]string
	// ConfigDump returns Envoy's /config_dump JSON.
	ConfigDump() ([]byte, error)
}

// Server is the admin HTTP server.
type Server struct {
	state  atomic.Int32
	src    Source
	http   *http.Server
	ln     net.Listener
	served chan struct{}
}

// Listen binds addr ("ip:port") and starts serving.
func Listen(addr string, src Source, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	s := &Server{src: src, ln: ln, served: make(chan struct{})}
	mux := http.NewServeMux()
	for _, e := range s.endpoints() {
		pattern := "GET " + e.path
		if e.path == "/" {
			pattern = "GET /{$}"
		}
		mux.HandleFunc(pattern, e.handler)
	}
	for path, h := range pprofHandlers() {
		mux.HandleFunc("GET "+path, h)
	}
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		defer close(s.served)
		if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server stopped", "err", err)
		}
	}()
	log.Info("admin listening", "address", ln.Addr().String())
	return s, nil
}

// Addr returns the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// SetState changes what /ready reports.
func (s *Server) SetState(st State) { s.state.Store(int32(st)) }

// Close stops the server.
func (s *Server) Close(ctx context.Context) error {
	err := s.http.Shutdown(ctx)
	<-s.served
	return err
}

func (s *Server) ready(w http.ResponseWriter, _ *http.Request) {
	st := State(s.state.Load())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if st != StateLive {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintln(w, st)
}

// listeners serves Envoy's /listeners text form, "name::address" lines
// sorted by name; ?format=json gives Envoy's admin.v3.Listeners shape,
// {"listener_statuses":[{"name","local_address":{"socket_address":{...}}}]}.
func (s *Server) listeners(w http.ResponseWriter, r *http.Request) {
	addrs := s.src.ListenerAddrs()
	names := make([]string, 0, len(addrs))
	for n := range addrs {
		names = append(names, n)
	}
	sort.Strings(names)
	switch f := r.URL.Query().Get("format"); f {
	case "", "text":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, n := range names {
			fmt.Fprintf(w, "%s::%s\n", n, addrs[n])
		}
	case "json":
		type listenerJSON struct {
			Name    string      `json:"name"`
			Address addressJSON `json:"local_address"`
		}
		out := struct {
			Listeners []listenerJSON `json:"listener_statuses"`
		}{Listeners: make([]listenerJSON, 0, len(names))}
		for _, n := range names {
			l := listenerJSON{Name: n}
			host, port, _ := net.SplitHostPort(addrs[n])
			l.Address.Socket.Address = host
			l.Address.Socket.Port, _ = strconv.Atoi(port)
			out.Listeners = append(out.Listeners, l)
		}
		writeJSON(w, out)
	default:
		http.Error(w, fmt.Sprintf("listeners: format: want text or json, got %q", f), http.StatusBadRequest)
	}
}

func (s *Server) configDump(w http.ResponseWriter, _ *http.Request) {
	js, err := s.src.ConfigDump()
	if err != nil {
		http.Error(w, "config_dump: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(js)
}
