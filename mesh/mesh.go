// Package mesh is Sift's model of a service mesh — namespaces, services,
// workloads, and the Linkerd-compatible knobs that decide how their traffic
// is treated (declared port protocols, opaque ports, skip ports, the
// detection timeout) — independent of where it comes from. A Source (a YAML
// file today, Kubernetes next) produces complete, immutable *Mesh values;
// the control plane turns each one into xDS snapshots.
//
// Opaque ports follow Linkerd's config.linkerd.io/opaque-ports annotation: a
// list set on a service, a workload or a namespace REPLACES (never augments)
// the install-wide default list. A service's list applies to meshed clients
// connecting to the service; a workload's list applies to connections it
// receives; a namespace's list applies to the services and workloads in it
// that set none themselves. See Mesh.ServiceOpaquePorts and
// Mesh.WorkloadOpaquePorts.
package mesh

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Protocol is a port's declared protocol, in Linkerd's vocabulary (the
// Server resource's proxyProtocol).
type Protocol string

// Declared protocols. Unknown (the default) means "detect".
const (
	ProtocolUnknown Protocol = "unknown"
	ProtocolHTTP1   Protocol = "HTTP/1"
	ProtocolHTTP2   Protocol = "HTTP/2"
	ProtocolGRPC    Protocol = "gRPC"
	ProtocolOpaque  Protocol = "opaque"
	ProtocolTLS     Protocol = "TLS"
)

var protocols = []Protocol{ProtocolUnknown, ProtocolHTTP1, ProtocolHTTP2, ProtocolGRPC, ProtocolOpaque, ProtocolTLS}

// ParseProtocol maps a name to a Protocol, ignoring case ("http/1", "GRPC");
// "" is ProtocolUnknown.
func ParseProtocol(s string) (Protocol, bool) {
	if s == "" {
		return ProtocolUnknown, true
	}
	for _, p := range protocols {
		if strings.EqualFold(s, string(p)) {
			return p, true
		}
	}
	return "", false
}

// ProtocolNames lists the accepted protocol names, for error messages.
func ProtocolNames() string {
	names := make([]string, len(protocols))
	for i, p := range protocols {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

// IsHTTP reports whether p is an HTTP protocol (HTTP/1, HTTP/2, gRPC).
func (p Protocol) IsHTTP() bool {
	return p == ProtocolHTTP1 || p == ProtocolHTTP2 || p == ProtocolGRPC
}

// Defaults.
const (
	// DefaultDetectTimeout is Linkerd's protocol-detection timeout.
	DefaultDetectTimeout = 10 * time.Second
	DefaultClusterDomain = "cluster.local"
	// DefaultTrustDomain is the SPIFFE trust domain of workload identities.
	DefaultTrustDomain = "cluster.local"
	// DefaultServiceAccount is a workload's service account when none is
	// set, as in Kubernetes.
	DefaultServiceAccount = "default"
)

// Mesh is a whole mesh. After Complete returns nil it is immutable: sources
// hand the same *Mesh to any number of readers.
type Mesh struct {
	// DefaultOpaquePorts is the install-wide list (Linkerd's
	// proxy.opaquePorts); nil means DefaultOpaquePorts.
	DefaultOpaquePorts *PortSet
	// DetectTimeout bounds protocol detection; 0 means DefaultDetectTimeout.
	DetectTimeout time.Duration
	// DetectGracePeriod is how long a silent client waits before the
	// server-first race opens the upstream (0 turns the race off); nil
	// leaves the detect filter's default (50ms).
	DetectGracePeriod *time.Duration
	// ClusterDomain completes service host names; "" means DefaultClusterDomain.
	ClusterDomain string
	// TrustDomain is the SPIFFE trust domain of workload identities
	// (spiffe://<trust domain>/ns/<namespace>/sa/<service account>); ""
	// means DefaultTrustDomain.
	TrustDomain string
	// MTLS turns on mutual TLS between proxies in the generated
	// configuration (when the control plane runs a CA); off by default.
	MTLS       bool
	Namespaces []*Namespace

	// workloadByKey and workloadByNodeID index the workloads; Complete
	// fills them.
	workloadByKey, workloadByNodeID map[string]*Workload
}

// Namespace groups services and workloads. Its opaque and skip ports apply to
// those that set none themselves.
type Namespace struct {
	Name              string
	OpaquePorts       *PortSet // nil: not set
	SkipInboundPorts  *PortSet // nil: not set
	SkipOutboundPorts *PortSet // nil: not set
	Services          []*Service
	Workloads         []*Workload
}

// Service is a stable address (cluster IPs and a host name) in front of the
// workloads its selector picks.
type Service struct {
	Name, Namespace string
	// ClusterIPs are the virtual IPs clients connect to; a service without
	// one is reachable only through its host name (not routed by the
	// outbound listener, which matches destination IPs).
	ClusterIPs []netip.Addr
	// Hostname defaults to name.namespace.svc.<cluster domain>.
	Hostname string
	Ports    []ServicePort
	// Selector picks workloads by label, as a Kubernetes Service's does: a
	// workload is selected when it has every label. An empty selector
	// selects nothing (Kubernetes: endpoints are managed elsewhere).
	Selector    map[string]string
	OpaquePorts *PortSet // nil: not set
	// Endpoints, when not nil, are the keys ("namespace/name") of the
	// workloads that receive the service's traffic, as a Kubernetes
	// EndpointSlice's ready endpoints name them; nil means every workload
	// the selector picks. The selector still decides which ports a
	// workload's proxy serves (Workload.Services), so a workload that is
	// not ready yet already has its inbound listener.
	Endpoints []string

	// Identities lists the SPIFFE IDs of the workloads the service selects,
	// sorted and without duplicates: the identities a client may accept
	// from the service's endpoints. Complete fills it.
	Identities []string
}

// ServicePort is one port of a service.
type ServicePort struct {
	Name string
	Port uint16
	// TargetPort is the workloads' port; 0 means Port (unless
	// TargetPortName is set).
	TargetPort uint16
	// TargetPortName, when set, names the workloads' port instead
	// (Kubernetes' named targetPort): each workload's port of that name
	// (WorkloadPort.Name), resolved per workload as kube-proxy and the
	// EndpointSlice controller do; a workload without one is no endpoint of
	// this port. TargetPort is then ignored.
	TargetPortName string
	Protocol       Protocol
}

// Target returns the workload port the service port forwards to when it is
// a number; 0 for a named target port (see TargetFor).
func (p ServicePort) Target() uint16 {
	if p.TargetPortName != "" {
		return 0
	}
	if p.TargetPort == 0 {
		return p.Port
	}
	return p.TargetPort
}

// TargetFor returns the port of w that p forwards to: the numeric target
// port, or w's port named TargetPortName; false when w has no port of that
// name.
func (p ServicePort) TargetFor(w *Workload) (uint16, bool) {
	if p.TargetPortName == "" {
		return p.Target(), true
	}
	for _, wp := range w.Ports {
		if wp.Name == p.TargetPortName {
			return wp.Port, true
		}
	}
	return 0, false
}

// Workload is one instance (a pod, a VM) and, when meshed, its proxy.
type Workload struct {
	Name, Namespace string
	Addresses       []netip.Addr
	// Ports the workload serves; ports that selecting services target are
	// served too, with the service port's protocol, even when not listed.
	Ports []WorkloadPort
	// ServiceAccount names the workload's identity within its namespace;
	// "" means DefaultServiceAccount.
	ServiceAccount string
	Labels         map[string]string
	// NodeID is the xDS node id of the workload's proxy; "" means
	// name.namespace.
	NodeID string
	// Unmeshed: the workload runs without a Sift proxy (a plain backend,
	// a Kubernetes pod that was not injected). Its endpoints are served
	// as soon as the source lists them; a meshed workload's wait until its
	// own proxy has acknowledged its inbound listener (the control
	// plane's endpoint gate, docs/kubernetes.md).
	Unmeshed          bool
	OpaquePorts       *PortSet // nil: not set
	SkipInboundPorts  *PortSet // nil: not set
	SkipOutboundPorts *PortSet // nil: not set

	// Services lists the services selecting the workload, as
	// "namespace/name", sorted; Complete fills it.
	Services []string
	// Identity is the workload's SPIFFE ID,
	// spiffe://<trust domain>/ns/<namespace>/sa/<service account>;
	// Complete fills it.
	Identity string
}

// WorkloadPort is one port a workload serves.
type WorkloadPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
	// AuthorizedClients are the client identities that may connect to the
	// port through the mesh; empty: any identity of the trust domain.
	AuthorizedClients []ClientMatch
	// Plaintext: the port also accepts plaintext connections from unmeshed
	// clients (no identity), beside mTLS from meshed ones.
	Plaintext bool
}

// ClientMatch names client identities: one SPIFFE ID (Identity), a service
// account (Namespace and ServiceAccount), or every service account of a
// namespace (Namespace alone).
type ClientMatch struct {
	Identity                  string
	Namespace, ServiceAccount string
}

// Principals returns what m matches in trust domain td: an exact SPIFFE ID,
// or a prefix of SPIFFE IDs.
func (m ClientMatch) Principals(td string) (exact, prefix string) {
	switch {
	case m.Identity != "":
		return m.Identity, ""
	case m.ServiceAccount != "":
		return SPIFFEID(td, m.Namespace, m.ServiceAccount), ""
	}
	return "", "spiffe://" + td + "/ns/" + m.Namespace + "/sa/"
}

// SPIFFEID returns the SPIFFE ID of service account sa in namespace ns of
// trust domain td: "spiffe://td/ns/ns/sa/sa". The parts are not checked
// (Complete validates those of a mesh).
func SPIFFEID(td, ns, sa string) string {
	return "spiffe://" + td + "/ns/" + ns + "/sa/" + sa
}

// Key returns "namespace/name".
func (s *Service) Key() string { return s.Namespace + "/" + s.Name }

// Key returns "namespace/name".
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// Selects reports whether s's selector picks w.
func (s *Service) Selects(w *Workload) bool {
	if len(s.Selector) == 0 || s.Namespace != w.Namespace {
		return false
	}
	for k, v := range s.Selector {
		if got, ok := w.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Source produces meshes: a file today, Kubernetes next.
type Source interface {
	// Snapshot returns the current mesh, complete and immutable. Safe for
	// concurrent use.
	Snapshot() *Mesh
	// Watch returns a channel that receives a value whenever Snapshot
	// changes; notifications coalesce (a slow reader sees the latest mesh,
	// not every one). The channel is closed when ctx ends.
	Watch(ctx context.Context) <-chan struct{}
}

// Namespace returns the named namespace, or nil.
func (m *Mesh) Namespace(name string) *Namespace {
	for _, ns := range m.Namespaces {
		if ns.Name == name {
			return ns
		}
	}
	return nil
}

// Services returns every service, sorted by namespace then name.
func (m *Mesh) Services() []*Service {
	var out []*Service
	for _, ns := range m.Namespaces {
		out = append(out, ns.Services...)
	}
	sortByKey(out, (*Service).Key)
	return out
}

// sortByKey sorts items by key, building each key once rather than once per
// comparison (10 000 workloads: 10 000 strings instead of about 270 000).
func sortByKey[T any](items []T, key func(T) string) {
	type keyed struct {
		key  string
		item T
	}
	ks := make([]keyed, len(items))
	for i, it := range items {
		ks[i] = keyed{key(it), it}
	}
	slices.SortFunc(ks, func(a, b keyed) int { return strings.Compare(a.key, b.key) })
	for i, k := range ks {
		items[i] = k.item
	}
}

// Workloads returns every workload, sorted by namespace then name.
func (m *Mesh) Workloads() []*Workload {
	var out []*Workload
	for _, ns := range m.Namespaces {
		out = append(out, ns.Workloads...)
	}
	sortByKey(out, (*Workload).Key)
	return out
}

// Service returns the service "namespace/name", or nil.
func (m *Mesh) Service(key string) *Service {
	nsName, name, _ := strings.Cut(key, "/")
	if ns := m.Namespace(nsName); ns != nil {
		for _, s := range ns.Services {
			if s.Name == name {
				return s
			}
		}
	}
	return nil
}

// Workload returns the workload "namespace/name", or nil.
func (m *Mesh) Workload(key string) *Workload {
	if m.workloadByKey != nil {
		return m.workloadByKey[key]
	}
	nsName, name, _ := strings.Cut(key, "/")
	if ns := m.Namespace(nsName); ns != nil {
		for _, w := range ns.Workloads {
			if w.Name == name {
				return w
			}
		}
	}
	return nil
}

// WorkloadByNodeID returns the workload whose proxy has node id id, or nil.
func (m *Mesh) WorkloadByNodeID(id string) *Workload {
	if m.workloadByNodeID != nil {
		return m.workloadByNodeID[id]
	}
	for _, ns := range m.Namespaces {
		for _, w := range ns.Workloads {
			if w.NodeID == id {
				return w
			}
		}
	}
	return nil
}

// DefaultOpaque returns the install-wide opaque list.
func (m *Mesh) DefaultOpaque() PortSet {
	if m.DefaultOpaquePorts != nil {
		return *m.DefaultOpaquePorts
	}
	return MustParsePortSet(DefaultOpaquePorts)
}

// Detection returns the protocol-detection timeout.
func (m *Mesh) Detection() time.Duration {
	if m.DetectTimeout > 0 {
		return m.DetectTimeout
	}
	return DefaultDetectTimeout
}

// ServiceOpaquePorts is the opaque-port list meshed clients apply to s: the
// service's own list if set, else its namespace's, else the install default.
// A list replaces the lower levels; it never adds to them.
func (m *Mesh) ServiceOpaquePorts(s *Service) PortSet {
	if s.OpaquePorts != nil {
		return *s.OpaquePorts
	}
	if ns := m.Namespace(s.Namespace); ns != nil && ns.OpaquePorts != nil {
		return *ns.OpaquePorts
	}
	return m.DefaultOpaque()
}

// WorkloadOpaquePorts is the opaque-port list for connections w receives:
// the workload's own list if set, else its namespace's, else the default.
func (m *Mesh) WorkloadOpaquePorts(w *Workload) PortSet {
	if w.OpaquePorts != nil {
		return *w.OpaquePorts
	}
	if ns := m.Namespace(w.Namespace); ns != nil && ns.OpaquePorts != nil {
		return *ns.OpaquePorts
	}
	return m.DefaultOpaque()
}

// SkipInbound returns the ports whose inbound connections bypass w's proxy
// (the workload's list, else its namespace's).
func (m *Mesh) SkipInbound(w *Workload) PortSet {
	if w.SkipInboundPorts != nil {
		return *w.SkipInboundPorts
	}
	if ns := m.Namespace(w.Namespace); ns != nil && ns.SkipInboundPorts != nil {
		return *ns.SkipInboundPorts
	}
	return PortSet{}
}

// SkipOutbound returns the destination ports whose connections from w bypass
// its proxy (the workload's list, else its namespace's).
func (m *Mesh) SkipOutbound(w *Workload) PortSet {
	if w.SkipOutboundPorts != nil {
		return *w.SkipOutboundPorts
	}
	if ns := m.Namespace(w.Namespace); ns != nil && ns.SkipOutboundPorts != nil {
		return *ns.SkipOutboundPorts
	}
	return PortSet{}
}

// Treatment is how a proxy handles connections to one port.
type Treatment uint8

const (
	// Detect: protocol unknown; sift the first bytes (HTTP, TLS or opaque).
	Detect Treatment = iota
	// HTTP: declared HTTP/1, HTTP/2 or gRPC; no detection needed.
	HTTP
	// TLS: declared TLS, proxied as an opaque stream without detection.
	TLS
	// Opaque: declared opaque or on the opaque list; detection is skipped.
	Opaque
)

func (t Treatment) String() string {
	switch t {
	case HTTP:
		return "http"
	case TLS:
		return "tls"
	case Opaque:
		return "opaque"
	}
	return "detect"
}

// treatment: the opaque list wins over every declared protocol, as Linkerd's
// annotation does; then the declared protocol.
func treatment(port uint16, p Protocol, opaque PortSet) Treatment {
	switch {
	case p == ProtocolOpaque || opaque.Contains(port):
		return Opaque
	case p == ProtocolTLS:
		return TLS
	case p.IsHTTP():
		return HTTP
	}
	return Detect
}

// ServicePortTreatment is how meshed clients treat connections to p of s.
func (m *Mesh) ServicePortTreatment(s *Service, p ServicePort) Treatment {
	return treatment(p.Port, p.Protocol, m.ServiceOpaquePorts(s))
}

// InboundPort is a port a workload's proxy accepts for it.
type InboundPort struct {
	Port      uint16
	Protocol  Protocol
	Treatment Treatment
	// AuthorizedClients and Plaintext are the workload's declaration of
	// the port (WorkloadPort).
	AuthorizedClients []ClientMatch
	Plaintext         bool
}

// InboundPorts returns the ports w serves through its proxy, sorted: its
// declared ports and the target ports of the services selecting it (with the
// service port's protocol when the workload declares none), minus its
// inbound skip ports.
func (m *Mesh) InboundPorts(w *Workload) []InboundPort {
	protos := map[uint16]Protocol{}
	declared := map[uint16]WorkloadPort{}
	for _, p := range w.Ports {
		protos[p.Port] = p.Protocol
		declared[p.Port] = p
	}
	for _, key := range w.Services {
		s := m.Service(key)
		if s == nil {
			continue
		}
		for _, sp := range s.Ports {
			target, ok := sp.TargetFor(w)
			if !ok {
				continue // a named target port w does not have
			}
			if cur, ok := protos[target]; !ok || cur == ProtocolUnknown {
				protos[target] = sp.Protocol
			}
		}
	}
	skip := m.SkipInbound(w)
	opaque := m.WorkloadOpaquePorts(w)
	out := make([]InboundPort, 0, len(protos))
	for port, proto := range protos {
		if skip.Contains(port) {
			continue
		}
		d := declared[port]
		out = append(out, InboundPort{Port: port, Protocol: proto, Treatment: treatment(port, proto, opaque),
			AuthorizedClients: d.AuthorizedClients, Plaintext: d.Plaintext})
	}
	slices.SortFunc(out, func(a, b InboundPort) int { return int(a.Port) - int(b.Port) })
	return out
}

// Endpoints returns the workloads that receive s's traffic, sorted by key:
// those named by s.Endpoints when set, else those selected by s.
func (m *Mesh) Endpoints(s *Service) []*Workload {
	var out []*Workload
	if s.Endpoints != nil {
		for _, key := range s.Endpoints {
			if w := m.Workload(key); w != nil {
				out = append(out, w)
			}
		}
		slices.SortFunc(out, func(a, b *Workload) int { return strings.Compare(a.Key(), b.Key()) })
		return slices.CompactFunc(out, func(a, b *Workload) bool { return a == b })
	}
	for _, w := range m.Workloads() {
		if slices.Contains(w.Services, s.Key()) {
			out = append(out, w)
		}
	}
	return out
}
