// Package envoynames holds the names Envoy puts on the wire that
// go-control-plane's wellknown package lacks: the values of
// FilterChainMatch.transport_protocol and application_protocols that
// listener filters set. It has no dependencies, so that the control plane
// can name them without linking the data plane (filters re-exports them).
package envoynames

// Transport protocols, as Envoy's FilterChainMatch.transport_protocol names them.
const (
	TransportRawBuffer = "raw_buffer"
	TransportTLS       = "tls"
)

// Application protocols set by Envoy's http_inspector and Sift's detect filter
// (FilterChainMatch.application_protocols).
const (
	ProtocolHTTP10 = "http/1.0"
	ProtocolHTTP11 = "http/1.1"
	ProtocolH2C    = "h2c"
)
