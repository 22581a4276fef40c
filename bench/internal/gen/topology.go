// Package gen turns one proxy-neutral description of a scenario's listeners
// (a Topology) into equivalent configurations for HAProxy, nginx and Sift
// (an Envoy v3 bootstrap), so that every target proxies the same ports to the
// same backends in the same way.
package gen

import (
	"fmt"
	"sort"
)

// Kind is what a listener does with a connection.
type Kind string

const (
	// Opaque forwards bytes (L4), no inspection.
	Opaque Kind = "opaque"
	// Detect inspects the first bytes for a protocol, then forwards them as
	// L4. Sift: its detect listener filter. HAProxy: tcp-request
	// inspect-delay with the HTTP ACL. nginx: has no HTTP sniffing in its
	// stream module, so this is plain L4 there (said in the report).
	Detect Kind = "detect"
	// MTLSOrigin accepts plain TCP and forwards over TLS with a client
	// certificate, verifying the server against the bench CA.
	//
	// Every target speaks TLS 1.3 only, with X25519 key exchange (pinned on
	// the terminating side: Go would otherwise prefer X25519MLKEM768) and
	// ECDSA P-256 certificates (GenerateCerts), and the originating side never
	// resumes a session (HAProxy no-ssl-reuse, nginx proxy_ssl_session_reuse
	// off, Sift max_session_keys: 0): every new connection is a full mutual
	// handshake, so connections/s is handshakes/s.
	MTLSOrigin Kind = "mtls-origin"
	// MTLSTerminate accepts TLS, requires a client certificate signed by the
	// bench CA, and forwards plain TCP.
	MTLSTerminate Kind = "mtls-terminate"
	// HTTP1 is an L7 HTTP/1.1 proxy with keep-alive to the upstreams.
	HTTP1 Kind = "http1"
	// H2C is an L7 proxy accepting cleartext HTTP/2 (prior knowledge); HTTP/2
	// upstream where the proxy can (nginx: HTTP/1.1 upstream).
	H2C Kind = "h2c"
	// GRPC is an L7 proxy for gRPC over cleartext HTTP/2 both sides.
	GRPC Kind = "grpc"
)

// Policy is how an L7 listener balances requests over several upstreams.
type Policy string

const (
	RoundRobin Policy = "round-robin"
	// LeastLoaded is HAProxy's leastconn, nginx's least_conn and Sift's
	// peak-EWMA (the mesh default for HTTP, as in Linkerd).
	LeastLoaded Policy = "least-loaded"
)

// Listener is one proxy listener on 127.0.0.1.
type Listener struct {
	Name      string // [a-z0-9_]+, unique within the topology
	Port      int
	Kind      Kind
	Upstreams []int // backend ports on 127.0.0.1
	Policy    Policy
	// DetectTimeoutSeconds bounds detection (Detect only); 0 means 10.
	DetectTimeoutSeconds int
	// Plugin, on a Detect listener, is a protocol-sniffer plugin Sift's
	// detect filter asks after its built-ins, and PluginProtocol the
	// protocol it reports; the detected chain selects it too. HAProxy and
	// nginx have no equivalent and forward such a listener at L4.
	Plugin, PluginProtocol string
}

// Topology is every listener one proxy process runs for a scenario.
type Topology struct {
	Listeners []Listener
}

// Ports lists the listener ports (what "ready" waits for).
func (t Topology) Ports() []int {
	var ps []int
	for _, l := range t.Listeners {
		ps = append(ps, l.Port)
	}
	sort.Ints(ps)
	return ps
}

// Validate rejects topologies no generator can express.
func (t Topology) Validate() error {
	seenName, seenPort := map[string]bool{}, map[int]bool{}
	for _, l := range t.Listeners {
		if l.Name == "" || seenName[l.Name] {
			return fmt.Errorf("listener name %q empty or repeated", l.Name)
		}
		for _, r := range l.Name {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
				return fmt.Errorf("listener name %q: use [a-z0-9_]", l.Name)
			}
		}
		if l.Port <= 0 || l.Port > 65535 || seenPort[l.Port] {
			return fmt.Errorf("listener %s: port %d invalid or repeated", l.Name, l.Port)
		}
		seenName[l.Name], seenPort[l.Port] = true, true
		if len(l.Upstreams) == 0 {
			return fmt.Errorf("listener %s: no upstream", l.Name)
		}
		switch l.Kind {
		case Opaque, Detect, MTLSOrigin, MTLSTerminate, HTTP1, H2C, GRPC:
		default:
			return fmt.Errorf("listener %s: unknown kind %q", l.Name, l.Kind)
		}
		switch l.Policy {
		case "", RoundRobin, LeastLoaded:
		default:
			return fmt.Errorf("listener %s: unknown policy %q", l.Name, l.Policy)
		}
	}
	return nil
}

// Env is what the generated files refer to on disk.
type Env struct {
	WorkDir string // nginx pid, temp and log files
	// NginxStreamModule is the dynamic stream module to load_module (empty
	// when nginx has it built in).
	NginxStreamModule string
	// MaxConns is the number of concurrent client connections each proxy
	// must accept (memory scenario); fd limits are derived from it.
	MaxConns int
	// FDLimit is the hard RLIMIT_NOFILE the proxies inherit.
	FDLimit int
	Certs   Certs
	// SiftTelemetry gives sift-proxy an admin server on a free port, which
	// turns its Prometheus metrics on.
	SiftTelemetry bool
}

func (e Env) maxConns() int {
	if e.MaxConns <= 0 {
		return 4096
	}
	return e.MaxConns
}
