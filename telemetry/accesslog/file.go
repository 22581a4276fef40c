package accesslog

import (
	"bufio"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// fileQueueLen bounds the lines waiting for a file writer.
	fileQueueLen = 8192
	// flushInterval is Envoy's default file_flush_interval.
	flushInterval = time.Second
	fileBufSize   = 64 << 10
)

// format renders one line for an entry.
type format struct {
	text textFormat  // nil when json is set
	json *jsonFormat // nil for text
}

func (f *format) render(l *lineBuf, e *entry) {
	if f.json != nil {
		l.b, l.scratch = f.json.appendJSON(l.b, l.scratch, e)
		return
	}
	l.b = f.text.appendText(l.b, e)
}

// lineSink formats entries and queues them to a file writer.
type lineSink struct {
	format *format
	w      *fileWriter
}

func (s *lineSink) log(e *entry) {
	l := getLine()
	s.format.render(l, e)
	s.w.enqueue(l)
}

// worker is a restartable goroutine: started on first use, stopped (after
// draining) by stop, started again by a later use.
type worker struct {
	// up is true while a goroutine runs and no stop has begun: the fast
	// path of ensure. stop clears it before asking the goroutine to drain,
	// so a caller that queued an item and then saw up is sure the item is
	// drained or processed.
	up      atomic.Bool
	mu      sync.Mutex
	running bool
	quit    chan struct{}
	done    chan struct{}
	run     func(quit <-chan struct{})
}

// ensure starts the goroutine unless it runs. Callers queue first.
func (w *worker) ensure() {
	if w.up.Load() {
		return
	}
	w.mu.Lock()
	if !w.running {
		w.running = true
		w.quit, w.done = make(chan struct{}), make(chan struct{})
		go func(quit, done chan struct{}) {
			defer close(done)
			w.run(quit)
		}(w.quit, w.done)
	}
	w.up.Store(true)
	w.mu.Unlock()
}

// stop asks the goroutine to drain its queue and waits until it has.
func (w *worker) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.running {
		w.up.Store(false)
		close(w.quit)
		<-w.done
		w.running = false
	}
}

// fileWriter owns one open file (or stdout/stderr) and the goroutine that
// writes its queued lines through a buffer, flushed every flushInterval and
// when stopped.
type fileWriter struct {
	worker
	path string
	out  io.Writer // the loop's alone once it runs
	file *os.File  // out, when it is a file Reopen may reopen; the loop's too
	// reopenable is true for files, false for stdout/stderr. Immutable.
	reopenable bool
	q          chan *lineBuf
	// reopen asks the loop to reopen the file; it closes the channel it
	// is sent once done.
	reopen chan chan struct{}
}

// fileWriters are shared by path, as Envoy's access log manager does.
var fileWriters = map[string]*fileWriter{}

// openFile returns the writer for path, opening the file (append, create)
// on first use.
func openFile(path string) (*fileWriter, error) {
	writersMu.Lock()
	defer writersMu.Unlock()
	if w, ok := fileWriters[path]; ok {
		return w, nil
	}
	var out io.Writer
	var file *os.File
	switch path {
	case "/dev/stdout":
		out = os.Stdout
	case "/dev/stderr":
		out = os.Stderr
	default:
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return nil, err
		}
		out, file = f, f
	}
	w := &fileWriter{path: path, out: out, file: file, reopenable: file != nil, q: make(chan *lineBuf, fileQueueLen), reopen: make(chan chan struct{})}
	w.run = w.loop
	fileWriters[path] = w
	return w, nil
}

// enqueue queues l, or drops it when the queue is full. Queueing before
// ensure means a line is either drained by a stopping goroutine or found
// by a (re)started one: none is left behind.
func (w *fileWriter) enqueue(l *lineBuf) {
	select {
	case w.q <- l:
	default:
		dropped.Add(1)
		putLine(l)
	}
	w.ensure()
}

func (w *fileWriter) loop(quit <-chan struct{}) {
	bw := bufio.NewWriterSize(w.out, fileBufSize)
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	failed := false
	write := func(l *lineBuf) {
		if _, err := bw.Write(l.b); err != nil && !failed {
			failed = true // once: a full disk must not flood the log
			slog.Warn("accesslog: write failed", "path", w.path, "err", err)
		}
		putLine(l)
	}
	flush := func() {
		if err := bw.Flush(); err != nil && !failed {
			failed = true
			slog.Warn("accesslog: write failed", "path", w.path, "err", err)
		}
	}
	for {
		select {
		case l := <-w.q:
			write(l)
		case <-t.C:
			flush()
		case done := <-w.reopen:
			// Lines queued before the request go to the old file.
		pending:
			for {
				select {
				case l := <-w.q:
					write(l)
				default:
					break pending
				}
			}
			flush()
			w.reopenFile()
			bw.Reset(w.out)
			failed = false
			close(done)
		case <-quit:
			for {
				select {
				case l := <-w.q:
					write(l)
				default:
					flush()
					return
				}
			}
		}
	}
}

// reopenFile opens the path again (a log rotator moved the file) and
// closes the old file; on failure it keeps writing to the old one.
func (w *fileWriter) reopenFile() {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		slog.Warn("accesslog: reopen failed; writing to the old file", "path", w.path, "err", err)
		return
	}
	w.file.Close()
	w.file, w.out = f, f
}

// Reopen reopens every access log file (not stdout or stderr), as Envoy
// does on SIGUSR1, so that a log rotator can move the files away. Lines
// queued before the call go to the old files. It returns once every file
// has been reopened.
func Reopen() {
	writersMu.Lock()
	var ws []*fileWriter
	for _, w := range fileWriters {
		if w.reopenable {
			ws = append(ws, w)
		}
	}
	writersMu.Unlock()
	for _, w := range ws {
		w.ensure()
		done := make(chan struct{})
		w.mu.Lock() // not while a stop drains: the loop would be gone
		if w.running {
			w.reopen <- done
			<-done
		}
		w.mu.Unlock()
	}
}
