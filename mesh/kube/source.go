// Package kube is a mesh.Source backed by a Kubernetes cluster: client-go
// informers over Namespaces, Services, Pods, EndpointSlices and one ConfigMap
// of mesh-wide defaults, translated into a *mesh.Mesh after every burst of
// changes (debounced). See docs/kubernetes.md.
//
// Translation: a Pod with an address is a workload (node id
// "<pod>.<namespace>", as `sift inject` sets it; service account, labels,
// TCP container ports); a Service (not ExternalName) is a service (cluster
// IPs, TCP ports with numeric target ports, appProtocol as the declared
// protocol); a Service's endpoints are the pods its EndpointSlices list as
// ready, or, while it has no EndpointSlice, its selected pods whose Ready
// condition is true. Linkerd's config.linkerd.io/opaque-ports,
// skip-inbound-ports and skip-outbound-ports annotations are read on
// namespaces, pods and (opaque-ports) services, with Linkerd's precedence
// (mesh.Mesh: a list replaces the level below).
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/siftmesh/sift/mesh"
)

// Defaults of Options.
const (
	DefaultConfigMap = "sift-system/sift-config"
	DefaultDebounce  = 100 * time.Millisecond
	DefaultMaxDelay  = time.Second
)

// Options tune a Source. The zero value is ready to use.
type Options struct {
	// ConfigMap is "namespace/name" of the mesh-wide defaults (keys: see
	// KeyOpaquePorts and the rest); "" means DefaultConfigMap. An absent
	// ConfigMap means Sift's defaults.
	ConfigMap string
	// Debounce is the quiet time after a change before the mesh is rebuilt;
	// 0 means DefaultDebounce. MaxDelay bounds the wait under a steady
	// stream of changes; 0 means DefaultMaxDelay.
	Debounce, MaxDelay time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// OnRebuild, if set, is called after each rebuild with nil when the new
	// mesh was accepted, else the error (the previous mesh stays). Called
	// from Run's goroutine.
	OnRebuild func(error)
}

// Source is a mesh.Source over a cluster. Start it, then Run it.
type Source struct {
	opts   Options
	log    *slog.Logger
	client kubernetes.Interface

	factory, cmFactory informers.SharedInformerFactory
	synced             []cache.InformerSynced
	cmNS, cmName       string

	mesh.Published // Snapshot, Watch
	dirty          chan struct{}

	// Run's state.
	lastWarnings map[string]bool
	lastErr      string
}

var _ mesh.Source = (*Source)(nil)

// New returns a source reading the cluster through client. It does not
// contact the cluster until Start.
func New(client kubernetes.Interface, opts Options) (*Source, error) {
	if opts.ConfigMap == "" {
		opts.ConfigMap = DefaultConfigMap
	}
	if opts.Debounce <= 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	cmNS, cmName, ok := strings.Cut(opts.ConfigMap, "/")
	if !ok || cmNS == "" || cmName == "" {
		return nil, fmt.Errorf("kubernetes source: config map %q: want namespace/name", opts.ConfigMap)
	}
	s := &Source{opts: opts, log: opts.Logger, client: client, cmNS: cmNS, cmName: cmName,
		dirty: make(chan struct{}, 1)}
	if s.log == nil {
		s.log = slog.Default()
	}
	// No resync: every change arrives as an event; a periodic resync would
	// only rebuild an unchanged mesh.
	s.factory = informers.NewSharedInformerFactory(client, 0)
	s.cmFactory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(cmNS),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cmName).String()
		}))
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.changed() },
		UpdateFunc: func(any, any) { s.changed() },
		DeleteFunc: func(any) { s.changed() },
	}
	for _, inf := range []cache.SharedIndexInformer{
		s.factory.Core().V1().Namespaces().Informer(),
		s.factory.Core().V1().Services().Informer(),
		s.factory.Core().V1().Pods().Informer(),
		s.factory.Discovery().V1().EndpointSlices().Informer(),
		s.cmFactory.Core().V1().ConfigMaps().Informer(),
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return nil, fmt.Errorf("kubernetes source: %w", err)
		}
		s.synced = append(s.synced, inf.HasSynced)
	}
	return s, nil
}

// Start starts the informers, waits until their caches are filled and
// builds the first mesh, which must be valid. It returns when ctx ends
// first (an unreachable API server), with ctx's error. The informers run
// until ctx ends.
func (s *Source) Start(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	s.cmFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("kubernetes source: waiting for the informers' first list: %w", err)
		}
		return errors.New("kubernetes source: the informers did not sync")
	}
	m, err := s.build()
	if err != nil {
		return err
	}
	s.Set(m)
	s.drain()
	return nil
}

// drain forgets the changes the first build already saw.
func (s *Source) drain() {
	select {
	case <-s.dirty:
	default:
	}
}

// changed is the informers' event handler: it never blocks.
func (s *Source) changed() {
	select {
	case s.dirty <- struct{}{}:
	default:
	}
}

// Run rebuilds the mesh after changes until ctx ends: Debounce after the
// last of a burst of changes, and at most MaxDelay after its first. Call
// it once, after Start.
func (s *Source) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.dirty:
		}
		deadline := time.NewTimer(s.opts.MaxDelay)
		quiet := time.NewTimer(s.opts.Debounce)
	burst:
		for {
			select {
			case <-ctx.Done():
				deadline.Stop()
				quiet.Stop()
				return
			case <-s.dirty:
				quiet.Reset(s.opts.Debounce)
			case <-quiet.C:
				break burst
			case <-deadline.C:
				break burst
			}
		}
		deadline.Stop()
		quiet.Stop()
		s.rebuild()
	}
}

func (s *Source) rebuild() {
	m, err := s.build()
	if s.opts.OnRebuild != nil {
		s.opts.OnRebuild(err)
	}
	if err != nil {
		if msg := err.Error(); msg != s.lastErr {
			s.lastErr = msg
			s.log.Error("cluster state rejected; keeping the previous mesh", "error", err)
		}
		return
	}
	s.lastErr = ""
	s.log.Info("mesh rebuilt from the cluster", "namespaces", len(m.Namespaces), "services", len(m.Services()), "workloads", len(m.Workloads()))
	s.Publish(m)
}

// build translates the informers' caches into a complete mesh, logging each
// new warning once.
func (s *Source) build() (*mesh.Mesh, error) {
	objs, err := s.list()
	if err != nil {
		return nil, err
	}
	m, warnings := translate(objs)
	seen := map[string]bool{}
	for _, w := range warnings {
		seen[w] = true
		if !s.lastWarnings[w] {
			s.log.Warn("kubernetes source: " + w)
		}
	}
	s.lastWarnings = seen
	if err := m.Complete(); err != nil {
		return nil, fmt.Errorf("kubernetes source: %w", err)
	}
	return m, nil
}

func (s *Source) list() (objects, error) {
	var o objects
	var err error
	all := labels.Everything()
	if o.namespaces, err = s.factory.Core().V1().Namespaces().Lister().List(all); err != nil {
		return o, fmt.Errorf("kubernetes source: namespaces: %w", err)
	}
	if o.services, err = s.factory.Core().V1().Services().Lister().List(all); err != nil {
		return o, fmt.Errorf("kubernetes source: services: %w", err)
	}
	if o.pods, err = s.factory.Core().V1().Pods().Lister().List(all); err != nil {
		return o, fmt.Errorf("kubernetes source: pods: %w", err)
	}
	if o.slices, err = s.factory.Discovery().V1().EndpointSlices().Lister().List(all); err != nil {
		return o, fmt.Errorf("kubernetes source: endpointslices: %w", err)
	}
	cm, err := s.cmFactory.Core().V1().ConfigMaps().Lister().ConfigMaps(s.cmNS).Get(s.cmName)
	if err == nil {
		o.config = cm
	} else if !apierrors.IsNotFound(err) {
		return o, fmt.Errorf("kubernetes source: configmap %s: %w", s.opts.ConfigMap, err)
	}
	return o, nil
}
