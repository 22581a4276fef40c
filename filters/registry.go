package filters

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"

	xdstypev3 "github.com/cncf/xds/go/xds/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/siftmesh/sift/filters/detect/learn"
	"github.com/siftmesh/sift/filters/mtls"
	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/upstream"
)

// BuildContext is what a factory may use to build a filter. It is valid for
// the life of the listener generation being built.
type BuildContext struct {
	// ListenerName names the listener, for errors and logs.
	ListenerName string
	// Clusters resolves cluster names at connection time.
	Clusters *upstream.Manager
	// Logger is the listener's logger.
	Logger *slog.Logger
	// Learned is the process's table of destinations learned to be
	// server-first (shared by every listener and generation); nil: none.
	Learned *learn.Table
	// Secrets resolves the certificates of TLS transport sockets (inline,
	// files, static secrets, SDS); nil: TLS transport sockets are refused.
	Secrets *mtls.Store
}

// ListenerFilterFactory builds a listener filter from its typed config, whose
// concrete type is the one registered. It validates the config fully: an error
// rejects the whole listener.
type ListenerFilterFactory func(cfg proto.Message, bc BuildContext) (ListenerFilter, error)

// NetworkFilterFactory builds a terminal network filter from its typed config.
type NetworkFilterFactory func(cfg proto.Message, bc BuildContext) (NetworkFilter, error)

// ConnectionFilterFactory builds a non-terminal network filter.
type ConnectionFilterFactory func(cfg proto.Message, bc BuildContext) (ConnectionFilter, error)

// factories is one registry of filter factories, keyed by config type URL.
type factories[T any] struct {
	kind string // for messages: "listener", "network", "connection"
	mu   sync.RWMutex
	m    map[string]func(proto.Message, BuildContext) (T, error)
}

func (r *factories[T]) register(msg proto.Message, f func(proto.Message, BuildContext) (T, error)) {
	url := TypeURL(msg)
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.m[url]; dup {
		panic("filters: duplicate " + r.kind + " filter " + url)
	}
	r.m[url] = f
}

func (r *factories[T]) lookup(url string) (func(proto.Message, BuildContext) (T, error), bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	f, ok := r.m[url]
	return f, ok
}

func (r *factories[T]) types() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return sortedKeys(r.m)
}

// build unpacks typedConfig, runs its factory (Sift's own checks), then
// Envoy's constraints on the config.
func (r *factories[T]) build(typedConfig *anypb.Any, bc BuildContext) (T, error) {
	var zero T
	msg, url, err := UnpackConfig(typedConfig)
	if err != nil {
		return zero, err
	}
	f, ok := r.lookup(url)
	if !ok {
		return zero, fmt.Errorf("unsupported %s filter type %s (supported: %v)", r.kind, url, r.types())
	}
	filter, err := f(msg, bc)
	if err != nil {
		return zero, err
	}
	return filter, validate(msg)
}

var (
	listenerFilters   = &factories[ListenerFilter]{kind: "listener", m: map[string]func(proto.Message, BuildContext) (ListenerFilter, error){}}
	networkFilters    = &factories[NetworkFilter]{kind: "network", m: map[string]func(proto.Message, BuildContext) (NetworkFilter, error){}}
	connectionFilters = &factories[ConnectionFilter]{kind: "connection", m: map[string]func(proto.Message, BuildContext) (ConnectionFilter, error){}}
)

// RegisterListenerFilter registers f for configs of type msg (a zero value of
// the config message). Call it from init; it panics on a duplicate.
func RegisterListenerFilter(msg proto.Message, f ListenerFilterFactory) {
	listenerFilters.register(msg, f)
}

// RegisterNetworkFilter registers a terminal network filter's factory for
// configs of type msg. Call it from init; it panics on a duplicate.
func RegisterNetworkFilter(msg proto.Message, f NetworkFilterFactory) {
	networkFilters.register(msg, f)
}

// RegisterConnectionFilter registers a non-terminal network filter's factory
// for configs of type msg. Call it from init; it panics on a duplicate.
func RegisterConnectionFilter(msg proto.Message, f ConnectionFilterFactory) {
	connectionFilters.register(msg, f)
}

// TypeURL returns the xDS type URL of msg's type.
func TypeURL(msg proto.Message) string {
	return "type.googleapis.com/" + string(msg.ProtoReflect().Descriptor().FullName())
}

// BuildListenerFilter builds the listener filter configured by typedConfig.
func BuildListenerFilter(typedConfig *anypb.Any, bc BuildContext) (ListenerFilter, error) {
	return listenerFilters.build(typedConfig, bc)
}

// BuildNetworkFilter builds the terminal network filter configured by
// typedConfig.
func BuildNetworkFilter(typedConfig *anypb.Any, bc BuildContext) (NetworkFilter, error) {
	return networkFilters.build(typedConfig, bc)
}

// BuildConnectionFilter builds the non-terminal network filter configured
// by typedConfig; a terminal filter's type is reported as out of place.
func BuildConnectionFilter(typedConfig *anypb.Any, bc BuildContext) (ConnectionFilter, error) {
	if url := typedConfig.GetTypeUrl(); url != "" {
		if _, terminal := networkFilters.lookup(url); terminal {
			return nil, fmt.Errorf("%s is a terminal filter: it must be the chain's last", url)
		}
	}
	return connectionFilters.build(typedConfig, bc)
}

// ListenerFilterTypes lists the registered listener filter type URLs, sorted.
func ListenerFilterTypes() []string { return listenerFilters.types() }

// NetworkFilterTypes lists the registered terminal network filter type URLs,
// sorted.
func NetworkFilterTypes() []string { return networkFilters.types() }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// validate applies Envoy's own constraints on the config (protoc-gen-validate
// rules) after the filter's checks, whose "not supported by Sift" errors are
// the more useful ones.
func validate(msg proto.Message) error {
	if err := pbcheck.Validate(msg); err != nil {
		return fmt.Errorf("typed_config: %w", err)
	}
	return nil
}

// UnpackConfig decodes an extension's typed_config into a new message of its
// type and returns it with its type URL. Besides a plain Any of a registered
// message, it accepts Envoy's way to configure an extension without compiled
// protos: an xds.type.v3.TypedStruct (or the older udpa.type.v1.TypedStruct)
// whose type_url names the message and whose value holds its fields in
// protobuf JSON form.
func UnpackConfig(a *anypb.Any) (proto.Message, string, error) {
	if a == nil {
		return nil, "", fmt.Errorf("typed_config is missing")
	}
	url := a.GetTypeUrl()
	if url == typedStructURL || url == udpaTypedStructURL {
		ts := &xdstypev3.TypedStruct{} // udpa's is wire-compatible: type_url = 1, value = 2
		if err := proto.Unmarshal(a.GetValue(), ts); err != nil {
			return nil, url, fmt.Errorf("typed_config: decode %s: %w", url, err)
		}
		msg, err := newMessage(ts.GetTypeUrl())
		if err != nil {
			return nil, ts.GetTypeUrl(), err
		}
		js, err := protojson.Marshal(ts.GetValue())
		if err != nil {
			return nil, ts.GetTypeUrl(), fmt.Errorf("typed_config: %s: %w", ts.GetTypeUrl(), err)
		}
		if err := protojson.Unmarshal(js, msg); err != nil {
			return nil, ts.GetTypeUrl(), fmt.Errorf("typed_config: %s: %w", ts.GetTypeUrl(), err)
		}
		return msg, ts.GetTypeUrl(), nil
	}
	msg, err := newMessage(url)
	if err != nil {
		return nil, url, err
	}
	if err := proto.Unmarshal(a.GetValue(), msg); err != nil {
		return nil, url, fmt.Errorf("typed_config: decode %s: %w", url, err)
	}
	return msg, url, nil
}

const (
	typedStructURL     = "type.googleapis.com/xds.type.v3.TypedStruct"
	udpaTypedStructURL = "type.googleapis.com/udpa.type.v1.TypedStruct"
)

func newMessage(url string) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByURL(url)
	if err != nil {
		return nil, fmt.Errorf("typed_config: unknown type %q: %w", url, err)
	}
	return mt.New().Interface(), nil
}

// ClusterRef is a cluster a filter's typed config names: Field is its path
// within the typed config ("cluster", "weighted_clusters.clusters[1].name").
type ClusterRef struct {
	Field, Cluster string
}

// ClusterRefsFunc lists the clusters a typed config names. It reads the
// config only (no validation: a bad config is its factory's business).
type ClusterRefsFunc func(cfg proto.Message) []ClusterRef

var clusterRefs sync.Map // type URL → ClusterRefsFunc

// RegisterClusterRefs registers, for a filter's config type, the function
// that lists the clusters it names, so that configuration checks (a
// static-only bootstrap naming a cluster it can never have) need not know
// the filter's fields.
func RegisterClusterRefs(msg proto.Message, f ClusterRefsFunc) { clusterRefs.Store(TypeURL(msg), f) }

// ClusterRefs returns the clusters cfg names, or nil when its type
// registered no ClusterRefsFunc.
func ClusterRefs(cfg proto.Message) []ClusterRef {
	f, ok := clusterRefs.Load(TypeURL(cfg))
	if !ok {
		return nil
	}
	return f.(ClusterRefsFunc)(cfg)
}
