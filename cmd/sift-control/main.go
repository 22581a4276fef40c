// Command sift-control is Sift's control plane: it reads the mesh file (or,
// with --source kubernetes, watches a cluster: docs/kubernetes.md), turns it
// into per-proxy xDS snapshots and serves them over gRPC (ADS and per-type
// LDS/CDS/EDS/RDS/SDS, state-of-the-world and delta). With --ca-dir it is
// also the mesh's certificate authority: every proxy gets its workload's
// certificate and the trust bundle over SDS, and must prove its node id with
// a node token (docs/mesh-identity.md).
//
//	sift-control --mesh mesh.yaml [--xds-address :18000] [--admin-address :9902]
//	             [--node-id-fallback none|prefix|istio] [--http-connection-manager]
//	             [--outbound-address 127.0.0.1:4140] [--inbound-address 0.0.0.0:4143]
//	             [--ca-dir DIR [--ca-cert FILE --ca-key FILE [--ca-bundle FILE]]
//	              [--cert-ttl 24h] [--ca-bundle-out FILE] [--xds-tls [--xds-tls-names sift-control,...]]]
//	             [-l debug|info|warn|error]
//	sift-control --source kubernetes [--kubeconfig FILE] [--mesh-config NS/NAME] [--debounce 100ms] ...
//	sift-control bootstrap --ca-dir DIR --node ID [--xds-address HOST:PORT] [--trust-file FILE] [-o FILE] ...
//	sift-control ca rotate --ca-dir DIR [--overlap 24h] [--ca-cert FILE --ca-key FILE]
//
// The admin address serves /metrics (Prometheus) and /ready. SIGTERM or
// SIGINT stops it gracefully.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	controlv1 "github.com/siftmesh/sift/api/sift/control/v1"
	"github.com/siftmesh/sift/controlplane"
	"github.com/siftmesh/sift/controlplane/ca"
	"github.com/siftmesh/sift/mesh/file"
	"github.com/siftmesh/sift/mesh/kube"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// stopGrace bounds the graceful gRPC stop: xDS streams never end on their
// own, so after this they are cut.
const stopGrace = 2 * time.Second

// DefaultEndpointACKTimeout bounds how long a new meshed workload's
// endpoints wait for its proxy's ACK (docs/kubernetes.md): far longer than
// a proxy takes to start, fetch its certificate and configuration on a busy
// node (seconds), short enough that a workload wrongly marked meshed is not
// dark for long.
const DefaultEndpointACKTimeout = time.Minute

func run(args []string, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "bootstrap":
			return runBootstrap(args[1:], os.Stdout, stderr)
		case "ca":
			return runCA(args[1:], stderr)
		}
	}
	fs := flag.NewFlagSet("sift-control", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		source     = fs.String("source", sourceFile, "where the mesh comes from: file (--mesh) or kubernetes (--kubeconfig)")
		meshPath   = fs.String("mesh", "", "the mesh file (YAML; see mesh/file/README.md) (required with --source file)")
		kubeconfig = fs.String("kubeconfig", "", "kubeconfig of the cluster (--source kubernetes); empty: the in-cluster service account")
		meshConfig = fs.String("mesh-config", kube.DefaultConfigMap, "namespace/name of the ConfigMap of mesh-wide defaults (--source kubernetes)")
		debounce   = fs.Duration("debounce", kube.DefaultDebounce, "quiet time after a cluster change before the mesh is rebuilt (--source kubernetes)")
		xdsAddr    = fs.String("xds-address", ":18000", "gRPC address of the xDS server")
		adminAddr  = fs.String("admin-address", ":9902", "HTTP address of /metrics and /ready; empty: off")
		fallback   = fs.String("node-id-fallback", controlplane.FallbackNone, "how node ids that are no workload's node_id map to workloads: "+strings.Join(controlplane.Fallbacks, ", "))
		hcm        = fs.Bool("http-connection-manager", true, "serve HTTP chains with http_connection_manager and RDS (false: tcp_proxy)")
		outbound   = fs.String("outbound-address", "127.0.0.1:4140", "address of the proxies' outbound listener")
		inbound    = fs.String("inbound-address", "0.0.0.0:4143", "address of the proxies' inbound listener")
		connectTO  = fs.Duration("connect-timeout", time.Second, "connect_timeout of generated clusters")
		ackTimeout = fs.Duration("endpoint-ack-timeout", DefaultEndpointACKTimeout, "how long a new meshed workload's endpoints wait for its proxy to acknowledge its inbound listener before they are published anyway (0: publish at once)")
		level      = fs.String("l", "info", "log level: debug, info, warn, error")
		pollPeriod = fs.Duration("mesh-poll-interval", file.DefaultInterval, "how often the mesh file is checked for edits")
		caFlags    = addCAFlags(fs)
		certTTL    = fs.Duration("cert-ttl", ca.DefaultLeafTTL, "lifetime of issued certificates (renewed at 70 %)")
		xdsTLS     = fs.Bool("xds-tls", false, "serve xDS over TLS with a server certificate from the CA (needs --ca-dir)")
		xdsNames   = fs.String("xds-tls-names", "sift-control,localhost,127.0.0.1", "DNS names and IPs of the xDS server certificate, comma-separated")
		caPoll     = fs.Duration("ca-poll-interval", ca.DefaultPollInterval, "how often --ca-dir is checked for a rotation started by `sift-control ca rotate`")
		bundleOut  = fs.String("ca-bundle-out", "", "keep this file holding the current trust bundle (PEM, 0644), for proxies' trusted_ca.filename")
		fullPush   = fs.Bool("full-push", false, "benchmark baseline only: rebuild every snapshot from scratch on every change and send every proxy its whole configuration (docs/kubernetes.md)")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "sift-control: -l: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	if err := serve(log, config{
		source: sourceConfig{kind: *source, meshPath: *meshPath, poll: *pollPeriod, kubeconfig: *kubeconfig,
			meshConfig: *meshConfig, debounce: *debounce},
		xdsAddr: *xdsAddr, adminAddr: *adminAddr, fallback: *fallback, hcm: *hcm,
		outbound: *outbound, inbound: *inbound, connectTimeout: *connectTO, ackTimeout: *ackTimeout,
		ca: *caFlags, certTTL: *certTTL, caPoll: *caPoll, bundleOut: *bundleOut, xdsTLS: *xdsTLS, xdsNames: splitList(*xdsNames),
		fullPush: *fullPush,
	}); err != nil {
		log.Error("sift-control: " + err.Error())
		return 1
	}
	return 0
}

type config struct {
	source                                          sourceConfig
	xdsAddr, adminAddr, fallback, outbound, inbound string
	hcm                                             bool
	connectTimeout, ackTimeout                      time.Duration
	ca                                              caConfig
	certTTL, caPoll                                 time.Duration
	bundleOut                                       string
	xdsTLS                                          bool
	xdsNames                                        []string
	fullPush                                        bool
}

func serve(log *slog.Logger, cfg config) error {
	opts := controlplane.DefaultOptions()
	var err error
	if opts.OutboundAddress, err = netip.ParseAddrPort(cfg.outbound); err != nil {
		return fmt.Errorf("--outbound-address: %w", err)
	}
	if opts.InboundAddress, err = netip.ParseAddrPort(cfg.inbound); err != nil {
		return fmt.Errorf("--inbound-address: %w", err)
	}
	opts.HTTPConnectionManager = cfg.hcm
	opts.ConnectTimeout = cfg.connectTimeout
	matcher, err := controlplane.ParseFallback(cfg.fallback)
	if err != nil {
		return fmt.Errorf("--node-id-fallback: %w", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var ctl *controlplane.Controller
	// Run starts after ctl is set.
	src, err := openSource(ctx, log, cfg.source, func(err error) { ctl.MeshReloaded(err) })
	if err != nil {
		return err
	}
	if cfg.ackTimeout < 0 {
		return fmt.Errorf("--endpoint-ack-timeout: %v is negative", cfg.ackTimeout)
	}
	ctlCfg := controlplane.Config{Source: src, Options: opts, Fallback: matcher, Logger: log, Registerer: reg,
		EndpointACKTimeout: cfg.ackTimeout, FullPush: cfg.fullPush}
	serverOpts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(1000000),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		// Proxies' bootstraps ping every 10 s (connection_keepalive), so that
		// their side notices a partition too.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	}
	var authority *ca.CA
	switch {
	case cfg.ca.dir != "":
		if authority, err = cfg.ca.open(log, reg, cfg.certTTL, cfg.caPoll, cfg.bundleOut, false); err != nil {
			return err
		}
		sec := &ca.Security{CA: authority, Logger: log}
		ctlCfg.Options.Security, ctlCfg.Authenticator = sec, sec
		if cfg.xdsTLS {
			tlsCfg, err := authority.ServerTLSConfig(cfg.xdsNames)
			if err != nil {
				return fmt.Errorf("--xds-tls-names: %w", err)
			}
			serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(tlsCfg)))
		} else {
			log.Warn("xDS is served in plaintext: node tokens and private keys travel in clear (use --xds-tls outside development)")
		}
	case cfg.xdsTLS:
		return errors.New("--xds-tls needs the CA: give --ca-dir")
	case cfg.ca.cert != "" || cfg.ca.key != "" || cfg.ca.bundle != "":
		return errors.New("--ca-cert, --ca-key and --ca-bundle need --ca-dir (the CA's state: node-token key, rotation)")
	}
	ctl, err = controlplane.New(ctlCfg)
	if err != nil {
		return err
	}
	if authority != nil {
		// A root rotation moves on only once every connected proxy has
		// acknowledged the secrets of its current phase.
		authority.SetRotationGate(ctl.ProxiesWithout)
	}
	if authority == nil && src.Snapshot().MTLS {
		log.Warn("the mesh sets mtls but the CA is off (--ca-dir): proxies get plaintext configuration")
	}

	xdsLis, err := net.Listen("tcp", cfg.xdsAddr)
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	gs := grpc.NewServer(serverOpts...)
	controlplane.Register(gs, ctl.NewServer(ctx))
	controlv1.RegisterInsightsServer(gs, ctl)

	var admin *http.Server
	if cfg.adminAddr != "" {
		adminLis, err := net.Listen("tcp", cfg.adminAddr)
		if err != nil {
			xdsLis.Close()
			return fmt.Errorf("admin: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ready\n") })
		mux.HandleFunc("/server_first", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(ctl.ServerFirstSuggestions())
		})
		admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go admin.Serve(adminLis)
		log.Info("admin serving", "address", adminLis.Addr().String())
	}

	done := make(chan struct{})
	go func() { defer close(done); src.Run(ctx) }()
	go ctl.Run(ctx)
	caDone := make(chan struct{})
	if authority != nil {
		go func() { defer close(caDone); authority.Run(ctx.Done()) }()
	} else {
		close(caDone)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(xdsLis) }()
	log.Info("xds serving", "address", xdsLis.Addr().String(), "source", cfg.source.kind, "mesh", cfg.source.meshPath, "tls", cfg.xdsTLS, "ca", authority != nil)

	select {
	case <-ctx.Done():
		log.Info("stopping")
	case err = <-serveErr:
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		gs.Stop()
	}
	if admin != nil {
		shutCtx, cancel := context.WithTimeout(context.Background(), stopGrace)
		admin.Shutdown(shutCtx)
		cancel()
	}
	stop()
	<-done
	<-caDone
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds: %w", err)
	}
	return nil
}
