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
	"regexp"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/internal/yamljson"
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

// Source is a loaded bootstrap and where its fields were written, so that
// errors found later (decoding listeners and clusters) can name the line.
type Source struct {
	Bootstrap *bootstrapv3.Bootstrap
	// name is the file (or "--config-yaml") doc came from; doc is nil when
	// positions are unknown (a file and --config-yaml merged).
	name string
	doc  *yamljson.Document
}

// Load reads the bootstrap at path (YAML or JSON, by extension; other
// extensions are read as YAML, of which JSON is a subset) and merges
// configYAML over it, as Envoy's --config-path and --config-yaml do: singular
// fields in configYAML replace, repeated fields append. Either may be empty,
// not both. Errors name the file, the line and column, and the field path.
func Load(path, configYAML string) (*bootstrapv3.Bootstrap, error) {
	src, err := Read(path, configYAML)
	if err != nil {
		return nil, err
	}
	return src.Bootstrap, nil
}

// Read is Load, keeping the positions of the fields for Locate.
func Read(path, configYAML string) (*Source, error) {
	if path == "" && configYAML == "" {
		return nil, errors.New("bootstrap: no configuration: give -c FILE or --config-yaml")
	}
	src := &Source{Bootstrap: &bootstrapv3.Bootstrap{}}
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		if src.doc, err = unmarshal(data, path, src.Bootstrap); err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		src.name = path
	}
	if configYAML != "" {
		over := &bootstrapv3.Bootstrap{}
		doc, err := unmarshal([]byte(configYAML), "--config-yaml", over)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
		proto.Merge(src.Bootstrap, over)
		if path == "" {
			src.name, src.doc = "--config-yaml", doc
		} else {
			src.doc = nil // merged lists renumber: positions would mislead
		}
	}
	if err := Validate(src.Bootstrap); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", src.Locate(err))
	}
	return src, nil
}

// Locate prefixes err with where the deepest field path it names was
// written: "bootstrap.yaml:12:9: static_resources.listeners[0]: ...". Without
// a known position it prefixes the file name alone.
func (s *Source) Locate(err error) error {
	if err == nil || s == nil || s.name == "" {
		return err
	}
	if s.doc != nil {
		if p, ok := s.doc.Locate(err.Error()); ok {
			return fmt.Errorf("%s:%d:%d: %w", s.name, p.Line, p.Column, err)
		}
	}
	return fmt.Errorf("%s: %w", s.name, err)
}

// Warnings returns UnresolvableClusters, each prefixed with where its field
// was written.
func (s *Source) Warnings() []string {
	var out []string
	for _, w := range UnresolvableClusters(s.Bootstrap) {
		out = append(out, s.Locate(errors.New(w.String())).Error())
	}
	return out
}

// Parse decodes one bootstrap document (YAML, or JSON) without validating it.
func Parse(data []byte) (*bootstrapv3.Bootstrap, error) {
	b := &bootstrapv3.Bootstrap{}
	if _, err := unmarshal(data, "", b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// unmarshal decodes a YAML (or JSON) document into b. Errors start with name
// and, where known, the line and column and the field path.
func unmarshal(data []byte, name string, b *bootstrapv3.Bootstrap) (*yamljson.Document, error) {
	where := func(rest string) string {
		if name == "" {
			return rest
		}
		if rest == "" {
			return name
		}
		return name + ":" + rest
	}
	doc, err := yamljson.Parse(data)
	if err != nil {
		// yaml.v3 and the converter say "yaml: line N: ..." / "line N: ...".
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			return nil, fmt.Errorf("%s: %s", where(m[1]), msg[len(m[0]):])
		}
		return nil, fmt.Errorf("%s: %s", where(""), msg)
	}
	if err := protojson.Unmarshal(doc.JSON, b); err != nil {
		msg := cleanProtoJSONError(err)
		if p, ok := doc.LocateJSONError(err); ok {
			if p.Path != "" {
				msg = p.Path + ": " + msg
			}
			return nil, fmt.Errorf("%s: %s", where(fmt.Sprintf("%d:%d", p.Line, p.Column)), msg)
		}
		return nil, fmt.Errorf("%s: %s", where(""), msg)
	}
	return doc, nil
}

var yamlLine = regexp.MustCompile(`^line (\d+): `)

// protoPosition matches protojson's "(line 1:234): " prefix, which points
// into the converted JSON, not into the user's file.
var protoPosition = regexp.MustCompile(`^proto:[\s\x{00a0}]*(\(line \d+:\d+\):[\s\x{00a0}]*)?`)

func cleanProtoJSONError(err error) string {
	return protoPosition.ReplaceAllString(err.Error(), "")
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

// Warning is a reference in a valid bootstrap that can never resolve.
type Warning struct {
	Path    string // the field: static_resources.listeners[0]...typed_config.cluster
	Message string
}

func (w Warning) String() string { return w.Path + ": " + w.Message }

// UnresolvableClusters finds the clusters that static listeners' filters
// name (through each filter package's filters.ClusterRefsFunc: tcp_proxy's
// cluster and weighted_clusters, the routes of an HTTP connection manager's
// inline route_config, …) that are not static clusters when the bootstrap
// has no cds_config to supply them. Envoy accepts such a configuration;
// every connection or request to the cluster then fails.
func UnresolvableClusters(b *bootstrapv3.Bootstrap) []Warning {
	if b.GetDynamicResources().GetCdsConfig() != nil {
		return nil
	}
	static := map[string]bool{}
	for _, c := range b.GetStaticResources().GetClusters() {
		static[c.GetName()] = true
	}
	var out []Warning
	for i, l := range b.GetStaticResources().GetListeners() {
		chains := l.GetFilterChains()
		paths := make([]string, len(chains))
		for j := range chains {
			paths[j] = fmt.Sprintf("static_resources.listeners[%d].filter_chains[%d]", i, j)
		}
		if dc := l.GetDefaultFilterChain(); dc != nil {
			chains = append(chains, dc)
			paths = append(paths, fmt.Sprintf("static_resources.listeners[%d].default_filter_chain", i))
		}
		for j, fc := range chains {
			for k, f := range fc.GetFilters() {
				msg, err := f.GetTypedConfig().UnmarshalNew()
				if err != nil {
					continue // the listener's decoder reports it
				}
				for _, ref := range filters.ClusterRefs(msg) {
					if ref.Cluster != "" && !static[ref.Cluster] {
						out = append(out, Warning{Path: fmt.Sprintf("%s.filters[%d].typed_config.%s", paths[j], k, ref.Field),
							Message: fmt.Sprintf("cluster %q is not a static cluster, and without dynamic_resources.cds_config none can arrive: connections to it will fail", ref.Cluster)})
					}
				}
			}
		}
	}
	return out
}
