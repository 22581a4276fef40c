package httplb

import (
	"errors"
	"fmt"
	"strings"
	"time"

	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/siftmesh/sift/filters"
	"github.com/siftmesh/sift/filters/httplb/route"
	"github.com/siftmesh/sift/internal/pbcheck"
)

// Envoy's defaults.
const (
	defaultStreamIdleTimeout = 5 * time.Minute
	defaultIdleTimeout       = time.Hour
	defaultMaxHeadersKB      = 60
	// defaultMaxHeadersCount is Envoy's common_http_protocol_options.max_headers_count
	// default: more request headers get a 431.
	defaultMaxHeadersCount = 100
	defaultServerName      = "sift"
	routerName             = "envoy.filters.http.router"
)

// hcmPolicy lists the HttpConnectionManager fields Sift implements or
// accepts without effect (with the reason); anything else set is an error
// naming the field.
var hcmPolicy = pbcheck.Policy{
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": pbcheck.Fields("codec_type, "+
		"stat_prefix, rds, route_config, http_filters, common_http_protocol_options, http_protocol_options, "+
		"http2_protocol_options, server_name, server_header_transformation, max_request_headers_kb, "+
		"stream_idle_timeout, request_timeout, request_headers_timeout, "+
		"use_remote_address, skip_xff_append, via, generate_request_id, preserve_external_request_id, "+
		"always_set_request_id_in_response, upgrade_configs, strip_any_host_port, strip_matching_host_port, access_log, "+
		"tracing").
		Ignore("drain_timeout", "the listener's drain time bounds draining").
		Ignore("delayed_close_timeout", "Sift closes a connection once its last response is written"),
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds":                                 pbcheck.Fields("config_source, route_config_name"),
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter":                          pbcheck.Fields("name, typed_config"),
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.UpgradeConfig": pbcheck.Fields("upgrade_type, enabled"),
	"envoy.config.core.v3.HttpProtocolOptions":                                                        pbcheck.Fields("idle_timeout, max_headers_count"),
	"envoy.config.core.v3.Http1ProtocolOptions": pbcheck.Fields("accept_http_10").
		Ignore("enable_trailers", "Sift's HTTP/1 codec (Go's net/http) has no trailer switch"),
	"envoy.config.core.v3.Http2ProtocolOptions": pbcheck.Fields("max_concurrent_streams, initial_stream_window_size, " +
		"initial_connection_window_size"),
}

var routerPolicy = pbcheck.Policy{
	"envoy.extensions.filters.http.router.v3.Router": pbcheck.Fields(""),
}

type codec uint8

const (
	codecAuto codec = iota
	codecHTTP1
	codecHTTP2
)

// config is a validated HttpConnectionManager.
type config struct {
	codec      codec
	statPrefix string
	rdsName    string

	serverName      string
	serverTransform hcmv3.HttpConnectionManager_ServerHeaderTransformation
	maxHeaderBytes  int
	maxHeadersCount int // Envoy's default 100; 0 (unreachable from config): no limit

	streamIdleTimeout     time.Duration // 0: none
	requestTimeout        time.Duration // 0: none
	requestHeadersTimeout time.Duration // 0: none
	idleTimeout           time.Duration // connection idle; 0: none

	acceptHTTP10 bool
	h2MaxStreams uint32
	h2StreamWin  uint32
	h2ConnWin    uint32

	useRemoteAddress    bool
	skipXFFAppend       bool
	via                 string
	generateRequestID   bool
	preserveExternalID  bool
	alwaysSetIDResponse bool
	upgrades            map[string]bool // lower-case type → enabled
	stripAnyHostPort    bool
	stripMatchingPort   bool
}

// decode validates cfg into a config and, for an inline route_config, its
// table.
func decode(cfg *hcmv3.HttpConnectionManager) (*config, *route.Table, error) {
	if err := hcmPolicy.Check(cfg); err != nil {
		return nil, nil, fmt.Errorf("httplb: %w", err)
	}
	c, t, err := decodeFields(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("httplb: %w", err)
	}
	return c, t, nil
}

func decodeFields(cfg *hcmv3.HttpConnectionManager) (*config, *route.Table, error) {
	c := &config{
		statPrefix:          cfg.GetStatPrefix(),
		serverName:          defaultServerName,
		serverTransform:     cfg.GetServerHeaderTransformation(),
		maxHeaderBytes:      defaultMaxHeadersKB << 10,
		maxHeadersCount:     defaultMaxHeadersCount,
		streamIdleTimeout:   defaultStreamIdleTimeout,
		idleTimeout:         defaultIdleTimeout,
		useRemoteAddress:    cfg.GetUseRemoteAddress().GetValue(),
		skipXFFAppend:       cfg.GetSkipXffAppend(),
		via:                 cfg.GetVia(),
		generateRequestID:   true,
		preserveExternalID:  cfg.GetPreserveExternalRequestId(),
		alwaysSetIDResponse: cfg.GetAlwaysSetRequestIdInResponse(),
		upgrades:            map[string]bool{},
		stripAnyHostPort:    cfg.GetStripAnyHostPort(),
		stripMatchingPort:   cfg.GetStripMatchingHostPort(),
	}
	if c.statPrefix == "" {
		return nil, nil, errors.New("stat_prefix: must be set")
	}
	switch ct := cfg.GetCodecType(); ct {
	case hcmv3.HttpConnectionManager_AUTO:
		c.codec = codecAuto
	case hcmv3.HttpConnectionManager_HTTP1:
		c.codec = codecHTTP1
	case hcmv3.HttpConnectionManager_HTTP2:
		c.codec = codecHTTP2
	default:
		return nil, nil, fmt.Errorf("codec_type: %s is not supported by Sift (supported: AUTO, HTTP1, HTTP2)", ct)
	}
	if cfg.GetServerName() != "" {
		c.serverName = cfg.GetServerName()
	}
	if kb := cfg.GetMaxRequestHeadersKb(); kb != nil {
		if kb.GetValue() < 1 || kb.GetValue() > 8192 {
			return nil, nil, fmt.Errorf("max_request_headers_kb: %d: must be in 1-8192", kb.GetValue())
		}
		c.maxHeaderBytes = int(kb.GetValue()) << 10
	}
	var err error
	set := func(d *durationpb.Duration, field string, dst *time.Duration) {
		if err == nil {
			*dst, err = pbcheck.Duration(d, field, *dst, pbcheck.NonNegative)
		}
	}
	set(cfg.GetStreamIdleTimeout(), "stream_idle_timeout", &c.streamIdleTimeout)
	set(cfg.GetRequestTimeout(), "request_timeout", &c.requestTimeout)
	set(cfg.GetRequestHeadersTimeout(), "request_headers_timeout", &c.requestHeadersTimeout)
	// drain_timeout and delayed_close_timeout have no effect (see hcmPolicy)
	// but must still be valid.
	var ignored time.Duration
	set(cfg.GetDrainTimeout(), "drain_timeout", &ignored)
	set(cfg.GetDelayedCloseTimeout(), "delayed_close_timeout", &ignored)
	if chpo := cfg.GetCommonHttpProtocolOptions(); chpo != nil {
		set(chpo.GetIdleTimeout(), "common_http_protocol_options.idle_timeout", &c.idleTimeout)
		if n := chpo.GetMaxHeadersCount(); n != nil {
			c.maxHeadersCount = int(n.GetValue())
		}
	}
	if err != nil {
		return nil, nil, err
	}
	c.acceptHTTP10 = cfg.GetHttpProtocolOptions().GetAcceptHttp_10()
	if h2 := cfg.GetHttp2ProtocolOptions(); h2 != nil {
		c.h2MaxStreams = h2.GetMaxConcurrentStreams().GetValue()
		c.h2StreamWin = h2.GetInitialStreamWindowSize().GetValue()
		c.h2ConnWin = h2.GetInitialConnectionWindowSize().GetValue()
	}
	if g := cfg.GetGenerateRequestId(); g != nil {
		c.generateRequestID = g.GetValue()
	}
	for i, u := range cfg.GetUpgradeConfigs() {
		t := strings.ToLower(u.GetUpgradeType())
		if t == "" {
			return nil, nil, fmt.Errorf("upgrade_configs[%d].upgrade_type: must be set", i)
		}
		if len(u.GetFilters()) > 0 {
			return nil, nil, fmt.Errorf("upgrade_configs[%d].filters: not supported by Sift", i)
		}
		c.upgrades[t] = u.GetEnabled() == nil || u.GetEnabled().GetValue()
	}
	if err := checkFilters(cfg.GetHttpFilters()); err != nil {
		return nil, nil, err
	}
	var table *route.Table
	switch rs := cfg.GetRouteSpecifier().(type) {
	case *hcmv3.HttpConnectionManager_RouteConfig:
		if table, err = route.Decode(rs.RouteConfig); err != nil {
			return nil, nil, fmt.Errorf("route_config.%w", err)
		}
	case *hcmv3.HttpConnectionManager_Rds:
		if rs.Rds.GetRouteConfigName() == "" {
			return nil, nil, errors.New("rds.route_config_name: must be set")
		}
		if rs.Rds.GetConfigSource() == nil {
			return nil, nil, errors.New("rds.config_source: must be set")
		}
		c.rdsName = rs.Rds.GetRouteConfigName()
	default:
		return nil, nil, errors.New("route_config or rds: one must be set")
	}
	return c, table, nil
}

// checkFilters requires exactly the router, last (Sift has no other HTTP
// filters yet).
func checkFilters(fs []*hcmv3.HttpFilter) error {
	if len(fs) != 1 {
		return fmt.Errorf("http_filters: exactly one filter, %s, is supported by Sift (got %d)", routerName, len(fs))
	}
	f := fs[0]
	if f.GetTypedConfig() == nil {
		if f.GetName() != routerName {
			return fmt.Errorf("http_filters[0]: %q is not supported by Sift (only %s)", f.GetName(), routerName)
		}
		return nil
	}
	msg, url, err := filters.UnpackConfig(f.GetTypedConfig())
	if err != nil {
		return fmt.Errorf("http_filters[0].%w", err)
	}
	r, ok := msg.(*routerv3.Router)
	if !ok {
		return fmt.Errorf("http_filters[0].typed_config: %s is not supported by Sift (only envoy.extensions.filters.http.router.v3.Router)", url)
	}
	if err := routerPolicy.Check(r); err != nil {
		return fmt.Errorf("http_filters[0].typed_config.%w", err)
	}
	return nil
}
