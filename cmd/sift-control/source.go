package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/siftmesh/sift/mesh"
	"github.com/siftmesh/sift/mesh/file"
	"github.com/siftmesh/sift/mesh/kube"
)

// Mesh sources, by --source value.
const (
	sourceFile       = "file"
	sourceKubernetes = "kubernetes"
)

// runnableSource is a mesh source that keeps itself current while Run runs.
type runnableSource interface {
	mesh.Source
	Run(ctx context.Context)
}

// sourceConfig is what the --source flags chose.
type sourceConfig struct {
	kind       string
	meshPath   string
	poll       time.Duration
	kubeconfig string // "": in-cluster
	meshConfig string // the defaults ConfigMap, namespace/name
	debounce   time.Duration
}

// openSource opens the chosen source and loads its first mesh. onReload
// receives the result of every later reload. With Kubernetes it waits for
// the informers' first list until ctx ends.
func openSource(ctx context.Context, log *slog.Logger, cfg sourceConfig, onReload func(error)) (runnableSource, error) {
	switch cfg.kind {
	case sourceFile:
		if cfg.meshPath == "" {
			return nil, fmt.Errorf("--mesh is required with --source %s", sourceFile)
		}
		return file.Open(cfg.meshPath, file.Options{Interval: cfg.poll, Logger: log, OnReload: onReload})
	case sourceKubernetes:
		if cfg.meshPath != "" {
			return nil, fmt.Errorf("--mesh is for --source %s; the cluster is the mesh with --source %s", sourceFile, sourceKubernetes)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		rc.UserAgent = "sift-control"
		client, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return nil, fmt.Errorf("--kubeconfig: %w", err)
		}
		src, err := kube.New(client, kube.Options{ConfigMap: cfg.meshConfig, Debounce: cfg.debounce, Logger: log, OnRebuild: onReload})
		if err != nil {
			return nil, err
		}
		log.Info("waiting for the cluster's state", "api_server", rc.Host)
		if err := src.Start(ctx); err != nil {
			return nil, err
		}
		return src, nil
	}
	return nil, fmt.Errorf("--source: %q is neither %s nor %s", cfg.kind, sourceFile, sourceKubernetes)
}
