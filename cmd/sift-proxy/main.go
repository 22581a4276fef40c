// Command sift-proxy is Sift's data plane, started like Envoy:
//
//	sift-proxy -c bootstrap.yaml [--config-yaml YAML] [-l level] [--drain-time-s N] [--mode serve|validate]
//
// It reads an Envoy v3 bootstrap, serves its listeners and drains on SIGTERM
// or SIGINT; SIGUSR1 reopens the access log files, as Envoy's does.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/siftmesh/sift/admin"
	"github.com/siftmesh/sift/bootstrap"
	"github.com/siftmesh/sift/internal/memlimit"
	"github.com/siftmesh/sift/plugins/host"
	"github.com/siftmesh/sift/server"
	"github.com/siftmesh/sift/telemetry/accesslog"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	configPath     string
	configYAML     string
	logLevel       string
	logFormat      string
	drainTime      time.Duration
	mode           string
	serviceNode    string
	serviceCluster string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("sift-proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	for _, name := range []string{"c", "config-path"} {
		fs.StringVar(&o.configPath, name, "", "path to the v3 bootstrap file (YAML or JSON)")
	}
	fs.StringVar(&o.configYAML, "config-yaml", "", "v3 bootstrap as YAML, merged over the file given with -c")
	for _, name := range []string{"l", "log-level"} {
		fs.StringVar(&o.logLevel, name, "info", "log level: trace, debug, info, warning, error, critical, off")
	}
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	drainSeconds := fs.Uint("drain-time-s", 600, "seconds connections get to finish when draining (as Envoy)")
	fs.StringVar(&o.mode, "mode", "serve", "serve, or validate: check the configuration and exit 0 (valid) or 1")
	fs.StringVar(&o.serviceNode, "service-node", "", "node id, overriding node.id in the bootstrap")
	fs.StringVar(&o.serviceCluster, "service-cluster", "", "node cluster, overriding node.cluster in the bootstrap")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	o.drainTime = time.Duration(*drainSeconds) * time.Second
	if o.mode != "serve" && o.mode != "validate" {
		return o, fmt.Errorf("--mode: %q is not one of serve, validate", o.mode)
	}
	return o, nil
}

// logLevels maps Envoy's level names to slog's.
var logLevels = map[string]slog.Level{
	"trace": slog.LevelDebug - 4, "debug": slog.LevelDebug, "info": slog.LevelInfo,
	"warning": slog.LevelWarn, "warn": slog.LevelWarn, "error": slog.LevelError,
	"critical": slog.LevelError + 4, "off": slog.LevelError + 100,
}

func newLogger(o options, w io.Writer) (*slog.Logger, error) {
	level, ok := logLevels[strings.ToLower(o.logLevel)]
	if !ok {
		return nil, fmt.Errorf("--log-level: unknown level %q", o.logLevel)
	}
	ho := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, ho)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, ho)), nil
	}
	return nil, fmt.Errorf("--log-format: %q is not one of text, json", o.logFormat)
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "sift-proxy:", err)
		return 1
	}
	log, err := newLogger(o, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "sift-proxy:", err)
		return 1
	}
	defer host.StopAll() // plugin processes end with sift-proxy
	src, err := bootstrap.Read(o.configPath, o.configYAML)
	if err != nil {
		fmt.Fprintln(stderr, "sift-proxy:", err)
		return 1
	}
	b := src.Bootstrap
	if o.serviceNode != "" || o.serviceCluster != "" {
		bootstrap.OverrideNode(b, o.serviceNode, o.serviceCluster)
	}
	mode := "Serve"
	if o.mode == "validate" {
		mode = "Validate"
	}
	srv, err := server.Build(b, server.Options{DrainTime: o.drainTime, Logger: log, CommandLine: admin.CommandLineOptions{
		ConfigPath: o.configPath, ConfigYAML: o.configYAML, LogLevel: o.logLevel, LogFormat: o.logFormat,
		DrainTime: fmt.Sprintf("%ds", int64(o.drainTime.Seconds())), Mode: mode,
		ServiceNode: o.serviceNode, ServiceCluster: o.serviceCluster}})
	if err != nil {
		fmt.Fprintf(stderr, "sift-proxy: %v\n", src.Locate(err))
		return 1
	}
	warnings := src.Warnings()
	if o.mode == "validate" {
		for _, w := range warnings {
			fmt.Fprintln(stderr, "sift-proxy: warning:", w)
		}
		srv.Close()
		fmt.Fprintf(stdout, "configuration '%s' OK\n", configName(o))
		return 0
	}
	if limit, source, err := memlimit.Apply(); err != nil {
		log.Warn("no memory limit from the container's cgroup", "err", err)
	} else if limit > 0 {
		log.Info("memory limit set below the container's (GOMEMLIMIT overrides it)", "limit_bytes", limit, "cgroup", source)
	}
	// Signals are caught before the listeners open: a SIGTERM that came
	// between the two (a supervisor stopping a proxy it just started)
	// killed the process without a drain, and the connections it had
	// accepted with it.
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	reopen := make(chan os.Signal, 1)
	signal.Notify(reopen, syscall.SIGUSR1) // Envoy's: reopen the access logs
	if err := srv.Start(); err != nil {
		log.Error("start failed", "err", err)
		srv.Shutdown(context.Background())
		return 1
	}
	for _, w := range warnings {
		log.Warn("configuration: " + w)
	}
	log.Info("sift-proxy started", "node", b.GetNode().GetId(), "pid", os.Getpid(), "drain_time", o.drainTime)

	stopReopen := make(chan struct{})
	defer func() { signal.Stop(reopen); close(stopReopen) }()
	go func() {
		for {
			select {
			case <-reopen:
				accesslog.Reopen()
			case <-stopReopen:
				return
			}
		}
	}()

	s := <-sig
	log.Info("draining", "signal", s.String(), "drain_time", o.drainTime)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { // a second signal ends the drain at once
		<-sig
		log.Info("second signal; closing now")
		cancel()
	}()
	srv.Shutdown(ctx)
	cancel()
	log.Info("stopped")
	return 0
}

func configName(o options) string {
	if o.configPath != "" {
		return o.configPath
	}
	return "--config-yaml"
}
