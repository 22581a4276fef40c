package controlplane

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/siftmesh/sift/controlplane/ca"
	"github.com/siftmesh/sift/mesh"
)

// meshModel is a small mutable mesh that a random walk edits; mesh() builds
// the immutable *mesh.Mesh of each step.
type meshModel struct {
	defaultOpaque *string
	detect        time.Duration
	grace         *time.Duration
	mtls          bool
	namespaces    []*nsModel
	services      []*svcModel
	workloads     []*wlModel
	nextIP        int
}

type nsModel struct {
	name                    string
	opaque, skipIn, skipOut *string
}

type svcModel struct {
	name, ns  string
	ip        netip.Addr
	ports     []mesh.ServicePort
	app       string
	opaque    *string
	endpoints []string // nil: selected
}

type wlModel struct {
	name, ns, app, sa       string
	addr                    netip.Addr
	ports                   []mesh.WorkloadPort
	opaque, skipIn, skipOut *string
}

var (
	apps       = []string{"web", "api", "db", "cache"}
	protocols  = []mesh.Protocol{mesh.ProtocolUnknown, mesh.ProtocolHTTP1, mesh.ProtocolHTTP2, mesh.ProtocolGRPC, mesh.ProtocolOpaque, mesh.ProtocolTLS}
	portValues = []uint16{80, 443, 5432, 6379, 8080, 9090}
	portLists  = []string{"", "80", "5432", "8080,9090", "1-1000", "6379,443"}
)

func ptrOf[T any](v T) *T { return &v }

func (r *meshWalk) maybeList() *string {
	if r.rng.IntN(3) == 0 {
		return nil
	}
	return ptrOf(portLists[r.rng.IntN(len(portLists))])
}

type meshWalk struct {
	rng *rand.Rand
	m   *meshModel
}

func (r *meshWalk) ip() netip.Addr {
	r.m.nextIP++
	return netip.AddrFrom4([4]byte{10, 1, byte(r.m.nextIP >> 8), byte(r.m.nextIP)})
}

func (r *meshWalk) addWorkload() {
	ns := r.m.namespaces[r.rng.IntN(len(r.m.namespaces))].name
	w := &wlModel{name: fmt.Sprintf("w%d", r.m.nextIP), ns: ns, app: apps[r.rng.IntN(len(apps))],
		sa: apps[r.rng.IntN(2)], addr: r.ip()}
	if r.rng.IntN(2) == 0 {
		// Named half the time: services may target it by name.
		w.ports = []mesh.WorkloadPort{{Name: []string{"", "web"}[r.rng.IntN(2)], Port: portValues[r.rng.IntN(len(portValues))], Protocol: protocols[r.rng.IntN(len(protocols))]}}
	}
	r.m.workloads = append(r.m.workloads, w)
}

func (r *meshWalk) addService() {
	ns := r.m.namespaces[r.rng.IntN(len(r.m.namespaces))].name
	s := &svcModel{name: fmt.Sprintf("s%d", r.m.nextIP), ns: ns, ip: r.ip(), app: apps[r.rng.IntN(len(apps))]}
	for range 1 + r.rng.IntN(2) {
		p := portValues[r.rng.IntN(len(portValues))]
		if slices.ContainsFunc(s.ports, func(sp mesh.ServicePort) bool { return sp.Port == p }) {
			continue
		}
		sp := mesh.ServicePort{Port: p, TargetPort: []uint16{0, 8080}[r.rng.IntN(2)], Protocol: protocols[r.rng.IntN(len(protocols))]}
		if r.rng.IntN(3) == 0 {
			sp.TargetPort, sp.TargetPortName = 0, "web" // resolved per workload
		}
		s.ports = append(s.ports, sp)
	}
	r.m.services = append(r.m.services, s)
}

// step applies one random change and describes it.
func (r *meshWalk) step() string {
	m := r.m
	pickW := func() *wlModel { return m.workloads[r.rng.IntN(len(m.workloads))] }
	pickS := func() *svcModel { return m.services[r.rng.IntN(len(m.services))] }
	pickNS := func() *nsModel { return m.namespaces[r.rng.IntN(len(m.namespaces))] }
	switch r.rng.IntN(16) {
	case 0:
		r.addWorkload()
		return "add workload"
	case 1:
		if len(m.workloads) > 1 {
			i := r.rng.IntN(len(m.workloads))
			m.workloads = slices.Delete(m.workloads, i, i+1)
		}
		return "remove workload"
	case 2:
		w := pickW()
		w.app = apps[r.rng.IntN(len(apps))]
		return "relabel workload " + w.name
	case 3:
		s := pickS()
		s.opaque = r.maybeList()
		return "service opaque-ports " + s.name
	case 4:
		m.defaultOpaque = r.maybeList()
		return "default opaque ports"
	case 5:
		m.detect = time.Duration(1+r.rng.IntN(3)) * time.Second
		if r.rng.IntN(2) == 0 {
			m.grace = nil
		} else {
			m.grace = ptrOf(time.Duration(r.rng.IntN(3)) * 50 * time.Millisecond)
		}
		return "detection settings"
	case 6:
		ns := pickNS()
		ns.opaque, ns.skipIn, ns.skipOut = r.maybeList(), r.maybeList(), r.maybeList()
		return "namespace annotations " + ns.name
	case 7:
		w := pickW()
		w.opaque, w.skipIn, w.skipOut = r.maybeList(), r.maybeList(), r.maybeList()
		return "workload annotations " + w.name
	case 8:
		s := pickS()
		if s.endpoints != nil && r.rng.IntN(2) == 0 {
			s.endpoints = nil
		} else {
			s.endpoints = []string{}
			for _, w := range m.workloads {
				if w.ns == s.ns && w.app == s.app && r.rng.IntN(3) > 0 {
					s.endpoints = append(s.endpoints, w.ns+"/"+w.name)
				}
			}
		}
		return "service endpoints " + s.name
	case 9:
		s := pickS()
		i := r.rng.IntN(len(s.ports))
		s.ports[i].Protocol = protocols[r.rng.IntN(len(protocols))]
		return "service port protocol " + s.name
	case 10:
		r.addService()
		return "add service"
	case 11:
		if len(m.services) > 1 {
			i := r.rng.IntN(len(m.services))
			m.services = slices.Delete(m.services, i, i+1)
		}
		return "remove service"
	case 12:
		m.mtls = !m.mtls
		return "mtls"
	case 13:
		w := pickW()
		w.addr = r.ip()
		return "workload address " + w.name
	case 14:
		w := pickW()
		w.sa = apps[r.rng.IntN(len(apps))]
		return "workload service account " + w.name
	}
	w := pickW()
	p := mesh.WorkloadPort{Name: []string{"", "web"}[r.rng.IntN(2)], Port: portValues[r.rng.IntN(len(portValues))], Protocol: protocols[r.rng.IntN(len(protocols))]}
	if r.rng.IntN(2) == 0 {
		p.Plaintext = true
	} else {
		p.AuthorizedClients = []mesh.ClientMatch{{Namespace: w.ns}}
	}
	w.ports = []mesh.WorkloadPort{p}
	return "workload ports " + w.name
}

func modelPortSet(t *testing.T, s *string) *mesh.PortSet {
	if s == nil {
		return nil
	}
	ps, err := mesh.ParsePortSet(*s)
	if err != nil {
		t.Fatal(err)
	}
	return &ps
}

func (m *meshModel) mesh(t *testing.T) *mesh.Mesh {
	out := &mesh.Mesh{DefaultOpaquePorts: modelPortSet(t, m.defaultOpaque), DetectTimeout: m.detect, MTLS: m.mtls}
	if m.grace != nil {
		out.DetectGracePeriod = ptrOf(*m.grace)
	}
	for _, n := range m.namespaces {
		ns := &mesh.Namespace{Name: n.name, OpaquePorts: modelPortSet(t, n.opaque), SkipInboundPorts: modelPortSet(t, n.skipIn), SkipOutboundPorts: modelPortSet(t, n.skipOut)}
		for _, s := range m.services {
			if s.ns == n.name {
				ns.Services = append(ns.Services, &mesh.Service{Name: s.name, Namespace: s.ns, ClusterIPs: []netip.Addr{s.ip},
					Ports: slices.Clone(s.ports), Selector: map[string]string{"app": s.app}, OpaquePorts: modelPortSet(t, s.opaque),
					Endpoints: slices.Clone(s.endpoints)})
			}
		}
		for _, w := range m.workloads {
			if w.ns == n.name {
				ns.Workloads = append(ns.Workloads, &mesh.Workload{Name: w.name, Namespace: w.ns, Addresses: []netip.Addr{w.addr},
					Ports: slices.Clone(w.ports), ServiceAccount: w.sa, Labels: map[string]string{"app": w.app},
					OpaquePorts: modelPortSet(t, w.opaque), SkipInboundPorts: modelPortSet(t, w.skipIn), SkipOutboundPorts: modelPortSet(t, w.skipOut)})
			}
		}
		out.Namespaces = append(out.Namespaces, ns)
	}
	if err := out.Complete(); err != nil {
		t.Fatalf("model mesh: %v", err)
	}
	return out
}

// generated is Generate's output for w, by type and name: the reference a
// snapshot must equal.
func generated(m *mesh.Mesh, w *mesh.Workload, opts Options) map[resource.Type]map[string]types.Resource {
	r := Generate(m, w, opts)
	snap, err := r.Snapshot()
	if err != nil {
		panic(err)
	}
	return snapshotItems(snap)
}

func snapshotItems(s *cache.Snapshot) map[resource.Type]map[string]types.Resource {
	out := map[resource.Type]map[string]types.Resource{}
	for _, t := range snapshotTypes {
		out[t] = s.GetResources(t)
	}
	return out
}

// diffItems describes how a and b differ ("" when equal).
func diffItems(a, b map[string]types.Resource) string {
	var d []string
	for name, ra := range a {
		rb, ok := b[name]
		switch {
		case !ok:
			d = append(d, "only in first: "+name)
		case !proto.Equal(ra, rb):
			d = append(d, "differs: "+name)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			d = append(d, "only in second: "+name)
		}
	}
	slices.Sort(d)
	return strings.Join(d, "; ")
}

// TestIncrementalRebuildEqualsFullRebuild walks random sequences of mesh
// changes. After each, the long-lived builder's snapshot of every workload
// must have Generate's resources, the versions a fresh builder gives (a full
// rebuild), and — against the previous step — a type version that changed
// exactly when the type's resources did (no missed and no needless push).
func TestIncrementalRebuildEqualsFullRebuild(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	authority, err := ca.Open(ca.Options{Dir: filepath.Join(t.TempDir(), "ca"), Clock: ca.NewManualClock(time.Now()), Logger: log, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	tcpOnly := DefaultOptions()
	tcpOnly.HTTPConnectionManager = false
	secured := DefaultOptions()
	secured.Security = &ca.Security{CA: authority, Logger: log}
	for _, tc := range []struct {
		name  string
		opts  Options
		seeds int
		steps int
	}{
		{"http connection manager", DefaultOptions(), 4, 30},
		{"tcp proxy", tcpOnly, 2, 25},
		{"security", secured, 2, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range tc.seeds {
				r := &meshWalk{rng: rand.New(rand.NewPCG(uint64(seed), 15)), m: &meshModel{}}
				for i := range 3 {
					r.m.namespaces = append(r.m.namespaces, &nsModel{name: fmt.Sprintf("ns%d", i)})
				}
				for range 6 {
					r.addService()
				}
				for range 12 {
					r.addWorkload()
				}
				inc := newBuilder(tc.opts, false)
				var prev map[string]*cache.Snapshot
				change := "initial mesh"
				for step := range tc.steps {
					m := r.m.mesh(t)
					// The endpoint gate's withheld workloads change without
					// the mesh changing: a random fifth at every step.
					withheld := map[string]bool{}
					for _, w := range m.Workloads() {
						if r.rng.IntN(5) == 0 {
							withheld[w.Key()] = true
						}
					}
					opts := tc.opts
					opts.WithheldEndpoints = withheld
					got, invalid := inc.build(m, withheld)
					for k, err := range invalid {
						t.Fatalf("seed %d step %d (%s): %s: invalid snapshot: %v", seed, step, change, k, err)
					}
					full, _ := newBuilder(tc.opts, false).build(m, withheld)
					for _, w := range m.Workloads() {
						snap := got[w.Key()]
						if snap == nil {
							t.Fatalf("seed %d step %d (%s): no snapshot for %s", seed, step, change, w.Key())
						}
						want := generated(m, w, opts)
						items := snapshotItems(snap)
						for _, typ := range snapshotTypes {
							if d := diffItems(want[typ], items[typ]); d != "" {
								t.Fatalf("seed %d step %d (%s): %s %s: Generate vs incremental: %s", seed, step, change, w.Key(), typ, d)
							}
							if a, b := snap.GetVersion(typ), full[w.Key()].GetVersion(typ); a != b {
								t.Fatalf("seed %d step %d (%s): %s %s: incremental version %s, full rebuild %s", seed, step, change, w.Key(), typ, a, b)
							}
							if p := prev[w.Key()]; p != nil {
								sameVersion := p.GetVersion(typ) == snap.GetVersion(typ)
								sameContent := diffItems(p.GetResources(typ), items[typ]) == ""
								if sameVersion != sameContent {
									t.Fatalf("seed %d step %d (%s): %s %s: version unchanged %t, content unchanged %t", seed, step, change, w.Key(), typ, sameVersion, sameContent)
								}
							}
						}
					}
					prev = got
					change = r.step()
				}
			}
		})
	}
}

// TestIncrementalRebuildRegeneratesOnlyAffected: an endpoint change
// regenerates one service's fragment and no workload's own resources, and
// changes only the load assignments' version.
func TestIncrementalRebuildRegeneratesOnlyAffected(t *testing.T) {
	r := &meshWalk{rng: rand.New(rand.NewPCG(1, 2)), m: &meshModel{namespaces: []*nsModel{{name: "ns0"}}}}
	for range 5 {
		r.addService()
	}
	for range 20 {
		r.addWorkload()
	}
	b := newBuilder(DefaultOptions(), false)
	before, _ := b.build(r.m.mesh(t), nil)
	if b.stats.ServicesGenerated != 5 || b.stats.WorkloadsGenerated != 20 {
		t.Fatalf("first build: %+v", b.stats)
	}
	// A new address for a workload that is an endpoint of some service.
	var moved *wlModel
	for _, w := range r.m.workloads {
		for _, s := range r.m.services {
			if s.app == w.app && moved == nil {
				moved = w
			}
		}
	}
	if moved == nil {
		t.Fatal("no workload is an endpoint")
	}
	moved.addr = r.ip()
	after, _ := b.build(r.m.mesh(t), nil)
	selecting := 0
	for _, s := range r.m.services {
		if s.app == moved.app {
			selecting++
		}
	}
	// The moved workload's own part is regenerated (its address is an
	// input its Security may read); no other workload's is.
	if b.stats.ServicesGenerated != selecting || b.stats.WorkloadsGenerated != 1 {
		t.Fatalf("after moving %s (selected by %d services): %+v", moved.name, selecting, b.stats)
	}
	for key, snap := range after {
		for _, typ := range snapshotTypes {
			changed := before[key].GetVersion(typ) != snap.GetVersion(typ)
			if changed != (typ == resource.EndpointType) {
				t.Errorf("%s %s: version changed %t", key, typ, changed)
			}
		}
	}
}

// TestFullPushChangesEveryVersion: the benchmark's baseline pushes every
// type to every proxy on every build, with the same resources.
func TestFullPushChangesEveryVersion(t *testing.T) {
	r := &meshWalk{rng: rand.New(rand.NewPCG(3, 4)), m: &meshModel{namespaces: []*nsModel{{name: "ns0"}}}}
	for range 3 {
		r.addService()
	}
	for range 6 {
		r.addWorkload()
	}
	m := r.m.mesh(t)
	b := newBuilder(DefaultOptions(), true)
	first, _ := b.build(m, nil)
	second, _ := b.build(m, nil)
	for _, w := range m.Workloads() {
		want := generated(m, w, DefaultOptions())
		for _, typ := range snapshotTypes {
			if first[w.Key()].GetVersion(typ) == second[w.Key()].GetVersion(typ) {
				t.Errorf("%s %s: same version %s in two builds", w.Key(), typ, first[w.Key()].GetVersion(typ))
			}
			if d := diffItems(want[typ], second[w.Key()].GetResources(typ)); d != "" {
				t.Errorf("%s %s: %s", w.Key(), typ, d)
			}
		}
	}
	if b.stats.WorkloadsGenerated != 6 || b.stats.ServicesGenerated != 3 {
		t.Errorf("a full build regenerated %+v", b.stats)
	}
}
