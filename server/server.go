// Package server assembles a running sift-proxy from a bootstrap: clusters,
// listeners and the admin server. cmd/sift-proxy adds flags and signals.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/siftmesh/sift/admin"
	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/detect/learn"
	"github.com/siftmesh/sift/filters/httplb"
	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/filters/rbac"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/plugins/host"
	"github.com/siftmesh/sift/telemetry/accesslog"
	"github.com/siftmesh/sift/telemetry/metrics"
	"github.com/siftmesh/sift/telemetry/streaminfo"
	"github.com/siftmesh/sift/telemetry/tracing"
	"github.com/siftmesh/sift/upstream"
	"github.com/siftmesh/sift/xds"

	// The filters sift-proxy serves, registered by type URL.
	_ "github.com/siftmesh/sift/filters/connlimit"
	_ "github.com/siftmesh/sift/filters/detect"
	_ "github.com/siftmesh/sift/filters/opaquetransport"
	_ "github.com/siftmesh/sift/filters/originaldst"
	_ "github.com/siftmesh/sift/filters/rbac"
	_ "github.com/siftmesh/sift/filters/tcpproxy"
)

// Options tune a Server.
type Options struct {
	// DrainTime bounds how long connections may take to finish when listeners
	// are replaced or the server shuts down (Envoy's --drain-time-s).
	DrainTime time.Duration
	Logger    *slog.Logger
	// InsightsInterval is how often learned server-first destinations are
	// checked for a report to the control plane (default 10s).
	InsightsInterval time.Duration
	// CommandLine is what /server_info reports as command_line_options.
	CommandLine admin.CommandLineOptions
}

// Server is a configured sift-proxy.
type Server struct {
	opts      Options
	log       *slog.Logger
	clusters  *upstream.Manager
	owned     []*upstream.Cluster
	listeners *listener.Manager
	configs   []*listener.Config
	admin     *admin.Server
	adminAddr string
	// metrics is the process's registry, kept when there is an admin
	// server to scrape it (nil otherwise: no hook, no cost).
	metrics *metrics.Registry
	// tracer is the bootstrap's tracing provider, or the OTEL_* environment's
	// when the bootstrap names none; nil without either.
	tracer *tracing.Provider

	bootstrap *bootstrapv3.Bootstrap
	started   time.Time
	// learned is the process's table of server-first destinations, shared
	// by every listener generation.
	learned *learn.Table
	// insights is the control plane connection learned destinations are
	// reported on (insights.go); nil without dynamic_resources.
	insights *grpc.ClientConn

	secrets  *mtls.Store // certificates of TLS transport sockets (secrets.go)
	xds      *xds.Client // nil without dynamic_resources
	dyn      *dynamic
	stopped  chan struct{} // closed by Shutdown
	stopOnce sync.Once
}

// Build validates b completely — clusters, listeners, their filters — without
// binding anything. A Server that Build returns can Start; one that is not
// started must be Closed.
func Build(b *bootstrapv3.Bootstrap, opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	accesslog.SetNode(b.GetNode())
	s := &Server{opts: opts, log: opts.Logger, clusters: upstream.NewManager(), stopped: make(chan struct{}),
		bootstrap: b, started: time.Now(), learned: learn.New(learn.DefaultCapacity)}
	if err := s.buildSecrets(b); err != nil { // before clusters and listeners: they use them
		s.Close()
		return nil, err
	}
	for i, pb := range b.GetStaticResources().GetClusters() {
		c, err := upstream.Build(pb, upstream.Options{Secrets: s.secrets})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("static_resources.clusters[%d]: %w", i, err)
		}
		s.owned = append(s.owned, c)
	}
	if _, err := s.clusters.Replace(s.owned); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.buildTracer(b); err != nil { // before listeners: their HCMs may use it
		s.Close()
		return nil, err
	}
	if err := s.buildXDS(b); err != nil { // before listeners: they may take routes from RDS
		s.Close()
		return nil, err
	}
	for i, pb := range b.GetStaticResources().GetListeners() {
		cfg, err := s.DecodeListener(pb)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("static_resources.listeners[%d]: %w", i, err)
		}
		s.configs = append(s.configs, cfg)
	}
	if a := b.GetAdmin(); a.GetAddress() != nil {
		ap, err := listener.SocketAddress(a.GetAddress())
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("admin.address: %w", err)
		}
		s.adminAddr = ap.String()
	}
	return s, nil
}

// DecodeListener validates a Listener resource and builds its filters
// against this server's clusters, ready for Listeners().Apply.
func (s *Server) DecodeListener(pb *listenerv3.Listener) (*listener.Config, error) {
	cfg, err := listener.Decode(pb, filters.BuildContext{Clusters: s.clusters, Logger: s.log, Learned: s.learned, Secrets: s.secrets})
	if err != nil {
		return nil, err
	}
	if rcs := routeConsumers(cfg); len(rcs) > 0 && (s.xds == nil || !s.xds.CanSubscribe(xds.RouteType)) {
		return nil, fmt.Errorf("listener %q: http_connection_manager rds %q: RDS needs dynamic_resources (lds_config or ads_config)", pb.GetName(), rcs[0].RDSName())
	}
	return cfg, nil
}

// Start binds the admin server and the listeners and starts serving.
func (s *Server) Start() error {
	s.listeners = listener.NewManager(s.log, s.opts.DrainTime)
	if s.tracer != nil {
		tracing.SetDefault(s.tracer)
	}
	if s.adminAddr != "" || s.tracer != nil {
		s.installHooks()
	}
	if s.adminAddr != "" {
		a, err := admin.Listen(s.adminAddr, s, s.log)
		if err != nil {
			return err
		}
		s.admin = a
	}
	if err := s.listeners.Apply(s.configs); err != nil {
		return err
	}
	if s.xds == nil {
		if s.admin != nil {
			s.admin.SetState(admin.StateLive)
		}
		return nil
	}
	s.dyn.mu.Lock()
	err := s.dyn.subscribeEndpoints() // static EDS clusters
	if err == nil {
		err = s.dyn.subscribeRoutes() // static listeners' RDS
	}
	if err == nil {
		err = s.dyn.subscribeSecrets() // static listeners' and clusters' SDS
	}
	s.dyn.mu.Unlock()
	if err != nil {
		return err
	}
	s.xds.Start()
	if s.insights != nil {
		interval := s.opts.InsightsInterval
		if interval <= 0 {
			interval = defaultInsightsInterval
		}
		go s.reportLearned(s.insights, interval, s.stopped)
	}
	go func() { // Envoy's /ready says LIVE once the initial fetch is done
		select {
		case <-s.xds.Initialized():
			if s.admin != nil {
				s.admin.SetState(admin.StateLive)
			}
			s.log.Info("xds initial fetch done")
		case <-s.stopped:
		}
	}()
	return nil
}

// buildXDS prepares the xDS client of a bootstrap with dynamic_resources.
func (s *Server) buildXDS(b *bootstrapv3.Bootstrap) error {
	dr := b.GetDynamicResources()
	for _, c := range s.owned {
		if c.EDSServiceName() == "" {
			continue
		}
		if dr == nil {
			return fmt.Errorf("cluster %q: type EDS needs dynamic_resources to fetch its endpoints", c.Name())
		}
		if err := xds.ConfigSourceServes(c.EDSConfig(), dr, dr.GetCdsConfig()); err != nil {
			return fmt.Errorf("cluster %q: eds_cluster_config.eds_config.%w", c.Name(), err)
		}
	}
	if dr == nil {
		return nil
	}
	sources, timeouts, err := xds.Sources(dr, s.dialXDS)
	if err != nil {
		return err
	}
	s.insights = insightsConn(sources)
	s.dyn = newDynamic(s, dr)
	client, err := xds.New(xds.Config{
		Node: b.GetNode(), Handler: s.dyn, Sources: sources, InitialFetchTimeout: timeouts, Logger: s.log,
	})
	if err != nil {
		return err
	}
	s.xds = client
	return nil
}

// installHooks creates the process's metrics registry (with an admin
// server to scrape it) and installs it, and tcp_proxy's connection spans
// (with a tracer), as the connection and request hooks. The hooks are
// process-wide: the last server started in a process receives every record
// (one sift-proxy is one process; tests that check values run one server
// with an admin address at a time).
func (s *Server) installHooks() {
	hooks := []any{}
	if s.adminAddr != "" {
		s.installMetrics()
		hooks = append(hooks, s.metrics)
	}
	if s.tracer != nil {
		hooks = append(hooks, tracing.Conns{})
	}
	// One slot per process for each hook: consumers join the Tee.
	tee := streaminfo.NewTee(hooks...)
	streaminfo.SetConnHook(tee)
	httplb.SetHook(tee)
}

// buildTracer decodes the bootstrap's tracing, or the OTEL_* environment
// when the bootstrap names no tracer.
func (s *Server) buildTracer(b *bootstrapv3.Bootstrap) error {
	p, err := tracing.DecodeBootstrap(b.GetTracing(), s.clusters)
	if err == nil && p == nil && b.GetTracing().GetHttp() == nil {
		p, err = tracing.FromEnv()
	}
	if err != nil {
		return err
	}
	s.tracer = p
	return nil
}

// installMetrics creates the process's metrics registry.
func (s *Server) installMetrics() {
	s.metrics = metrics.New(metrics.Options{
		Clusters: s.clusters,
		Listeners: func() map[string]*listener.Listener {
			if s.listeners == nil {
				return nil
			}
			return s.listeners.Listeners()
		},
		Learned:           s.learned,
		ProcessCollectors: true,
		Extra:             []prometheus.Collector{tracing.Collector(), host.Collector(), rbac.Collector()},
	})
}

// Metrics implements admin.MetricsSource.
func (s *Server) Metrics() *metrics.Registry { return s.metrics }

// Clusters implements admin.ClusterSource.
func (s *Server) Clusters() []*upstream.Cluster { return s.clusters.Clusters() }

// ServerInfo implements admin.InfoSource.
func (s *Server) ServerInfo() admin.ServerInfo {
	info := admin.ServerInfo{Started: s.started, CommandLine: s.opts.CommandLine}
	if n := s.bootstrap.GetNode(); n != nil {
		info.Node = n
	}
	return info
}

// Listeners returns the running listeners (after Start).
func (s *Server) Listeners() *listener.Manager { return s.listeners }

// AdminAddr returns the admin server's bound address, or "" without one.
func (s *Server) AdminAddr() string {
	if s.admin == nil {
		return ""
	}
	return s.admin.Addr().String()
}

// ListenerAddrs implements admin.Source.
func (s *Server) ListenerAddrs() map[string]string {
	out := map[string]string{}
	if s.listeners == nil {
		return out
	}
	for name, l := range s.listeners.Listeners() {
		out[name] = l.Addr().String()
	}
	return out
}

// Detections implements admin.Source.
func (s *Server) Detections() *listener.DetectionLog {
	if s.listeners == nil {
		return nil
	}
	return s.listeners.Detections()
}

// LearnedDestinations implements admin.Source.
func (s *Server) LearnedDestinations() *learn.Table { return s.learned }

// Shutdown drains (a second call does nothing): /ready turns 503, listeners stop accepting, connections
// get the drain time to finish (or until ctx ends), then everything closes.
func (s *Server) Shutdown(ctx context.Context) error {
	already := true
	s.stopOnce.Do(func() { already = false })
	if already {
		return nil
	}
	close(s.stopped)
	if s.xds != nil {
		// Stop taking updates first: the drain works on the last configuration.
		s.xds.Close()
	}
	if s.admin != nil {
		s.admin.SetState(admin.StateDraining)
	}
	if s.listeners != nil {
		s.listeners.Shutdown(ctx)
	}
	accesslog.Shutdown() // after the connections: their entries are queued
	s.flushTraces(ctx)
	var err error
	if s.admin != nil {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if cerr := s.admin.Close(closeCtx); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) {
			err = cerr
		}
	}
	s.Close()
	return err
}

// flushTraces exports the spans still queued (after the connections have
// ended) and stops the tracers, waiting at most flushTimeout or until ctx
// ends: a dead collector does not hold up the exit.
func (s *Server) flushTraces(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, flushTimeout)
	defer cancel()
	tracing.Shutdown(ctx)
	if s.tracer != nil {
		if tracing.Default() == s.tracer {
			tracing.SetDefault(nil)
		}
		s.tracer.Shutdown(ctx)
	}
}

// flushTimeout bounds how long Shutdown waits for span exports.
const flushTimeout = 5 * time.Second

// Close releases the clusters' background work and, for a server that was
// never started, the xDS connections. Shutdown calls it.
func (s *Server) Close() {
	for _, c := range s.clusters.Clusters() {
		c.Close()
	}
	for _, c := range s.owned {
		c.Close()
	}
	if s.xds != nil && s.listeners == nil {
		s.xds.Close()
	}
	if s.secrets != nil {
		s.secrets.Close()
	}
	if s.tracer != nil { // a server never started; after flushTraces, nothing
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.tracer.Shutdown(ctx)
	}
}
