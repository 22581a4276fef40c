package server

import (
	"fmt"
	"slices"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/listener"
	"github.com/siftmesh/sift/xds"
)

// buildSecrets makes the secret store: the bootstrap's static secrets, and
// SDS when dynamic_resources give a server for it (the ADS server, else the
// listeners' or the clusters' server).
func (s *Server) buildSecrets(b *bootstrapv3.Bootstrap) error {
	s.secrets = mtls.NewStore(mtls.StoreOptions{Logger: s.log})
	for i, pb := range b.GetStaticResources().GetSecrets() {
		if err := s.secrets.AddStatic(pb); err != nil {
			return fmt.Errorf("static_resources.secrets[%d]: %w", i, err)
		}
	}
	dr := b.GetDynamicResources()
	if dr == nil {
		return nil
	}
	parent := dr.GetLdsConfig()
	if parent == nil {
		parent = dr.GetCdsConfig()
	}
	s.secrets.SetCheckSDS(func(cs *corev3.ConfigSource) error {
		return xds.ConfigSourceServes(cs, dr, parent)
	})
	return nil
}

// ready gives cfg's RDS consumers their routes and reports whether the
// listener may serve: every route table and every secret has arrived.
func (d *dynamic) ready(cfg *listener.Config) bool {
	routes := d.setRoutes(cfg) // always: it hands over the tables it has
	return routes && mtls.Ready(cfg.SecretSources())
}

// subscribeSecrets makes the SDS subscription exactly the secret names the
// static, active and warming listeners and every cluster reference.
func (d *dynamic) subscribeSecrets() error {
	var names []string
	add := func(srcs []*mtls.Source) {
		for _, src := range srcs {
			if src.SDS() && !slices.Contains(names, src.Name()) {
				names = append(names, src.Name())
			}
		}
	}
	for _, cfg := range d.s.configs {
		add(cfg.SecretSources())
	}
	for _, cfg := range d.listeners {
		add(cfg.SecretSources())
	}
	for _, cfg := range d.warming {
		add(cfg.SecretSources())
	}
	for _, c := range d.s.clusters.Clusters() {
		add(c.TLSSources())
	}
	if len(names) == 0 && !d.s.xds.CanSubscribe(xds.SecretType) {
		return nil
	}
	slices.Sort(names)
	return d.s.xds.Subscribe(xds.SecretType, names)
}

// applySecrets decodes every secret (a bad one NACKs the update, naming
// it), swaps them in — new handshakes use them at once, established
// connections are untouched — and serves the listeners that were warming
// for them.
func (d *dynamic) applySecrets(resources map[string]proto.Message) error {
	secrets := make(map[string]*tlsv3.Secret, len(resources))
	for name, m := range resources {
		secrets[name] = m.(*tlsv3.Secret)
	}
	if err := d.s.secrets.ApplySDS(secrets); err != nil {
		return err
	}
	_, err := d.promoteReady()
	return err
}
