// Package filters defines the contracts between the listener and the filters
// it runs — listener filters that inspect a new connection without consuming
// it, and network filters that serve it — and the registry that builds them
// from their xDS typed configs.
//
// Everything here is data-path API: implementations are built once per
// listener generation (offline, from validated config) and then called
// concurrently for every connection of that generation.
package filters

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/siftmesh/sift/internal/envoynames"
)

// Transport protocols, as Envoy's FilterChainMatch.transport_protocol names
// them (defined in internal/envoynames, which the control plane imports).
const (
	TransportRawBuffer = envoynames.TransportRawBuffer
	TransportTLS       = envoynames.TransportTLS
)

// Application protocols set by Envoy's http_inspector and Sift's detect filter
// (FilterChainMatch.application_protocols; defined in internal/envoynames).
const (
	ProtocolHTTP10 = envoynames.ProtocolHTTP10
	ProtocolHTTP11 = envoynames.ProtocolHTTP11
	ProtocolH2C    = envoynames.ProtocolH2C
)

// Traffic directions (Envoy's Listener.traffic_direction), as metrics label them.
const (
	DirectionInbound  = "inbound"
	DirectionOutbound = "outbound"
)

// Field is a bit set of the connection facts a listener filter can establish.
// The listener uses it to skip filters whose findings could not change which
// filter chain the connection gets (an opaque port costs no detection time).
type Field uint8

const (
	// FieldDestination: the local (destination) address, e.g. original_dst.
	FieldDestination Field = 1 << iota
	// FieldServerName: FilterChainMatch.server_names (TLS SNI).
	FieldServerName
	// FieldTransportProtocol: FilterChainMatch.transport_protocol.
	FieldTransportProtocol
	// FieldApplicationProtocols: FilterChainMatch.application_protocols.
	FieldApplicationProtocols
)

// FieldsDetected is what protocol detection can establish.
const FieldsDetected = FieldServerName | FieldTransportProtocol | FieldApplicationProtocols

// ConnInfo is what is known about a downstream connection: its addresses and
// what listener filters found. Listener filters write it (serially, on the
// connection's goroutine); filter-chain matching and network filters read it.
type ConnInfo struct {
	// LocalAddr is the destination the client connected to. The original_dst
	// listener filter replaces it with SO_ORIGINAL_DST when traffic was
	// redirected to the proxy.
	LocalAddr netip.AddrPort
	// RemoteAddr is the client's address.
	RemoteAddr netip.AddrPort
	// LocalAddrRestored is true when LocalAddr came from original_dst.
	LocalAddrRestored bool
	// AcceptedAt is when the listener accepted the connection.
	AcceptedAt time.Time
	// Listener is the name of the listener serving the connection, and
	// Direction its traffic_direction: DirectionInbound, DirectionOutbound
	// or "" (unspecified). Set by the listener before listener filters run.
	Listener  string
	Direction string

	// TransportProtocol is "" until a filter sets it; matching treats "" as
	// raw_buffer, as Envoy does.
	TransportProtocol string
	// ServerName is the TLS SNI, lower-case, or "".
	ServerName string
	// ApplicationProtocols is the TLS ALPN list, or the detected plaintext
	// protocol (http/1.0, http/1.1, h2c, or a plugin's protocol name).
	ApplicationProtocols []string

	// Detection records protocol detection's outcome for logs and metrics.
	Detection Detection

	// Fallback is set by the listener before listener filters run: its view
	// of the chain the connection gets when detection finds no protocol. nil
	// when the listener offers none. See Fallback.
	Fallback Fallback
	// Early is an upstream connection a listener filter opened through
	// Fallback (the server-speaks-first race). The listener owns it: it hands
	// it to the chosen chain's network filter when that filter can adopt it
	// (EarlyAdopter), and closes it otherwise.
	Early *EarlyUpstream
	// TLS is true when the filter chain's transport socket terminated TLS
	// (DownstreamTlsContext); the fields below are then set by the
	// handshake, before any network filter runs.
	TLS bool
	// PeerIdentity is the client certificate's identity: its first URI SAN
	// (a SPIFFE ID in a mesh), else its first DNS SAN, else its subject; ""
	// without a client certificate (Envoy's RBAC principal_name).
	PeerIdentity string
	// LocalIdentity is the identity of the certificate the proxy presented.
	LocalIdentity string
	// NegotiatedProtocol is the ALPN protocol the handshake agreed, or "".
	NegotiatedProtocol string

	// UpstreamTLS is true when the connection's one upstream (tcp_proxy,
	// opaque transport) is TLS (a cluster transport socket); UpstreamIdentity
	// is then the identity the upstream's certificate proved (in a mesh, the
	// destination proxy's SPIFFE ID: Linkerd's outbound server_id). Set by
	// the network filter once the upstream is connected, before it reports
	// the connection's start; never set for HTTP connections (each request
	// has its own upstream).
	UpstreamTLS      bool
	UpstreamIdentity string
}

// Detection is the outcome of protocol detection on one connection.
type Detection struct {
	// Ran is false when detection was skipped (disabled, or no chain depended on it).
	Ran bool
	// Protocol is what was found: "tls", "http/1.0", "http/1.1", "h2c", a
	// plugin's protocol name, or "opaque".
	Protocol string
	// Reason says why detection ended: see the Reason* constants.
	Reason string
	// Bytes is how many bytes were peeked.
	Bytes int
	// Duration is the time from accept (ConnInfo.AcceptedAt) to the verdict.
	Duration time.Duration
	// Sniffer names the sniffer that matched (Reason "match", or a server
	// sniffer's match on a server-first connection).
	Sniffer string
	// Attributes are what a matching plugin sniffer reported (a database
	// or server version), nil otherwise. Read-only.
	Attributes map[string]string
	// The sniffers' last answers, in the order they were asked:
	// SnifferNames[i] answered VerdictCodes[i] (VerdictNeedMore, VerdictMatch
	// or VerdictNoMatch); NumVerdicts counts them (at most
	// MaxRecordedVerdicts). SnifferNames is owned by the detect filter and
	// shared by its connections: never modify it. Kept as codes so that the
	// record costs a connection a few bytes, not a string pair per sniffer.
	SnifferNames []string
	VerdictCodes [MaxRecordedVerdicts]uint8
	NumVerdicts  uint8
	// Raced is true when the server-speaks-first race ran: an early upstream
	// connection was opened before the client spoke (or tried to be).
	Raced bool
	// RaceError is why the early upstream connection could not be opened, if
	// it could not; detection then went on waiting for the client.
	RaceError string
}

// MaxRecordedVerdicts bounds Detection.VerdictCodes.
const MaxRecordedVerdicts = 8

// Verdict codes of Detection.VerdictCodes.
const (
	VerdictNeedMore uint8 = iota // undecided when detection stopped
	VerdictMatch
	VerdictNoMatch
)

// verdictNames spell the verdict codes.
var verdictNames = [...]string{VerdictNeedMore: "need_more", VerdictMatch: "match", VerdictNoMatch: "no_match"}

// SnifferVerdict is one sniffer's last answer on a connection.
type SnifferVerdict struct {
	Sniffer string
	// Verdict is "match", "no_match" or "need_more" (undecided when
	// detection stopped).
	Verdict string
}

// RecordedVerdicts spells out the recorded verdicts (it allocates: for
// logs and the admin pages, not the data path).
func (d *Detection) RecordedVerdicts() []SnifferVerdict {
	n := min(int(d.NumVerdicts), len(d.SnifferNames))
	out := make([]SnifferVerdict, n)
	for i := range n {
		v := "unknown"
		if c := d.VerdictCodes[i]; int(c) < len(verdictNames) {
			v = verdictNames[c]
		}
		out[i] = SnifferVerdict{Sniffer: d.SnifferNames[i], Verdict: v}
	}
	return out
}

// Fallback is the listener's view, for one listener generation, of the
// filter chain a connection gets when detection finds nothing (the default or
// opaque chain). Listener filters use it for the server-speaks-first race.
// Implementations are safe for concurrent use.
type Fallback interface {
	// Preconnect opens the upstream connection the fallback chain for info
	// would open (for tcp_proxy: a connection to an endpoint of its
	// cluster), subject to the same connect timeout and retries, and to ctx
	// (and the listener generation's end). It blocks until connected or
	// failed. ErrNoPreconnect means the fallback chain has no upstream it
	// could open early (no chain, or not a tcp_proxy). info is only read.
	Preconnect(ctx context.Context, info *ConnInfo) (*EarlyUpstream, error)
	// GuardsHTTP reports whether failing open to the fallback chain would
	// let a connection skip HTTP-level policy that a detected-HTTP chain of
	// this listener enforces (HTTPPolicy). Detection then fails closed on
	// timeout unless configured otherwise.
	GuardsHTTP() bool
}

// EarlyUpstream is an upstream connection opened before its downstream was
// dispatched to a network filter.
type EarlyUpstream struct {
	// Conn is the upstream connection. Closing it releases the endpoint's
	// load in the balancer. Whoever owns the EarlyUpstream closes it.
	Conn net.Conn
	// Cluster and Endpoint name where Conn goes ("ip:port").
	Cluster, Endpoint string
	// Greeting holds bytes the server sent before the connection was
	// dispatched; they must reach the client before anything else the
	// server sends.
	Greeting []byte
}

// Close closes the upstream connection.
func (e *EarlyUpstream) Close() error { return e.Conn.Close() }

// Preconnector is implemented by network filters that can open their
// upstream connection before the connection is dispatched to them
// (tcp_proxy). The listener uses it to implement Fallback.
type Preconnector interface {
	Preconnect(ctx context.Context, info *ConnInfo) (*EarlyUpstream, error)
}

// EarlyAdopter is implemented by network filters that can serve a
// connection over an EarlyUpstream instead of opening their own: the
// listener hands the early connection to the chosen chain's filter only when
// CanAdopt says so (same cluster), and closes it otherwise.
type EarlyAdopter interface {
	CanAdopt(e *EarlyUpstream) bool
}

// HTTPPolicy is implemented by network filters that enforce HTTP-level
// policy (authorization) on the connections they serve. A listener with such
// a chain makes detection fail closed on timeout by default, so that a slow
// client cannot reach the upstream through the opaque fallback instead.
type HTTPPolicy interface {
	EnforcesHTTPPolicy() bool
}

// Reasons detection ended.
const (
	ReasonMatch    = "match"    // a sniffer recognised the protocol
	ReasonNoMatch  = "no_match" // every sniffer declined: opaque
	ReasonTimeout  = "timeout"  // the client stayed silent: fail open to opaque
	ReasonEOF      = "eof"      // the client closed (or half-closed) before a verdict
	ReasonByteCap  = "byte_cap" // the byte cap was reached before a verdict
	ReasonSkipped  = "skipped"  // detection did not run
	ReasonDisabled = "disabled" // filter_disabled matched
	ReasonError    = "error"    // reading the client failed (reset): the connection is closed
	// ReasonOpaquePort: detection did not run because no filter chain for
	// the destination depends on the protocol (Linkerd's opaque port).
	ReasonOpaquePort = "opaque_port"
	// ReasonServerFirst: the client stayed silent past the grace period and
	// the fallback chain's upstream spoke first: opaque, decided by the server.
	ReasonServerFirst = "server_first"
	// ReasonLearnedServerFirst: as ReasonServerFirst, on a destination
	// already learned to be server-first, so the race started at accept with
	// no grace period.
	ReasonLearnedServerFirst = "learned_server_first"
	// ReasonTimeoutClosed: the client stayed silent past the timeout and the
	// policy is fail-closed: the connection is reset.
	ReasonTimeoutClosed = "timeout_closed"
)

// Peeker gives a listener filter read-only access to the start of a
// connection's byte stream. Bytes it reads are kept and replayed, exactly once,
// to whatever serves the connection. A Peeker is used by one goroutine.
type Peeker interface {
	// Peeked returns the bytes read so far. The slice is owned by the Peeker
	// and valid until the next call to Peek; callers must not modify it.
	Peeked() []byte
	// Peek blocks until at least n bytes have been read, the stream ends, the
	// deadline passes (the earlier of deadline and the listener filters'
	// deadline; zero means the latter), or the Peeker's byte cap is reached. It
	// returns all bytes read so far, possibly fewer than n, with io.EOF at end
	// of stream, os.ErrDeadlineExceeded on timeout, ErrPeekCap at the cap, or
	// the connection's read error.
	Peek(n int, deadline time.Time) ([]byte, error)
	// Interrupt makes a Peek blocked in another goroutine return
	// ErrPeekInterrupted at once, and every later Peek too. It is the one
	// method that may be called concurrently with the others (the
	// server-speaks-first race calls it when the upstream speaks first).
	Interrupt()
}

// ListenerFilter inspects a new connection before a filter chain is chosen
// (Envoy's listener filters: tls_inspector, http_inspector, original_dst, and
// Sift's detect). Implementations are immutable and safe for concurrent use.
type ListenerFilter interface {
	// Provides reports which ConnInfo fields the filter may set.
	Provides() Field
	// OnAccept inspects one connection, updating info. It must not block
	// beyond the Peeker's deadline. A non-nil error closes the connection.
	OnAccept(p Peeker, info *ConnInfo) error
}

// NetworkFilter serves a connection once its filter chain is chosen (Envoy's
// terminal network filters: tcp_proxy, http_connection_manager).
// Implementations are immutable and safe for concurrent use.
type NetworkFilter interface {
	// ServeConn serves d until the connection is done and closes it before
	// returning; it owns d. ctx is cancelled when the connection must end now
	// (drain time over, process exiting); d.Draining is closed earlier, when
	// the listener generation starts draining, so protocols that can end
	// gracefully (HTTP's Connection: close, HTTP/2 GOAWAY) do so.
	//
	// The one exception is a detached connection (Downstream.Detach): then
	// ServeConn may return while the connection lives on (tcp_proxy parks
	// an idle connection without a goroutine), and the filter calls the
	// end function Detach returned once it has closed the connection; the
	// caller's end-of-connection work (gauges, drain waits, connection
	// filters' done) happens in that call, not at ServeConn's return.
	ServeConn(ctx context.Context, d *Downstream)
}

// ConnectionFilter is a non-terminal network filter: it sees each connection
// of its chain before the terminal NetworkFilter and may refuse it (Envoy's
// connection_limit). Implementations are safe for concurrent use.
type ConnectionFilter interface {
	// Admit decides whether the connection may proceed. It may block (a
	// configured delay before refusing) until ctx ends. When ok, done must be
	// called once the connection has ended.
	Admit(ctx context.Context, d *Downstream) (done func(), ok bool)
}

// Downstream is an accepted connection handed to a network filter, with the
// bytes listener filters peeked still to be delivered, and possibly an early
// upstream connection (TakeEarly).
//
// Use either Conn (a net.Conn that replays the peeked bytes first) or the pair
// Peeked + Raw (write the peeked bytes yourself, then use the raw connection,
// which keeps zero-copy paths such as splice available) — never both.
type Downstream struct {
	raw      net.Conn
	peeked   []byte
	detacher Detacher // nil: ServeConn must block until the connection ends
	// Info is what is known about the connection; read-only here.
	Info *ConnInfo
	// Draining is closed when the connection's listener generation drains.
	Draining <-chan struct{}
	// DrainContext, when set, is done when Draining closes: a filter can
	// act on the drain with context.AfterFunc instead of a goroutine
	// waiting on Draining. nil: only Draining tells.
	DrainContext context.Context
}

// NewDownstream wraps raw, whose first bytes are peeked (not yet delivered).
func NewDownstream(raw net.Conn, peeked []byte, info *ConnInfo, draining <-chan struct{}) *Downstream {
	return &Downstream{raw: raw, peeked: peeked, Info: info, Draining: draining}
}

// Detacher is implemented by a caller of NetworkFilter.ServeConn that lets
// the filter return before the connection has ended (the listener; see
// Downstream.Detach).
type Detacher interface {
	// Detach is called on ServeConn's goroutine, before ServeConn returns,
	// when the filter detaches. It returns the function the filter calls,
	// exactly once and from any goroutine, when the connection has ended
	// and the filter has closed it: the caller's end-of-connection work
	// runs then instead of when ServeConn returns.
	Detach() (end func())
}

// AllowDetach lets the network filter serving d detach it (Detach), with dt
// doing the caller's end-of-connection work. Call it before ServeConn.
func (d *Downstream) AllowDetach(dt Detacher) { d.detacher = dt }

// Detach asks to return from ServeConn while the connection lives on. ok is
// false when ServeConn's caller does not allow it (AllowDetach was not
// called): ServeConn must then block until the connection ends, as usual.
// When ok, ServeConn may return at any time from then on, and the filter
// must call end exactly once, from any goroutine, after it has closed the
// connection and released everything it held for it (before or after
// ServeConn returns). Call it at most once, on ServeConn's goroutine.
func (d *Downstream) Detach() (end func(), ok bool) {
	if d.detacher == nil {
		return nil, false
	}
	dt := d.detacher
	d.detacher = nil
	return dt.Detach(), true
}

// TakeEarly returns the early upstream connection handed to this network
// filter (see EarlyAdopter), or nil; the caller owns it from then on. Only
// the first call returns it.
func (d *Downstream) TakeEarly() *EarlyUpstream {
	if d.Info == nil {
		return nil
	}
	e := d.Info.Early
	d.Info.Early = nil
	return e
}

// Peeked returns the bytes read during inspection, to be delivered first.
func (d *Downstream) Peeked() []byte { return d.peeked }

// Raw returns the underlying connection, positioned after the peeked bytes.
// For a plain TCP listener it is a *net.TCPConn.
func (d *Downstream) Raw() net.Conn { return d.raw }

// Conn returns a net.Conn whose reads deliver the peeked bytes, then the rest
// of the stream.
func (d *Downstream) Conn() net.Conn {
	if len(d.peeked) == 0 {
		return d.raw
	}
	return &replayConn{Conn: d.raw, pending: d.peeked}
}

// replayConn serves pending before reading from the embedded connection.
type replayConn struct {
	net.Conn
	pending []byte
}

// CloseWrite half-closes the connection when the underlying one can.
func (c *replayConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// NetConn returns the connection being replayed (as tls.Conn's NetConn):
// wrappers that measure the socket reach it.
func (c *replayConn) NetConn() net.Conn { return c.Conn }

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(b, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
