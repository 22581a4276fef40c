// Package accesslog is Envoy's access logging (envoy.config.accesslog.v3.AccessLog)
// for the HTTP connection manager and tcp_proxy: each finished request
// (streaminfo.Request) or connection (streaminfo.Conn) passes the logger's
// filter and is written as one line to a file, stdout or stderr
// (envoy.access_loggers.file / stdout / stderr), or streamed as an entry to
// Envoy's gRPC access log service (envoy.access_loggers.http_grpc /
// tcp_grpc).
//
// # Contracts
//
// Decode validates an access_log list once, at config time, into immutable
// Loggers: format strings are parsed into segments, filters into closures,
// files opened, gRPC clusters checked. Logging never re-parses and never
// blocks: a line is formatted on the caller's goroutine into a pooled
// buffer and queued to a writer goroutine (one per file path, one per gRPC
// stream config, shared process-wide); when a queue is full the line is
// dropped and counted (Dropped). Writers flush every second and at
// Shutdown, which the server calls when it stops; Reopen (SIGUSR1 in
// sift-proxy) reopens the files for log rotation. Writers are kept for the
// life of the process (there is no filter teardown to release them), one
// per distinct path or gRPC configuration; a stopped writer costs no
// goroutine.
//
// # Formats
//
// Text formats take Envoy's command operators (see Operators and
// docs/envoy-support.md): %START_TIME(fmt)%, %REQ(H?ALT):LEN%, %RESP(H)%,
// %PROTOCOL%, %RESPONSE_CODE%, %RESPONSE_FLAGS%, %BYTES_RECEIVED%,
// %BYTES_SENT%, %DURATION%, %UPSTREAM_HOST%, %UPSTREAM_CLUSTER%,
// %DOWNSTREAM_REMOTE_ADDRESS%, %DOWNSTREAM_LOCAL_ADDRESS%, %ROUTE_NAME%, …
// and Sift's detection fields %SIFT_DETECTED_PROTOCOL% (tls, http/1.1, h2c,
// a plugin's protocol, or opaque), %SIFT_DETECTION_REASON% (why detection
// ended: match, timeout, byte cap, …), %SIFT_DETECTION_DURATION% (ms),
// %SIFT_DETECTION_BYTES%, %SIFT_DETECTION_SNIFFER% and
// %SIFT_DETECTION_ATTRIBUTE(name)% (what a plugin's match reported, such as
// a database's server_version); they read "-" when
// detection did not run. An unknown operator is a config error naming it.
// JSON formats (json_format, typed_json_format) hold a format string per
// key; a value that is exactly one operator without a value is null, and
// typed_json_format keeps numbers as numbers.
package accesslog

import (
	"sync"
	"sync/atomic"

	"github.com/siftmesh/sift/telemetry/streaminfo"
)

// Loggers is a decoded access_log list. It is immutable and safe for
// concurrent use; the nil Loggers logs nothing.
type Loggers []*logger

// logger is one AccessLog: a filter and where lines go.
type logger struct {
	name   string
	filter filter // nil: everything
	sink   sink
}

// sink receives the entries a logger's filter let through. log must not
// block, and must not keep e past the call unless it copies what it needs
// (records themselves may be kept: they are not reused).
type sink interface {
	log(e *entry)
}

// LogRequest logs one finished HTTP request to every logger whose filter
// takes it. It does not block.
func (ls Loggers) LogRequest(r *streaminfo.Request) {
	if len(ls) == 0 {
		return
	}
	e := entry{req: r}
	ls.log(&e)
}

// LogConn logs one finished TCP connection to every logger whose filter
// takes it. It does not block.
func (ls Loggers) LogConn(c *streaminfo.Conn) {
	if len(ls) == 0 {
		return
	}
	e := entry{conn: c}
	ls.log(&e)
}

func (ls Loggers) log(e *entry) {
	for _, l := range ls {
		if l.filter == nil || l.filter(e) {
			l.sink.log(e)
		}
	}
}

// dropped counts lines and entries dropped because a queue was full.
var dropped atomic.Uint64

// Dropped returns how many log lines and gRPC entries were dropped because
// a writer could not keep up, since the process started.
func Dropped() uint64 { return dropped.Load() }

// lineBuf is a pooled line buffer: one per formatted line, returned by the
// writer once written.
type lineBuf struct {
	b       []byte
	scratch []byte // for JSON values
}

var linePool = sync.Pool{New: func() any { return &lineBuf{b: make([]byte, 0, 512)} }}

func getLine() *lineBuf { return linePool.Get().(*lineBuf) }

func putLine(l *lineBuf) {
	if cap(l.b) > 64<<10 {
		return // let an outsized buffer go
	}
	l.b = l.b[:0]
	linePool.Put(l)
}

// Shutdown flushes every writer's queue and stops its goroutine (file
// writers write what is queued; gRPC writers send it if their stream is up).
// A writer used again afterwards starts again. Safe to call more than once
// and concurrently with logging.
func Shutdown() {
	writersMu.Lock()
	ws := make([]stopper, 0, len(fileWriters)+len(grpcWriters))
	for _, w := range fileWriters {
		ws = append(ws, w)
	}
	for _, w := range grpcWriters {
		ws = append(ws, w)
	}
	writersMu.Unlock()
	for _, w := range ws {
		w.stop()
	}
}

type stopper interface{ stop() }

// writersMu guards the process-wide writer tables.
var writersMu sync.Mutex
