// Package bootstrap reads Envoy's v3 bootstrap (the file given with -c and the
// YAML given with --config-yaml) and checks that it uses only what Sift
// implements, so nothing in it is silently ignored.
//
// Listeners and clusters are decoded and validated by the listener and
// upstream packages; this package checks the bootstrap's own fields.
package bootstrap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/internal/yamljson"

	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/xds"
)

// policy lists the bootstrap fields Sift implements (the Envoy v3 subset in
// DESIGN.md). Node is accepted whole: it only identifies the proxy. tracing
// is checked field by field, against the clusters, by package
// telemetry/tracing when the server is built.
var policy = pbcheck.Policy{
	"envoy.config.bootstrap.v3.Bootstrap":                 pbcheck.Fields("node, admin, static_resources, dynamic_resources, tracing"),
	"envoy.config.bootstrap.v3.Bootstrap.StaticResources": pbcheck.Fields("listeners, clusters, secrets"),
	// access_log_path is accepted only as /dev/null (see validateAdmin): many
	// Envoy bootstraps carry it.
	"envoy.config.bootstrap.v3.Admin": pbcheck.Fields("address, access_log_path"),
}

func init() {
	for name, fields := range xds.Policy { // dynamic_resources
		policy[name] = fields
	}
}

// Load reads the bootstrap at path (YAML or JSON, by extension; other
// extensions are read as YAML, of which JSON is a subset) and merges
// configYAML over it, as Envoy's --config-path and --config-yaml do: singular
// fields in configYAML replace, repeated fields append. Either may be empty,
// not both.
func Load(path, configYAML string) (*bootstrapv3.Bootstrap, error) {
	if path == "" && configYAML == "" {
		return nil, errors.New("bootstrap: no configuration: give -c FILE or --config-yaml")
	}
	b := &bootstrapv3.Bootstrap{}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		if err := unmarshal(data, strings.EqualFold(filepath.Ext(path), ".json"), b); err != nil {
			return nil, fmt.Errorf("bootstrap: %s: %w", path, err)
		}
	}
	if configYAML != "" {
		over := &bootstrapv3.Bootstrap{}
		if err := unmarshal([]byte(configYAML), false, over); err != nil {
			return nil, fmt.Errorf("bootstrap: --config-yaml: %w", err)
		}
		proto.Merge(b, over)
	}
	if err := Validate(b); err != nil {
		where := path
		if where == "" {
			where = "--config-yaml"
		}
		return nil, fmt.Errorf("bootstrap: %s: %w", where, err)
	}
	return b, nil
}

// Parse decodes one bootstrap document (YAML, or JSON) without validating it.
func Parse(data []byte) (*bootstrapv3.Bootstrap, error) {
	b := &bootstrapv3.Bootstrap{}
	if err := unmarshal(data, false, b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

func unmarshal(data []byte, isJSON bool, b *bootstrapv3.Bootstrap) error {
	js := data
	if !isJSON {
		var err error
		if js, err = yamljson.Convert(data); err != nil {
			return err
		}
	}
	if err := protojson.Unmarshal(js, b); err != nil {
		return cleanProtoJSONError(err)
	}
	return nil
}

// protoPosition matches protojson's "(line 1:234): " prefix, which points
// into the JSON converted from YAML, not into the user's file.
var protoPosition = regexp.MustCompile(`^proto:[\s\x{00a0}]*(\(line \d+:\d+\):[\s\x{00a0}]*)?`)

func cleanProtoJSONError(err error) error {
	return errors.New(protoPosition.ReplaceAllString(err.Error(), ""))
}

// Validate checks the bootstrap's own fields and the uniqueness of listener
// and cluster names. It does not decode listeners or clusters.
func Validate(b *bootstrapv3.Bootstrap) error {
	if err := policy.Check(b); err != nil {
		return err
	}
	if p := b.GetAdmin().GetAccessLogPath(); p != "" && p != "/dev/null" {
		return fmt.Errorf("admin.access_log_path: %q: admin access logs are not supported by Sift (use /dev/null or leave it out)", p)
	}
	names := map[string]int{}
	for i, l := range b.GetStaticResources().GetListeners() {
		if l.GetName() == "" {
			return fmt.Errorf("static_resources.listeners[%d].name: must be set", i)
		}
		if j, dup := names[l.GetName()]; dup {
			return fmt.Errorf("static_resources.listeners[%d].name: %q already used by listeners[%d]", i, l.GetName(), j)
		}
		names[l.GetName()] = i
	}
	names = map[string]int{}
	for i, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "" {
			return fmt.Errorf("static_resources.clusters[%d].name: must be set", i)
		}
		if j, dup := names[c.GetName()]; dup {
			return fmt.Errorf("static_resources.clusters[%d].name: %q already used by clusters[%d]", i, c.GetName(), j)
		}
		names[c.GetName()] = i
	}
	// Envoy's own constraints last: Sift's messages above are more specific.
	return pbcheck.Validate(b)
}

// OverrideNode sets node.id and node.cluster where the values are not empty
// (Envoy's --service-node and --service-cluster).
func OverrideNode(b *bootstrapv3.Bootstrap, id, cluster string) {
	if b.Node == nil {
		b.Node = &corev3.Node{}
	}
	if id != "" {
		b.Node.Id = id
	}
	if cluster != "" {
		b.Node.Cluster = cluster
	}
}
