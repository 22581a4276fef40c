package ca

import (
	"errors"
	"log/slog"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/siftmesh/sift/mesh"
)

// Security serves every workload's secrets (WorkloadSecrets of its
// mesh.Workload.Identity, a key of its own) in its proxy's snapshot, and the mesh TLS
// contexts that the generator attaches when the mesh file sets mtls: true;
// it is the control plane's Options.Security and Config.Authenticator. Safe
// for concurrent use.
type Security struct {
	CA *CA
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// ClusterTransportSocket implements controlplane.Security: mesh mTLS to
// svc's endpoints, accepting the identities of the workloads it selects;
// alpn as for UpstreamTLSContext (empty: each HTTP pool offers its own).
func (s *Security) ClusterTransportSocket(svc *mesh.Service, alpn ...string) *corev3.TransportSocket {
	return TransportSocket(UpstreamTLSContext(svc.Hostname, svc.Identities, alpn...))
}

// InboundTransportSocket implements controlplane.Security: mesh mTLS from
// any client of w's trust domain.
func (s *Security) InboundTransportSocket(w *mesh.Workload, alpn ...string) *corev3.TransportSocket {
	td := strings.TrimPrefix(w.Identity, "spiffe://")
	if i := strings.IndexByte(td, '/'); i >= 0 {
		td = td[:i]
	}
	return TransportSocket(DownstreamTLSContext(td, alpn...))
}

// Secrets implements controlplane.Security: w's certificate and the trust
// bundle. An issuing failure is logged and leaves w without secrets (its
// proxy keeps warming whatever references them).
func (s *Security) Secrets(w *mesh.Workload) []*tlsv3.Secret {
	secrets, err := s.CA.WorkloadSecrets(w.Key(), w.Identity)
	if err != nil {
		log := s.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Error("ca: no certificate for workload", "workload", w.Key(), "error", err)
		return nil
	}
	return secrets
}

// SecurityState implements controlplane.SecurityStater (CA.SecurityState).
func (s *Security) SecurityState() string { return s.CA.SecurityState() }

// Changed implements controlplane.SecurityWatcher (CA.Changed).
func (s *Security) Changed() <-chan struct{} { return s.CA.Changed() }

// Authenticate implements controlplane.Authenticator (CA.Authenticate).
func (s *Security) Authenticate(node *corev3.Node) error { return s.CA.Authenticate(node) }

// Reason implements controlplane.AuthReasoner.
func (s *Security) Reason(err error) string {
	switch {
	case errors.Is(err, ErrNoNodeID):
		return "no_node_id"
	case errors.Is(err, ErrNoToken):
		return "no_token"
	case errors.Is(err, ErrInvalidToken):
		return "invalid_token"
	}
	return "other"
}
