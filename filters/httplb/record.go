package httplb

import "time"

// Record is what the HCM knows about one request once it is done: enough
// for metrics, access logs and tracing. Durations are from Start.
type Record struct {
	Start time.Time
	// Duration is until the response was complete (or the request failed).
	Duration time.Duration
	// UpstreamHeaders is until the upstream's response headers arrived
	// (0 when none did).
	UpstreamHeaders time.Duration

	Protocol  string // downstream: "HTTP/1.1", "HTTP/2.0", ...
	Method    string
	Authority string
	Path      string
	RequestID string // x-request-id sent upstream ("" when not generated)

	// TLS is true when the downstream connection is TLS (a transport
	// socket); ClientID and ServerID are then the peer's and the proxy's
	// identities (SPIFFE IDs in a mesh), for the telemetry labels tls,
	// client_id and server_id.
	TLS                bool
	ClientID, ServerID string

	Route       string // route name ("" for unnamed routes)
	VirtualHost string
	Cluster     string
	Endpoint    string // "ip:port" of the last attempt
	Attempts    int    // upstream attempts (1 + retries)

	Status int // the status sent downstream; 499 when the client went away first
	// Error is the local reply's reason (x-sift-error), "" when the
	// upstream answered.
	Error string

	BytesReceived int64 // request body bytes read from the client
	BytesSent     int64 // response body bytes written to the client
}
