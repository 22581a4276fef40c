package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/mesh"
)

// builder makes the snapshot of every workload of a mesh, regenerating only
// what a change affects (docs/kubernetes.md, "Incremental rebuilds"). Its
// output has the resources Generate gives each workload; it differs from a
// fresh builder's only in the work done.
//
// A proxy's resources split into parts that depend on little:
//
//   - per service: its outbound clusters and load assignments, and per
//     service port its outbound filter chains and their routes. They depend
//     on the service, its endpoints, the mesh's treatment of its ports and
//     mTLS, never on the workload: every proxy shares them;
//   - per outbound key (the chains of every port, a workload's outbound skip
//     ports, the detection settings): the outbound listener and routes;
//   - per workload: its inbound listener, clusters and routes, and secrets.
//
// Each part is kept with the inputs it was generated from (a fingerprint
// string) and regenerated only when they differ. Each part's version is a
// hash of its resources' deterministic encodings, computed when it is
// generated; a snapshot's type version is a hash of its parts' versions, so
// it changes exactly when the type's content does and only the changed types
// are pushed. Workloads whose parts are the same share one *cache.Snapshot
// (and its maps): at 10 000 pods of a few shapes, a handful of snapshots.
//
// Not safe for concurrent use (the Controller calls it from apply, which one
// goroutine runs at a time).
type builder struct {
	opts Options
	// full regenerates every part on every build and gives every snapshot
	// type a version of its own per build, so that every connected proxy is
	// sent its whole configuration on every change (Config.FullPush: the
	// scale benchmark's baseline).
	full   bool
	builds uint64 // builds so far
	// securityChanges counts the Security's announced changes.
	securityChanges uint64

	services  map[string]*serviceFragment  // service key -> fragment
	outbound  map[string]*outboundFragment // outbound key -> fragment
	nodes     map[string]*nodeFragment     // workload key -> fragment
	merged    map[string]cache.Resources   // type and part versions -> resources
	snapshots map[string]*cache.Snapshot   // type versions -> snapshot

	stats BuildStats
}

// BuildStats counts what one build of every workload's snapshot did.
type BuildStats struct {
	Services, ServicesGenerated   int
	Workloads, WorkloadsGenerated int
	// Snapshots is the number of distinct snapshots, SnapshotsNew those
	// not kept from the previous build.
	Snapshots, SnapshotsNew int
}

func newBuilder(opts Options, full bool) *builder {
	b := &builder{opts: opts, full: full}
	b.reset()
	return b
}

func (b *builder) reset() {
	b.services = map[string]*serviceFragment{}
	b.outbound = map[string]*outboundFragment{}
	b.nodes = map[string]*nodeFragment{}
	b.merged = map[string]cache.Resources{}
	b.snapshots = map[string]*cache.Snapshot{}
}

// part is some resources of one type, the hashes of their deterministic
// encodings, and their version: a hash of their names and hashes in name
// order, so a function of the set of resources alone (not of how they were
// grouped into parts).
type part struct {
	items   []types.Resource
	hashes  []string // of items[i]
	version string
}

// newPart hashes items' deterministic encodings.
func newPart[T types.Resource](typ string, items []T) part {
	p := part{items: make([]types.Resource, len(items)), hashes: make([]string, len(items))}
	opts := proto.MarshalOptions{Deterministic: true}
	for i, r := range items {
		p.items[i] = r
		b, err := opts.Marshal(r)
		if err != nil {
			panic(err) // generated messages always marshal
		}
		sum := sha256.Sum256(b)
		p.hashes[i] = string(sum[:12])
	}
	p.version = partVersion(typ, p)
	return p
}

// joinParts is the parts' resources as one part.
func joinParts(typ string, parts ...part) part {
	var out part
	for _, p := range parts {
		out.items = append(out.items, p.items...)
		out.hashes = append(out.hashes, p.hashes...)
	}
	out.version = partVersion(typ, out)
	return out
}

func partVersion(typ string, p part) string {
	order := make([]int, len(p.items))
	names := make([]string, len(p.items))
	for i, r := range p.items {
		order[i], names[i] = i, cache.GetResourceName(r)
	}
	slices.SortFunc(order, func(a, b int) int { return strings.Compare(names[a], names[b]) })
	pairs := make([]string, 0, 2*len(order))
	for _, i := range order {
		pairs = append(pairs, names[i], p.hashes[i])
	}
	return hashStrings(typ, pairs...)
}

func hashStrings(kind string, ss ...string) string {
	h := sha256.New()
	h.Write([]byte(kind))
	for _, s := range ss {
		fmt.Fprintf(h, "\n%d\n%s", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

type serviceFragment struct {
	inputs    string
	clusters  part
	endpoints part
	ports     []portFragment // in the order of the service's ports
}

type portFragment struct {
	port    uint16
	chains  []*listenerv3.FilterChain
	routes  part
	version string // of chains and routes
}

type outboundFragment struct {
	listeners, routes part
}

type nodeFragment struct {
	inputs                               string
	listeners, clusters, routes, secrets part
}

// build returns the snapshot of every workload of m (complete) by key, and
// the workloads whose snapshot is inconsistent (a bug; they are left out).
//
// withheld is Options.WithheldEndpoints for this build (the endpoint
// gate's, which changes without the mesh changing): the endpoints are
// filtered before a service's inputs are fingerprinted.
func (b *builder) build(m *mesh.Mesh, withheld map[string]bool) (map[string]*cache.Snapshot, map[string]error) {
	b.builds++
	if b.full {
		b.reset()
	}
	b.stats = BuildStats{}
	epoch := b.securityEpoch()
	opts := b.opts
	opts.WithheldEndpoints = withheld
	g := &generator{m: m, opts: opts}

	// Shared: every service's fragment, in the order Generate visits them.
	services := m.Services()
	selected := selectedWorkloads(m)
	serviceWide := fmt.Sprintf("mtls=%t|sec=%s", g.mtls(), epoch)
	nextServices := make(map[string]*serviceFragment, len(services))
	frags := make([]*serviceFragment, len(services))
	var clusterParts, endpointParts []part
	var portVersions []string
	for i, s := range services {
		eps := selected[s.Key()]
		if s.Endpoints != nil {
			eps = m.Endpoints(s)
		}
		eps = g.published(eps)
		inputs := serviceInputs(m, s, eps, serviceWide)
		f := b.services[s.Key()]
		if f == nil || f.inputs != inputs {
			f = b.generateService(g, s, eps, inputs)
			b.stats.ServicesGenerated++
		}
		nextServices[s.Key()] = f
		frags[i] = f
		clusterParts = append(clusterParts, f.clusters)
		endpointParts = append(endpointParts, f.endpoints)
		for _, pf := range f.ports {
			portVersions = append(portVersions, pf.version)
		}
	}
	b.services = nextServices
	b.stats.Services = len(services)
	sharedClusters := joinParts(resource.ClusterType, clusterParts...)
	sharedEndpoints := joinParts(resource.EndpointType, endpointParts...)
	chainsVersion := hashStrings("chains", portVersions...)
	detection := "detect=" + m.Detection().String() + "|grace="
	if gp := m.DetectGracePeriod; gp != nil {
		detection += gp.String()
	}

	nodeWide := fmt.Sprintf("mtls=%t|td=%s|%s|sec=%s", g.mtls(), m.TrustDomain, detection, epoch)
	nextOutbound := map[string]*outboundFragment{}
	nextNodes := make(map[string]*nodeFragment, len(b.nodes))
	nextMerged := map[string]cache.Resources{}
	nextSnapshots := map[string]*cache.Snapshot{}
	snaps := map[string]*cache.Snapshot{}
	invalid := map[string]error{}
	for _, w := range m.Workloads() {
		b.stats.Workloads++
		skip := m.SkipOutbound(w)
		okey := chainsVersion + "|" + skip.String() + "|" + detection
		of := nextOutbound[okey]
		if of == nil {
			if of = b.outbound[okey]; of == nil {
				of = b.generateOutbound(g, frags, skip)
			}
			nextOutbound[okey] = of
		}
		inputs := nodeInputs(m, w, nodeWide)
		nf := b.nodes[w.Key()]
		if nf == nil || nf.inputs != inputs {
			nf = b.generateNode(m, w, inputs)
			b.stats.WorkloadsGenerated++
		}
		nextNodes[w.Key()] = nf

		kinds := [...]struct {
			index types.ResponseType
			typ   string
			parts []part
		}{
			{index: typesOf.listener, typ: resource.ListenerType, parts: []part{of.listeners, nf.listeners}},
			{index: typesOf.cluster, typ: resource.ClusterType, parts: []part{sharedClusters, nf.clusters}},
			{index: typesOf.endpoint, typ: resource.EndpointType, parts: []part{sharedEndpoints}},
			{index: typesOf.route, typ: resource.RouteType, parts: []part{of.routes, nf.routes}},
			{index: typesOf.secret, typ: resource.SecretType, parts: []part{nf.secrets}},
		}
		var res [len(kinds)]cache.Resources
		var versions [len(kinds)]string
		for i, t := range kinds {
			res[i] = b.merge(nextMerged, t.typ, t.parts...)
			versions[i] = res[i].Version
		}
		skey := strings.Join(versions[:], "|")
		snap := nextSnapshots[skey]
		if snap == nil {
			if snap = b.snapshots[skey]; snap == nil {
				snap = &cache.Snapshot{}
				for i, t := range kinds {
					snap.Resources[t.index] = res[i]
				}
				if err := snap.Consistent(); err != nil {
					invalid[w.Key()] = err
					continue
				}
				b.stats.SnapshotsNew++
			}
			nextSnapshots[skey] = snap
		}
		snaps[w.Key()] = snap
	}
	b.outbound, b.nodes, b.merged, b.snapshots = nextOutbound, nextNodes, nextMerged, nextSnapshots
	b.stats.Snapshots = len(nextSnapshots)
	if b.full {
		// Every type of every snapshot gets a version of this build.
		suffix := "~" + strconv.FormatUint(b.builds, 10)
		fresh := map[*cache.Snapshot]*cache.Snapshot{}
		for k, s := range snaps {
			f := fresh[s]
			if f == nil {
				f = &cache.Snapshot{}
				for i, r := range s.Resources {
					if r.Items != nil || r.Version != "" {
						r.Version += suffix
					}
					f.Resources[i] = r
				}
				fresh[s] = f
			}
			snaps[k] = f
		}
	}
	return snaps, invalid
}

// typesOf are the snapshot indexes of the generated types.
var typesOf = struct{ listener, cluster, endpoint, route, secret types.ResponseType }{
	cache.GetResponseType(resource.ListenerType), cache.GetResponseType(resource.ClusterType),
	cache.GetResponseType(resource.EndpointType), cache.GetResponseType(resource.RouteType),
	cache.GetResponseType(resource.SecretType),
}

// merge returns the resources of parts as one type's group, kept across
// builds by their versions.
func (b *builder) merge(next map[string]cache.Resources, typ string, parts ...part) cache.Resources {
	var key strings.Builder
	key.WriteString(typ)
	for _, p := range parts {
		key.WriteString("|" + p.version)
	}
	k := key.String()
	if r, ok := next[k]; ok {
		return r
	}
	r, ok := b.merged[k]
	if !ok {
		joined := joinParts(typ, parts...)
		r = cache.NewResources(joined.version, joined.items)
	}
	next[k] = r
	return r
}

// securityChanged records that the Security's output changed
// (SecurityWatcher): every part using it is regenerated on the next build.
func (b *builder) securityChanged() { b.securityChanges++ }

// securityEpoch names what the Security's output depends on besides the
// mesh: the changes it announced (SecurityWatcher) and its state
// (SecurityStater). A Security that announces nothing is deterministic
// (Security's contract), so its output depends on the mesh alone.
func (b *builder) securityEpoch() string {
	if b.opts.Security == nil {
		return ""
	}
	epoch := "changes:" + strconv.FormatUint(b.securityChanges, 10)
	if s, ok := b.opts.Security.(SecurityStater); ok {
		epoch += "|state:" + s.SecurityState()
	}
	return epoch
}

// selectedWorkloads maps each service key to the workloads it selects (Workload.Services), sorted by key: Mesh.Endpoints of services
// without an Endpoints list, for all of them at once.
func selectedWorkloads(m *mesh.Mesh) map[string][]*mesh.Workload {
	out := map[string][]*mesh.Workload{}
	for _, w := range m.Workloads() {
		for _, key := range w.Services {
			out[key] = append(out[key], w)
		}
	}
	return out
}

// serviceInputs is everything serviceClusters and portChains read for s:
// its fields, its ports' treatment (opaque list), its endpoints' names and
// addresses, and the mesh-wide inputs wide.
func serviceInputs(m *mesh.Mesh, s *mesh.Service, eps []*mesh.Workload, wide string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%v|%v|%q|opaque=%s|%s|eps:", s.Key(), s.Hostname, s.ClusterIPs, s.Ports, s.Identities, m.ServiceOpaquePorts(s), wide)
	for _, w := range eps {
		// Ports: a named target port resolves per workload.
		fmt.Fprintf(&b, "%s/%s%v%v;", w.Namespace, w.Name, w.Addresses, w.Ports)
	}
	return b.String()
}

// nodeInputs is everything inbound and Security read for w: its inbound
// ports (its ports, its services' ports, skip and opaque lists), its
// identity, and the mesh-wide inputs wide. A Security must depend on no
// other field of w than those written here.
func nodeInputs(m *mesh.Mesh, w *mesh.Workload, wide string) string {
	return fmt.Sprintf("%s|%s|%s|%s|%v|%v|%+v|%+v|%t|%s", w.Key(), w.NodeID, w.Identity, w.ServiceAccount, w.Addresses, w.Labels,
		w.Ports, m.InboundPorts(w), w.Unmeshed, wide)
}

func (b *builder) generateService(g0 *generator, s *mesh.Service, eps []*mesh.Workload, inputs string) *serviceFragment {
	g := &generator{m: g0.m, opts: g0.opts, r: &Resources{}}
	g.serviceClusters(s, eps)
	f := &serviceFragment{
		inputs:    inputs,
		clusters:  newPart(resource.ClusterType, g.r.Clusters),
		endpoints: newPart(resource.EndpointType, g.r.Endpoints),
	}
	for _, p := range s.Ports {
		g.r = &Resources{}
		chains := g.portChains(s, p)
		pf := portFragment{port: p.Port, chains: chains, routes: newPart(resource.RouteType, g.r.Routes)}
		pf.version = hashStrings("port", strconv.Itoa(int(p.Port)), chainsHash(chains), pf.routes.version)
		f.ports = append(f.ports, pf)
	}
	return f
}

// chainsHash hashes chains' deterministic encodings, in order.
func chainsHash(chains []*listenerv3.FilterChain) string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, c := range chains {
		b, err := opts.Marshal(c)
		if err != nil {
			panic(err) // generated messages always marshal
		}
		fmt.Fprintf(h, "%d\n", len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// generateOutbound assembles the outbound listener and routes from the
// chains of every service port not in skip, in Generate's order.
func (b *builder) generateOutbound(g0 *generator, frags []*serviceFragment, skip mesh.PortSet) *outboundFragment {
	var chains []*listenerv3.FilterChain
	var routes []part
	for _, f := range frags {
		for _, pf := range f.ports {
			if skip.Contains(pf.port) {
				continue
			}
			chains = append(chains, pf.chains...)
			routes = append(routes, pf.routes)
		}
	}
	of := &outboundFragment{routes: joinParts(resource.RouteType, routes...)}
	var listeners []*listenerv3.Listener
	if len(chains) > 0 {
		g := &generator{m: g0.m, opts: g0.opts}
		listeners = append(listeners, g.outboundListenerOf(chains))
	}
	of.listeners = newPart(resource.ListenerType, listeners)
	return of
}

// generateNode generates w's own resources: inbound and secrets.
func (b *builder) generateNode(m *mesh.Mesh, w *mesh.Workload, inputs string) *nodeFragment {
	g := &generator{m: m, w: w, opts: b.opts, r: &Resources{}}
	g.inbound()
	if b.opts.Security != nil {
		g.r.Secrets = b.opts.Security.Secrets(w)
	}
	return &nodeFragment{
		inputs:    inputs,
		listeners: newPart(resource.ListenerType, g.r.Listeners),
		clusters:  newPart(resource.ClusterType, g.r.Clusters),
		routes:    newPart(resource.RouteType, g.r.Routes),
		secrets:   newPart(resource.SecretType, g.r.Secrets),
	}
}
