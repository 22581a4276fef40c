package detect

import (
	"fmt"
	"time"

	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/filters"
)

// Envoy's limits for its inspectors.
const (
	// MaxClientHelloSize is tls_inspector's default and largest
	// max_client_hello_size (Envoy's TLS_MAX_CLIENT_HELLO).
	MaxClientHelloSize = 16384
	// httpInspectorMaxBytes is http_inspector's MAX_INSPECT_SIZE. The http1
	// sniffer declines long before it (MaxRequestLine), so it is only a
	// backstop.
	httpInspectorMaxBytes = 64 << 10
)

var (
	tlsSniffers  = []Sniffer{TLS()}
	httpSniffers = []Sniffer{H2(), HTTP1()}
)

func tlsInspectorConfig() proto.Message  { return &tlsinspectorv3.TlsInspector{} }
func httpInspectorConfig() proto.Message { return &httpinspectorv3.HttpInspector{} }

// TLSInspector is Envoy's envoy.filters.listener.tls_inspector (typed config
// envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector), built on
// the tls sniffer. It is immutable and safe for concurrent use.
//
// As in Envoy, when the connection starts with a TLS ClientHello it sets
// TransportProtocol "tls", ServerName (the SNI, lower-case, when sent) and
// ApplicationProtocols (the ALPN list, when sent); otherwise it leaves them
// unset. A ClientHello larger than max_client_hello_size closes the connection
// (Envoy's client_hello_too_large); so does anything that is not a
// ClientHello when close_connection_on_client_hello_parsing_errors is set.
//
// It has no timeout of its own: it peeks under the listener filters'
// deadline (listener_filters_timeout). When that passes it returns without a
// verdict and without error, and the listener decides, as Envoy's
// continue_on_listener_filters_timeout says (see listener.PeekConn.TimedOut).
// If the listener has no deadline, a silent client keeps it waiting, as in
// Envoy. When the client closes before a complete ClientHello, it returns
// without a verdict (or, with close_connection_on_client_hello_parsing_errors,
// an error); Envoy closes such a connection, Sift lets the network filter see
// the end of stream.
type TLSInspector struct {
	maxClientHello    int
	closeOnParseError bool
}

var _ filters.ListenerFilter = (*TLSInspector)(nil)

// NewTLSInspector validates cfg and returns the filter. Supported fields:
// max_client_hello_size (256..16384, default 16384),
// close_connection_on_client_hello_parsing_errors, and
// initial_read_buffer_size (256..65536, accepted and ignored: the listener's
// Peeker sizes its own buffer). enable_ja3_fingerprinting and
// enable_ja4_fingerprinting are rejected when true: Sift computes no
// fingerprints.
func NewTLSInspector(cfg *tlsinspectorv3.TlsInspector) (*TLSInspector, error) {
	if err := policy.Check(cfg); err != nil {
		return nil, fmt.Errorf("detect: tls_inspector: %w", err)
	}
	if cfg.GetEnableJa3Fingerprinting().GetValue() {
		return nil, fmt.Errorf("detect: tls_inspector: enable_ja3_fingerprinting: not supported by sift")
	}
	if cfg.GetEnableJa4Fingerprinting().GetValue() {
		return nil, fmt.Errorf("detect: tls_inspector: enable_ja4_fingerprinting: not supported by sift")
	}
	// The ranges are Envoy's (protoc-gen-validate rules in tls_inspector.proto).
	if v := cfg.GetInitialReadBufferSize(); v != nil && (v.GetValue() <= 255 || v.GetValue() > 65536) {
		return nil, fmt.Errorf("detect: tls_inspector: initial_read_buffer_size: must be in 256..65536, got %d", v.GetValue())
	}
	t := &TLSInspector{
		maxClientHello:    MaxClientHelloSize,
		closeOnParseError: cfg.GetCloseConnectionOnClientHelloParsingErrors(),
	}
	if v := cfg.GetMaxClientHelloSize(); v != nil {
		if v.GetValue() <= 255 || v.GetValue() > MaxClientHelloSize {
			return nil, fmt.Errorf("detect: tls_inspector: max_client_hello_size: must be in 256..%d, got %d", MaxClientHelloSize, v.GetValue())
		}
		t.maxClientHello = int(v.GetValue())
	}
	return t, nil
}

// Provides implements filters.ListenerFilter.
func (t *TLSInspector) Provides() filters.Field { return filters.FieldsDetected }

// OnAccept implements filters.ListenerFilter; see TLSInspector. It also fills
// info.Detection (Duration counts from the start of OnAccept).
func (t *TLSInspector) OnAccept(p filters.Peeker, info *filters.ConnInfo) error {
	start := time.Now()
	o, err := run(p, tlsSniffers, t.maxClientHello, time.Time{})
	info.Detection = filters.Detection{Ran: true, Bytes: o.Bytes, Duration: time.Since(start)}
	if err != nil {
		return fmt.Errorf("detect: tls_inspector: peek: %w", err)
	}
	info.Detection.Protocol, info.Detection.Reason = o.Protocol(), o.Reason
	switch o.Reason {
	case filters.ReasonMatch:
		info.TransportProtocol = filters.TransportTLS
		if o.Result.ServerName != "" {
			info.ServerName = o.Result.ServerName
		}
		if len(o.Result.ALPN) > 0 {
			info.ApplicationProtocols = append([]string(nil), o.Result.ALPN...)
		}
	case filters.ReasonByteCap:
		return fmt.Errorf("detect: tls_inspector: client hello too large (limit %d bytes)", t.maxClientHello)
	case filters.ReasonNoMatch, filters.ReasonEOF:
		if t.closeOnParseError {
			return fmt.Errorf("detect: tls_inspector: no tls client hello (%s) and close_connection_on_client_hello_parsing_errors is set", o.Reason)
		}
	}
	return nil
}

func buildTLSInspector(cfg proto.Message, _ filters.BuildContext) (filters.ListenerFilter, error) {
	pb, ok := cfg.(*tlsinspectorv3.TlsInspector)
	if !ok {
		return nil, fmt.Errorf("detect: tls_inspector: config is %T, want *tlsinspectorv3.TlsInspector", cfg)
	}
	return NewTLSInspector(pb)
}

// HTTPInspector is Envoy's envoy.filters.listener.http_inspector (typed
// config envoy.extensions.filters.listener.http_inspector.v3.HttpInspector,
// which has no fields), built on the h2 and http1 sniffers. It is immutable
// and safe for concurrent use.
//
// As in Envoy, it does nothing when TransportProtocol is already set to
// something other than "raw_buffer" (a tls_inspector before it found TLS);
// otherwise, on an HTTP/1.0 or HTTP/1.1 request line or the HTTP/2 preface, it
// sets ApplicationProtocols to "http/1.0", "http/1.1" or "h2c". It never sets
// TransportProtocol.
//
// Like TLSInspector it has no timeout of its own and returns without a
// verdict or error at the listener filters' deadline, at end of stream, and
// when the bytes are not HTTP. Envoy closes the connection when 64 KiB do not
// hold a complete request line; Sift's http1 sniffer declines after
// MaxRequestLine (8 KiB) instead, and the connection goes on without an
// application protocol.
type HTTPInspector struct{}

var _ filters.ListenerFilter = (*HTTPInspector)(nil)

// NewHTTPInspector validates cfg (it has no fields: only that it carries
// none this build does not know) and returns the filter.
func NewHTTPInspector(cfg *httpinspectorv3.HttpInspector) (*HTTPInspector, error) {
	if err := policy.Check(cfg); err != nil {
		return nil, fmt.Errorf("detect: http_inspector: %w", err)
	}
	return &HTTPInspector{}, nil
}

// Provides implements filters.ListenerFilter.
func (*HTTPInspector) Provides() filters.Field { return filters.FieldApplicationProtocols }

// OnAccept implements filters.ListenerFilter; see HTTPInspector. When it
// inspects, it fills info.Detection (Duration counts from the start of
// OnAccept).
func (*HTTPInspector) OnAccept(p filters.Peeker, info *filters.ConnInfo) error {
	if tp := info.TransportProtocol; tp != "" && tp != filters.TransportRawBuffer {
		return nil
	}
	start := time.Now()
	o, err := run(p, httpSniffers, httpInspectorMaxBytes, time.Time{})
	info.Detection = filters.Detection{Ran: true, Bytes: o.Bytes, Duration: time.Since(start)}
	if err != nil {
		return fmt.Errorf("detect: http_inspector: peek: %w", err)
	}
	info.Detection.Protocol, info.Detection.Reason = o.Protocol(), o.Reason
	if o.Reason == filters.ReasonMatch {
		info.ApplicationProtocols = []string{o.Result.Protocol}
	}
	return nil
}

func buildHTTPInspector(cfg proto.Message, _ filters.BuildContext) (filters.ListenerFilter, error) {
	pb, ok := cfg.(*httpinspectorv3.HttpInspector)
	if !ok {
		return nil, fmt.Errorf("detect: http_inspector: config is %T, want *httpinspectorv3.HttpInspector", cfg)
	}
	return NewHTTPInspector(pb)
}
