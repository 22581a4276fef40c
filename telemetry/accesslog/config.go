package accesslog

import (
	"fmt"
	"os"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filev3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	grpcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/siftmesh/sift/internal/pbcheck"
	"github.com/siftmesh/sift/upstream"
)

const noRuntime = "Sift has no runtime: the default value applies"

// policy lists the fields of the access log messages Sift implements.
var policy = pbcheck.Policy{
	"envoy.config.accesslog.v3.AccessLog": pbcheck.Fields("name, filter, typed_config"),
	"envoy.config.accesslog.v3.AccessLogFilter": pbcheck.Fields("status_code_filter, duration_filter, " +
		"not_health_check_filter, response_flag_filter, and_filter, or_filter"),
	"envoy.config.accesslog.v3.StatusCodeFilter":     pbcheck.Fields("comparison"),
	"envoy.config.accesslog.v3.DurationFilter":       pbcheck.Fields("comparison"),
	"envoy.config.accesslog.v3.NotHealthCheckFilter": pbcheck.Fields(""),
	"envoy.config.accesslog.v3.ResponseFlagFilter":   pbcheck.Fields("flags"),
	"envoy.config.accesslog.v3.AndFilter":            pbcheck.Fields("filters"),
	"envoy.config.accesslog.v3.OrFilter":             pbcheck.Fields("filters"),
	"envoy.config.accesslog.v3.ComparisonFilter":     pbcheck.Fields("op, value"),
	"envoy.config.core.v3.RuntimeUInt32":             pbcheck.Fields("default_value").Ignore("runtime_key", noRuntime),

	"envoy.extensions.access_loggers.file.v3.FileAccessLog":     pbcheck.Fields("path, format, json_format, typed_json_format, log_format"),
	"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": pbcheck.Fields("log_format"),
	"envoy.extensions.access_loggers.stream.v3.StderrAccessLog": pbcheck.Fields("log_format"),
	"envoy.config.core.v3.SubstitutionFormatString": pbcheck.Fields("text_format, text_format_source, json_format").
		Ignore("content_type", "it applies to local reply bodies only"),
	"envoy.config.core.v3.DataSource": pbcheck.Fields("inline_string, inline_bytes, filename"),

	"envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig": pbcheck.Fields("common_config, " +
		"additional_request_headers_to_log, additional_response_headers_to_log"),
	"envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig": pbcheck.Fields("common_config"),
	"envoy.extensions.access_loggers.grpc.v3.CommonGrpcAccessLogConfig": pbcheck.Fields("log_name, grpc_service, "+
		"transport_api_version, buffer_flush_interval, buffer_size_bytes").
		Ignore("grpc_stream_retry_policy", "Sift reconnects with its own jittered backoff").
		Ignore("filter_state_objects_to_log", "Sift has no filter state"),
	"envoy.config.core.v3.GrpcService": pbcheck.Fields("envoy_grpc").
		Reject("google_grpc", "name the access log service's cluster with envoy_grpc").
		Ignore("timeout", "access log streams are long-lived"),
	"envoy.config.core.v3.GrpcService.EnvoyGrpc": pbcheck.Fields("cluster_name"),
}

// Context is what decoding needs from the listener being built.
type Context struct {
	// Clusters resolves the gRPC access log service's cluster; nil rejects
	// gRPC loggers.
	Clusters *upstream.Manager
}

// Decode validates an access_log list (HttpConnectionManager.access_log,
// TcpProxy.access_log) into Loggers. Errors name the field from the list,
// e.g. "access_log[0].typed_config.log_format.text_format: position 3:
// %FOO%: unknown command operator".
func Decode(list []*accesslogv3.AccessLog, ctx Context) (Loggers, error) {
	var ls Loggers
	for i, al := range list {
		field := fmt.Sprintf("access_log[%d]", i)
		if err := policy.CheckAt(al, field); err != nil {
			return nil, err
		}
		l, err := decodeOne(al, field, ctx)
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

func decodeOne(al *accesslogv3.AccessLog, field string, ctx Context) (*logger, error) {
	l := &logger{name: al.GetName()}
	if f := al.GetFilter(); f != nil {
		var err error
		if l.filter, err = decodeFilter(f, field+".filter"); err != nil {
			return nil, err
		}
	}
	tc := al.GetTypedConfig()
	if tc == nil {
		return nil, fmt.Errorf("%s.typed_config: must be set", field)
	}
	field += ".typed_config"
	msg, err := anypb.UnmarshalNew(tc, proto.UnmarshalOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", field, tc.GetTypeUrl(), err)
	}
	if err := policy.CheckAt(msg, field); err != nil {
		return nil, err
	}
	switch c := msg.(type) {
	case *filev3.FileAccessLog:
		l.sink, err = fileSink(c, field)
	case *streamv3.StdoutAccessLog:
		l.sink, err = streamSink("/dev/stdout", c.GetLogFormat(), field)
	case *streamv3.StderrAccessLog:
		l.sink, err = streamSink("/dev/stderr", c.GetLogFormat(), field)
	case *grpcv3.HttpGrpcAccessLogConfig:
		l.sink, err = newGRPCSink(c.GetCommonConfig(), kindHTTP, c.GetAdditionalRequestHeadersToLog(),
			c.GetAdditionalResponseHeadersToLog(), field, ctx)
	case *grpcv3.TcpGrpcAccessLogConfig:
		l.sink, err = newGRPCSink(c.GetCommonConfig(), kindTCP, nil, nil, field, ctx)
	default:
		return nil, fmt.Errorf("%s: %s is not supported by Sift (supported: envoy.access_loggers.file, stdout, stderr, "+
			"http_grpc, tcp_grpc)", field, tc.GetTypeUrl())
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

func fileSink(c *filev3.FileAccessLog, field string) (sink, error) {
	if c.GetPath() == "" {
		return nil, fmt.Errorf("%s.path: must be set", field)
	}
	var f *format
	var err error
	switch af := c.GetAccessLogFormat().(type) {
	case nil:
		f, err = textOf(DefaultFormat, field)
	case *filev3.FileAccessLog_Format:
		f, err = textOf(af.Format, field+".format")
	case *filev3.FileAccessLog_JsonFormat:
		f, err = jsonOf(af.JsonFormat, false, field+".json_format")
	case *filev3.FileAccessLog_TypedJsonFormat:
		f, err = jsonOf(af.TypedJsonFormat, true, field+".typed_json_format")
	case *filev3.FileAccessLog_LogFormat:
		f, err = substitution(af.LogFormat, field+".log_format")
	}
	if err != nil {
		return nil, err
	}
	w, err := openFile(c.GetPath())
	if err != nil {
		return nil, fmt.Errorf("%s.path: %w", field, err)
	}
	return &lineSink{format: f, w: w}, nil
}

func streamSink(path string, sf *corev3.SubstitutionFormatString, field string) (sink, error) {
	f, err := textOf(DefaultFormat, field)
	if sf != nil {
		f, err = substitution(sf, field+".log_format")
	}
	if err != nil {
		return nil, err
	}
	w, err := openFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return &lineSink{format: f, w: w}, nil
}

func textOf(s, field string) (*format, error) {
	if s == "" {
		s = DefaultFormat // Envoy: an empty format is the default
	}
	tf, err := parseFormat(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return &format{text: tf}, nil
}

func jsonOf(s *structpb.Struct, typed bool, field string) (*format, error) {
	jf, err := parseJSONFormat(s, typed)
	if err != nil {
		return nil, fmt.Errorf("%s.%w", field, err)
	}
	return &format{json: jf}, nil
}

// substitution decodes a SubstitutionFormatString (log_format).
func substitution(sf *corev3.SubstitutionFormatString, field string) (*format, error) {
	switch f := sf.GetFormat().(type) {
	case *corev3.SubstitutionFormatString_TextFormat:
		return textOf(f.TextFormat, field+".text_format")
	case *corev3.SubstitutionFormatString_TextFormatSource:
		s, err := dataSource(f.TextFormatSource, field+".text_format_source")
		if err != nil {
			return nil, err
		}
		return textOf(s, field+".text_format_source")
	case *corev3.SubstitutionFormatString_JsonFormat:
		return jsonOf(f.JsonFormat, true, field+".json_format")
	}
	return nil, fmt.Errorf("%s: text_format, text_format_source or json_format must be set", field)
}

func dataSource(ds *corev3.DataSource, field string) (string, error) {
	switch s := ds.GetSpecifier().(type) {
	case *corev3.DataSource_InlineString:
		return s.InlineString, nil
	case *corev3.DataSource_InlineBytes:
		return string(s.InlineBytes), nil
	case *corev3.DataSource_Filename:
		b, err := os.ReadFile(s.Filename)
		if err != nil {
			return "", fmt.Errorf("%s.filename: %w", field, err)
		}
		return string(b), nil
	}
	return "", fmt.Errorf("%s: inline_string, inline_bytes or filename must be set", field)
}
