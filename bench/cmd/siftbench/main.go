// Command siftbench is the benchmark harness behind `make bench`: it runs
// each scenario through a direct connection, Sift, HAProxy and nginx, and
// writes bench/results/. Its subcommands are also the backends and Go load
// clients the run starts as separate, pinned processes.
//
//	siftbench run   [flags]            the whole benchmark (see bench/run.sh)
//	siftbench serve KIND -addr A ...   a backend: http1 | h2c | grpc | greeting | hold
//	siftbench load  KIND -addr A ...   a load client printing JSON: short-http | greet | grpc | idle
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/siftmesh/sift/bench/internal/harness"
	"github.com/siftmesh/sift/bench/internal/loadgen"
	"github.com/siftmesh/sift/bench/internal/procs"
	"github.com/siftmesh/sift/bench/internal/servers"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: siftbench run|serve|load ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = harness.Main(os.Args[2:])
	case "serve":
		err = serve(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "siftbench:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	if len(args) < 1 {
		return fmt.Errorf("serve KIND")
	}
	kind := args[0]
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	delay := fs.Duration("delay", 0, "http1: delay before each response")
	fs.Parse(args[1:])
	procs.RaiseFDLimit()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Printf("serving %s on %s\n", kind, ln.Addr())
	switch kind {
	case "http1":
		return (&servers.HTTP1{Delay: *delay}).Serve(ctx, ln)
	case "h2c":
		return servers.ServeH2C(ctx, ln)
	case "grpc":
		return servers.ServeGRPC(ctx, ln)
	case "greeting":
		return servers.ServeGreeting(ctx, ln)
	case "hold":
		return (&servers.Holder{}).Serve(ctx, ln)
	case "pong":
		return servers.ServePONG(ctx, ln)
	case "sink":
		return servers.ServeSink(ctx, ln)
	}
	return fmt.Errorf("unknown backend %q", kind)
}

func load(args []string) error {
	if len(args) < 1 {
		return fmt.Errorf("load KIND")
	}
	kind := args[0]
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	addr := fs.String("addr", "", "target address (greet: a comma-separated list, shared in turn)")
	c := fs.Int("c", 16, "concurrent workers")
	d := fs.Duration("d", 5*time.Second, "duration bound")
	n := fs.Int("n", 10_000_000, "operation count bound")
	conns := fs.Int("conns", 4, "grpc: client connections")
	mode := fs.String("mode", "unary", "grpc: unary | stream")
	payload := fs.Int("payload", 64, "grpc: payload bytes")
	rate := fs.Float64("rate", 0, "grpc: calls (or streamed messages) per second across workers; 0: as fast as they go")
	bufSize := fs.Int("buf", 128<<10, "bulk: bytes per Write")
	timeout := fs.Duration("timeout", 15*time.Second, "greet/idle: per-run bound")
	fs.Parse(args[1:])
	procs.RaiseFDLimit()
	var r loadgen.Result
	switch kind {
	case "short-http":
		r = loadgen.ShortHTTP(*addr, *c, *d, *n)
	case "short-resp":
		r = loadgen.ShortRESP(*addr, *c, *d, *n)
	case "greet":
		r = loadgen.Greet(strings.Split(*addr, ","), *n, *c, *timeout)
	case "grpc":
		var err error
		if r, err = loadgen.GRPCRate(*addr, *mode, *conns, *c, *d, *n, *payload, *rate); err != nil {
			return err
		}
	case "bulk":
		r = loadgen.Bulk(*addr, *c, *d, *bufSize)
	case "idle":
		// Open n connections, report, then hold them until stdin closes
		// or the timeout ends (the harness measures the proxy meanwhile).
		conns, res := loadgen.Idle(*addr, *n, *c, *timeout)
		out, _ := json.Marshal(res)
		fmt.Printf("%s\n", out)
		done := make(chan struct{})
		go func() { b := make([]byte, 1); os.Stdin.Read(b); close(done) }()
		select {
		case <-done:
		case <-time.After(*timeout):
		}
		for _, c := range conns {
			c.Close()
		}
		return nil
	default:
		return fmt.Errorf("unknown load %q", kind)
	}
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Printf("%s\n", out)
	return nil
}
